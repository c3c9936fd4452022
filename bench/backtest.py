"""Continual-learning backtest of every strategy on MovieLens-100k, with a table and plots.

    python -m bench.backtest [--windows 10] [--strategies rehearsal,naive,...] [--threads 1] [--jobs 1]
                             [--out FOLDER] [--report backtest.md]
                             [-- any other `streamrec backtest` options]

A strategy written ``rehearsal:lora`` (or ``:top``, ``:frozen``) runs with that text tuning
(``--text-tuning``); ``--jobs`` runs that many strategies at once.

Writes MovieLens-100k (from the ``recbole`` wheel, mapped as the worker's feed maps it, with
the original epoch-second times) as EVENTS.csv and ITEMS.csv into a temporary folder, runs
``streamrec backtest`` on them once per strategy (a separate process each, sharing one text
embedding cache file), and writes to ``--out`` (default: a new folder
``bench/results/backtest/<date>-<commit>-<host>/`` with a ``provenance.json`` naming the
commit, machine and settings, so runs never replace each other):

* ``backtest-<strategy>.json``: each run's RESULT.json (``backtest-rehearsal-lora.json`` for
  ``rehearsal:lora``);
* ``--report`` (``backtest.md``): the comparison table (accuracy, forgetting, cost, and coverage,
  diversity, novelty and popularity of the lists), the goals with their verdicts, the command and
  the machine;
* ``backtest-recall.png`` (Recall@20 per window) and ``backtest-train-time.png`` (cumulative
  training seconds), when matplotlib is installed (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from backtest.strategies import STRATEGIES
from bench.provenance import run_folder
from streams import movielens

# Batch size and learning rate of tests/test_learner_movielens.py (tuned on MovieLens) instead
# of the worker's 128 and 0.001; at most 8 epochs (worker: 10) and half a rehearsal event per
# window event (worker: 1) to keep the whole run near 20 minutes on 2 CPUs; every other setting
# is the worker's default.
DEFAULT_OPTIONS = ["--epochs", "8", "--batch-size", "256", "--lr", "0.003", "--rehearsal-ratio", "0.5",
                   "--eval-sample", "1000"]


def write_movielens(folder: Path) -> tuple[Path, Path]:
    """EVENTS.csv (original times, epoch seconds) and ITEMS.csv of MovieLens-100k in ``folder``."""
    ratings = movielens.load_ratings()
    events = pd.DataFrame(movielens.to_events(ratings, now_ms=int(ratings["timestamp"].max()) * 1000))
    events["ts"] //= 1000
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    events_path, items_path = folder / "EVENTS.csv", folder / "ITEMS.csv"
    events[["user_id", "item_id", "type", "ts", "storefront", "session_id"]].to_csv(events_path, index=False)
    catalog[["item_id", "title", "category", "description", "storefront"]].to_csv(items_path, index=False)
    return events_path, items_path


def machine() -> str:
    """CPU model, cores, memory and Python/torch versions of this machine, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                             if line.startswith("MemTotal")))
        memory = f", {memory_kb / 2 ** 20:.0f} GiB"
    except (OSError, StopIteration):
        memory = ""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} CPUs{memory}{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def run_strategy(strategy: str, events: Path, items: Path, args: argparse.Namespace, extra: list[str],
                 cache: Path) -> tuple[dict, float]:
    """One ``streamrec backtest`` process; (its RESULT.json, wall seconds)."""
    name, _, tuning = strategy.partition(":")
    out = args.out / f"backtest-{strategy.replace(':', '-')}.json"
    command = [sys.executable, "-m", "streamrec.cli", "backtest", "--events", str(events), "--items", str(items),
               "--windows", str(args.windows), "--strategy", name, "--k", "20", "--out", str(out),
               "--text-cache", str(cache), "--threads", str(args.threads), *extra]
    if tuning:
        command += ["--text-tuning", tuning]
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return json.loads(out.read_text()), time.perf_counter() - started


def goals(results: dict[str, dict]) -> list[tuple[str, bool, str]]:
    """The issue's goals, the one about joint in its two parts: (goal, met, the numbers behind
    the verdict), for the goals whose strategies were run."""
    def mean(s, name):
        return results[s]["mean"][name] or 0.0

    out: list[tuple[str, bool, str]] = []
    have = set(results)
    if {"rehearsal", "popularity", "river-mf"} <= have:
        best = max(("popularity", "river-mf"), key=lambda s: mean(s, "recall@20"))
        ratio = mean("rehearsal", "recall@20") / max(mean(best, "recall@20"), 1e-12)
        out.append(("rehearsal mean Recall@20 >= 1.2x the best of popularity and river-mf", ratio >= 1.2,
                    f"{mean('rehearsal', 'recall@20'):.4f} vs {best} {mean(best, 'recall@20'):.4f}: {ratio:.2f}x"))
    if {"rehearsal", "joint"} <= have:
        relative = mean("rehearsal", "recall@20") / max(mean("joint", "recall@20"), 1e-12) - 1
        last = (results["rehearsal"]["windows"][-1]["train_seconds"]
                / max(results["joint"]["windows"][-1]["train_seconds"], 1e-12))
        out.append(("rehearsal mean Recall@20 at least joint's, within 2% (relative)", relative >= -0.02,
                    f"{mean('rehearsal', 'recall@20'):.4f} vs {mean('joint', 'recall@20'):.4f}, {relative:+.1%}"))
        out.append(("rehearsal training time at the last window <= 0.1x joint's", last <= 0.1,
                    f"{results['rehearsal']['windows'][-1]['train_seconds']:.1f} s vs "
                    f"{results['joint']['windows'][-1]['train_seconds']:.1f} s, {last:.2f}x"))
    if {"rehearsal", "naive"} <= have:
        r, n = results["rehearsal"]["forgetting"], results["naive"]["forgetting"]
        out.append(("rehearsal forgetting lower than naive's", r < n, f"{r:.4f} vs {n:.4f}"))
    tuned = [s for s in have if s.startswith("rehearsal:") and s != "rehearsal:frozen"]
    frozen = next((s for s in ("rehearsal:frozen", "rehearsal") if s in have), None)
    if tuned and frozen:
        best = max(tuned, key=lambda s: (mean(s, "cold_recall@20"), mean(s, "recall@20")))
        cold, base_cold = mean(best, "cold_recall@20"), mean(frozen, "cold_recall@20")
        overall = mean(best, "recall@20") / max(mean(frozen, "recall@20"), 1e-12) - 1
        out.append((f"best text tuning ({best}) cold Recall@20 >= 2x frozen's", cold >= 2 * base_cold,
                    f"{cold:.4f} vs {base_cold:.4f}, {cold / max(base_cold, 1e-12):.2f}x"))
        out.append((f"best text tuning ({best}) Recall@20 no more than 2% below frozen's", overall >= -0.02,
                    f"{mean(best, 'recall@20'):.4f} vs {mean(frozen, 'recall@20'):.4f}, {overall:+.1%}"))
    if {"rehearsal", "id-only"} <= have:
        r, i = mean("rehearsal", "cold_recall@20"), mean("id-only", "cold_recall@20")
        out.append(("rehearsal cold Recall@20 >= 2x id-only's", r >= 2 * i,
                    f"{r:.4f} vs {i:.4f} ({r / i:.1f}x)" if i else f"{r:.4f} vs {i:.4f}"))
    return out


def table(results: dict[str, dict], wall: dict[str, float]) -> str:
    """The comparison table: accuracy, forgetting and cost, then the lists beyond accuracy (means over windows)."""
    def shown(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    rows = ["| strategy | Recall@20 | NDCG@20 | cold Recall@20 | forgetting | BWT | coverage@20 | diversity@20 "
            "| novelty@20 | avg popularity@20 | train s, last window | train s, total | run s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for strategy, r in results.items():
        m = r["mean"]
        rows.append(f"| {strategy} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | {shown(m['cold_recall@20'])} "
                    f"| {r['forgetting']:.4f} | {r['bwt']:+.4f} | {shown(m['coverage@20'])} "
                    f"| {shown(m['diversity@20'])} | {shown(m['novelty@20'], 2)} | {shown(m['avg_popularity@20'], 1)} "
                    f"| {r['windows'][-1]['train_seconds']:.1f} | {r['total_train_seconds']:.1f} "
                    f"| {wall[strategy]:.0f} |")
    return "\n".join(rows)


def plots(results: dict[str, dict], folder: Path, stem: str = "backtest") -> list[str]:
    """Recall@20 per window and cumulative training time, one line per strategy; the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]): no plots", file=sys.stderr)
        return []
    written = []
    for name, title, value, cumulative in (
            (f"{stem}-recall.png", "Recall@20 on each window, before training on it", "recall@20", False),
            (f"{stem}-train-time.png", "Cumulative training time", "train_seconds", True)):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for strategy, r in results.items():
            xs = [w["window"] for w in r["windows"]]
            ys = pd.Series([w[value] or 0.0 for w in r["windows"]])
            ax.plot(xs, ys.cumsum() if cumulative else ys, marker="o", markersize=3, label=strategy)
        ax.set_xlabel("window")
        ax.set_ylabel("seconds" if cumulative else "Recall@20")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        written.append(name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="strategies run at once")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the results (default: a new bench/results/backtest/<date>-<commit>-<host>/)")
    parser.add_argument("--report", default="backtest.md", help="name of the table written under --out")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"] or DEFAULT_OPTIONS
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    settings = {**{k: v for k, v in vars(args).items() if k != "out"}, "options": extra}
    if args.out is None:
        args.out = run_folder("backtest", settings)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results, wall = {}, {}
    with tempfile.TemporaryDirectory(prefix="streamrec-backtest-") as tmp:
        events, items = write_movielens(Path(tmp))
        cache = Path(tmp) / "texts.safetensors"
        if args.jobs > 1 and strategies:  # the shared text cache is written once, before runs share it
            results[strategies[0]], wall[strategies[0]] = run_strategy(strategies[0], events, items, args, extra,
                                                                       cache)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            runs = {s: pool.submit(run_strategy, s, events, items, args, extra, cache)
                    for s in strategies if s not in results}
            for strategy in strategies:
                if strategy in runs:
                    results[strategy], wall[strategy] = runs[strategy].result()
        results = {s: results[s] for s in strategies}
    total = time.perf_counter() - started
    figures = plots(results, args.out, Path(args.report).stem)
    verdicts = goals(results)
    first = next(iter(results.values()))
    reproduce = shlex.join(["python", "-m", "bench.backtest", "--windows", str(args.windows), "--threads",
                            str(args.threads), "--jobs", str(args.jobs), "--strategies", ",".join(strategies),
                            "--report", args.report, "--", *extra])
    lines = [
        "# Continual-learning backtest: MovieLens-100k", "",
        f"{first['events']:,} events of {first['users']:,} users on {first['items']:,} items, "
        f"{args.windows} windows of equal event counts in time order; Recall@20, NDCG@20 and cold-item "
        f"Recall@20 are means over windows 1-{args.windows - 1}, each ranked before training on it "
        f"(full ranking, items the user already rated excluded). Forgetting and BWT come from "
        f"re-ranking a fixed sample of at most {first['settings']['eval_sample']:,} events of every "
        "earlier window after each training step. Beyond accuracy, of the same top-20 lists: coverage "
        "(share of the known items in at least one list), diversity (1 - mean pairwise cosine of the "
        f"items' MiniLM vectors in a list; by {first['diversity_vectors'] or 'no'} vectors), novelty (mean "
        "-log2 of an item's share of the events before the window, 0.5 added to every count) and average "
        "popularity (mean events before the window of a recommended item).", "",
        table(results, wall), "",
        "## Goals", "",
        *[f"* {'met' if met else 'NOT met'}: {goal} ({numbers})" for goal, met, numbers in verdicts], "",
        "## Run", "",
        f"* command: `{reproduce}` ({total / 60:.1f} min in all)",
        f"* machine: {machine()}; torch threads per run: {args.threads}; device: {first['device']}",
        f"* text embeddings of {first['items']:,} items: {max(r['embed_seconds'] for r in results.values()):.1f} s, "
        "once, not counted as training",
        *[f"* ![{name}]({name})" for name in figures],
    ]
    (args.out / args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
