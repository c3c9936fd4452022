"""``GET /metrics``: the worker in Prometheus' text format (``prometheus-client``).

Request latencies are observed as requests are answered; everything else is read when
scraped, from the store (the same numbers ``/health``, ``/stats`` and ``streamrec windows``
show, so every worker reports the same cluster-wide totals) and from Kafka (consumer lag:
each partition's end offset minus the offset stored with the data).

| metric | type | labels |
|---|---|---|
| ``streamrec_ingest_messages_total`` | counter | storefront, event_type, outcome (``accepted`` or the rejection reason) |
| ``streamrec_consumer_lag_messages`` | gauge | topic, partition |
| ``streamrec_windows`` | gauge | state (``pending``, ``leased``, ``trained``, ``failed``) |
| ``streamrec_training_backlog_windows``, ``..._events`` | gauge | |
| ``streamrec_training_oldest_wait_seconds`` | gauge | |
| ``streamrec_serving_staleness_seconds`` | gauge: seconds since the newest window the serving version covers sealed | |
| ``streamrec_training_runs_total`` | counter | status |
| ``streamrec_training_job_seconds`` | summary of finished jobs | |
| ``streamrec_model_versions_total`` | counter | status (``promoted``, ``rejected``, ``rolled_back``) |
| ``streamrec_drift_open_alerts`` | gauge: confirmed drift alerts not yet followed by a normal value | |
| ``streamrec_http_request_seconds`` | histogram | endpoint, method, status |
| ``streamrec_served_lists_total`` | counter: lists this worker logged | outcome (``sent``, ``lost``) |
| ``streamrec_online_*`` | gauge: the newest hour's online metrics | surface, storefront, source, version, arm |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    SummaryMetricFamily,
)

REGISTRY = CollectorRegistry(auto_describe=False)
REQUEST_SECONDS = Histogram(
    "streamrec_http_request_seconds", "Time to answer an HTTP request of the API.",
    ["endpoint", "method", "status"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
SERVED_LISTS = Counter("streamrec_served_lists", "Served lists this worker logged to the served topic, by outcome "
                       "(sent, or lost: the buffer was full or the broker refused).", ["outcome"], registry=REGISTRY)
for _outcome in ("sent", "lost"):  # both exported from the start, at 0
    SERVED_LISTS.labels(_outcome)


class Snapshot:
    """What the last scrape read; :meth:`collect` turns it into metric families."""

    def __init__(self):
        self.reading: dict = {}

    def collect(self):
        r = self.reading
        if not r:
            return
        ingest = CounterMetricFamily("streamrec_ingest_messages", "Messages ingested, by outcome.",
                                     labels=["storefront", "event_type", "outcome"])
        for row in r["ingest"]:
            ingest.add_metric([row["storefront"], row["event_type"], row["outcome"]], row["count"])
        yield ingest
        lag = GaugeMetricFamily("streamrec_consumer_lag_messages", "Messages in Kafka not yet stored.",
                                labels=["topic", "partition"])
        for (topic, partition), value in sorted(r["lag"].items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        backlog = r["backlog"]
        states = GaugeMetricFamily("streamrec_windows", "Sealed windows by training state.", labels=["state"])
        for state in ("pending", "leased", "trained", "failed"):
            states.add_metric([state], backlog.get("by_state", {}).get(state, 0))
        yield states
        yield GaugeMetricFamily("streamrec_training_backlog_windows", "Sealed windows waiting for or in training.",
                                value=backlog.get("windows_waiting", 0))
        yield GaugeMetricFamily("streamrec_training_backlog_events", "Events of the windows waiting.",
                                value=backlog.get("events_waiting", 0))
        yield GaugeMetricFamily("streamrec_training_oldest_wait_seconds",
                                "How long the oldest waiting window has waited since it sealed.",
                                value=backlog.get("oldest_waiting_s") or 0.0)
        if backlog.get("serving_staleness_s") is not None:
            yield GaugeMetricFamily("streamrec_serving_staleness_seconds",
                                    "Seconds since the newest window the serving version was trained on sealed.",
                                    value=backlog["serving_staleness_s"])
        runs = r["runs"]
        counter = CounterMetricFamily("streamrec_training_runs", "Training runs (jobs) by status.", labels=["status"])
        for status in ("running", "succeeded", "failed"):
            counter.add_metric([status], runs.get(status, 0))
        yield counter
        yield SummaryMetricFamily("streamrec_training_job_seconds", "Duration of finished training jobs.",
                                  count_value=runs.get("jobs", 0), sum_value=runs.get("job_seconds", 0.0))
        versions = CounterMetricFamily("streamrec_model_versions", "Model versions by status.", labels=["status"])
        for status in ("promoted", "rejected", "rolled_back"):
            versions.add_metric([status], runs.get(status, 0))
        yield versions
        yield GaugeMetricFamily("streamrec_drift_open_alerts", "Drift alerts (confirmed breaches) not yet followed "
                                "by a normal value.", value=r["open_alerts"])
        yield from _online(r.get("online", []))


ONLINE_GAUGES = {"lists": "Lists served", "users": "Distinct users served", "ctr": "Share of lists clicked",
                 "conversion": "Share of exposed users who bought", "revenue_per_1000": "Order value per 1,000 lists",
                 "coverage": "Share of the catalog served", "diversity": "Intra-list diversity (1 - mean cosine)",
                 "novelty": "Mean -log2 popularity share of served items",
                 "new_item_share": "Share of served slots holding items without events yet"}


def _online(rows: list[dict]):
    """Gauges of the newest hour's online metrics (``streamrec_online_<name>``)."""
    labels = ["surface", "storefront", "source", "model_version", "experiment", "arm"]
    for name, doc in ONLINE_GAUGES.items():
        gauge = GaugeMetricFamily(f"streamrec_online_{name}", f"{doc}, in the newest served hour.", labels=labels)
        for row in rows:
            value = row.get(name, row["metrics"].get(name))
            if value is not None:
                gauge.add_metric([str(row[label]) for label in labels], value)
        yield gauge


SNAPSHOT = Snapshot()
REGISTRY.register(SNAPSHOT)


def render(reading: dict) -> bytes:
    """The text exposition of the last ``reading`` and the request histograms."""
    SNAPSHOT.reading = reading
    return generate_latest(REGISTRY)
