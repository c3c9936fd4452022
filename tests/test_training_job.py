"""Training jobs on sealed MovieLens windows in a real store: publish, lineage, gate, rollback, integrity.

Each test store holds three sealed windows of real MovieLens-100k ratings and the real
catalog; the real MiniLM encoder embeds the item texts (cached in the store once).
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from learner.checkpoint import ChecksumMismatch
from learner.device import pick_device
from learner.evaluate import BEYOND_ACCURACY
from store.models import model_versions
from store.registry import (
    RegistryError,
    finish_run,
    list_runs,
    list_versions,
    promote,
    rollback,
    serving_version,
    start_run,
)
from streamrec.cli import id_rows
from tests.harness import MOVIELENS_STORE_ENV as ENV
from training.job import judge, read_window, run_training_job, version_row
from training.versions import load_serving


def test_versions_are_published_with_lineage_and_gated(movielens_store, database_url):
    engine, config = movielens_store
    first = run_training_job(database_url, ENV, 1, "test-host:1")
    second = run_training_job(database_url, ENV, 2, "test-host:1")
    assert (first["status"], second["status"]) == ("promoted", "promoted"), (first, second)
    v2, v1 = list_versions(engine)
    assert (v1["parent_id"], v2["parent_id"]) == (None, v1["id"])
    assert (v1["windows"], v2["windows"]) == ([1], [2])
    assert v1["metrics"]["baseline_name"] == "popularity" and v2["metrics"]["baseline_name"] == f"version {v1['id']}"
    assert v2["rehearsal_size"] > 0 and v2["device"] in ("cpu", "cuda")
    assert v2["metrics"]["candidate"]["recall@20"] > 0
    for side in ("candidate", "baseline"):  # the gate record, beyond accuracy too (finite: JSON has no NaN)
        measured = v2["metrics"][side]
        assert all(math.isfinite(measured[f"{name}@{k}"]) for name in BEYOND_ACCURACY for k in (10, 20)), measured
        assert 0 < measured["coverage@10"] <= measured["coverage@20"] <= 1 and measured["avg_popularity@20"] > 0
    assert v2["metrics"]["diversity_vectors"] == "text" and "; coverage@20 " in v2["reason"]
    assert v1["metrics"]["baseline_name"] == "popularity" and "coverage@20" in v1["metrics"]["baseline"]
    ids = v2["metrics"]["ids"]  # the id tables and their policy, as `streamrec models` shows them
    assert ids["items"]["rows"] == ids["items"]["admitted"] + 2 and ids["items"]["retired"] == 0
    assert ids["policy"] == "admit when known, retire after 180 days unseen"
    assert id_rows(ids) == f"items {ids['items']['rows']:,} (+{ids['items']['added']} -0)"
    runs = list_runs(engine)
    assert [(r["window_id"], r["status"], r["version_id"]) for r in runs] == [(2, "succeeded", v2["id"]),
                                                                             (1, "succeeded", v1["id"])]
    assert all(r["worker"].startswith("test-host:1/train:") and r["log"] for r in runs)

    # a broken candidate (the item vectors scrambled) is rejected; the serving version stays
    device = pick_device()
    data = read_window(engine, config, 3)
    broken = data.serving[1].copy()
    with torch.no_grad():
        for name, tensor in broken.model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(tensor.flatten()[torch.randperm(tensor.numel())].view_as(tensor))
    verdict = judge(data, broken, config, device)
    assert verdict[0] is False and "<" in verdict[1], verdict[1]
    run_id = start_run(engine, 3, "test-host:1/train:0")
    finish_run(engine, run_id, version_row(data, broken, verdict, time.perf_counter(), device))
    assert list_versions(engine, 1)[0]["status"] == "rejected"
    assert serving_version(engine)["id"] == v2["id"]

    # rollback serves the previous promoted version; promote brings any version back
    assert rollback(engine) == (v2["id"], v1["id"])
    assert load_serving(engine)[0]["id"] == v1["id"]
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(engine)
    promote(engine, v2["id"])
    assert serving_version(engine)["id"] == v2["id"]
    with pytest.raises(RegistryError, match="no model version 999"):
        promote(engine, 999)


def test_tampered_weights_are_refused_before_use(movielens_store, database_url):
    engine, _ = movielens_store
    run_training_job(database_url, ENV, 1, "test-host:1")
    version = serving_version(engine)
    with engine.begin() as conn:
        weights = conn.execute(model_versions.select().where(model_versions.c.id == version["id"])).one().weights
        tampered = weights[:-1] + bytes([weights[-1] ^ 1])
        conn.execute(model_versions.update().where(model_versions.c.id == version["id"]).values(weights=tampered))
    with pytest.raises(ChecksumMismatch):
        load_serving(engine)


def test_a_jobs_windows_calibrate_their_shared_drift_reference_once(movielens_store, monkeypatch):
    """Coalesced windows with the same reference windows share its calibration (the costliest part
    of input drift), so a job's drift cost grows only by what each window measures of itself."""
    import drift.window
    from training.drift_recording import WindowDrift
    from training.job import read_job

    engine, config = movielens_store
    config = config.replace(drift_reference_windows=1)
    calibrated = []
    real = drift.window.reference_calibration
    monkeypatch.setattr(drift.window, "reference_calibration",
                        lambda *args, **kwargs: calibrated.append(args[3]) or real(*args, **kwargs))
    data = read_job(engine, config, [2, 3])
    job = WindowDrift.for_job(engine, config, [2, 3])
    for window_id, window_drift in job.items():
        window_drift.before_training(data.one_window(window_id, config.gate_holdout), pick_device())
    assert calibrated == ["window 1"]
    for window_drift in job.values():
        reference = [v for v in window_drift.values if v.metric == "popularity_psi_reference"]
        assert reference and all(v.detail.get("source") == "window 1" for v in reference)
