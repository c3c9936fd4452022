"""The learner on CPU and CUDA side by side: step time, job time, events absorbed, same quality.

    python -m bench.gpu [--device cpu|cuda|both] [--items 10000,1000000] [--steps 20]
                        [--movielens DIR] [--threads N] [--out bench/results]

The script to run when a GPU machine is available (``--device both``, the default there;
``cpu`` elsewhere). For each device it measures:

* **step**: median seconds of a training step of 128 sequences of 50 events on the default
  model (MiniLM text tower) over synthetic catalogs of ``--items`` items, sampled softmax
  (4,096 negatives) and, up to 100,000 items, the full softmax (:func:`bench.scale.time_steps`);
* **job**: a worker's training job on real data: the default model fine-tuned on window 2 of
  MovieLens-100k (10,000 events) from a version trained on window 1, with rehearsal and
  distillation, judged on the held-out tenth, timed end to end; events absorbed per second
  is the window's events over the job's seconds; and MiniLM's catalog embedding, items per second;
* **agreement**: the ``rehearsal`` backtest on the first 30,000 MovieLens events (3 windows),
  whose mean Recall@20 on CUDA (bf16 autocast) must be within 0.01 absolute or 5% relative
  of the CPU's (float32): the same ranking quality, not the same bits.

Writes ``bench/results/gpu/<date>-<commit>-<host>.json`` (:mod:`bench.provenance`) and prints
a table. MovieLens comes from the ``recbole`` wheel, or from ``--movielens DIR`` (the folder
holding ``ml-100k.inter`` and ``ml-100k.item``) where it is not installed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from backtest.protocol import run_backtest
from backtest.settings import BacktestSettings
from bench.provenance import RESULTS, provenance, write_result
from bench.scale import synthetic_bundle, time_steps
from learner.bundle import ModelBundle
from learner.device import Device
from learner.evaluate import BundleScorer, evaluate
from learner.finetune import fine_tune
from learner.text import TextEncoder, catalog_texts, embed_texts
from runtime.config import Config
from runtime.learner_configs import config_for
from streams import movielens

WINDOW = 10_000
AGREEMENT = (0.01, 0.05)  # absolute, relative
MODEL, FINETUNE = config_for(Config.from_env({}))  # the worker's defaults


def movielens_frames(folder: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens-100k events (time order) and catalog, as the worker's feed maps them."""
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(folder), 10 ** 12))
    return events, pd.DataFrame(movielens.to_catalog(movielens.load_movies(folder)))


def measure_steps(device: Device, items: list[int], steps: int) -> dict:
    """Median ms of a training step per catalog size and loss."""
    out = {}
    for n in items:
        bundle = synthetic_bundle(n, seed=0)
        for loss in ("sampled", "full") if n <= 100_000 else ("sampled",):
            out[f"{loss}@{n}"] = round(1000 * time_steps(bundle.copy(), loss, steps, 4096, seed=0, device=device), 2)
        del bundle
    return out


def measure_job(device: Device, events: pd.DataFrame, catalog: pd.DataFrame) -> dict:
    """One worker job on MovieLens window 2 from a version trained on window 1: seconds and events/s."""
    encoder, cache = TextEncoder(device), {}
    texts = list(catalog_texts(catalog).values())
    started = time.perf_counter()
    embed_texts(texts, encoder, cache)
    embed_s = time.perf_counter() - started
    first, second = events[:WINDOW], events[WINDOW:2 * WINDOW]
    base = ModelBundle.build(MODEL, catalog=catalog, events=first, encoder=encoder, cache=cache)
    serving, _ = fine_tune(base, first, catalog=catalog, encoder=encoder, cache=cache, config=FINETUNE, device=device)
    train, held_out = second[:int(0.9 * WINDOW)], second[int(0.9 * WINDOW):]
    started = time.perf_counter()
    candidate, epochs = fine_tune(serving, train, history=first, rehearsal=first, previous=serving, catalog=catalog,
                                  encoder=encoder, cache=cache, config=FINETUNE, device=device)
    recall = evaluate(BundleScorer(candidate, device), held_out, pd.concat([first, train]), ks=(20,))["recall@20"]
    job_s = time.perf_counter() - started
    return {"job_s": round(job_s, 2), "events_per_s": round(WINDOW / job_s, 1), "epochs": len(epochs),
            "steps": epochs[-1]["steps"] if epochs else 0, "recall@20": round(recall, 4),
            "embed_items_per_s": round(len(texts) / embed_s, 1)}


def measure_agreement(device: Device, events: pd.DataFrame, catalog: pd.DataFrame) -> dict:
    """Mean Recall@20 of the rehearsal backtest on 3 windows of MovieLens."""
    part = events[:3 * WINDOW]
    settings = BacktestSettings(windows=3, eval_sample=1000, model=MODEL, finetune=FINETUNE)
    result = run_backtest(part, catalog[catalog["item_id"].isin(part["item_id"])], "rehearsal", settings,
                          device=device)
    return {"recall@20": round(result["mean"]["recall@20"], 4),
            "train_s": round(sum(w["train_seconds"] for w in result["windows"]), 2)}


def agree(cpu: float, cuda: float) -> bool:
    """Whether two mean recalls are the same ranking quality (:data:`AGREEMENT`).

    >>> agree(0.20, 0.195), agree(0.20, 0.17)
    (True, False)
    """
    absolute, relative = AGREEMENT
    return abs(cpu - cuda) <= max(absolute, relative * cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "both"],
                        default="both" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", default="10000,1000000", help="catalog sizes of the step timing")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--parts", default="step,job,agreement")
    parser.add_argument("--movielens", type=Path, default=None, help="folder of ml-100k.inter and ml-100k.item")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    stamp = provenance()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device; torch sees none")
    devices = ["cpu", "cuda"] if args.device == "both" else [args.device]
    parts = args.parts.split(",")
    events, catalog = movielens_frames(args.movielens)
    items = [int(n) for n in args.items.split(",")]
    result = {}
    for name in devices:
        device = Device(torch.device(name))
        measured = result[name] = {}
        if "step" in parts:
            measured["step_ms"] = measure_steps(device, items, args.steps)
        if "job" in parts:
            measured["job"] = measure_job(device, events, catalog)
        if "agreement" in parts:
            measured["agreement"] = measure_agreement(device, events, catalog)
        print(f"{name}: {measured}", flush=True)
    if len(devices) == 2 and "agreement" in parts:
        result["agree"] = agree(result["cpu"]["agreement"]["recall@20"], result["cuda"]["agreement"]["recall@20"])
    path = write_result("gpu", {**vars(args), "out": str(args.out), "movielens": str(args.movielens),
                                "torch_threads": torch.get_num_threads()}, result, args.out, started=stamp)
    rows = sorted({(part, key) for m in result.values() if isinstance(m, dict)
                   for part, values in m.items() for key in values})
    print(f"\n| measure | {' | '.join(devices)} |\n|---|{'---|' * len(devices)}")
    for part, key in rows:
        print(f"| {part} {key} | {' | '.join(str(result[d].get(part, {}).get(key, '')) for d in devices)} |")
    if "agree" in result:
        print(f"\nCPU and CUDA agree on ranking quality: {result['agree']}")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
