"""A self-contained HTML report of drift metrics: one inline SVG plot per metric, nothing fetched.

Each plot shows a metric over the measured windows (the x axis; below each window id, the
version its training job produced), one line per storefront, the alert bound as a dashed
line (``baseline +/- threshold`` in the metric's bad direction, both sides for a metric bad
either way), alerts (confirmed breaches) as red rings and first breaches, not yet confirmed,
as orange ones. Above the plots: the open alerts and the newest value of every metric, with
how each threshold was found.

Given the online metrics of served lists too (``online_metrics`` rows), the report ends with
one plot per online metric over served hours, one line per surface, ranker, version and
experiment arm (storefronts pooled: sums of counts, list-weighted means of the per-list
metrics), and the latest hour of each line in a table.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from drift.metrics import METRICS

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44
COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
KIND_ORDER = {"input": 0, "concept": 1, "model": 2, "forgetting": 3}

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; margin: 0 0 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.alert td { background: #fde8e8; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; padding: 8px; border: 1px solid #ddd; border-radius: 4px; width: 644px; }
figcaption { font-size: 12px; color: #555; margin-bottom: 4px; }
svg.plot text { font-size: 11px; fill: #444; }
.legend span { font-size: 12px; margin-right: 12px; }
"""


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else ""
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def open_alert_rows(rows: Sequence[dict]) -> list[dict]:
    """Alert rows with no later non-alert row of the same metric and storefront (as the view ``drift_open_alerts``).

    Examples
    --------
    >>> rows = [{"window_id": w, "metric": "m", "storefront": "s", "alert": a}
    ...         for w, a in [(1, True), (2, False), (3, True)]]
    >>> [r["window_id"] for r in open_alert_rows(rows)]
    [3]
    """
    last_ok: dict[tuple, int] = {}
    for r in rows:
        if not r["alert"]:
            key = (r["metric"], r["storefront"])
            last_ok[key] = max(last_ok.get(key, -1), r["window_id"])
    return sorted((r for r in rows if r["alert"] and r["window_id"] > last_ok.get((r["metric"], r["storefront"]), -1)),
                  key=lambda r: (-r["window_id"], r["storefront"], r["metric"]))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def plot(metric: str, rows: Sequence[dict], versions: dict[int, int | None], css_class: str = "plot",
         x_title: str = "window (version)", ticks: dict[int, str] | None = None) -> str:
    """The SVG plot of one metric's rows (one line per ``storefront``, at x ``window_id``);
    ``ticks`` names x positions (default: the window id)."""
    windows = sorted({r["window_id"] for r in rows})
    storefronts = sorted({r["storefront"] for r in rows})
    direction = METRICS[metric].direction if metric in METRICS else "up"
    rows = [r for r in rows if r["value"] is not None]
    bounds = []  # (row, side, bound)
    for r in rows:
        if r.get("threshold") is not None and math.isfinite(r["threshold"]):
            base = r.get("baseline") or 0.0
            for side in ({"up": (1,), "down": (-1,)}.get(direction, (1, -1))):
                bounds.append((r, side, base + side * r["threshold"]))
    if not rows:
        return ""
    values = [r["value"] for r in rows] + [b for _, _, b in bounds]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 if lo else -0.5, hi + 0.5 if hi else 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    span = max(windows[-1] - windows[0], 1)

    def x(w: float) -> float:
        return x0 + (x1 - x0) * ((w - windows[0]) / span if len(windows) > 1 else 0.5)

    def y(v: float) -> float:
        return y0 + (y1 - y0) * (v - lo) / (hi - lo)

    parts = [f'<svg class="{css_class}" data-metric="{html.escape(metric)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{html.escape(metric)} over {html.escape(x_title)}">',
             f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fafafa" stroke="#ccc"/>']
    for t in _ticks(lo, hi):
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>'
                     f'<text x="{x0 - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{_fmt(float(t), 3)}</text>')
    step = max(1, math.ceil(len(windows) / 12))
    for w in windows[::step]:
        version = versions.get(w)
        parts.append(f'<line x1="{x(w):.1f}" x2="{x(w):.1f}" y1="{y0}" y2="{y0 + 4}" stroke="#888"/>'
                     f'<text x="{x(w):.1f}" y="{y0 + 16}" text-anchor="middle">'
                     f'{html.escape(ticks.get(w, str(w)) if ticks else str(w))}</text>'
                     + (f'<text x="{x(w):.1f}" y="{y0 + 29}" text-anchor="middle" fill="#888">v{version}</text>'
                        if version is not None else ""))
    parts.append(f'<text x="{x1}" y="{HEIGHT - 2}" text-anchor="end">{html.escape(x_title)}</text>')
    if bounds:
        by_sf: dict[tuple[str, int], list] = defaultdict(list)
        for r, side, b in bounds:
            by_sf[(r["storefront"], side)].append((r["window_id"], b))
        for (storefront, _), points in by_sf.items():
            colour = COLOURS[storefronts.index(storefront) % len(COLOURS)]
            coords = " ".join(f"{x(w):.1f},{y(b):.1f}" for w, b in sorted(points))
            parts.append(f'<polyline class="bound" points="{coords}" fill="none" stroke="{colour}" '
                         f'stroke-opacity="0.5" stroke-dasharray="4 3"/>')
    parts.append('<g class="data">')
    for i, storefront in enumerate(storefronts):
        colour = COLOURS[i % len(COLOURS)]
        points = sorted((r["window_id"], r) for r in rows if r["storefront"] == storefront)
        coords = " ".join(f"{x(w):.1f},{y(r['value']):.1f}" for w, r in points)
        parts.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        for w, r in points:
            where = ticks.get(w, str(w)) if ticks else f"window {w}"
            tip = html.escape(f"{storefront}, {where}" + (f", version {r['model_version_id']}"
                                                          if r.get("model_version_id") is not None else "")
                              + f": {_fmt(r['value'])}"
                              + (" ALERT" if r["alert"] else " first breach" if r.get("breach") else ""))
            parts.append(f'<circle class="point" cx="{x(w):.1f}" cy="{y(r["value"]):.1f}" r="2.5" fill="{colour}">'
                         f'<title>{tip}</title></circle>')
            if r["alert"]:
                parts.append(f'<circle class="alert" cx="{x(w):.1f}" cy="{y(r["value"]):.1f}" r="6" fill="none" '
                             f'stroke="#d62728" stroke-width="2"><title>{tip}</title></circle>')
            elif r.get("breach"):
                parts.append(f'<circle class="breach" cx="{x(w):.1f}" cy="{y(r["value"]):.1f}" r="6" fill="none" '
                             f'stroke="#ff7f0e" stroke-width="1.5"><title>{tip}</title></circle>')
    parts.append("</g></svg>")
    legend = "".join(f'<span style="color:{COLOURS[i % len(COLOURS)]}">&#9632; {html.escape(s)}</span>'
                     for i, s in enumerate(storefronts))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _numeric(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _table(rows: Iterable[dict], columns: Sequence[str]) -> str:
    rows = list(rows)
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = "".join(f'<td class="{"num" if _numeric(r.get(c)) else ""}">{html.escape(_fmt(r.get(c)))}</td>'
                        for c in columns)
        body.append(f'<tr class="{"alert" if r.get("alert") else ""}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


ONLINE_PLOTS = {
    "ctr": "lists with an attributed click / lists",
    "clicks_per_list": "attributed clicks / lists",
    "conversion": "users with an attributed purchase / users the lists were served to",
    "revenue_per_1000": "1000 x attributed order value / lists",
    "coverage": "distinct items served / items of the storefront's catalog",
    "diversity": "mean over lists of 1 - mean pairwise MiniLM cosine of their items",
    "novelty": "mean -log2 popularity share of served items",
    "avg_popularity": "mean decayed event count of served items",
    "new_item_share": "share of served slots holding an item without any event yet",
}
_COUNTS = ("lists", "users", "clicked_lists", "clicks", "purchases", "converted_users", "revenue")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def online_series(rows: Sequence[dict]) -> dict[str, dict[int, dict]]:
    """``online_metrics`` rows pooled per line (surface, ranker, version, experiment arm) and hour: counts
    summed, the ratios recomputed from them, the per-list metrics averaged weighted by lists.

    >>> rows = [{"hour": 0, "surface": "recommend", "storefront": s, "source": "model", "model_version": 3,
    ...          "experiment": "", "arm": "", "lists": n, "users": n, "clicked_lists": c, "clicks": c, "purchases": 0,
    ...          "converted_users": 0, "revenue": 0.0, "metrics": {"coverage": cov}}
    ...         for s, n, c, cov in [("a", 30, 3, 0.1), ("b", 10, 3, 0.3)]]
    >>> point = online_series(rows)["recommend model v3"][0]
    >>> point["lists"], point["ctr"], round(point["coverage"], 2)
    (40, 0.15, 0.15)
    """
    pooled: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        label = f"{r['surface']} {r['source']} v{r['model_version']}" + (
            f" {r['experiment']}:{r['arm']}" if r.get("arm") else "")
        point = pooled[label].setdefault(r["hour"], {c: 0 for c in _COUNTS} | {"weighted": defaultdict(float),
                                                                               "weights": defaultdict(float)})
        for c in _COUNTS:
            point[c] += r[c] or 0
        for metric, value in (r.get("metrics") or {}).items():
            if metric not in ("ctr", "clicks_per_list", "conversion", "revenue_per_1000") and _numeric(value) \
                    and math.isfinite(value):
                point["weighted"][metric] += value * r["lists"]
                point["weights"][metric] += r["lists"]
    for points in pooled.values():
        for point in points.values():
            weighted, weights = point.pop("weighted"), point.pop("weights")
            point |= {metric: weighted[metric] / weights[metric] for metric in weights if weights[metric]}
            point |= {"ctr": _ratio(point["clicked_lists"], point["lists"]),
                      "clicks_per_list": _ratio(point["clicks"], point["lists"]),
                      "conversion": _ratio(point["converted_users"], point["users"]),
                      "revenue_per_1000": _ratio(1000 * point["revenue"], point["lists"])}
    return pooled


def online_section(rows: Sequence[dict]) -> list[str]:
    """The report's online part: one plot per online metric over served hours, and the latest hour per line."""
    if not rows:
        return ["<h2>Online metrics</h2>", "<p>No served lists recorded yet.</p>"]
    series = online_series(rows)
    hours = sorted({h for points in series.values() for h in points})
    index = {h: n for n, h in enumerate(hours)}
    ticks = {n: datetime.fromtimestamp(h / 1000, tz=timezone.utc).strftime("%d %H:00") for h, n in index.items()}
    revenue = any(p["revenue"] for points in series.values() for p in points.values())
    parts = ["<h2>Online metrics</h2>",
             f"<p>{len(series)} lines (surface, ranker, version, arm) over {len(hours)} served hours, UTC; "
             "storefronts pooled.</p>",
             _table([{"line": label, "hour": ticks[index[max(points)]], **points[max(points)]}
                     for label, points in sorted(series.items())],
                    ["line", "hour", "lists", "users", "ctr", "conversion", "revenue_per_1000", "coverage",
                     "diversity", "novelty", "new_item_share"]),
             '<div class="plots">']
    for metric, definition in ONLINE_PLOTS.items():
        if metric == "revenue_per_1000" and not revenue:
            continue
        points = [{"window_id": index[h], "storefront": label, "value": p.get(metric), "alert": False}
                  for label, by_hour in sorted(series.items()) for h, p in by_hour.items()]
        points = [p for p in points if p["value"] is not None]
        if points:
            parts.append(f'<figure id="online-{metric}"><h3>{metric}</h3><figcaption>{html.escape(definition)}'
                         f'</figcaption>{plot(metric, points, {}, "online-plot", "served hour (UTC)", ticks)}</figure>')
    return parts + ["</div>"]


def render(rows: Sequence[dict], title: str = "streamrec drift report", generated_at_ms: int | None = None,
           online: Sequence[dict] | None = None) -> str:
    """The report of ``rows`` (``drift_metrics`` rows as dicts) as one HTML document, with
    the ``online`` metrics section when they are given.

    Examples
    --------
    >>> rows = [{"window_id": w, "model_version_id": w, "storefront": "s", "metric": "purchase_share",
    ...          "kind": "input", "value": v, "baseline": 0.2, "threshold": 0.05, "breach": v > 0.25,
    ...          "alert": w == 4, "detector": "threshold", "reference": "windows 1-3", "n_events": 1000,
    ...          "method": "calibrated"} for w, v in [(1, 0.2), (2, 0.21), (3, 0.4), (4, 0.41)]]
    >>> page = render(rows, generated_at_ms=0)
    >>> page.count('<svg class="plot"'), page.count('<circle class="alert"'), page.count('<circle class="breach"')
    (1, 1, 1)
    >>> page.count('class="bound"'), "http" in page.replace("http://www.w3.org/2000/svg", "")  # bad either way
    (2, False)
    """
    rows = sorted(rows, key=lambda r: (r["window_id"], r["storefront"], r["metric"]))
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_metric[r["metric"]].append(r)
    versions = {r["window_id"]: r.get("model_version_id") for r in rows}
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r["metric"], r["storefront"])] = r
    order = sorted(by_metric, key=lambda m: (KIND_ORDER.get(METRICS[m].kind if m in METRICS else "", 9),
                                             list(METRICS).index(m) if m in METRICS else 99, m))
    when = datetime.fromtimestamp((generated_at_ms or 0) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    windows = sorted(versions)
    sections = [f"<h1>{html.escape(title)}</h1>",
                f"<p>{len(rows)} values of {len(by_metric)} metrics over {len(windows)} windows"
                + (f" ({windows[0]} to {windows[-1]})" if windows else "") + f"; generated {when}.</p>",
                "<h2>Open alerts</h2>",
                "<p>An alert is a confirmed breach: per-window statistics alert on their second consecutive "
                "breach of a threshold calibrated on the storefront's reference windows; change detectors and "
                "model-update metrics on the first.</p>",
                _table(open_alert_rows(rows), ["window_id", "model_version_id", "storefront", "metric", "value",
                                               "baseline", "threshold", "detector", "reference", "method"]),
                "<h2>Latest values</h2>",
                _table(sorted(latest.values(), key=lambda r: (r["storefront"], order.index(r["metric"]))),
                       ["storefront", "kind", "metric", "window_id", "value", "baseline", "threshold", "breach",
                        "alert", "detector", "n_events", "method"])]
    current = None
    for metric in order:
        kind = METRICS[metric].kind if metric in METRICS else "other"
        if kind != current:
            if current is not None:
                sections.append("</div>")
            sections.append(f"<h2>{html.escape(kind.capitalize())} drift</h2><div class=\"plots\">"
                            if kind != "forgetting" else "<h2>Forgetting</h2><div class=\"plots\">")
            current = kind
        definition = METRICS[metric].definition if metric in METRICS else ""
        sections.append(f'<figure id="metric-{html.escape(metric)}"><h3>{html.escape(metric)}</h3>'
                        f"<figcaption>{html.escape(definition)}</figcaption>{plot(metric, by_metric[metric], versions)}"
                        "</figure>")
    if current is not None:
        sections.append("</div>")
    if online is not None:
        sections += online_section(online)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")
