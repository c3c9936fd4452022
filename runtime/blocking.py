"""Blocking work (the store, model loading, encoders) run off the event loop.

Examples
--------
>>> import asyncio
>>> thread = StoreThread("example")
>>> asyncio.run(thread.run(sum, [1, 2, 3]))
6
>>> thread.shutdown()
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor


class StoreThread:
    """One thread for a service's blocking calls: they run in order, and the loop never waits on them."""

    def __init__(self, name: str):
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)

    async def run(self, fn, *args):
        """``fn(*args)`` on this thread; the caller awaits it without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def submit(self, fn, *args) -> Future:
        """``fn(*args)`` on this thread, without waiting for it (from any thread)."""
        return self.executor.submit(fn, *args)

    def shutdown(self, wait: bool = True) -> None:
        """Finish what was handed over (``wait``) or drop what has not started."""
        self.executor.shutdown(wait=wait, cancel_futures=not wait)
