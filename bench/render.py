"""The benchmark tables the docs show, rendered from the results files that hold them.

    python -m bench.render [--check]    # also run by ./dev docs

A table in a docs page sits between two markers; the first names how to render it and the
results files it comes from (paths under ``bench/results/``), one per line, each optionally
followed by ``|`` and the row's label::

    <!-- bench:begin backtest columns=recall,cold,forgetting
    backtest/20261204T133620Z-bd1f65729bdd-vm/backtest-rehearsal.json | rehearsal, 10 windows
    -->
    (the table and the line saying where its figures come from)
    <!-- bench:end -->

This command rewrites what lies between the markers; ``--check`` (and the docs tests) fail when
a page's table differs from what its files give. Each table is followed by the provenance of
its runs (:mod:`bench.provenance`: commit, date, machine, 1-minute load average); a file from
before results carried provenance is said to be so.

>>> table(["a", "b"], [[1, "x"], [2.5, None]], right=[True, False])
'| a | b |\\n|---:|---|\\n| 1 | x |\\n| 2.5 | - |'
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MARKER = re.compile(r"(?P<head><!-- bench:begin (?P<kind>[\w-]+)(?P<options>[^\n]*)\n(?P<sources>.*?)-->\n)"
                    r"(?P<body>.*?)(?P<tail><!-- bench:end -->)", re.DOTALL)


@dataclass(frozen=True)
class Source:
    """One results file named by a marker, and the label of its row."""

    path: str
    label: str = ""

    @property
    def file(self) -> Path:
        return RESULTS / self.path

    def load(self):
        """The file's JSON, or its text for a markdown report."""
        text = self.file.read_text()
        return text if self.file.suffix == ".md" else json.loads(text)


def table(header: list[str], rows: list[list], right: list[bool]) -> str:
    """A markdown table; ``right``: which columns are numbers (right-aligned). None shows as ``-``."""
    cell = lambda v: "-" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def num(value, digits: int = 0) -> str | None:
    """``value`` with thousands separators and ``digits`` decimals (None stays None)."""
    return None if value is None else f"{value:,.{digits}f}"


def run_of(source: Source) -> tuple[str, dict | None]:
    """(the run, its provenance) of a file: its run folder's ``provenance.json``, the file's own
    stamp, or None for a file from before results carried provenance."""
    folder = source.file.parent
    if (folder / "provenance.json").exists():
        return str(folder.relative_to(RESULTS)), json.loads((folder / "provenance.json").read_text())
    if source.file.suffix == ".json":
        data = json.loads(source.file.read_text())
        if isinstance(data, dict) and "commit" in data:
            return source.path, data
    return source.path, None


def provenance_line(sources: list[Source]) -> str:
    """Where the table's figures come from: one clause per run."""
    seen, clauses = set(), []
    for source in sources:
        name, stamp = run_of(source)
        if name in seen:
            continue
        seen.add(name)
        if stamp is None:
            clauses.append(f"`bench/results/{name}`: from before results carried provenance (its commit, machine "
                           "and load are not recorded with it)")
            continue
        machine = stamp["machine"]
        gpu = machine.get("gpu") or "no GPU"
        load = stamp.get("load_1min")
        load_text = "load not recorded" if load is None else f"1-minute load {load:g} at the start"
        if stamp.get("load_1min_end") is not None:
            load_text += f", {stamp['load_1min_end']:g} at the end"
        date = stamp["date"].replace("T", " ").rstrip("Z")
        settings = "".join(f", `{key}={value}`" for key, value in stamp.get("environment", {}).items())
        clauses.append(f"`bench/results/{name}`: commit `{stamp['commit']}`, {date} UTC, "
                       f"{machine['cpu']}, {machine['cpu_cores']} CPUs, {machine.get('memory_gib')} GiB, {gpu}; "
                       f"{load_text}{settings}")
    if len(clauses) == 1:
        return f"Figures from {clauses[0]}."
    return "Figures from:\n\n" + "\n".join(f"* {clause}" for clause in clauses)


# Renderers: the sources of one marker and its options -> the table (markdown).

def render_report(sources: list[Source], options: dict) -> str:
    """The first table of a markdown report a bench wrote (``bench.backtest --report``, ``bench.serving --out``)."""
    (source,) = sources
    lines = source.load().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


