"""A CUDA stand-in on a CPU: run learner code with ``Device("cuda")`` and fail where CUDA would
refuse to mix devices.

Inside :class:`CudaOnCpu`, every tensor the code puts on ``cuda`` (``device=`` arguments,
``.to``, ``.cuda``, ``Module.to``, ``pin_memory``) is a CPU tensor remembered as *on the
device*; what an operation makes from device tensors is on the device too. Each operation
that the project's own code calls is checked by CUDA's rules:

* tensors of more than zero dimensions must all be on one device, except for transfers
  (``to``, ``copy_``, ``cpu``) and the indices of an indexing operation on a device tensor
  (CUDA takes host indices; a host tensor indexed by device indices is refused, as
  ``indices should be either on cpu or on the same device as the indexed tensor``);
* random numbers drawn on the device take a generator of the device, not the host's;
* a device tensor cannot become a NumPy array without ``.cpu()``.

It catches device mixing in the code it runs (every path the test takes, in this process).
It cannot catch what only real CUDA shows: kernels missing for a dtype, bf16 autocast
numerics (autocast is off here), memory, asynchronous errors, or mixing inside torch's own
code (checked only where the project's code calls in).

Examples
--------
>>> import torch
>>> with CudaOnCpu():
...     rows = torch.arange(4)
...     mask = torch.ones(4, device="cuda") > 0
...     rows[mask]  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
tests.device_discipline.DeviceMixed: Tensor.__getitem__: indices should be either on cpu or on the same device as ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

PROJECT = Path(__file__).resolve().parent.parent
CHECKED = tuple(f"{PROJECT / package}/" for package in ("learner", "backtest", "training", "drift", "replay", "bench",
                                                        "tests"))
TRANSFERS = {"to", "cuda", "copy_", "cpu", "pin_memory", "__set__", "numpy"}
INDEXING = {"__getitem__", "__setitem__", "index_select", "index_put_", "index_add_", "index_copy_", "index_fill_",
            "take_along_dim", "gather", "scatter_", "scatter_add_"}
HOST_ONLY = {"numpy", "__array__"}
DEVICE = torch._C.TensorBase.__dict__["device"]
IS_CUDA = torch._C.TensorBase.__dict__["is_cuda"]


class DeviceMixed(RuntimeError):
    """An operation CUDA would refuse: tensors on two devices."""


def _is_cuda(device) -> bool:
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"


class CudaOnCpu(TorchFunctionMode):
    """Runs ``cuda`` tensors on the CPU, checking device discipline (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._on_device: dict[tuple, object] = {}  # key -> the storage (or empty tensor) it names

    def on_device(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is (as CUDA would have it) on the device."""
        if tensor.layout != torch.strided:
            return False
        return self._key(tensor) in self._on_device

    def _mark(self, value):
        if isinstance(value, torch.Tensor) and value.layout == torch.strided:
            key = self._key(value)  # held until the end: its address is never reused by a host tensor
            self._on_device[key] = value.untyped_storage() if key[0] == "storage" else value
        return value

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple:
        """Its storage's address, shared by its views and by a parameter whose ``.data`` it became
        (an empty tensor, which has no storage, by its identity)."""
        storage = tensor.untyped_storage()
        return ("storage", storage.data_ptr()) if storage.nbytes() else ("empty", id(tensor))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        if getattr(func, "__self__", None) in (DEVICE, IS_CUDA):  # where a tensor says it is
            on_device = self.on_device(args[0])
            if func.__self__ is IS_CUDA:
                return on_device
            return torch.device("cuda", 0) if on_device else func(*args)
        target = _target(name, args, kwargs, self.on_device) if name in ("to", "cuda", "cpu") else None
        to_device = target == "cuda" or _is_cuda(kwargs.get("device"))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if _caller_is_checked():
            self._check(name, args, kwargs, tensors, to_device)
        if name == "pin_memory":  # page-locked host memory needs CUDA; a copy stands in for it
            out = args[0].clone()
            return self._mark(out) if self.on_device(args[0]) else out
        if target is not None:  # a transfer: a fresh copy, on the device or not
            dtype = next((a for a in (*args[1:], kwargs.get("dtype")) if isinstance(a, torch.dtype)), None)
            tensor = next((a for a in args[1:] if isinstance(a, torch.Tensor)), None)
            out = args[0].to(dtype=tensor.dtype if tensor is not None else dtype or args[0].dtype, copy=True)
            return self._mark(out) if to_device else out
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        out = func(*args, **kwargs)
        if to_device or any(self.on_device(t) for t in tensors):
            tree_map(self._mark, out)
        return out

    def _check(self, name: str, args, kwargs, tensors: list[torch.Tensor], to_device: bool) -> None:
        if name in HOST_ONLY and args and isinstance(args[0], torch.Tensor) and self.on_device(args[0]):
            raise DeviceMixed(f"Tensor.{name}: can't convert a cuda tensor to numpy; use Tensor.cpu() first")
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type == "cpu" and (
                to_device or any(self.on_device(t) for t in tensors)):
            raise DeviceMixed(f"{name}: a cpu generator draws numbers on the cuda device")
        if name in TRANSFERS:
            return
        where = {self.on_device(t) for t in tensors if t.dim() > 0 and t.layout == torch.strided}
        if to_device:
            where.add(True)
        if len(where) < 2:
            return
        if name in INDEXING and isinstance(args[0], torch.Tensor):
            if self.on_device(args[0]):
                if name != "__setitem__" or len(args) < 3 or not isinstance(args[2], torch.Tensor) \
                        or args[2].dim() == 0 or self.on_device(args[2]):
                    return  # CUDA takes host indices
            else:
                raise DeviceMixed(f"Tensor.{name}: indices should be either on cpu or on the same device as the "
                                  f"indexed tensor (cpu)")
        raise DeviceMixed(f"{name}: expected all tensors to be on the same device, found cuda and cpu tensors")


def _target(name: str, args, kwargs, on_device) -> str | None:
    """Where ``to``, ``cuda`` or ``cpu`` moves a tensor: ``"cuda"``, ``"cpu"``, or None (it stays)."""
    if name in ("cuda", "cpu"):
        return name
    for arg in (*args[1:], kwargs.get("device"), kwargs.get("other")):
        if isinstance(arg, torch.Tensor):
            return "cuda" if on_device(arg) else "cpu"
        if isinstance(arg, (str, torch.device)):
            return torch.device(arg).type
    return None


def _caller_is_checked() -> bool:
    """Whether the operation is called by the project's own code (not by torch's)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith((*CHECKED, "<doctest"))
