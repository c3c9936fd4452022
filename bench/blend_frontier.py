"""What the text term trades: overall against cold Recall@20 at every weight, on one trained trajectory.

Runs ``streamrec backtest --strategy rehearsal`` on MovieLens-100k with the backtest's options
(:data:`bench.backtest.DEFAULT_OPTIONS`) and, at every window, ranks the whole window with the
model trained so far at each weight of ``WEIGHTS`` (standard deviations of its scores, the unit
of :data:`learner.blend.GRID`), with the term on every new item or on each user's ``cap`` best
only. It also records what the job's fit saw on its held-out events. Every weight is scored on
the same models (the default's), so the rows differ by the term alone:

    python -m bench.blend_frontier --windows 10   # about 25 minutes on 2 CPUs
    python -m bench.blend_frontier --windows 5

Writes ``bench/results/blend_frontier/<date>-<commit>-<host>-w<windows>/frontier.json`` and
prints mean Recall@20 (relative to no term) and cold Recall@20 by weight and cap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

WEIGHTS = (0.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
CAPS = (0, 1, 2)  # 0: every new item gets the term


class Capped:
    """``blended``'s scores with the text term kept only on each row's ``cap`` largest terms."""

    def __init__(self, model_alone, blended, cap: int):
        self.model_alone, self.blended, self.cap = model_alone, blended, cap

    def __getattr__(self, name):
        return getattr(self.blended, name)

    def scores(self, inputs):
        from learner.blend import profiles

        scores, b = self.model_alone.scores(inputs), self.blended
        if not b.blend.weight:
            return scores
        term = (profiles(inputs.items, b.blend_text, b.blend.recent) @ b.blend_text.T) * b.blend.item_weights(b.counts)
        if self.cap:
            top = term.topk(self.cap, dim=1)
            term = torch.zeros_like(term).scatter_(1, top.indices, top.values)
        return scores + term


def run(windows: int, out: Path) -> list[dict]:
    """The backtest with the sweep hooked in; one row per ranked window."""
    import backtest.protocol as protocol
    import learner.finetune as finetune
    from bench.backtest import DEFAULT_OPTIONS, write_movielens
    from learner.blend import GRID, TextBlend
    from learner.evaluate import BundleScorer
    from streamrec.cli import main

    fits: list[dict] = []  # per fit: the held-out Recall@20 by weight, the blend chosen, the scores' spread
    rows: list[dict] = []
    built: list[float] = []  # weights of the blends the fit builds: GRID's multiples of the spread
    fit_weight, fit_text_blend, text_blend, evaluate = (
        finetune.fit_weight, finetune.fit_text_blend, finetune.TextBlend, protocol.evaluate)

    def seen_text_blend(*args, **kwargs):
        built.append(kwargs.get("weight", 0.0))
        return text_blend(*args, **kwargs)

    def seen_fit_weight(recalls, tolerance):
        fits.append({"held_out_recall": {str(m): r for m, r in recalls.items()}})
        return fit_weight(recalls, tolerance)

    def seen_fit_text_blend(*args, **kwargs):
        built.clear()
        blend = fit_text_blend(*args, **kwargs)
        if fits and "blend" not in fits[-1]:
            fits[-1].update(blend=blend, spread=max(built, default=0.0) / GRID[-1])
        return blend

    def sweep(scorer, events, history=None, **kwargs):
        result = evaluate(scorer, events, history, **kwargs)
        fit = fits[-1] if fits else None
        if "new_items" not in kwargs or not isinstance(scorer, BundleScorer) or not fit or "blend" not in fit:
            return result
        blend = fit["blend"]
        model_alone = scorer.with_blend(TextBlend())
        model_alone._states = {}  # the model runs once per window for every weight
        cold = events[~events["item_id"].isin(set(history["item_id"]))]
        by = {}
        for cap in CAPS:
            for multiple in WEIGHTS:
                if cap and not multiple:
                    continue
                weighted = TextBlend(weight=multiple * fit["spread"], half_count=blend.half_count, center=blend.center)
                ranked = Capped(model_alone, model_alone.with_blend(weighted), cap)
                recall = evaluate(ranked, events, history, ks=(20,))["recall@20"]
                cold_recall = (evaluate(ranked, cold, pd.concat([history, events]), ks=(20,))["recall@20"]
                               if len(cold) else None)
                by[f"{cap}:{multiple}"] = (recall, cold_recall)
        rows.append({"window": len(rows) + 1, "events": len(events), "cold_events": len(cold),
                     "fit": {"held_out_recall": fit["held_out_recall"],
                             "weight_sd": blend.weight / fit["spread"] if fit["spread"] else 0.0},
                     "by": by})
        (out / "frontier.json").write_text(json.dumps(rows, indent=1))
        return result

    finetune.fit_weight, finetune.fit_text_blend, finetune.TextBlend = (
        seen_fit_weight, seen_fit_text_blend, seen_text_blend)
    protocol.evaluate = sweep
    with tempfile.TemporaryDirectory() as tmp:
        events, items = write_movielens(Path(tmp))
        sys.argv = ["streamrec", "backtest", "--events", str(events), "--items", str(items), "--windows",
                    str(windows), "--strategy", "rehearsal", "--k", "20", "--out", str(Path(tmp) / "result.json"),
                    "--threads", "1", *DEFAULT_OPTIONS]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
    return rows


def table(rows: list[dict]) -> str:
    """Mean Recall@20 (and its change against no term) and cold Recall@20 by cap and weight."""
    base = np.mean([r["by"]["0:0.0"][0] for r in rows])
    lines = ["| term on | weight (sd) | Recall@20 | vs. no term | cold Recall@20 |", "|---|---:|---:|---:|---:|"]
    for key in rows[0]["by"]:
        cap, multiple = key.split(":")
        recall = np.mean([r["by"][key][0] for r in rows])
        cold = np.mean([r["by"][key][1] or 0.0 for r in rows])
        lines.append(f"| {'every new item' if cap == '0' else f'each user’s best {cap}'} | {float(multiple):g} "
                     f"| {recall:.4f} | {recall / base - 1:+.2%} | {cold:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.provenance import run_folder

    out = run_folder("blend_frontier", {"windows": args.windows, "weights": WEIGHTS, "caps": CAPS})
    out = out.rename(out.with_name(f"{out.name}-w{args.windows}"))
    rows = run(args.windows, out)
    print(table(rows))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
