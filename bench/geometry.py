"""How clustered item vectors are: real MiniLM titles, a trained model, and bench.scale's synthetic ones.

    python -m bench.geometry [--epochs 4]

An index finds the exact nearest items more easily when an item's neighbours stand out from
the rest of the catalog. For each set of vectors this prints the mean pairwise cosine and the
mean cosine to each item's nearest and 20th nearest item:

* MiniLM's vectors of the 1,682 MovieLens-100k titles with genres, and
  :func:`bench.scale.text_vectors` for as many synthetic items (what the synthetic text is
  fitted to);
* the default model's item vectors over those titles, untrained and then trained on all
  MovieLens-100k events for ``--epochs`` epochs;
* the default model over as many synthetic items, untrained and with trained-like id vectors
  (what ``bench.scale`` serves by default; its shares are fitted to the trained model's row).

The run is written to ``bench/results/geometry/`` with its provenance (:mod:`bench.provenance`).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from bench.provenance import provenance, write_result
from bench.scale import catalog_groups, synthetic_bundle, text_vectors
from learner.bundle import ModelBundle
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextEncoder, catalog_texts
from learner.trainer import TrainConfig
from streams import movielens


def geometry(vectors: np.ndarray) -> dict[str, float]:
    """Mean pairwise cosine, mean cosine to the nearest and to the 20th nearest item.

    >>> geometry(np.eye(21, dtype=np.float32) + 1)
    {'mean_cosine': 0.958, 'nearest': 0.958, 'nearest_20th': 0.958}
    """
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = units @ units.T
    np.fill_diagonal(cosines, np.nan)
    nearest = np.sort(np.nan_to_num(cosines, nan=-2.0), axis=1)[:, ::-1]
    return {"mean_cosine": round(float(np.nanmean(cosines)), 3), "nearest": round(float(nearest[:, 0].mean()), 3),
            "nearest_20th": round(float(nearest[:, 19].mean()), 3)}


def row(name: str, vectors: np.ndarray, rows: list[dict]) -> None:
    """Measure ``vectors``, print their table row and keep it in ``rows``."""
    measured = geometry(vectors)
    rows.append({"vectors": name, **measured})
    print(f"| {name} | {' | '.join(f'{value:.3f}' for value in measured.values())} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    stamp, rows = provenance(), []
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    encoder, cache = TextEncoder(), {}
    n = len(catalog)
    print("| vectors | mean pairwise cosine | nearest item | 20th nearest |\n|---|---:|---:|---:|")
    row(f"MiniLM, {n:,} MovieLens titles",
        np.asarray(encoder.encode(list(catalog_texts(catalog).values())), dtype=np.float32), rows)
    row(f"synthetic text, {n:,} items", text_vectors(n, np.random.default_rng(1)), rows)
    base = ModelBundle.build(ModelConfig(), catalog=catalog, events=events, encoder=encoder, cache=cache, seed=0)
    with torch.no_grad():
        untrained = base.model.eval().item_vectors()[2:].numpy()
    row("default model over the titles, untrained", untrained, rows)
    trained, _ = fine_tune(base, events, catalog=catalog, encoder=encoder, cache=cache,
                           config=FineTuneConfig(train=TrainConfig(epochs=args.epochs, batch_size=256, seed=0)))
    synthetic = synthetic_bundle(n, seed=1)
    groups = catalog_groups(n + 2, np.random.default_rng(1))
    trained_like = synthetic_bundle(n, seed=1, text=text_vectors(n + 2, np.random.default_rng(2), groups=groups),
                                    groups=groups)
    with torch.no_grad():
        row(f"default model over the titles, trained {args.epochs} epochs on MovieLens-100k",
            trained.model.eval().item_vectors()[2:].numpy(), rows)
        row("default model over synthetic text, untrained (`--model untrained`)",
            synthetic.model.eval().item_vectors()[2:].numpy(), rows)
        row("default model over synthetic text, trained-like ids (`bench.scale`'s default)",
            trained_like.model.eval().item_vectors()[2:].numpy(), rows)
    print(f"written to {write_result('geometry', vars(args), {'items': n, 'rows': rows}, started=stamp)}")


if __name__ == "__main__":
    main()
