"""What the text term trades: overall against cold Recall@20 at every weight, on one trained trajectory.

Runs ``streamrec backtest --strategy rehearsal`` on MovieLens-100k with the backtest's options
(:data:`bench.backtest.DEFAULT_OPTIONS`) and, at every window, ranks the whole window with the
model trained so far at each weight of ``WEIGHTS`` (standard deviations of its scores, the unit
of :data:`learner.blend.GRID`) and each text term of ``VARIANTS`` (the default's, kept on
each user's best two new items, or with other user profiles and text vectors), and with the
weight the default fitted. It also records what each job's fit chose on. Every term is scored
on the same models (the default's), so the rows differ by the term alone:

    python -m bench.blend_frontier --windows 10   # about 15 minutes on 2 CPUs
    python -m bench.blend_frontier --windows 5

Writes ``bench/results/blend_frontier/<date>-<commit>-<host>-w<windows>/frontier.json`` and
prints mean Recall@20 (relative to no term) and cold Recall@20 by term and weight.
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

from learner.blend import profiles

WEIGHTS = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0)


def _mean(recent: int):
    """The similarity to the mean vector of the ``recent`` newest items (with 10,
    :class:`learner.blend.TextBlend`'s)."""
    def term(items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return profiles(items, text, recent) @ text.T
    return term


def _all_but_top(components: int, inner):
    """``inner`` over the text rows with their ``components`` largest principal directions removed
    and rescaled to unit length (Mu & Viswanath, "All-but-the-Top", ICLR 2018)."""
    def term(items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        has_text = text.abs().sum(1) > 0
        _, _, directions = torch.linalg.svd(text[has_text], full_matrices=False)
        top = directions[:components]
        cleaned = torch.nn.functional.normalize(text - (text @ top.T) @ top, dim=1) * has_text[:, None]
        return inner(items, cleaned)
    return term


VARIANTS = {
    "mean of 10": (_mean(10), 0),  # the default's term
    "mean of 10, each user's best 2": (_mean(10), 2),
    "mean of 3": (_mean(3), 0),
    "mean of 30": (_mean(30), 0),
    "mean of 10, top 2 directions removed": (_all_but_top(2, _mean(10)), 0),
}
"""Text terms compared, by name: a similarity, mapping (histories [B, L], centred text rows) to
[B, n_items], and a cap (the term kept on each user's ``cap`` largest only; 0: on every new item)."""


class Variant:
    """``blended``'s scores with ``similarity`` in place of its text term's (same weight per
    item), kept on each row's ``cap`` largest terms only when ``cap``."""

    def __init__(self, model_alone, blended, similarity, cap: int):
        self.model_alone, self.blended, self.similarity, self.cap = model_alone, blended, similarity, cap

    def __getattr__(self, name):
        return getattr(self.blended, name)

    def scores(self, inputs):
        scores, b = self.model_alone.scores(inputs), self.blended
        if not b.blend.weight:
            return scores
        term = self.similarity(inputs.items, b.blend_text) * b.blend.item_weights(b.counts)
        if self.cap:
            top = term.topk(self.cap, dim=1)
            term = torch.zeros_like(term).scatter_(1, top.indices, top.values)
        return scores + term


def run(windows: int, out: Path) -> list[dict]:
    """The backtest with the sweep hooked in; one row per ranked window."""
    import backtest.protocol as protocol
    import learner.finetune as finetune
    from bench.backtest import DEFAULT_OPTIONS, write_movielens
    from learner.blend import TextBlend
    from learner.evaluate import BundleScorer
    from streamrec.cli import main

    fits: list[dict] = []  # per fit: the Recall@20 by weight it chose on, the blend chosen, the scores' spread
    rows: list[dict] = []
    spreads: list[float] = []  # what score_spread returned during the fit: its first is the fit's unit
    fit_weight, fit_text_blend, score_spread, evaluate = (
        finetune.fit_weight, finetune.fit_text_blend, finetune.score_spread, protocol.evaluate)

    def seen_score_spread(*args, **kwargs):
        spreads.append(score_spread(*args, **kwargs))
        return spreads[-1]

    def seen_fit_weight(score, tolerance):
        fits.append({"fit_recall": {f"{w:g}/{live:g}": r for (w, live), r in score.recalls.items()},
                     "fit_new_recall": {f"{w:g}/{live:g}": r for (w, live), r in score.new_recalls.items()}})
        return fit_weight(score, tolerance)

    def seen_fit_text_blend(*args, **kwargs):
        spreads.clear()
        blend = fit_text_blend(*args, **kwargs)
        if fits and "blend" not in fits[-1]:
            fits[-1].update(blend=blend, spread=spreads[0] if spreads else 0.0)
        return blend

    ranked_windows = []  # the backtest's windows ranked so far

    def sweep(scorer, events, history=None, **kwargs):
        result = evaluate(scorer, events, history, **kwargs)
        if "new_items" in kwargs:
            ranked_windows.append(len(events))
        fit = fits[-1] if fits else None
        if "new_items" not in kwargs or not isinstance(scorer, BundleScorer) or not fit or "blend" not in fit:
            return result
        blend = fit["blend"]
        model_alone = scorer.with_blend(TextBlend())
        model_alone._states = {}  # the model runs once per window for every weight
        cold = events[~events["item_id"].isin(set(history["item_id"]))]

        def recalls(ranked) -> tuple[float, float | None]:
            return (evaluate(ranked, events, history, ks=(20,))["recall@20"],
                    evaluate(ranked, cold, pd.concat([history, events]), ks=(20,), live_events=events)["recall@20"]
                    if len(cold) else None)

        by = {"fitted": recalls(scorer)}  # the default, with the weight it fitted
        for name, (similarity, cap) in VARIANTS.items():
            for multiple in WEIGHTS:
                if multiple == 0 and "no term" in by:
                    continue
                weighted = TextBlend(weight=multiple * fit["spread"], half_count=blend.half_count, center=blend.center)
                ranked = Variant(model_alone, model_alone.with_blend(weighted), similarity, cap)
                by["no term" if multiple == 0 else f"{name}:{multiple}"] = recalls(ranked)
        rows.append({"window": len(ranked_windows), "events": len(events), "cold_events": len(cold),
                     "fit": {"fit_recall": fit["fit_recall"], "fit_new_recall": fit["fit_new_recall"],
                             "weight_sd": blend.weight / fit["spread"] if fit["spread"] else 0.0,
                             "live_sd": blend.live / fit["spread"] if fit["spread"] else 0.0},
                     "by": by})
        (out / "frontier.json").write_text(json.dumps(rows, indent=1))
        return result

    finetune.fit_weight, finetune.fit_text_blend, finetune.score_spread = (
        seen_fit_weight, seen_fit_text_blend, seen_score_spread)
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
    """Mean Recall@20 (and its change against no term) and cold Recall@20 by term and weight; the
    default's fitted weight (its mean over windows) is "fit"."""
    base = np.mean([r["by"]["no term"][0] for r in rows])
    fitted = np.mean([r["fit"]["weight_sd"] for r in rows])
    lines = ["| term | weight (sd) | Recall@20 | vs. no term | cold Recall@20 |", "|---|---:|---:|---:|---:|"]
    for key in rows[0]["by"]:
        name, _, multiple = key.rpartition(":") if ":" in key else (key, "", "0")
        weight = f"fit (mean {fitted:.1f})" if key == "fitted" else f"{float(multiple):g}"
        recall = np.mean([r["by"][key][0] for r in rows])
        cold = np.mean([r["by"][key][1] or 0.0 for r in rows])
        lines.append(f"| {name} | {weight} "
                     f"| {recall:.4f} | {recall / base - 1:+.2%} | {cold:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.provenance import run_folder

    out = run_folder("blend_frontier", {"windows": args.windows, "weights": WEIGHTS, "terms": list(VARIANTS)})
    out = out.rename(out.with_name(f"{out.name}-w{args.windows}"))
    rows = run(args.windows, out)
    print(table(rows))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
