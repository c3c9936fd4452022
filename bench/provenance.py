"""Where a benchmark figure comes from: every results file names its commit, date, machine and settings.

:func:`write_result` stores one run as ``bench/results/<bench>/<date>-<commit>-<host>.json``
and never replaces an earlier run, so runs on other machines or commits sit side by side.
:func:`run_folder` makes a folder for a run that writes several files. Each records the
machine's 1-minute load average when the run started (and, for :func:`write_result`, when it
ended), so a reader can tell whether the machine was busy with other work, and the
``STREAMREC_*`` settings it ran with. ``python -m
bench.render`` turns the files into the tables the docs show.

>>> stamp = provenance()
>>> sorted(stamp) == ["commit", "date", "environment", "load_1min", "machine"] and stamp["machine"]["cpu_cores"] >= 1
True
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """The checkout's commit (``-dirty`` with uncommitted changes), or ``$STREAMREC_COMMIT`` where
    there is no git repository (a copied working tree)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("STREAMREC_COMMIT", "unknown")


def machine() -> dict:
    """CPU model and cores, memory, GPU (when torch sees one), Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpu = torch_version = None
    try:
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count() or 1, "memory_gib": memory,
            "gpu": gpu, "python": platform.python_version(), "torch": torch_version}


def load_1min() -> float | None:
    """The machine's 1-minute load average (runnable processes; 2.0 keeps 2 CPUs busy), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def environment() -> dict[str, str]:
    """The ``STREAMREC_*`` settings in the run's environment, which the processes it starts read:
    what it changed from the defaults. Addresses and secrets (``*_URL``, passwords, tokens) are
    left out.

    >>> os.environ["STREAMREC_TRAIN_UPDATE_EPOCHS"] = "1"
    >>> environment()["STREAMREC_TRAIN_UPDATE_EPOCHS"]
    '1'
    >>> del os.environ["STREAMREC_TRAIN_UPDATE_EPOCHS"]
    """
    hidden = ("_URL", "PASSWORD", "SECRET", "TOKEN")
    return {name: value for name, value in sorted(os.environ.items())
            if name.startswith("STREAMREC_") and not any(word in name for word in hidden)}


def provenance() -> dict:
    """Commit, UTC date, machine, 1-minute load average and ``STREAMREC_*`` settings of a run starting now."""
    return {"commit": commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
            "load_1min": load_1min(), "environment": environment()}


def _run_name(stamp: dict) -> str:
    return f"{stamp['date'].replace(':', '').replace('-', '')}-{stamp['commit']}-{stamp['machine']['host']}"


def write_result(bench: str, settings: dict, result: dict, folder: Path = RESULTS,
                 started: dict | None = None) -> Path:
    """Store one run of ``bench`` under ``folder/bench/`` with its provenance; returns the file.

    ``started``: the run's :func:`provenance` taken when it began (its commit, date and load
    are then the start's, and ``load_1min_end`` is the load now); default: now."""
    stamp = {**(started or provenance()), "load_1min_end": load_1min()}
    target = folder / bench
    target.mkdir(parents=True, exist_ok=True)
    for n in range(100):  # exclusive create: never replace another run
        path = target / f"{_run_name(stamp)}{'' if n == 0 else f'-{n}'}.json"
        try:
            with path.open("x") as out:
                json.dump({"bench": bench, **stamp, "settings": settings, "result": result}, out, indent=2,
                          default=str)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{target}/{_run_name(stamp)}*.json: 100 runs in the same second")


def run_folder(bench: str, settings: dict, folder: Path = RESULTS) -> Path:
    """A new folder ``folder/bench/<date>-<commit>-<host>/`` for a run that writes several files,
    holding ``provenance.json`` (commit, date, machine, settings); never one of an earlier run."""
    stamp = provenance()
    for n in range(100):
        path = folder / bench / f"{_run_name(stamp)}{'' if n == 0 else f'-{n}'}"
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        (path / "provenance.json").write_text(json.dumps({"bench": bench, **stamp, "settings": settings}, indent=2))
        return path
    raise FileExistsError(f"{folder / bench}/{_run_name(stamp)}*: 100 runs in the same second")
