"""What fitting the text and live terms costs: :func:`learner.finetune.grid_recalls` timed at every
pair of :data:`learner.blend.PAIRS`, one CPU thread, on MovieLens-100k.

A default model is trained for one epoch on the first 10,000 events (its quality does not
matter here: the model runs once per scoring, each pair is a matrix product and a top-k), then
the next 2,000 and 5,000 events are scored as an update scores its evidence:

    python -m bench.blend_cost

Writes ``bench/results/blend_cost/<date>-<commit>-<host>.json`` and prints seconds by events.
"""

from __future__ import annotations

import os
import time

import pandas as pd
import torch

from bench.provenance import provenance, write_result

EVENTS = (2_000, 5_000)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from learner.blend import PAIRS
    from learner.bundle import ModelBundle
    from learner.device import Device
    from learner.finetune import FineTuneConfig, fine_tune, grid_recalls
    from learner.model import ModelConfig
    from learner.text import TextEncoder
    from learner.trainer import TrainConfig
    from streams import movielens

    stamp = provenance()
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), 10 ** 12)).sort_values("ts")
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    cpu, encoder, trained = Device(torch.device("cpu")), TextEncoder(), events[:10_000]
    base = ModelBundle.build(ModelConfig(), catalog=catalog, events=trained, encoder=encoder)
    one_epoch = FineTuneConfig(train=TrainConfig(epochs=1, batch_size=256, lr=0.003), text_blend=False)
    bundle, _ = fine_tune(base, trained, catalog=catalog, encoder=encoder, device=cpu, config=one_epoch)
    rows = []
    for n in EVENTS:
        started = time.perf_counter()
        grid_recalls(bundle, events[10_000:10_000 + n], trained, cpu, 0.05, n)
        rows.append({"events": n, "pairs": len(PAIRS), "seconds": round(time.perf_counter() - started, 2)})
    print("| events scored | pairs | seconds |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['events']:,} | {row['pairs']} | {row['seconds']:.1f} |")
    print(f"written to {write_result('blend_cost', {'events': EVENTS, 'threads': 1}, {'rows': rows}, started=stamp)}")


if __name__ == "__main__":
    main()
