"""What tuning the text encoder costs, per variant: a tuning step, re-embedding the catalog, a query.

    python -m bench.text_tuning [--items 2000] [--steps 10] [--device cpu|cuda] [--threads 2]

For ``frozen``, ``top`` (1 layer) and ``lora`` (rank 8, query and value) it times, on the device
(CUDA with bf16 autocast when present):

* **tuning step**: MiniLM forward and backward over the texts of 32 items (product-like
  titles of about 12 words) and the adapter's optimizer step, as :class:`learner.text_tuning.
  TextTuning` runs it once per training step (the recommender's own step not included);
* **re-embedding**: encoding ``--items`` catalog texts in batches of 64, as after a tuned job
  (items per second);
* **query**: encoding one search query alone with the serving encoder (LoRA merged).

The texts are synthetic (words drawn from a small product vocabulary); the costs depend on
their token counts, not on what they say. The run is written to ``bench/results/text_tuning/``
with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.provenance import provenance, write_result
from learner.device import pick_device
from learner.text import TextAdapter, TextEncoder

WORDS = ("cotton shirt blue slim fit organic cushion wireless headphones steel bottle leather wallet running shoe "
         "trail waterproof jacket kids toy wooden puzzle ceramic mug coffee grinder garden hose lamp desk oak").split()
VARIANTS = {"frozen": None, "top": TextAdapter("top", {"layers": 1}, {}),
            "lora": TextAdapter("lora", {"rank": 8, "alpha": 16, "targets": ["query", "value"]}, {})}


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=12)).capitalize() for _ in range(n)]


def synchronise(device) -> None:
    if device.torch_device.type == "cuda":
        torch.cuda.synchronize()


def tuning_step_ms(adapter: TextAdapter, device, steps: int) -> float:
    encoder = TextEncoder(device, adapter=adapter, trainable=True)
    optimizer = torch.optim.AdamW([p for p in encoder.model.parameters() if p.requires_grad], lr=3e-4)
    batches, times = [texts(32, seed) for seed in range(steps + 2)], []
    for i, batch in enumerate(batches):
        synchronise(device)
        started = time.perf_counter()
        vectors = encoder.embed(batch)
        loss = (vectors @ vectors.T).logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronise(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    stamp = provenance()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    name = (torch.cuda.get_device_name() if device.torch_device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; catalog of {args.items:,} synthetic product titles\n")
    print("| variant | tuning step ms (32 items) | re-embedding items/s | query ms (median) |")
    print("|---|---:|---:|---:|")
    catalog, queries = texts(args.items, seed=100), texts(50, seed=200)
    rows = []
    for variant, adapter in VARIANTS.items():
        step = "-" if adapter is None else f"{tuning_step_ms(adapter, device, args.steps):.0f}"
        encoder = TextEncoder(device, adapter=adapter)
        encoder.encode(catalog[:64])  # load and warm up
        synchronise(device)
        started = time.perf_counter()
        encoder.encode(catalog)
        synchronise(device)
        rate = args.items / (time.perf_counter() - started)
        query_times = []
        for query in queries:
            started = time.perf_counter()
            encoder.encode([query])
            query_times.append(time.perf_counter() - started)
        query_ms = 1000 * statistics.median(query_times)
        print(f"| {variant} | {step} | {rate:,.0f} | {query_ms:.1f} |", flush=True)
        rows.append({"variant": variant, "tuning_step_ms": None if step == "-" else float(step),
                     "reembed_items_per_s": round(rate), "query_ms": round(query_ms, 1)})
    settings = {**vars(args), "torch_threads": torch.get_num_threads()}
    result = {"device": name, "rows": rows}
    print(f"written to {write_result('text_tuning', settings, result, started=stamp)}")


if __name__ == "__main__":
    main()
