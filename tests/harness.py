"""Run real worker processes against the test broker and database."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from runtime.config import Config
from runtime.processes import free_port, start_worker, stop
from store.db import make_engine, migrate
from store.ingest import stored_offsets
from store.registry import StoredTextEmbeddings

MOVIELENS_WINDOW_EVENTS = 4_000
"""Events per sealed window of the ``movielens_store`` fixture."""
MOVIELENS_STORE_ENV = {"STREAMREC_TRAIN_EPOCHS": "2", "STREAMREC_GATE_TOLERANCE": "0.5",
                       "STREAMREC_REHEARSAL_CAPACITY": "3000"}
"""Settings of the ``movielens_store`` fixture's training jobs."""


class Worker:
    """One ``faust -A streams.app worker`` subprocess with its own web port and log."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = {**env, "STREAMREC_WEB_PORT": str(free_port())}
        self.config = Config.from_env(self.env)
        self.log = log
        self.proc = start_worker(self.env, log=log)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.config.web_port}/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            health = self.health()
            if health and health["status"] == "ok":
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop(self.proc)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def worker_env(broker: str, database_url: str, topic_prefix: str, **extra: str) -> dict[str, str]:
    """Settings for a test worker: fresh app id (consumer groups) and topics, short timeouts, and
    no ONNX exports of what it serves (seconds of CPU at each swap) unless a test asks for them."""
    return {"STREAMREC_KAFKA_URL": f"kafka://{broker}", "STREAMREC_DATABASE_URL": database_url,
            "STREAMREC_APP_ID": f"app-{uuid.uuid4().hex[:8]}", "STREAMREC_TOPIC_PREFIX": topic_prefix,
            "STREAMREC_SESSION_TIMEOUT_S": "6", "STREAMREC_TOPIC_PARTITIONS": "4", "STREAMREC_SERVING_ONNX": "0",
            **extra}


def wait_until(predicate, timeout_s: float, message: str, interval_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s: {message}")


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Every message of ``topic`` from the beginning (all partitions), once ``expected`` arrived or time ran out."""
    async def read() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            out, deadline = [], time.monotonic() + timeout_s
            while len(out) < expected and time.monotonic() < deadline:
                for messages in (await consumer.getmany(timeout_ms=250)).values():
                    out.extend(messages)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition of ``topic``: the offset its next message will get (how many it holds)."""
    async def read() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            return {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def wait_ingested(config: Config, engine, timeout_s: float, message: str | Callable[[], str] = "",
                  topic: str | None = None) -> None:
    """Wait until the store holds, with its data, the end offset of every partition of ``topic``
    (the events topic unless given): each message produced so far is stored or dead-lettered, and
    no batch of them can land again (a redelivered batch would start below a stored offset). What
    proves a duplicate absent."""
    topic = topic or config.events_topic
    last = {}

    def caught_up() -> bool:
        ends = end_offsets(config.bootstrap_servers, topic)
        stored = stored_offsets(engine, config.ingest_group)
        last.update({p: (stored.get((topic, p), 0), end) for p, end in ends.items()})
        return all(stored.get((topic, p), 0) >= end for p, end in ends.items())

    try:
        wait_until(caught_up, timeout_s, f"the store holds every {topic} partition's end offset", interval_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (stored, end) by partition: {last}\n"
                             f"{message() if callable(message) else message}") from None


def store_text_vectors(database_url: str, vectors: dict[str, np.ndarray]) -> None:
    """Put ``vectors`` in the store's text embeddings (migrating it first), as a store holds
    them once it has seen those texts: workers and trainers look them up instead of encoding."""
    engine = make_engine(database_url)
    migrate(engine)
    stored = StoredTextEmbeddings(engine)
    for key, vector in vectors.items():
        stored[key] = vector
    stored.save()
    engine.dispose()
