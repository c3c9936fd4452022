"""`streamrec report` writes a self-contained HTML report; headless Chromium (Debian's chromium
package) opens it and every metric's plot is drawn. The metrics come from a real MovieLens
stream whose popularity is reversed after four windows, so the report has alerts to mark.
The online section draws each online metric over served hours, one line per version and arm."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from drift.quality import quality, sample_events
from drift.window import DriftTracker, forgetting
from learner.evaluate import Popularity
from learner.gate import split_holdout
from store import drift_metrics as stored
from store.online import save_online_metrics
from store.registry import now_ms
from streamrec.cli import main
from streams import movielens

CHECK = """<script>
(function () {
  const plots = [...document.querySelectorAll("svg.SELECTOR")].map(svg => {
    const box = svg.querySelector("g.data").getBBox();
    const rect = svg.getBoundingClientRect();
    return {metric: svg.dataset.metric, width: box.width, height: box.height, shown: rect.width * rect.height,
            lines: [...svg.querySelectorAll("polyline.series")].map(p => p.getTotalLength()),
            points: svg.querySelectorAll("circle.point").length, alerts: svg.querySelectorAll("circle.alert").length,
            breaches: svg.querySelectorAll("circle.breach").length};
  });
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify(plots);
  document.body.appendChild(out);
})();
</script>"""


def rendered_plots(report: Path, tmp_path: Path, css_class: str = "plot") -> list[dict]:
    """Open ``report`` in headless Chromium and measure each plot (``svg.<css_class>``) as drawn
    (getBBox, path lengths)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium")
    page = tmp_path / "checked.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK.replace("SELECTOR", css_class)
                                                               + "</body>"), encoding="utf-8")
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no render check in Chromium's DOM (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def assert_every_plot_drawn(report: Path, rows: list[dict], tmp_path: Path) -> list[dict]:
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"<(link|img|iframe)\b|<script\b|\bsrc=|@import|url\(", page), "the report loads something"
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    plots = rendered_plots(report, tmp_path)
    metrics = {r["metric"] for r in rows}
    assert sorted(p["metric"] for p in plots) == sorted(metrics)
    for plot in plots:
        mine = [r for r in rows if r["metric"] == plot["metric"]]
        assert plot["shown"] > 0 and plot["width"] > 0 and plot["height"] > 0, plot
        assert plot["points"] == len(mine), plot
        assert plot["alerts"] == sum(bool(r["alert"]) for r in mine), plot
        assert plot["breaches"] == sum(bool(r["breach"]) and not r["alert"] for r in mine), plot
        if len({r["window_id"] for r in mine}) > 1:
            assert max(plot["lines"]) > 0, plot
    return plots


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.chromium
def test_report_draws_every_metric_and_marks_alerts(engine, database_url, tmp_path, monkeypatch):
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), now_ms=1_763_000_000_000))
    events = events.sample(frac=1.0, random_state=11).reset_index(drop=True)
    events["ts"] = 1_763_000_000_000 + np.arange(len(events)) * 1000
    counts = events["item_id"].value_counts()
    reverse = dict(zip(counts.index, counts.index[::-1]))
    windows = [events.iloc[i * 1500:(i + 1) * 1500] for i in range(7)]
    windows[4:] = [w.assign(item_id=w["item_id"].map(reverse)) for w in windows[4:]]
    tracker = DriftTracker(reference_windows=2, catalog=pd.DataFrame(movielens.to_catalog(movielens.load_movies())))
    probe_history, held_out = split_holdout(windows[0], 0.1)
    probe, first = sample_events(held_out, 500, seed=1), None
    for k, window in enumerate(windows):
        earlier = pd.concat(windows[:k]) if k else None
        values = tracker.observe(window, Popularity.of(earlier, also=window) if k else None, "popularity", earlier)
        measured = quality(Popularity.of(window, also=probe), probe, probe_history)
        values += forgetting(movielens.STOREFRONT, measured, first, "probe of window 1")
        tracker.record([v for v in values if v.kind == "forgetting"])  # confirms their alerts
        first = measured.recall if first is None else first
        with engine.begin() as conn:
            stored.write_metrics(conn, k + 1, k + 1, [v.row() for v in values])

    monkeypatch.setenv("STREAMREC_DATABASE_URL", database_url)
    out = tmp_path / "out" / "drift.html"
    result = CliRunner().invoke(main, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = stored.recent(engine)
    plots = assert_every_plot_drawn(out, rows, tmp_path)
    assert len(plots) == 17  # the input, concept and forgetting metrics
    alerted = {p["metric"] for p in plots if p["alerts"]}
    assert {"popularity_psi_reference", "prequential_recall@20", "backward_transfer"} <= alerted  # confirmed
    assert "popularity_psi_previous" in {p["metric"] for p in plots if p["breaches"]}  # a step: one breach
    assert f"{len(rows)} values of 17 metrics over 7 windows" in out.read_text()


def _online_row(hour: int, storefront: str, version: int, arm: str, lists: int, clicked: int, coverage: float) -> dict:
    return {"hour": hour, "surface": "recommend", "storefront": storefront, "source": "model",
            "model_version": version, "experiment": "canary-2" if arm else "", "arm": arm, "lists": lists,
            "users": lists, "clicked_lists": clicked, "clicks": clicked, "purchases": 0, "converted_users": 0,
            "revenue": 0.0, "inferred_events": 0,
            "metrics": {"coverage": coverage, "diversity": 0.6, "novelty": 9.0, "avg_popularity": 12.0,
                        "new_item_share": 0.05, "click_positions": {"1": clicked}}}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.chromium
def test_report_draws_online_metrics_per_version_and_arm(engine, database_url, tmp_path, monkeypatch):
    hour = (now_ms() // 3_600_000 - 5) * 3_600_000
    rows = []
    for h in range(5):  # version 1 serves all along; a canary of version 2 serves from the third hour
        at = hour + h * 3_600_000
        rows += [_online_row(at, "shop-a", 1, "control" if h >= 2 else "", 300, 30 + h, 0.2),
                 _online_row(at, "shop-b", 1, "control" if h >= 2 else "", 100, 20, 0.4)]
        if h >= 2:
            rows.append(_online_row(at, "shop-a", 2, "treatment", 50, 2, 0.1))
    rows.append(_online_row(hour + 4 * 3_600_000, "shop-b", 2, "treatment", 0, 0, 0.0))  # no list: no ratio
    save_online_metrics(engine, rows, now_ms())

    monkeypatch.setenv("STREAMREC_DATABASE_URL", database_url)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--out", str(out), "--hours", "24"])
    assert result.exit_code == 0 and "online metrics of 5 served hours" in result.output, result.output
    page = out.read_text(encoding="utf-8")
    assert "nan" not in page.lower().replace("nanos", "") and "inf<" not in page
    plots = rendered_plots(out, tmp_path, "online-plot")
    lines = {"recommend model v1": 2, "recommend model v1 canary-2:control": 3,
             "recommend model v2 canary-2:treatment": 3}
    assert sorted(p["metric"] for p in plots) == sorted(
        ["ctr", "clicks_per_list", "conversion", "coverage", "diversity", "novelty", "avg_popularity",
         "new_item_share"])  # no revenue was given: no revenue plot
    for p in plots:
        assert p["shown"] > 0 and len(p["lines"]) == len(lines) and p["points"] == sum(lines.values()), p
    # the latest hour of the control line, pooled over both storefronts by hand
    latest = re.search(r"<tr class=\"\"><td class=\"\">recommend model v1 canary-2:control</td>(.*?)</tr>",
                       page).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", latest)
    assert cells[1:3] == ["400", "400"] and float(cells[3]) == pytest.approx((34 + 20) / 400, abs=1e-4)
    assert float(cells[6]) == pytest.approx((0.2 * 300 + 0.4 * 100) / 400, abs=1e-4)  # coverage, list-weighted


def test_report_says_when_no_list_was_served():
    from drift.report import render

    page = render([], generated_at_ms=0, online=[])
    assert "No served lists recorded yet." in page and 'class="online-plot"' not in page
