"""The served-list log: every answered list goes to ``<prefix>-served``, off the request path.

A view hands the list to :meth:`ServedLog.record` (a queue append) and answers; a background
task produces what is queued to the served topic, where the ingest processes take it into the
store like events (batched, exactly once). When the queue is full (the broker is slow or
away) or the broker refuses a message, the list is counted as lost
(``streamrec_served_lists_total{outcome="lost"}``) and never retried on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import mode
import orjson

from streams.metrics import SERVED_LISTS

log = logging.getLogger(__name__)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, random.

    >>> len(new_request_id()), new_request_id() != new_request_id()
    (32, True)
    """
    return uuid.uuid4().hex


class ServedLog(mode.Service):
    """Queues served lists and produces them to ``topic`` in the background.

    Parameters
    ----------
    topic
        The Faust topic of served lists (raw bytes values).
    enabled
        When false, nothing is queued or sent (``STREAMREC_SERVED_LOG=false``).
    capacity
        Most lists waiting to be sent; beyond it new lists are lost (counted).
    """

    def __init__(self, topic, enabled: bool = True, capacity: int = 10_000, **kwargs):
        super().__init__(**kwargs)
        self.topic, self.enabled = topic, enabled
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=capacity)
        self.sent = self.lost = 0

    def record(self, surface: str, answer: dict, storefront: str | None, user_id: str | None = None,
               session_id: str | None = None, query: str | None = None, latency_ms: float | None = None,
               status: int | None = None, teams: list[str] | None = None) -> None:
        """Queue the list of ``answer`` (an API answer with ``request_id``, ``source``,
        ``model_version`` and ``items``, and ``experiment`` and ``arm`` when the user is in one)
        for logging; never waits. ``latency_ms``: how long the view took to build it; ``status``:
        a 5xx for an answer that failed (no items); ``teams``: the arm of each item of an
        interleaved list."""
        if not self.enabled:
            return
        served = {"request_id": answer["request_id"], "served_at": time.time_ns() // 1_000_000, "surface": surface,
                  "storefront": storefront or "default", "source": answer["source"],
                  "model_version": answer["model_version"], "experiment": answer.get("experiment"),
                  "arm": answer.get("arm"), "user_id": user_id, "session_id": session_id, "query": query,
                  "items": [i["item_id"] for i in answer["items"]], "scores": [i["score"] for i in answer["items"]],
                  "status": status, "latency_ms": None if latency_ms is None else round(latency_ms, 3),
                  "teams": teams}
        try:
            self.queue.put_nowait(served)
        except asyncio.QueueFull:
            self._lose(1)

    def describe(self) -> dict:
        return {"enabled": self.enabled, "sent": self.sent, "lost": self.lost, "waiting": self.queue.qsize()}

    def _lose(self, n: int) -> None:
        self.lost += n
        SERVED_LISTS.labels("lost").inc(n)

    @mode.Service.task
    async def _send(self) -> None:
        """Produce queued lists, a batch at a time (the producer batches them on the wire)."""
        while not self.should_stop:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            try:
                pending = [await self.topic.send(key=s["request_id"].encode(), value=orjson.dumps(s)) for s in batch]
                results = await asyncio.gather(*pending, return_exceptions=True)
            except Exception as exc:  # the producer is stopping or the broker is away
                log.warning("%d served lists lost: %s", len(batch), exc)
                self._lose(len(batch))
                continue
            failed = sum(isinstance(r, BaseException) for r in results)
            if failed:
                log.warning("%d served lists lost: the broker refused them", failed)
                self._lose(failed)
            self.sent += len(batch) - failed
            SERVED_LISTS.labels("sent").inc(len(batch) - failed)
