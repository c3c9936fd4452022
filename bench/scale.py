"""Catalog scale at 10,000 to 1,000,000 items: a training step (full and sampled softmax) and serving.

    python -m bench.scale [--items 10000,100000,1000000] [--steps 20] [--negatives 4096]
                          [--part training,serving] [--rate 100] [--seconds 10] [--precision int8]
                          [--vectors catalog] [--model trained-like] [--recall 0.95] [--inference onnx]

For each catalog size it builds the worker's default model (width 64, the MiniLM text tower)
with synthetic text vectors (no MiniLM run: a million texts would take hours on a CPU, and
the step's cost does not depend on what the vectors say), draws batches of 128 user
sequences of 50 events with Zipf-distributed item ids (a long tail, like a store's), and
times ``--steps`` training steps (after two warm-up steps) with the sampled softmax and, where
its logits fit in memory, the full softmax. Prints the median step time, its ratio to the
sampled step at the smallest catalog, and the process' peak RSS after each size.

Serving: for each size a :class:`serving.rankers.Recommender` snapshot of the same synthetic
model with the worker's index threshold (``STREAMREC_ANN_ABOVE_ITEMS``) and item vectors held
at ``--precision`` (the worker's ``STREAMREC_SERVING_PRECISION``). The text vectors stand for
the catalog's texts: ``catalog`` (the default) clusters them by department, category and
family as much as MiniLM clusters real titles (:data:`TEXT_SHARES`); ``random`` draws
independent directions, which no catalog looks like and which is the hardest case for an
index. The model's item vectors are a random projection of the text vectors plus id vectors:
``--model trained-like`` (the default) clusters the id vectors by category and family as much
as training on MovieLens-100k clusters a model's (:data:`ID_SHARES`); ``untrained`` keeps
the untrained model's random ones, half of each vector noise of its own, which no trained
model serves. It prints the snapshot's build time (item vectors and, above the threshold,
the three inverted-file indexes, each tuned to ``--recall``, the worker's
``STREAMREC_ANN_RECALL``: the recommend index with 200 other users' histories, as a worker
tunes it with its users') and the lists each scans; Recall@20 against exact float32 search of
the recommend index for 200 users' histories, of the similar-items index for 200 items and of
the text index for 200 unseen texts; and the latency of ``recommend`` (model forward, index
search, explanations) and ``similar`` calls issued at ``--rate`` per second for ``--seconds``
(open loop: a call that starts late because the one before ran long counts its wait), in
process, one thread; then ``search`` with distinct queries at the same rate, encoded by the
real MiniLM as the worker encodes them (batched on a thread of their own) and answered on an
asyncio loop. Users' states and queries are computed as the worker computes them once its
background exports are done (``--inference onnx``: ONNX Runtime; the export times are
printed) or by torch (``--inference torch``, as before the exports are ready). RSS is the
process' at the end (the snapshot and MiniLM; the synthetic bundle it was built from is
released and freed heap handed back, as the worker does), and in brackets its peak, which
includes building the synthetic bundle and the exact indexes; the build's own peak (what a
worker needs on top of its loaded bundle to build a snapshot) is printed with its time.

The run is written to ``bench/results/scale/`` with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bench.provenance import provenance, write_result
from bench.serving import ADJECTIVES, PRODUCTS
from learner.bundle import ModelBundle
from learner.device import Device, pick_device
from learner.idmap import IdMap, Vocabulary
from learner.model import ModelConfig, SASRec
from learner.options import SERVING_PRECISIONS
from learner.sequences import SequenceBatch
from learner.text import TEXT_DIM, TextEncoder
from learner.trainer import TrainConfig, Trainer
from runtime.blocking import StoreThread
from runtime.config import Config
from runtime.memory import freeze_long_lived, release_free_heap
from serving.index import ItemIndex, recall_at_k
from serving.queries import QueryEncoder
from serving.rankers import Recommender
from serving.snapshot import build_snapshot

FULL_LOGITS_LIMIT_GB = 4.0  # the full softmax is skipped where its logits alone would need more


TEXT_SHARES = {"storewide": 0.27, "department": 0.08, "category": 0.15, "family": 0.2, "item": 0.3}
"""Synthetic text vectors: the share of each vector's variance that it has in common with the
whole store, its department (one of 20), its category (about 200 items) and its family
(about 10 items), and its own. Fitted to MiniLM on the 1,682 MovieLens titles (``python -m
bench.geometry``): mean pairwise cosine 0.33 (synthetic 0.30), mean cosine to the nearest
title 0.64 (0.73) and to the 20th nearest 0.51 (0.55)."""
DEPARTMENTS, ITEMS_PER_CATEGORY, ITEMS_PER_FAMILY = 20, 200, 10
ID_SHARES = {"storewide": 0.0, "department": 0.0, "category": 0.6, "family": 0.05, "item": 0.35}
ID_SCALE = 1.5
"""``--model trained-like``: each item's id vector shares 60% of its variance with its
category's and 5% with its family's, and is 1.5 times as long as its projected text (training
pulls items that shoppers take together close, which the text alone does not). Fitted to the
default model trained 4 epochs on MovieLens-100k (``python -m bench.geometry``): mean
pairwise cosine 0.180 (synthetic 0.145), mean cosine to the nearest item 0.768 (0.739) and
to the 20th nearest 0.689 (0.650); 1,682 items hold only 8 categories, so draws vary."""


def catalog_groups(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each of ``n`` items' store (all 0), department, category and family numbers."""
    families = rng.integers(0, max(1, n // ITEMS_PER_FAMILY), n)
    categories = rng.integers(0, max(1, n // ITEMS_PER_CATEGORY), families.max() + 1)[families]
    departments = rng.integers(0, DEPARTMENTS, categories.max() + 1)[categories]
    return [np.zeros(n, dtype=np.int64), departments, categories, families]


def hierarchical_vectors(groups: list[np.ndarray], shares: dict[str, float], dim: int,
                         rng: np.random.Generator) -> np.ndarray:
    """float32 [n, dim] unit vectors, each the sum of a random direction per group it is in
    (``groups``: one array of group numbers per level) and one of its own, weighted so that
    each part has its share of the variance (``shares``: one per level, then ``"item"``)."""
    n = len(groups[0]) if groups else 0
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    draw = lambda rows: unit(rng.standard_normal(size=(rows, dim), dtype=np.float32))  # noqa: E731
    tables = [np.sqrt(share) * draw(group.max() + 1) for share, group in zip(shares.values(), groups)]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65_536):  # a block at a time: a million items' float32 vectors, no more
        block = slice(start, start + 65_536)
        items = np.sqrt(shares["item"]) * draw(len(out[block]))
        out[block] = unit(items + sum(table[group[block]] for table, group in zip(tables, groups)))
    return out


def text_vectors(n: int, rng: np.random.Generator, kind: str = "catalog",
                 groups: list[np.ndarray] | None = None) -> np.ndarray:
    """float32 [n, 384] unit vectors: ``"catalog"``, a hierarchy of departments, categories of
    about 200 items and families of about 10 (``groups``, default :func:`catalog_groups`;
    :data:`TEXT_SHARES`), which is as clustered as MiniLM's vectors of real titles are; or
    ``"random"``, independent directions (no catalog looks like that; the hardest case for an
    index).

    >>> vectors = text_vectors(2000, np.random.default_rng(0))
    >>> cosines = vectors @ vectors.T
    >>> round(float(cosines.mean()), 1), vectors.shape
    (0.3, (2000, 384))
    """
    if kind == "random":
        return hierarchical_vectors([np.zeros(n, dtype=np.int64)], {"storewide": 0.0, "item": 1.0}, TEXT_DIM, rng)
    return hierarchical_vectors(groups or catalog_groups(n, rng), TEXT_SHARES, TEXT_DIM, rng)


def synthetic_bundle(n_items: int, seed: int, text: np.ndarray | None = None,
                     groups: list[np.ndarray] | None = None) -> ModelBundle:
    """The default model over ``n_items`` items with ``text`` vectors for its rows (default:
    :func:`text_vectors` of a catalog); with ``groups`` (:func:`catalog_groups` of its rows),
    trained-like id vectors (:data:`ID_SHARES`), else the untrained model's random ones."""
    vocab = Vocabulary(IdMap([f"i{i}" for i in range(n_items)]), IdMap([f"u{i}" for i in range(1000)]),
                       IdMap(["s"]))
    torch.manual_seed(seed)
    model = SASRec(ModelConfig(), n_items=len(vocab.items), n_users=len(vocab.users),
                   n_storefronts=len(vocab.storefronts))
    if text is None:
        text = text_vectors(len(vocab.items), np.random.default_rng(seed))
    model.item_text.copy_(torch.from_numpy(text[:len(vocab.items)]))
    if groups is not None:
        with torch.no_grad():
            projected = model.text_projection(model.item_text[2:10_002].float()).norm(dim=1).mean()
            ids = hierarchical_vectors([g[:len(vocab.items)] for g in groups], ID_SHARES, model.config.dim,
                                       np.random.default_rng(seed))
            model.item_ids.weight[1:] = ID_SCALE * projected * torch.from_numpy(ids[1:])
    return ModelBundle(model=model, vocab=vocab, text_hashes={})


def batch(n_items: int, rng: np.random.Generator, size: int = 128, length: int = 50):
    """(inputs, targets, target types) of ``size`` full sequences with Zipf-distributed items."""
    items = np.minimum(rng.zipf(1.2, size=(size, length + 1)), n_items - 2) + 1  # item rows are 2 .. n_items - 1
    items = torch.from_numpy(items.astype(np.int64))
    types = torch.ones(size, length, dtype=torch.int64)
    inputs = SequenceBatch(items[:, :-1], types, torch.full((size, length), 2), torch.zeros(size, dtype=torch.int64))
    return inputs, items[:, 1:], types


def time_steps(bundle: ModelBundle, loss: str, steps: int, negatives: int, seed: int,
               device: Device | None = None) -> float:
    """Median seconds of one training step (on ``device``, default: CUDA when present)."""
    trainer = Trainer(bundle, TrainConfig(loss=loss, negatives=negatives, seed=seed), device=device or pick_device())
    trainer.model = bundle.model.to(trainer.device.torch_device).train()
    trainer.plugins, trainer.sampled = [], loss == "sampled"
    trainer.optimizers = trainer._optimizers()
    rng = np.random.default_rng(seed)
    drawn = batch(bundle.model.n_items, rng, size=2000)[1].flatten()  # how often each item is a target
    trainer.set_target_counts(np.bincount(drawn.numpy(), minlength=bundle.model.n_items))
    times = []
    for step in range(steps + 2):
        inputs, targets, types = batch(bundle.model.n_items, rng)
        started = time.perf_counter()
        trainer._train_step(inputs, targets, types)  # returns the loss as a number: the device has finished
        if step >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclass(frozen=True)
class Event:
    item_id: str
    type: str = "click"
    storefront: str = "s"


def current_rss_mib() -> float:
    """This process' resident memory now."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


class PeakRss:
    """The most this process' RSS rose above its value on entry while in the ``with`` block,
    sampled every 20 ms on a thread of its own (MiB, :attr:`rise`)."""

    def __enter__(self) -> PeakRss:
        self.start, self.rise, self._done = current_rss_mib(), 0.0, threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(0.02):
            self.rise = max(self.rise, current_rss_mib() - self.start)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._watcher.join()


def paced_latencies(call, arguments: list, rate: float) -> np.ndarray:
    """Milliseconds from each call's scheduled start (every 1/rate s) to its end."""
    out, started = [], time.perf_counter()
    for i, argument in enumerate(arguments):
        due = started + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        call(argument)
        out.append((time.perf_counter() - due) * 1000)
    return np.array(out)


def serving(n: int, rate: float, seconds: float, ann_above: int, precision: str, text_kind: str,
            target: float, model: str, inference: str) -> dict:
    """One row of the serving table for a catalog of ``n`` items: its cells, and as markdown (``row``)."""
    rng = np.random.default_rng(1)
    groups = catalog_groups(n + 2 + 200, rng)
    texts = text_vectors(n + 2 + 200, rng, text_kind, groups)  # the last 200: unseen texts, as queries
    bundle = synthetic_bundle(n, seed=1, text=texts, groups=groups if model == "trained-like" else None)
    rng = np.random.default_rng(2)
    keys = bundle.vocab.items.keys()
    histories = [[Event(keys[i - 2]) for i in batch(n, rng, size=1, length=20)[0].items[0].tolist()]
                 for _ in range(int(rate * seconds) + 200)]
    empty = pd.DataFrame(columns=["storefront", "item_id", "title", "description", "category"])
    with torch.no_grad():  # float32 and exact: what the snapshot's indexes and precision are measured against
        vectors = bundle.model.eval().item_vectors().numpy()
    exact = {"recommend": ItemIndex(vectors), "similar": ItemIndex(vectors, "cos"),
             "search": ItemIndex(texts[:n + 2], "cos")}
    items = vectors[rng.integers(2, n + 2, 200)]
    del vectors
    started = time.perf_counter()
    with PeakRss() as build_peak:
        snapshot = build_snapshot({"id": 1}, bundle, empty, {}, device=pick_device(), ann_above=ann_above, owned=True,
                               precision=precision, ann_recall=target,
                               users=histories[-200:])  # as a worker tunes with its users' histories
    build = time.perf_counter() - started
    del bundle
    started = time.perf_counter()
    if inference == "onnx":
        snapshot.compile()
    export = time.perf_counter() - started
    users = torch.stack([snapshot.user_vector(h) for h in histories[:200]]).numpy()
    recall = " / ".join(f"{recall_at_k(getattr(snapshot, f'{name}_index'), exact[name], queries):.3f}"
                        for name, queries in (("recommend", users), ("similar", items), ("search", texts[-200:])))
    del exact, texts
    if inference == "onnx":
        freeze_long_lived()  # as the worker does after exporting
    gc.collect()
    release_free_heap()  # as the worker does after each swap
    for history in histories[:20]:  # warm-up
        snapshot.recommend(history, 20), snapshot.similar(history[-1].item_id, 20)
    recommend = paced_latencies(lambda h: snapshot.recommend(h, 20), histories[200:], rate)
    similar = paced_latencies(lambda h: snapshot.similar(h[-1].item_id, 20), histories[200:], rate)
    search, export_queries = asyncio.run(paced_searches(snapshot, rate, seconds, inference))
    rss, peak = current_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    quantiles = lambda ms: " / ".join(f"{q:.1f}" for q in np.percentile(ms, [50, 95, 99]))  # noqa: E731
    indexes = snapshot.describe_indexes().values()
    scanned = " / ".join(f"{i['lists_scanned']:,} of {i['lists']:,}" for i in indexes if "lists" in i) or "exact"
    exports = f"{export:.1f} / {export_queries:.1f}" if inference == "onnx" else "torch"
    measured = {"items": n, "model": f"{model}, {text_kind}", "build_s": round(build, 1),
                "build_peak_mib": round(build_peak.rise), "exports_s": exports, "lists_scanned": scanned,
                "recall@20": recall, "recommend_ms": quantiles(recommend), "similar_ms": quantiles(similar),
                "search_ms": quantiles(search), "rss_mib": round(rss), "peak_rss_mib": round(peak)}
    return {**measured, "row": f"| {n:,} | {model}, {text_kind} | {build:.1f} (+{build_peak.rise:,.0f}) | {exports} "
                               f"| {scanned} | {recall} | {quantiles(recommend)} | {quantiles(similar)} "
                               f"| {quantiles(search)} | {rss:.0f} ({peak:.0f}) |"}


async def paced_searches(snapshot: Recommender, rate: float, seconds: float,
                         inference: str) -> tuple[np.ndarray, float]:
    """Milliseconds from each search's scheduled start to its answer: distinct queries at ``rate``
    per second, encoded by MiniLM as the worker does (its own copy, loaded and with ``inference``
    "onnx" exported before, batching the queries that wait together), then searched on the event
    loop; and the seconds the export took."""
    encoder = TextEncoder()
    queries = QueryEncoder(encoder, StoreThread("bench-queries"))
    queries.prepare(encoder)
    started = time.perf_counter()
    if inference == "onnx":
        queries.compile(encoder)
        freeze_long_lived()  # as the worker does after exporting
        release_free_heap()
    export = time.perf_counter() - started
    loop, out = asyncio.get_running_loop(), []
    texts = [f"{ADJECTIVES[i % 16]} {PRODUCTS[i % 20]} {i}" for i in range(int(rate * seconds))]
    started = loop.time()

    async def one(i: int, text: str) -> None:
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        snapshot.search(await queries.encode(text, encoder), 20)
        out.append((loop.time() - due) * 1000)

    await asyncio.gather(*(one(i, text) for i, text in enumerate(texts)))
    return np.array(out), export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--part", default="training,serving")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--negatives", type=int, default=TrainConfig.negatives)
    parser.add_argument("--precision", choices=SERVING_PRECISIONS,
                        default=Config.model_fields["serving_precision"].default,
                        help="serving: how the snapshot holds item vectors")
    parser.add_argument("--recall", type=float, default=Config.model_fields["ann_recall"].default,
                        help="serving: the worker's STREAMREC_ANN_RECALL")
    parser.add_argument("--vectors", choices=("catalog", "random"), default="catalog",
                        help="serving: synthetic text vectors clustered like a catalog's, or random")
    parser.add_argument("--model", choices=("trained-like", "untrained"), default="trained-like",
                        help="serving: id vectors clustered like a trained model's, or the untrained model's")
    parser.add_argument("--rate", type=float, default=100.0, help="serving calls per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="serving: how long each kind of call runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--inference", choices=("onnx", "torch"), default="onnx",
                        help="serving: users' states and queries by ONNX Runtime exports (the worker's) or torch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes, parts = [int(x) for x in args.items.split(",")], set(args.part.split(","))
    if "serving-one" in parts:  # a child process of the serving part: one row, as JSON on its last line
        print(json.dumps(serving(sizes[0], args.rate, args.seconds, Config.model_fields["ann_above_items"].default,
                                 args.precision, args.vectors, args.recall, args.model, args.inference)), flush=True)
        return
    stamp, result = provenance(), {}
    measure(args, sizes, parts, result)
    print(f"written to {write_result('scale', vars(args), result, started=stamp)}")


def measure(args, sizes: list[int], parts: set[str], result: dict) -> None:
    """The serving and training parts, their rows kept in ``result`` as they come."""
    if "serving" in parts:
        ann_above = Config.model_fields["ann_above_items"].default
        print(f"Serving, {args.model} model, {args.vectors} text vectors, {args.precision}, indexes above "
              f"{ann_above:,} items tuned to Recall@20 {args.recall}, {args.rate:.0f} calls/s for {args.seconds:.0f} s "
              f"each, users' states and queries by {args.inference}\n")
        print("| items | model, text vectors | snapshot build s (+peak MiB) | ONNX export s: user state / queries "
              "| lists scanned: recommend / similar / search "
              "| Recall@20 vs exact float32: recommend / similar / search "
              "| recommend p50 / p95 / p99 ms | similar p50 / p95 / p99 ms | search p50 / p95 / p99 ms "
              "| RSS MiB serving (peak) |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        rows = result["serving"] = []
        for n in sizes:  # one process per size: peak RSS is then the size's own
            child = subprocess.run([sys.executable, "-m", "bench.scale", "--part", "serving-one", "--items", str(n),
                                    "--rate", str(args.rate), "--seconds", str(args.seconds),
                                    "--precision", args.precision, "--vectors", args.vectors,
                                    "--recall", str(args.recall), "--model", args.model, "--inference", args.inference],
                                   check=True, stdout=subprocess.PIPE, text=True)
            *said, last = child.stdout.strip().splitlines()
            if said:
                print("\n".join(said))
            rows.append(json.loads(last))
            print(rows[-1].pop("row"), flush=True)
        print()
    if "training" not in parts:
        return
    print(f"{os.cpu_count()} CPUs, torch threads {args.threads}, device {pick_device().torch_device}; "
          f"batches of 128 sequences x 50 events, {args.negatives} sampled negatives\n")
    print("| items | loss | step ms (median) | x sampled at the smallest catalog | peak RSS MiB |")
    print("|---:|---|---:|---:|---:|")
    baseline, rows = None, result.setdefault("training", [])
    for n in sizes:
        bundle = synthetic_bundle(n, seed=1)
        for loss in ("sampled", "full"):
            logits_gb = 128 * 50 * n * 4 * 3 / 2 ** 30  # logits, their softmax and gradient, float32
            if loss == "full" and logits_gb > FULL_LOGITS_LIMIT_GB:
                print(f"| {n:,} | full | not run: its logits need about {logits_gb:.0f} GB | | |")
                rows.append({"items": n, "loss": loss, "not_run": f"its logits need about {logits_gb:.0f} GB"})
                continue
            seconds = time_steps(bundle, loss, args.steps, args.negatives, seed=1)
            baseline = baseline or seconds
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {n:,} | {loss} | {seconds * 1000:.1f} | {seconds / baseline:.2f} | {peak:.0f} |", flush=True)
            rows.append({"items": n, "loss": loss, "step_ms": round(seconds * 1000, 1),
                         "x_smallest_sampled": round(seconds / baseline, 2), "peak_rss_mib": round(peak)})
        del bundle


if __name__ == "__main__":
    main()