BACKTEST_COLUMNS = {
    "recall": ("Recall@20", lambda r: f"{r['mean']['recall@20']:.4f}"),
    "ndcg": ("NDCG@20", lambda r: f"{r['mean']['ndcg@20']:.4f}"),
    "cold": ("cold Recall@20", lambda r: f"{r['mean']['cold_recall@20']:.4f}"),
    "new_share": ("new items, share of top-20 slots",
                  lambda r: None if "new_item_share@20" not in r["mean"] else f"{r['mean']['new_item_share@20']:.4f}"),
    "forgetting": ("forgetting", lambda r: f"{r['forgetting']:.4f}"),
    "bwt": ("BWT", lambda r: f"{r['bwt']:+.4f}"),
    "train_last": ("train s, last window", lambda r: f"{r['windows'][-1]['train_seconds']:.1f}"),
    "train_total": ("train s, total", lambda r: f"{r['total_train_seconds']:.1f}"),
}


def render_backtest(sources: list[Source], options: dict) -> str:
    """One row per ``streamrec backtest`` RESULT.json: its label (default: the strategy) and the
    ``columns`` asked for (:data:`BACKTEST_COLUMNS`)."""
    columns = options.get("columns", "recall,ndcg,cold,forgetting,bwt,train_last,train_total").split(",")
    rows = []
    for source in sources:
        result = source.load()
        rows.append([source.label or f"`{result['strategy']}`", *(BACKTEST_COLUMNS[c][1](result) for c in columns)])
    return table(["run", *(BACKTEST_COLUMNS[c][0] for c in columns)], rows, [False] + [True] * len(columns))


def render_ingest(sources: list[Source], options: dict) -> str:
    (source,) = sources
    result = source.load()["result"]
    paths = table(["path", "events", "seconds", "events/s", "ratio to raw"],
                  [[r["path"], num(r["events"]), f"{r['seconds']:.2f}", num(r["events_per_s"]),
                    f"{r['ratio_to_raw']:.2f}"] for r in result["rows"]], [False, True, True, True, True])
    stages = table(["stage", f"{result['store']} µs/event"],
                   [[name, f"{micros:.2f}"] for name, micros in result["stages_us_per_event"].items()],
                   [False, True])
    runs = ", ".join(num(r) for r in result["raw_runs_events_per_s"])
    return f"{paths}\n\nRaw consumer runs: {runs} events/s. Each stage alone, in the benchmark process:\n\n{stages}"


def render_replay_memory(sources: list[Source], options: dict) -> str:
    (source,) = sources
    result = source.load()["result"]
    rows = [[num(t["events"]), f"{t['seconds']:.1f}", num(t["rss_mib"])] for t in result["tenths"]]
    return (table(["events stored", "seconds", "worker RSS MiB"], rows, [True, True, True])
            + f"\n\nPeak RSS {num(result['peak_rss_mib'])} MiB; {num(result['rss_when_memory_full_mib'])} MiB when "
              f"the memory had filled ({num(result['events_when_memory_full'])} events) and "
              f"{num(result['rss_at_end_mib'])} MiB at the end; {result['windows']} windows sealed, "
              f"{result['store']}.")


def render_soak(sources: list[Source], options: dict) -> str:
    (source,) = sources
    result = source.load()["result"]
    rows = [[num(s["s"]), num(s["produced"]), num(s["stored"]), num(s["lag"]), s["windows"], s["runs"],
             num(s["worker"]), num(s["training"])] for s in result["rows"]]
    return (table(["seconds", "produced", "stored", "lag", "windows sealed", "training runs done", "worker RSS MiB",
                   "training RSS MiB"], rows, [True] * 8)
            + f"\n\nSustained ingest {num(result['sustained_events_per_s'])} events/s while training; lag at most "
              f"{num(result['max_lag'])} events; peak RSS {num(result['peak_rss_worker_mib'])} MiB for the worker and "
              f"{num(result['peak_rss_training_mib'])} MiB for its training process; "
              f"{result['windows_sealed']} windows sealed, {result['training_runs_done']} training runs finished.")


