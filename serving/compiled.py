"""Inference modules exported to ONNX and run by ONNX Runtime: the same answers, less time on a CPU.

A small model answering one request at a time spends most of its time in torch's per-operator
overhead, not in arithmetic; ONNX Runtime runs the same graph with fused operators (MiniLM
encodes a query alone about 3x faster, the user's state about 4x). Exports are checked against
the module before use: a graph that answers differently is never served.

The export itself runs in a child process: ``torch.export`` leaves memory behind in the process
that calls it (its modules, tracing state and a copy of the weights: 155 MiB for MiniLM), which
a serving worker would otherwise carry for as long as it runs. The child gets a pickled copy of
the module from this process and sends back the ONNX graph, nothing else.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

from learner.text import MeanPooled, TextEncoder

TOLERANCE = 1e-4
"""The largest absolute difference from the module's own output an export may show."""


class CompileError(RuntimeError):
    """An export failed, or answers differently from its module."""


class CompiledModule:
    """``module`` (in eval mode, its outputs one tensor) exported with ``torch.export`` to ONNX
    and run by an ONNX Runtime session on one thread, called with numpy arrays by input name.

    ``examples`` are example inputs, one per name in ``names``; ``dynamic`` names each input's
    axes whose length may vary (name → {axis: label}; inputs sharing a label share a length).
    Examples must be at least 2 long on a dynamic axis. A copy of ``module`` is exported (in a
    child process), so ``module`` may go on answering on other threads meanwhile. The export is
    checked on the examples (and ``checks``, further tuples of inputs): each must match the
    module within :data:`TOLERANCE`, or :class:`CompileError` is raised.

    >>> layer = torch.nn.Linear(3, 2).eval()
    >>> compiled = CompiledModule(layer, (torch.ones(4, 3),), ("x",), {"x": {0: "rows"}})
    >>> x = np.arange(15, dtype=np.float32).reshape(5, 3)
    >>> bool(np.allclose(compiled(x=x), layer(torch.from_numpy(x)).detach().numpy(), atol=1e-5))
    True
    """

    def __init__(self, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], names: tuple[str, ...],
                 dynamic: dict[str, dict[int, str]], checks: tuple[tuple[torch.Tensor, ...], ...] = ()):
        import onnxruntime

        graph = exported_in_child(module, examples, names, dynamic)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # one request at a time per thread
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        for inputs in (examples, *checks):
            with torch.inference_mode():
                expected = module(*inputs).float().numpy()
            got = self(**{name: t.numpy() for name, t in zip(names, inputs)})
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=0.0, atol=TOLERANCE):
                worst = np.abs(got - expected).max() if got.shape == expected.shape else f"shape {got.shape}"
                raise CompileError(f"the ONNX export of {type(module).__name__} answers differently "
                                   f"(largest difference {worst}, tolerance {TOLERANCE})")

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        """The module's output for these inputs (numpy arrays by input name)."""
        return self.session.run(None, inputs)[0]


def exported_in_child(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], names: tuple[str, ...],
                      dynamic: dict[str, dict[int, str]]) -> bytes:
    """The ONNX graph of ``module`` traced on ``examples``, exported by ``python -m
    serving.compiled`` (it reads the pickled arguments from its stdin and writes the graph to
    its stdout); :class:`CompileError` when the export fails. Its output goes to unnamed
    temporary files, so nothing is left behind if either process is killed."""
    with tempfile.TemporaryFile() as graph, tempfile.TemporaryFile() as errors:
        path = os.pathsep.join(p for p in sys.path if p)  # the child imports what this process imports
        child = subprocess.Popen([sys.executable, "-m", "serving.compiled"], stdin=subprocess.PIPE, stdout=graph,
                                 stderr=errors, env={**os.environ, "PYTHONPATH": path})
        try:
            with child.stdin:  # streamed: no second copy of the weights in this process
                pickle.dump((module, examples, names, dynamic), child.stdin)
        except BrokenPipeError:  # the child died early: its error says why
            pass
        except Exception as exc:  # a module defined in a function, say: the child could not rebuild it
            child.kill()
            child.wait()
            raise CompileError(f"{type(module).__name__} could not be sent to the export process: {exc}") from exc
        if code := child.wait():  # torch.export names the construct it cannot trace
            errors.seek(0)
            reason = errors.read().decode(errors="replace").strip().splitlines()[-1:] or [f"exit {code}"]
            raise CompileError(f"{type(module).__name__} could not be exported to ONNX: {reason[0]}")
        graph.seek(0)
        return graph.read()


def exported(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], names: tuple[str, ...],
             dynamic: dict[str, dict[int, str]]) -> bytes:
    """The ONNX graph of ``module`` traced on ``examples`` (see :class:`CompiledModule`)."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = tuple({axis: dims.setdefault(label, torch.export.Dim(label))
                    for axis, label in dynamic.get(name, {}).items()} for name in names)
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, examples, None, input_names=list(names), dynamo=True,
                                    dynamic_shapes=shapes, verbose=False)
    graph = io.BytesIO()
    program.save(graph)
    return graph.getvalue()


class _quiet:
    """Loggers at ERROR for a while: the exporter reports its steps and the operators it skips."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(name) for name in names]

    def __enter__(self):
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)


def compile_text_encoder(encoder: TextEncoder) -> bool:
    """Make ``encoder`` encode with an ONNX Runtime export of its transformer from now on (same
    vectors within :data:`TOLERANCE`; MiniLM encodes a short query about 3x faster on a CPU).
    For a frozen encoder on a CPU only: a GPU and training keep torch. Takes seconds: call it
    off the event loop. Whether it compiled; :class:`CompileError` when the export fails or
    encodes differently."""
    if encoder.device.is_cuda or encoder.trainable:
        return False
    if encoder.compiled is None:
        tokenizer = encoder.copy().tokenizer  # its own: another thread may be encoding with this one's

        def tokens(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            batch = tokenizer(texts, padding=True, truncation=True, max_length=encoder.max_length,
                              return_tensors="pt")
            return batch["input_ids"], batch["attention_mask"]

        axes = {0: "texts", 1: "tokens"}
        encoder.compiled = CompiledModule(
            MeanPooled(encoder.model).eval(), tokens(["red running shoes", "tea"]), ("input_ids", "attention_mask"),
            {"input_ids": axes, "attention_mask": axes},
            checks=(tokens(["x"]), tokens(["a longer product description, " * 40, "mug", "blue denim jacket"])))
    return True


if __name__ == "__main__":  # the child of exported_in_child: only its parent writes to its stdin
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else would print goes to stderr: stdout carries the graph alone
    try:
        out.write(exported(*pickle.load(sys.stdin.buffer)))
        out.close()
    except Exception as exc:  # the last line of stderr is the reason the parent reports: the first cause
        while exc.__cause__ is not None:
            exc = exc.__cause__
        sys.exit(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
