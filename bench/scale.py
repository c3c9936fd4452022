"""Catalog scale: the cost of one training step at 10,000 to 1,000,000 items, full and sampled softmax.

    python -m bench.scale [--items 10000,100000,1000000] [--steps 20] [--negatives 1024]

For each catalog size it builds the worker's default model (width 64, the MiniLM text tower)
with synthetic unit text vectors (no MiniLM run: a million texts would take hours on a CPU,
and the step's cost does not depend on what the vectors say), draws batches of 128 user
sequences of 50 events with Zipf-distributed item ids (a long tail, like a store's), and
times ``--steps`` training steps (after two warm-up steps) with the sampled softmax and, where
its logits fit in memory, the full softmax. Prints the median step time, its ratio to the
sampled step at the smallest catalog, and the process' peak RSS after each size.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch

from learner.bundle import ModelBundle
from learner.device import pick_device
from learner.idmap import IdMap, Vocabulary
from learner.model import ModelConfig, SASRec
from learner.sequences import SequenceBatch
from learner.text import TEXT_DIM
from learner.trainer import TrainConfig, Trainer

FULL_LOGITS_LIMIT_GB = 4.0  # the full softmax is skipped where its logits alone would need more


def synthetic_bundle(n_items: int, seed: int) -> ModelBundle:
    """The default model over ``n_items`` items with random unit text vectors."""
    vocab = Vocabulary(IdMap([f"i{i}" for i in range(n_items)]), IdMap([f"u{i}" for i in range(1000)]),
                       IdMap(["s"]))
    torch.manual_seed(seed)
    model = SASRec(ModelConfig(), n_items=len(vocab.items), n_users=len(vocab.users),
                   n_storefronts=len(vocab.storefronts))
    text = torch.randn(len(vocab.items), TEXT_DIM)
    model.item_text.copy_(text / text.norm(dim=1, keepdim=True))
    return ModelBundle(model=model, vocab=vocab, text_hashes={})


def batch(n_items: int, rng: np.random.Generator, size: int = 128, length: int = 50):
    """(inputs, targets, target types) of ``size`` full sequences with Zipf-distributed items."""
    items = np.minimum(rng.zipf(1.2, size=(size, length + 1)), n_items - 2) + 1  # item rows are 2 .. n_items - 1
    items = torch.from_numpy(items.astype(np.int64))
    types = torch.ones(size, length, dtype=torch.int64)
    inputs = SequenceBatch(items[:, :-1], types, torch.full((size, length), 2), torch.zeros(size, dtype=torch.int64))
    return inputs, items[:, 1:], types


def time_steps(bundle: ModelBundle, loss: str, steps: int, negatives: int, seed: int) -> float:
    """Median seconds of one training step."""
    trainer = Trainer(bundle, TrainConfig(loss=loss, negatives=negatives, seed=seed), device=pick_device())
    trainer.model = bundle.model.to(trainer.device.torch_device).train()
    trainer.plugins, trainer.sampled = [], loss == "sampled"
    trainer.optimizers = trainer._optimizers()
    rng = np.random.default_rng(seed)
    times = []
    for step in range(steps + 2):
        inputs, targets, types = batch(bundle.model.n_items, rng)
        started = time.perf_counter()
        trainer._train_step(inputs, targets, types)
        if step >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{os.cpu_count()} CPUs, torch threads {args.threads}, device {pick_device().torch_device}; "
          f"batches of 128 sequences x 50 events, {args.negatives} sampled negatives\n")
    print("| items | loss | step ms (median) | x sampled at the smallest catalog | peak RSS MiB |")
    print("|---:|---|---:|---:|---:|")
    baseline = None
    for n in [int(x) for x in args.items.split(",")]:
        bundle = synthetic_bundle(n, seed=1)
        for loss in ("sampled", "full"):
            logits_gb = 128 * 50 * n * 4 * 3 / 2 ** 30  # logits, their softmax and gradient, float32
            if loss == "full" and logits_gb > FULL_LOGITS_LIMIT_GB:
                print(f"| {n:,} | full | not run: its logits need about {logits_gb:.0f} GB | | |")
                continue
            seconds = time_steps(bundle, loss, args.steps, args.negatives, seed=1)
            baseline = baseline or seconds
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {n:,} | {loss} | {seconds * 1000:.1f} | {seconds / baseline:.2f} | {peak:.0f} |", flush=True)
        del bundle


if __name__ == "__main__":
    main()