def render_serving(sources: list[Source], options: dict) -> str:
    (source,) = sources
    rows = [[f"`{r['endpoint']}`", r["requests"], f"{r['rate']:.1f}", f"{r['p50']:.2f}", f"{r['p95']:.2f}",
             f"{r['p99']:.2f}", f"{r['max']:.1f}", r["errors"]] for r in source.load()["result"]["rows"]]
    return table(["endpoint", "requests", "achieved rate/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"],
                 rows, [False] + [True] * 7)


def render_freshness(sources: list[Source], options: dict) -> str:
    """One row per run; a pre-provenance file holds a list of runs (``rates`` picks and orders them)."""
    runs = []
    for source in sources:
        data = source.load()
        runs += [(source.label, r) for r in data] if isinstance(data, list) else [(source.label, data["result"])]
    if "rates" in options:
        by_rate = {str(r["rate"]).removesuffix(".0"): (label, r) for label, r in runs}
        runs = [by_rate[rate] for rate in options["rates"].split(",")]
    labelled = any(label for label, _ in runs)
    rows = [([label] if labelled else []) + [
        "as fast as the producer goes" if r["rate"] == "max" else num(r["rate"]),
        num((r.get("catalog") or {}).get("items", 1682)), num(r["events_stored_per_s"]), r["windows_sealed"],
        r["versions"], f"{r['latency_p50_s']:g} s", f"{r['latency_p95_s']:g} s", r["backlog_max_windows"],
        f"{r['backlog_trend_windows_per_min']:+.1f} windows/min", r["backlog_after_stream"]] for label, r in runs]
    return table((["run"] if labelled else []) + [
        "rate (events/s)", "catalog items", "stored/s", "windows sealed", "versions", "seal-to-serving p50", "p95",
        "backlog max (windows)", "backlog trend after the first minute", "left after the stream"],
        rows, ([False] if labelled else []) + [True] * 10)


def render_freshness_jobs(sources: list[Source], options: dict) -> str:
    """Job seconds by windows per job, with each phase, one block of rows per run."""
    rows = [[source.label, j["windows_per_job"], j["jobs"], j["seconds"], j["read_s"], j["drift_s"], j["train_s"],
             j["judge_s"]] for source in sources for j in source.load()["result"]["job_seconds"]]
    return table(["run", "windows per job", "jobs", "seconds", "reading", "drift", "training", "judging"], rows,
                 [False] + [True] * 7)


def render_scale_training(sources: list[Source], options: dict) -> str:
    rows = []
    for source in sources:
        for r in source.load()["result"]["training"]:
            rows.append([num(r["items"]), r["loss"], r.get("not_run") and f"not run: {r['not_run']}"
                         or f"{r['step_ms']:,.0f}", r.get("x_smallest_sampled"), num(r.get("peak_rss_mib"))])
    return table(["items", "loss", "step ms", "x sampled step at the smallest catalog", "peak RSS MiB"], rows,
                 [True, False, True, True, True])


def render_scale_serving(sources: list[Source], options: dict) -> str:
    rows = []
    for source in sources:
        for r in source.load()["result"]["serving"]:
            rows.append([num(r["items"]), r["model"], f"{r['build_s']:.1f} (+{num(r['build_peak_mib'])} MiB)",
                         r["exports_s"], r["lists_scanned"], r["recall@20"], r["recommend_ms"], r["similar_ms"],
                         r["search_ms"], f"{num(r['rss_mib'])} ({num(r['peak_rss_mib'])})"])
    return table(["items", "model, text vectors", "snapshot build s (+its peak)", "ONNX export s: user state / queries",
                  "lists scanned: recommend / similar / search", "Recall@20: recommend / similar / search",
                  "recommend p50 / p95 / p99 ms", "similar p50 / p95 / p99 ms", "search p50 / p95 / p99 ms",
                  "RSS MiB (peak)"], rows, [True, False] + [True] * 8)


def render_geometry(sources: list[Source], options: dict) -> str:
    (source,) = sources
    result = source.load()["result"]
    rows = [[r["vectors"], f"{r['mean_cosine']:.3f}", f"{r['nearest']:.3f}", f"{r['nearest_20th']:.3f}"]
            for r in result["rows"]]
    return table([f"vectors ({num(result['items'])} items)", "mean pairwise cosine", "nearest item", "20th nearest"],
                 rows, [False, True, True, True])


