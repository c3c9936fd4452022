"""What the text and live terms trade, and which fit rule trades it best, on one trained run.

Runs ``streamrec backtest --strategy rehearsal`` on MovieLens-100k with the backtest's options
(:data:`bench.backtest.DEFAULT_OPTIONS`) and, at every window, ranks the whole window with the
model trained so far at every (text, live) pair of :data:`learner.blend.PAIRS` (standard
deviations of its scores). It also records what each job's fit chose on (the Recall@20, new-item
Recall@20 and changed share of every pair it scored). The model does not depend on the terms
(they are fitted after training), so every fit rule can be replayed on the same run: which pair
each rule (tolerance x confidence, :func:`learner.blend.fit_weight`) would have chosen from what
its job saw, and what that pair scored on the next window:

    python -m bench.blend_frontier --windows 10   # about 5 minutes on 2 CPUs
    python -m bench.blend_frontier --windows 5

Writes ``bench/results/blend_frontier/<date>-<commit>-<host>-w<windows>/frontier.json`` and
prints mean Recall@20 (relative to no terms) and cold Recall@20 by rule and by fixed pair.
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

from learner.blend import PAIRS, GridScore, fit_weight

TOLERANCES = (0.0025, 0.005, 0.01, 0.015, 0.02)
CONFIDENCES = (0.0, 0.5, 1.0, 2.0)


def _key(pair) -> str:
    return f"{pair[0]:g}/{pair[1]:g}"


def _pair(key: str) -> tuple[float, float]:
    weight, live = key.split("/")
    return float(weight), float(live)


def run(windows: int, out: Path) -> list[dict]:
    """The backtest with the sweep hooked in; one row per ranked window after the first version."""
    import backtest.protocol as protocol
    import learner.finetune as finetune
    from bench.backtest import DEFAULT_OPTIONS, write_movielens
    from learner.blend import TextBlend
    from learner.evaluate import BundleScorer, blend_hits
    from streamrec.cli import main

    fits: list[dict] = []  # per fit: what it chose on, the pair chosen, the scores' spread
    rows: list[dict] = []
    spreads: list[float] = []  # what score_spread returned during the fit: its first is the fit's unit
    fit_weight_, fit_text_blend, score_spread, evaluate = (
        finetune.fit_weight, finetune.fit_text_blend, finetune.score_spread, protocol.evaluate)

    def seen_score_spread(*args, **kwargs):
        spreads.append(score_spread(*args, **kwargs))
        return spreads[-1]

    def seen_fit_weight(score, tolerance, confidence=0.0):
        chosen = fit_weight_(score, tolerance, confidence)
        fits.append({"events": score.events, "new_events": score.new_events, "chosen": _key(chosen),
                     **{name: {_key(p): v for p, v in getattr(score, name).items()}
                        for name in ("recalls", "new_recalls", "changed")}})
        return chosen

    def seen_fit_text_blend(*args, **kwargs):
        spreads.clear()
        blend = fit_text_blend(*args, **kwargs)
        if fits and "blend" not in fits[-1]:
            fits[-1].update(blend=blend, spread=spreads[0] if spreads else 0.0)
        return blend

    def sweep(scorer, events, history=None, **kwargs):
        result = evaluate(scorer, events, history, **kwargs)
        fit = fits[-1] if fits else None
        if "new_items" not in kwargs or not isinstance(scorer, BundleScorer) or not fit or "blend" not in fit:
            return result
        blend = fit["blend"]
        cold = events[~events["item_id"].isin(set(history["item_id"]))]
        blends = [TextBlend(weight=w * fit["spread"], live=live * fit["spread"], half_count=blend.half_count,
                            center=blend.center) for w, live in PAIRS]
        hits, _ = blend_hits(scorer, blends, events, history)
        cold_hits = (blend_hits(scorer, blends, cold, pd.concat([history, events]), live_events=events)[0]
                     if len(cold) else None)
        by = {_key(pair): (float(hits[j].mean()), None if cold_hits is None else float(cold_hits[j].mean()))
              for j, pair in enumerate(PAIRS)}
        rows.append({"window": len(rows) + 1, "events": len(events), "cold_events": len(cold),
                     "fit": {k: v for k, v in fit.items() if k != "blend"}, "by": by})
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


def replay(rows: list[dict], tolerance: float, confidence: float) -> list[str]:
    """The pair :func:`learner.blend.fit_weight` with ``tolerance`` and ``confidence`` chooses at each
    window from what that window's version was fitted on."""
    chosen = []
    for row in rows:
        fit = row["fit"]
        score = GridScore(*({_pair(k): v for k, v in fit[name].items()} for name in ("recalls", "new_recalls")),
                          fit["events"], fit["new_events"], {_pair(k): v for k, v in fit["changed"].items()})
        chosen.append(_key(fit_weight(score, tolerance, confidence)))
    return chosen


def _means(rows: list[dict], keys: list[str]) -> tuple[float, float]:
    return (float(np.mean([r["by"][k][0] for r, k in zip(rows, keys)])),
            float(np.mean([r["by"][k][1] or 0.0 for r, k in zip(rows, keys)])))


def table(rows: list[dict]) -> str:
    """Mean Recall@20 (and its change against no terms) and cold Recall@20 by fit rule, then the
    fixed pairs with the best cold Recall@20 at each cost."""
    base, _ = _means(rows, ["0/0"] * len(rows))
    lines = ["| weights | Recall@20 | vs. no terms | cold Recall@20 |", "|---|---:|---:|---:|"]

    def line(name: str, keys: list[str]) -> None:
        recall, cold = _means(rows, keys)
        lines.append(f"| {name} | {recall:.4f} | {recall / base - 1:+.2%} | {cold:.4f} |")

    line("no terms", ["0/0"] * len(rows))
    for tolerance in TOLERANCES:
        for confidence in CONFIDENCES:
            line(f"fitted, tolerance {tolerance:g}, confidence {confidence:g}", replay(rows, tolerance, confidence))
    fixed = sorted((_means(rows, [_key(p)] * len(rows)), _key(p)) for p in PAIRS)
    for cost in (0.005, 0.01, 0.02):
        best = max((m for m in fixed if m[0][0] >= base * (1 - cost)), key=lambda m: m[0][1])
        line(f"fixed {best[1]} (best cold within {cost:.1%})", [best[1]] * len(rows))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--table", type=Path, default=None, help="Print the table of this frontier.json only.")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.provenance import run_folder

    out = run_folder("blend_frontier", {"windows": args.windows, "pairs": [list(p) for p in PAIRS]})
    out = out.rename(out.with_name(f"{out.name}-w{args.windows}"))
    rows = run(args.windows, out)
    print(table(rows))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
