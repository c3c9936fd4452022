"""``streamrec run``: broker, worker and MovieLens feed on embedded defaults, in one command."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import click
from sqlalchemy import func, select

from runtime.config import Config
from runtime.processes import free_port, start_broker, start_worker, stop, wait_for_port
from store.db import make_engine
from store.ingest import outcome_totals
from store.models import model_versions, windows
from streams import movielens
from streams.producer import StorefrontProducer


def totals(engine) -> dict[str, int]:
    """Accepted and rejected events, sealed windows and model versions per status so far."""
    try:
        with engine.connect() as conn:
            sealed = conn.execute(select(func.count()).select_from(windows)).scalar_one()
            versions = dict(conn.execute(select(model_versions.c.status, func.count())
                                         .group_by(model_versions.c.status)).all())
        flow = outcome_totals(engine)
    except Exception:  # tables not migrated yet
        return {"accepted": 0, "rejected": 0, "windows": 0, "promoted": 0, "gate_rejected": 0}
    return {**flow, "windows": sealed,
            "promoted": versions.get("promoted", 0), "gate_rejected": versions.get("rejected", 0)}


def run_demo(rate: float, limit: int | None, var: Path = Path("var")) -> None:
    var.mkdir(exist_ok=True)
    env: dict[str, str] = {}
    children = []
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        if "STREAMREC_KAFKA_URL" not in os.environ:
            port = free_port()
            click.echo(f"Starting the bundled Kafka-compatible broker on 127.0.0.1:{port} (log: var/broker.log)")
            children.append(start_broker(port, log=var / "broker.log"))
            env["STREAMREC_KAFKA_URL"] = f"kafka://127.0.0.1:{port}"
        config = Config.from_env({**os.environ, **env})
        env.setdefault("STREAMREC_SESSION_TIMEOUT_S", "10")
        click.echo(f"Store: {config.shown('database_url')}")
        click.echo(f"Starting the worker: faust -A streams.app worker (log: var/worker.log, "
                   f"http://127.0.0.1:{config.web_port}/health)")
        worker = start_worker(env, log=var / "worker.log")
        children.append(worker)
        wait_for_port(config.web_port, timeout_s=120, proc=worker)

        engine = make_engine(config.database_url)
        with StorefrontProducer.from_config(config) as producer:
            feed = threading.Thread(target=movielens.replay, daemon=True, kwargs=dict(
                producer=producer, rate=rate, limit=limit, stop=stopping.is_set))
            click.echo(f"Feeding MovieLens-100k at {rate:g} events/s; Ctrl-C stops everything.")
            feed.start()
            before, t0 = totals(engine), time.monotonic()
            while not stopping.is_set() and worker.poll() is None:
                stopping.wait(2.0)
                now = totals(engine)
                rate_now = (now["accepted"] - before["accepted"]) / (time.monotonic() - t0)
                before, t0 = now, time.monotonic()
                click.echo(f"  accepted {now['accepted']:>7,}  rejected {now['rejected']:>5,}  "
                           f"({rate_now:,.0f} events/s)  windows {now['windows']}  "
                           f"models promoted {now['promoted']}, rejected {now['gate_rejected']}"
                           f"{'  feed done' if not feed.is_alive() else ''}")
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited with code {worker.returncode}; see var/worker.log")
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        click.echo("Stopping...")
        for child in reversed(children):
            stop(child)
