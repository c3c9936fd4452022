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
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from bench.scale import catalog_groups, synthetic_bundle, text_vectors
from learner.bundle import ModelBundle
from learner.finetune import FineTuneConfig, fine_tune
from learner.model import ModelConfig
from learner.text import TextEncoder, catalog_texts
from learner.trainer import TrainConfig
from streams import movielens


def geometry(vectors: np.ndarray) -> str:
    """One table row's cells: mean pairwise cosine, mean cosine to the nearest and to the 20th nearest.

    >>> geometry(np.eye(21, dtype=np.float32) + 1)
    '0.958 | 0.958 | 0.958'
    """
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = units @ units.T
    np.fill_diagonal(cosines, np.nan)
    nearest = np.sort(np.nan_to_num(cosines, nan=-2.0), axis=1)[:, ::-1]
    return f"{np.nanmean(cosines):.3f} | {nearest[:, 0].mean():.3f} | {nearest[:, 19].mean():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    encoder, cache = TextEncoder(), {}
    n = len(catalog)
    print("| vectors | mean pairwise cosine | nearest item | 20th nearest |\n|---|---:|---:|---:|")
    print(f"| MiniLM, {n:,} MovieLens titles | "
          f"{geometry(np.asarray(encoder.encode(list(catalog_texts(catalog).values())), dtype=np.float32))} |")
    print(f"| synthetic text, {n:,} items | {geometry(text_vectors(n, np.random.default_rng(1)))} |")
    base = ModelBundle.build(ModelConfig(), catalog=catalog, events=events, encoder=encoder, cache=cache, seed=0)
    with torch.no_grad():
        untrained = base.model.eval().item_vectors()[2:].numpy()
    print(f"| default model over the titles, untrained | {geometry(untrained)} |")
    trained, _ = fine_tune(base, events, catalog=catalog, encoder=encoder, cache=cache,
                           config=FineTuneConfig(train=TrainConfig(epochs=args.epochs, batch_size=256, seed=0)))
    synthetic = synthetic_bundle(n, seed=1)
    groups = catalog_groups(n + 2, np.random.default_rng(1))
    trained_like = synthetic_bundle(n, seed=1, text=text_vectors(n + 2, np.random.default_rng(2), groups=groups),
                                    groups=groups)
    with torch.no_grad():
        print(f"| default model over the titles, trained {args.epochs} epochs on MovieLens-100k | "
              f"{geometry(trained.model.eval().item_vectors()[2:].numpy())} |")
        print(f"| default model over synthetic text, untrained | "
              f"{geometry(synthetic.model.eval().item_vectors()[2:].numpy())} |")
        print(f"| default model over synthetic text, trained-like ids (bench.scale) | "
              f"{geometry(trained_like.model.eval().item_vectors()[2:].numpy())} |")


if __name__ == "__main__":
    main()
