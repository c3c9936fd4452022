"""Benchmark results name their commit, date, machine and settings, and never replace each other."""

from __future__ import annotations

import json

from bench.gpu import agree
from bench.provenance import commit, write_result


def test_runs_of_a_bench_sit_side_by_side_with_their_provenance(tmp_path):
    first = write_result("gpu", {"device": "cpu"}, {"cpu": {"job": {"job_s": 1.0}}}, tmp_path)
    second = write_result("gpu", {"device": "cpu"}, {"cpu": {"job": {"job_s": 2.0}}}, tmp_path)
    assert first != second and sorted(p.name for p in (tmp_path / "gpu").iterdir()) == sorted([first.name, second.name])
    runs = [json.loads(p.read_text()) for p in (first, second)]
    assert [r["result"]["cpu"]["job"]["job_s"] for r in runs] == [1.0, 2.0]
    for run in runs:
        assert run["bench"] == "gpu" and run["commit"] == commit() and run["commit"] != "unknown"
        assert run["machine"]["cpu"] and run["machine"]["cpu_cores"] >= 1 and run["settings"] == {"device": "cpu"}
        assert first.name.startswith(run["date"][:4])


def test_cpu_and_cuda_agree_within_the_stated_tolerance():
    assert agree(0.25, 0.25) and agree(0.25, 0.2376) and not agree(0.25, 0.2374)
    assert agree(0.05, 0.041) and not agree(0.05, 0.039)  # 0.01 absolute where 5% is less


def test_a_run_names_the_settings_it_changed_and_its_figures_say_so(tmp_path, monkeypatch):
    from bench import render

    monkeypatch.setenv("STREAMREC_TRAIN_UPDATE_EPOCHS", "1")
    monkeypatch.setenv("STREAMREC_DATABASE_URL", "postgresql://user:secret@db/streamrec")
    path = write_result("freshness", {"rate": 2000}, {"latency_p50_s": 30.0}, tmp_path)
    assert json.loads(path.read_text())["environment"]["STREAMREC_TRAIN_UPDATE_EPOCHS"] == "1"
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    line = render.provenance_line([render.Source(str(path.relative_to(tmp_path)))])
    assert "`STREAMREC_TRAIN_UPDATE_EPOCHS=1`" in line and "secret" not in line