def render_text_tuning(sources: list[Source], options: dict) -> str:
    (source,) = sources
    result = source.load()["result"]
    rows = [[r["variant"], None if r["tuning_step_ms"] is None else f"{r['tuning_step_ms']:.0f}",
             num(r["reembed_items_per_s"]), f"{r['query_ms']:.1f}"] for r in result["rows"]]
    return (f"Device: {result['device']}.\n\n"
            + table(["variant", "tuning step ms (32 items)", "re-embedding items/s", "query ms (median)"], rows,
                    [False, True, True, True]))


def render_gpu(sources: list[Source], options: dict) -> str:
    (source,) = sources
    result = source.load()["result"]
    devices = [d for d in ("cpu", "cuda") if d in result]
    keys = sorted({(part, key) for d in devices for part, values in result[d].items() for key in values})
    rows = [[f"{part} {key}", *(result[d].get(part, {}).get(key) for d in devices)] for part, key in keys]
    return table(["measure", *devices], rows, [False] + [True] * len(devices))


def render_online(sources: list[Source], options: dict) -> str:
    """``bench.online``: the worker's online metrics next to a direct count of what the shoppers did."""
    (source,) = sources
    result = source.load()["result"]
    direct, online = result["direct_count"], result["online_metrics"]
    rows = [[name.replace("_", " "), num(direct.get(name), 2 if name == "revenue" else 0),
             num(online.get(name), 2 if name == "revenue" else 0)] for name in direct]
    return (table(["measure", "direct count", "online metrics"], rows, [False, True, True])
            + f"\n\nThey agree: {'yes' if result['agree'] else 'no'}. "
              f"{num(result['served_lists_stored'])} served lists stored; {result['requests_per_s']:.1f} requests/s; "
              f"CTR {fraction(result.get('ctr'))}, coverage {fraction(result.get('coverage'))}, "
              f"diversity {fraction(result.get('diversity'))}, novelty {fraction(result.get('novelty'))}.")


def fraction(value) -> str:
    """A rate with four decimals, or ``-`` when there is none."""
    return "-" if value is None else f"{value:.4f}"


RENDERERS: dict[str, Callable[[list[Source], dict], str]] = {
    "report": render_report, "backtest": render_backtest, "ingest": render_ingest,
    "replay_memory": render_replay_memory, "soak": render_soak, "serving": render_serving,
    "freshness": render_freshness, "freshness-jobs": render_freshness_jobs,
    "scale-training": render_scale_training, "scale-serving": render_scale_serving,
    "geometry": render_geometry, "text_tuning": render_text_tuning, "gpu": render_gpu, "online": render_online,
}


def render_block(kind: str, options: str, sources: str) -> str:
    """What belongs between one marker pair: the table and where its figures come from."""
    parsed = [Source(*(part.strip() for part in line.split("|", 1))) for line in sources.splitlines()
              if line.strip()]
    opts = dict(option.split("=", 1) for option in options.split())
    if kind not in RENDERERS:
        raise ValueError(f"bench:begin {kind}: no such table (one of {', '.join(RENDERERS)})")
    if not parsed:
        raise ValueError(f"bench:begin {kind}: names no results file")
    return f"{RENDERERS[kind](parsed, opts)}\n\n{provenance_line(parsed)}\n"


def rendered(text: str) -> str:
    """``text`` (a docs page) with every marked table rendered anew."""
    return MARKER.sub(lambda m: m["head"] + render_block(m["kind"], m["options"], m["sources"]) + m["tail"], text)


def stale_pages(docs: Path) -> list[tuple[Path, str]]:
    """(page, what it should hold) for every page under ``docs`` whose tables differ from their files."""
    out = []
    for page in sorted(docs.rglob("*.md")):
        text = page.read_text()
        if "<!-- bench:begin" in text and (new := rendered(text)) != text:
            out.append((page, new))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=RESULTS.parent.parent / "docs")
    parser.add_argument("--check", action="store_true", help="list pages whose tables are stale; exit 1 if any")
    args = parser.parse_args()
    found = stale_pages(args.docs)
    for page, text in found:
        print(f"{'stale' if args.check else 'wrote'}: {page}")
        if not args.check:
            page.write_text(text)
    sys.exit(1 if args.check and found else 0)


if __name__ == "__main__":
    main()
