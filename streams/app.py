"""The streamrec worker: ``faust -A streams.app worker``.

Reads like a table of contents of the running system:

* ``ingest``: the ingest processes (:mod:`streams.ingest_processes`), each a batched consumer
  of the events and catalog topics (:mod:`streams.ingest`) committing valid events (into the
  open replay window), catalog rows, flow counters and dead letters to the store;
* ``dead_letter_topic``: rejected messages with their reason and source offset;
* ``replay``: seals replay windows and keeps the rehearsal memory (:mod:`streams.sealing`),
  announcing each sealed window on ``windows_topic`` (one partition);
* ``window_notices``: the agent that records each sealed window's notice once across the cluster;
* ``training``: this worker's trainer process and the training backlog (:mod:`training.service`);
  trainers lease sealed windows from the store (:mod:`training.loop`) and fine-tune,
  gate and publish one model version per job of one or more windows;
* ``serving``: the newest promoted model, user histories and trending items, refreshed from
  the store and hot-swapped (:mod:`serving.service`), answering the HTTP API of
  :mod:`streams.web` (``/recommend``, ``/similar``, ``/search``, ``POST /events``, ``/models``);
* ``served_log``: every list answered, produced to the served topic after the answer
  (:mod:`streams.served`) and ingested like events, so clicks and purchases are attributed;
* ``online``: online metrics per hour, version and arm from served lists and attributed
  events (:mod:`streams.online`);
* ``rollout``: experiment reports and the canary decision loop (:mod:`streams.rollout`): a
  candidate serving a share of users is promoted or rolled back by its online results;
* ``/health`` and ``/stats``: what the worker is doing, over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from drift.online import HOUR_MS
from runtime.blocking import StoreThread
from runtime.config import Config
from serving.service import ServingService
from store.drift_metrics import open_alerts
from store.ingest import ingest_totals, stored_offsets
from store.online import read_online_metrics
from streams.ingest_processes import IngestProcesses
from streams.metrics import render
from streams.online import OnlineMetricsService
from streams.rollout import RolloutService
from streams.schema import DeadLetter, WindowSealed
from streams.sealing import SealingService
from streams.served import ServedLog
from streams.topics import LagReader, ensure_topics
from streams.web import Api, add_views
from training.service import TrainingService

config = Config.from_env()
logging.getLogger("streams").setLevel(config.python_log_level)



class StreamrecApp(faust.App):
    async def on_first_start(self) -> None:
        """Create the topics (off the loop) before any consumer subscribes, so none is auto-created."""
        await super().on_first_start()
        created = await asyncio.get_running_loop().run_in_executor(None, ensure_topics, config)
        if created:
            logging.getLogger(__name__).info("Created topics %s", created)


app = StreamrecApp(
    config.app_id,
    broker=config.kafka_url,
    store="memory://",
    web_port=config.web_port,
    topic_partitions=config.topic_partitions,
    broker_session_timeout=config.session_timeout_s,
    broker_rebalance_timeout=config.session_timeout_s,
    broker_heartbeat_interval=max(1, config.session_timeout_s // 5),
)

dead_letter_topic = app.topic(config.dead_letter_topic, value_type=DeadLetter)
windows_topic = app.topic(config.windows_topic, value_type=WindowSealed, partitions=1)
events_topic = app.topic(config.events_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
catalog_topic = app.topic(config.catalog_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
served_topic = app.topic(config.served_topic, key_type=bytes, value_type=bytes, value_serializer="raw")
training = TrainingService(config)
replay = SealingService(config, windows_topic)
ingest = IngestProcesses(config, dead_letter_topic, on_commit=replay.poke)
serving = ServingService(config)
served_log = ServedLog(served_topic, enabled=config.served_log)
online = OnlineMetricsService(config, lambda: serving.engine, serving.trending)
rollout = RolloutService(config, lambda: serving.engine)
add_views(app, Api(config, serving, served_log, events_topic, catalog_topic, served_topic, rollout))
metrics_thread = StoreThread("streamrec-metrics")
lag_reader = LagReader(config, lambda: stored_offsets(ingest.engine, config.ingest_group))


@app.task
async def start_services() -> None:
    """Run the training, replay, ingest and serving services with the worker."""
    await app.add_runtime_dependency(training)
    await app.add_runtime_dependency(replay)
    await app.add_runtime_dependency(ingest)
    await app.add_runtime_dependency(serving)
    await app.add_runtime_dependency(served_log)
    await app.add_runtime_dependency(online)
    await app.add_runtime_dependency(rollout)


@app.agent(windows_topic)
async def window_notices(notices):
    """Record the notice of every sealed window (this worker owns the one partition)."""
    async for notice in notices:
        await replay.take_notice(notice)


@app.page("/health")
async def health(web, request):
    """Liveness and what this worker has ingested since it started."""
    assigned = sorted(tp for partitions in ingest.assigned.values() for tp in partitions)
    return web.json({"status": "ok" if ingest.ready else "starting",
                     "ingest": ingest.describe(), "replay": replay.totals, "training": training.describe(),
                     "serving": serving.describe(), "served_log": served_log.describe(), "assigned": assigned})


@app.page("/metrics")
async def metrics(web, request):
    """The worker and the cluster's training in Prometheus' text format (:mod:`streams.metrics`)."""
    if ingest.engine is None:
        return web.json({"error": "store not ready"}, status=503)

    def read() -> dict:
        try:
            lag = lag_reader.read()
        except Exception as exc:  # Kafka unreachable: the other metrics still answer
            logging.getLogger(__name__).warning("consumer lag not measured: %s", exc)
            lag = {}
        return {"ingest": ingest_totals(ingest.engine), "lag": lag, "backlog": training.backlog,
                "runs": training.runs, "open_alerts": len(open_alerts(ingest.engine)),
                "online": read_online_metrics(ingest.engine, since_ms=time.time_ns() // 1_000_000 // HOUR_MS * HOUR_MS)}

    return web.bytes(render(await metrics_thread.run(read)), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@app.page("/stats")
async def stats(web, request):
    """Totals of ``ingest_stats`` per storefront, event type and outcome."""
    if ingest.engine is None:
        return web.json({"error": "store not ready"}, status=503)
    return web.json(await ingest.store_thread.run(ingest_totals, ingest.engine))
