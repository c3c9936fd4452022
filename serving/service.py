"""The worker's serving stage: keep the newest promoted model, user histories and trends ready.

Every ``STREAMREC_SERVING_POLL_S`` a store thread

* reads events accepted since the last look (new open segments, newly sealed windows) into
  :class:`~serving.history.UserHistories` and :class:`~serving.history.LiveInteractions` and,
  from sealed windows, into :class:`~serving.history.Trending`;
* checks which version serves (promotion or rollback) and whether the catalog changed; if
  either did, it builds a new snapshot (:func:`~serving.snapshot.build_snapshot`, weights
  checksum verified) and swaps it in with one assignment: requests keep the snapshot they started with.
  While no version serves, a :class:`~serving.rankers.TextRanker` over the catalog's
  pretrained text vectors answers ``/similar`` and ``/search``, and trending items answer
  ``/recommend``, so shoppers are answered by the best ranker available, never by a 503.

While an experiment runs (:mod:`store.experiments`), the same look builds a
:class:`~serving.rankers.Recommender` for each arm's version that is not the serving one
(the same way, reusing the serving snapshot for an arm that serves) and swaps in an
:class:`ExperimentArms` with one assignment; requests of users in the experiment are answered
by their arm's snapshot (in an interleaving experiment, ``/recommend`` merges both arms' lists
for the experiment's users). When the experiment stops the arms' snapshots are dropped, and a
promoted canary's snapshot becomes the serving one without being built again.

Reading history back from the store, not from this worker's partitions, lets every worker
answer for every user. At start it reads the last ``STREAMREC_HISTORY_WINDOWS`` windows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import mode
import pyarrow as pa
import torch
from sqlalchemy.exc import DBAPIError

from drift.experiments import assign
from learner.checkpoint import ChecksumMismatch
from learner.device import pick_device
from learner.text import TextEncoder
from runtime.blocking import StoreThread
from runtime.config import Config
from runtime.memory import freeze_long_lived, release_free_heap
from serving.history import LiveInteractions, Trending, UserHistories
from serving.queries import QueryEncoder
from serving.rankers import Recommender, TextRanker
from serving.snapshot import TUNING_USERS, build_snapshot, build_text_ranker
from store.catalog import catalog_mark, load_catalog
from store.db import make_engine, migrate
from store.experiments import running_experiment
from store.registry import StoredTextEmbeddings, serving_version
from store.replay import ReplayStore
from training.versions import load_serving, load_version

log = logging.getLogger(__name__)

EXPORT_AFTER_S = 10.0
"""A served version is exported to ONNX once it has served this long: a version replaced
sooner (promotions and rollbacks come in runs) costs no export, and a swap does not share the
CPU with one."""


@dataclass(frozen=True)
class ExperimentArms:
    """The running experiment (its ``experiments`` row) and a ready snapshot per arm."""

    experiment: dict
    arms: dict[str, Recommender]
    catalog: tuple

    @property
    def name(self) -> str:
        return self.experiment["name"]

    @property
    def interleaved(self) -> bool:
        """An interleaving experiment: lists merged from both arms, no split."""
        return self.experiment["kind"] == "interleave"

    def arm_of(self, user_id: str) -> tuple[str, Recommender]:
        """(arm, snapshot) of a user: the salted-hash split of :func:`drift.experiments.assign`."""
        arm = assign(self.experiment["salt"], user_id, self.experiment["share"])
        return arm, self.arms[arm]

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.experiment["kind"], "share": self.experiment["share"],
                "arms": {arm: r.version["id"] for arm, r in self.arms.items()}}


class ServingService(mode.Service):
    """Holds what requests are answered from, and refreshes it off the event loop."""

    def __init__(self, config: Config, **kwargs):
        super().__init__(**kwargs)
        # One request is a few small matrix products: torch's intra-op thread pool only adds
        # synchronisation (tens of ms when cores are busy). Training runs in its own process.
        torch.set_num_threads(1)
        self.config = config
        self.device = pick_device()
        self.recommender: Recommender | None = None
        self.text_ranker: TextRanker | None = None
        self.histories = UserHistories(config.max_history)
        self.trending = Trending(config.trending_half_life_s)
        self.live = LiveInteractions(max(2, config.history_windows))
        self._live_given: tuple | None = None  # (live generation, snapshots) last given their counts
        self.storefront_items: dict[str, set[str]] = {}
        self.loaded_at: int | None = None
        self.load_error: str | None = None
        self.ready = asyncio.Event()
        self.engine = None
        self.store_thread = StoreThread("streamrec-serving")
        self._query_thread = StoreThread("streamrec-query")
        self._compile_thread = StoreThread("streamrec-compile")
        self._stopping = threading.Event()
        self._catalog_encoder = TextEncoder(self.device)
        self.queries = QueryEncoder(TextEncoder(self.device), self._query_thread)
        self._window_cursor = 0
        self._segment_keys: set[tuple[int, int]] = set()
        self._built_from: tuple | None = None
        self.experiment: ExperimentArms | None = None
        self.experiment_error: str | None = None

    async def on_start(self) -> None:
        self.engine = make_engine(self.config.database_url)
        await self.store_thread.run(migrate, self.engine)
        newest = await self.store_thread.run(self._newest_window)
        self._window_cursor = max(0, newest - self.config.history_windows)

    async def on_stop(self) -> None:
        self.store_thread.shutdown(wait=False)
        self._query_thread.shutdown(wait=False)
        self._stopping.set()
        self._compile_thread.shutdown(wait=False)
        if self.engine is not None:
            self.engine.dispose()

    def _newest_window(self) -> int:
        windows = ReplayStore(self.engine).list_windows(limit=1)
        return windows[0]["id"] if windows else 0

    @mode.Service.task
    async def _refresh_loop(self) -> None:
        while not self.should_stop:
            started = time.monotonic()
            try:
                await self.store_thread.run(self.refresh)
            except DBAPIError as exc:
                log.error("Serving refresh failed (store unreachable), retrying: %s", exc.orig or exc)
            except Exception:
                log.exception("Serving refresh failed, retrying")
            self.ready.set()
            await self.sleep(max(0.0, self.config.serving_poll_s - (time.monotonic() - started)))

    def refresh(self) -> None:
        """One look at the store (runs on the serving thread)."""
        store = ReplayStore(self.engine)
        for window_id, events in store.windows_after(self._window_cursor):
            self._take(events)
            self.trending.add(events)
            self.live.add_window(window_id, events)
            self._window_cursor = window_id
        self._segment_keys, fresh = store.new_segments(self._segment_keys)
        for events in fresh:
            self._take(events)
            self.live.add_open(events)
        self._swap_if_changed()
        self._arms_if_changed()
        self._give_live()

    def _give_live(self) -> None:
        """Each snapshot's items' live interactions, when events or snapshots changed since the last look."""
        snapshots = [r for r in (self.recommender, *(self.experiment.arms.values() if self.experiment else ()))
                     if r is not None]
        mark = (self.live.generation, tuple(id(r) for r in snapshots))
        if mark == self._live_given:
            return
        for recommender in snapshots:
            recommender.set_live(self.live.counts(after_window=max(recommender.version.get("windows") or [0])))
        self._live_given = mark

    def _take(self, events: pa.Table) -> None:
        self.histories.add(events)
        pairs = events.group_by(["storefront", "item_id"]).aggregate([]).to_pydict()
        for storefront, item in zip(pairs["storefront"], pairs["item_id"]):
            self.storefront_items.setdefault(storefront, set()).add(item)

    def _swap_if_changed(self) -> None:
        version = serving_version(self.engine)
        mark = (None if version is None else (version["id"], version["promoted_at"]), catalog_mark(self.engine))
        if mark == self._built_from:
            return
        if version is None:
            self._serve_text(mark)
            return
        started = time.perf_counter()
        held = self._held(version["id"], mark[1])
        if held is not None:  # an arm of the experiment that just ended (a promoted canary): no rebuild
            previous, self.recommender, self._built_from = self.recommender, held, mark
            self.text_ranker, self.loaded_at, self.load_error = None, time.time_ns() // 1_000_000, None
            log.info("Serving version %d, held as an experiment arm%s", version["id"],
                     "" if previous is None else f", replacing version {previous.version['id']}")
            del previous
            if self.compiles:
                self._compile_thread.submit(self._compile, held, time.monotonic())
            return
        try:
            loaded = load_serving(self.engine)
        except ChecksumMismatch as exc:
            self.load_error = f"version {version['id']} not loaded: {exc}"
            log.error(self.load_error)
            if self.ranker is None:  # nothing else to answer with: the text ranker does
                self._serve_text(mark)
            self._built_from = mark
            return
        if loaded is None:  # rolled back between the two reads; the next look sees the new state
            return
        version, bundle = loaded
        recommender = self._build(version, bundle, self.recommender)
        self.queries.prepare(recommender.text_encoder)  # loaded now, so the first searches do not wait for it
        previous = self.recommender
        self.recommender, self._built_from = recommender, mark  # the swap: one reference assignment
        self.text_ranker = None
        self.loaded_at, self.load_error = time.time_ns() // 1_000_000, None
        log.info("Serving version %d (%d items, %s text encoder) after %.2fs%s", version["id"],
                 len(recommender.vocab.items) - 2, recommender.text_encoder_name, time.perf_counter() - started,
                 "" if previous is None else f", replacing version {previous.version['id']}")
        for name, index in recommender.describe_indexes().items():
            if "lists" in index:
                log.info("%s index: %d of %d lists scanned a search, Recall@20 %.3f against exact", name,
                         index["lists_scanned"], index["lists"], index["recall_at_20"])
        del previous, bundle, loaded
        release_free_heap()  # what building (and the replaced snapshot) freed, or the worker holds its peak
        if self.compiles:
            self._compile_thread.submit(self._compile, recommender, time.monotonic())

    def _build(self, version: dict, bundle, previous: Recommender | None) -> Recommender:
        """A snapshot of a loaded version over the current catalog (text vectors cached in the store)."""
        cache = StoredTextEmbeddings(self.engine)
        recommender = build_snapshot(version, bundle, load_catalog(self.engine),
                                     {s: set(items) for s, items in self.storefront_items.items()},
                                     self._catalog_encoder, cache, self.device, self.config.ann_above_items,
                                     previous=previous, owned=True, precision=self.config.serving_precision,
                                     ann_recall=self.config.ann_recall,
                                     users=self.histories.sample(TUNING_USERS))
        cache.save()
        return recommender

    def _held(self, version_id: int, catalog: tuple) -> Recommender | None:
        """This worker's experiment-arm snapshot of ``version_id`` over ``catalog``, if it holds one."""
        arms = self.experiment
        if arms is None or arms.catalog != catalog:
            return None
        return next((r for r in arms.arms.values() if r.version["id"] == version_id), None)

    def _arms_if_changed(self) -> None:
        """Hold a snapshot per arm of the running experiment (none while none runs)."""
        running = running_experiment(self.engine)
        current = self.experiment
        if running is None:
            if current is not None:
                self.experiment = None
                log.info("Experiment %r ended: its arms' snapshots are freed", current.name)
                del current
                release_free_heap()
            self.experiment_error = None
            return
        serving = self.recommender
        catalog = self._built_from[1] if self._built_from else None
        if current is not None and current.experiment == running and current.catalog == catalog and all(
                r is serving or r.version["id"] != (serving.version["id"] if serving else None)
                for r in current.arms.values()):
            return
        arms, started = {}, time.perf_counter()
        for arm in ("control", "treatment"):
            version_id = running[f"{arm}_version"]
            if serving is not None and serving.version["id"] == version_id:
                arms[arm] = serving
                continue
            old = self._held(version_id, catalog)
            if old is not None:
                arms[arm] = old
                continue
            try:
                loaded = load_version(self.engine, version_id)
            except ChecksumMismatch as exc:
                loaded, self.experiment_error = None, f"version {version_id} not loaded: {exc}"
            if loaded is None:
                self.experiment_error = self.experiment_error or f"no model version {version_id}"
                log.error("Experiment %r not served: %s", running["name"], self.experiment_error)
                self.experiment = None
                return
            arms[arm] = self._build(*loaded, previous=serving)
        self.experiment, self.experiment_error = ExperimentArms(running, arms, catalog), None
        log.info("Experiment %r: version %d (control) and %d (treatment, %.0f%% of users) after %.2fs",
                 running["name"], arms["control"].version["id"], arms["treatment"].version["id"],
                 100 * running["share"], time.perf_counter() - started)
        del current
        release_free_heap()

    def arm_for(self, user_id: str | None) -> tuple[str, str, Recommender] | None:
        """(experiment, arm, snapshot) that answers ``user_id``, or None outside split experiments."""
        arms = self.experiment
        if arms is None or not user_id or arms.interleaved:
            return None
        arm, recommender = arms.arm_of(user_id)
        return arms.name, arm, recommender

    def interleaving_for(self, user_id: str | None) -> tuple[str, Recommender, Recommender] | None:
        """(experiment, control snapshot, treatment snapshot) whose lists are interleaved for
        ``user_id`` (one of the interleaving experiment's share of users), else None."""
        arms = self.experiment
        if arms is None or not user_id or not arms.interleaved or arms.arm_of(user_id)[0] != "treatment":
            return None
        return arms.name, arms.arms["control"], arms.arms["treatment"]

    def _serve_text(self, mark: tuple) -> None:
        """While no version serves: rank by the catalog's pretrained text vectors (embedded once,
        kept in the store's text cache), rebuilt when the catalog changes."""
        started, cache = time.perf_counter(), StoredTextEmbeddings(self.engine)
        ranker = build_text_ranker(load_catalog(self.engine), self._catalog_encoder, cache,
                                   self.config.ann_above_items, self.config.serving_precision, self.config.ann_recall,
                                   previous=self.text_ranker)
        cache.save()
        self.queries.prepare(self._catalog_encoder)
        replaced = self.recommender
        self.text_ranker, self.recommender, self._built_from = ranker, None, mark
        self.loaded_at = time.time_ns() // 1_000_000
        log.info("No version serves: %d catalog items ranked by their text after %.2fs%s", len(ranker),
                 time.perf_counter() - started,
                 "" if replaced is None else f", replacing version {replaced.version['id']}")
        del replaced
        release_free_heap()

    def _compile(self, recommender: Recommender, swapped: float) -> None:
        """ONNX Runtime exports of a served version's user-state model and query encoder, once it
        has served :data:`EXPORT_AFTER_S` (on the compile thread, so requests and refreshes go on;
        each answers by torch until its export is checked and in place)."""
        if self._stopping.wait(max(0.0, EXPORT_AFTER_S - (time.monotonic() - swapped))):
            return
        for part, compile in (("user-state model", recommender.compile),
                              ("query encoder", lambda: self.queries.compile(recommender.text_encoder))):
            if recommender is not self.recommender or self._stopping.is_set():
                return  # replaced meanwhile: the new snapshot has its own turn
            started = time.perf_counter()
            try:
                if compile():
                    log.info("Version %d's %s runs on ONNX Runtime (exported in %.1fs)", recommender.version["id"],
                             part, time.perf_counter() - started)
            except Exception as exc:
                log.warning("Version %d's %s stays on torch: %s", recommender.version["id"], part, exc)
        freeze_long_lived()  # the sessions and the snapshot: out of the collector's way
        release_free_heap()  # what exporting freed

    def storefronts(self) -> set[str]:
        known = set(self.trending.storefronts()) | set(self.storefront_items)
        return known | set(self.recommender.storefronts if self.recommender else ())

    @property
    def ranker(self) -> Recommender | TextRanker | None:
        """What answers ``/similar`` and ``/search`` now: the serving version, else the text ranker
        (None only until the first look at the store)."""
        return self.recommender or self.text_ranker

    @property
    def source(self) -> str | None:
        """``"model"`` while a version serves, ``"text"`` (and trending) while none does, None at start."""
        return "model" if self.recommender else "text" if self.text_ranker else None

    def describe(self) -> dict:
        r, ranker = self.recommender, self.ranker
        return {"version": r.version["id"] if r else None, "source": self.source, "loaded_at": self.loaded_at,
                "items": len(ranker.item_ids) - 2 if ranker else 0, "users_with_history": len(self.histories),
                "last_window_read": self._window_cursor,
                "load_error": self.load_error, "text_encoder": ranker.text_encoder_name if ranker else None,
                "experiment": self.experiment.describe() if self.experiment else None,
                "experiment_error": self.experiment_error,
                "indexes": r.describe_indexes() if r else None,
                "onnx": None if r is None or not self.compiles else {
                    "user_state": r.is_compiled, "queries": self.queries.is_compiled(r.text_encoder)}}

    @property
    def compiles(self) -> bool:
        """Whether served versions are exported to ONNX Runtime (on a CPU, unless turned off)."""
        return self.config.serving_onnx and not self.device.is_cuda
