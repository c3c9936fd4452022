"""Where the learner computes: CUDA (bf16 autocast, pinned host batches) when present, else CPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """A torch device and the matching precision and transfer settings.

    Examples
    --------
    >>> device = Device(torch.device("cpu"))
    >>> with device.autocast():
    ...     device.put(torch.ones(2)).sum().item()
    2.0
    """

    torch_device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA; a no-op context on CPU."""
        if self.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move a host tensor to the device (pinned, non-blocking copy on CUDA)."""
        if self.is_cuda:
            return tensor.pin_memory().to(self.torch_device, non_blocking=True)
        return tensor


def pick_device(name: str | None = None) -> Device:
    """``name`` ("cpu", "cuda", "cuda:1") if given, else CUDA when available, else CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return Device(torch.device(name))
