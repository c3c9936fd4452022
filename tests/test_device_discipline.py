"""The learner keeps each computation on one device, checked on a CPU by :mod:`tests.device_discipline`.

Training (full and sampled softmax), judging, drift, id admission, text tuning (top layer and
LoRA), the backtest's strategies and serving run with ``Device("cuda")`` inside
:class:`~tests.device_discipline.CudaOnCpu`, which fails wherever CUDA would refuse to mix a
host and a device tensor. Real GPU runs are ``python -m bench.gpu``'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from backtest.protocol import run_backtest
from backtest.settings import BacktestSettings
from bench.scale import synthetic_bundle, time_steps
from learner.bundle import ModelBundle
from learner.device import Device
from learner.finetune import FineTuneConfig
from learner.model import ModelConfig
from learner.text import TextEncoder
from learner.text_tuning import TextTuningConfig
from learner.trainer import TrainConfig
from serving.rankers import Click
from serving.snapshot import build_snapshot
from store.drift_metrics import recent
from store.registry import list_versions
from streams import movielens
from tests.device_discipline import CudaOnCpu, DeviceMixed
from training.job import run_job

CUDA = Device(torch.device("cuda"))
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast is off on a CPU


def test_the_checker_refuses_what_cuda_refuses_and_allows_what_it_allows():
    with CudaOnCpu() as mode:
        shares, candidates = torch.rand(10), torch.arange(3, device="cuda")
        with pytest.raises(DeviceMixed, match="indices should be either on cpu"):
            shares[candidates]  # the sampled step's log-Q correction with host shares
        with pytest.raises(DeviceMixed, match="same device"):
            torch.cat([torch.zeros(2, 0), torch.zeros(2, 3, device="cuda")], dim=1)
        with pytest.raises(DeviceMixed, match="generator"):
            torch.randint(0, 5, (3,), device="cuda", generator=torch.Generator())
        with pytest.raises(DeviceMixed, match="numpy"):
            torch.ones(2, device="cuda").numpy()
        on_device = torch.ones(5, device="cuda")
        picked = on_device[torch.tensor([0, 2])]  # host indices into a device tensor: fine
        assert picked.device.type == "cuda" and picked.is_cuda and mode.on_device(picked * 2)
        layer = torch.nn.Linear(2, 2).to(CUDA.torch_device)
        assert mode.on_device(layer.weight) and layer(torch.ones(1, 2, device="cuda")).is_cuda
        assert not mode.on_device(layer.cpu().weight) and not mode.on_device(CUDA.put(torch.ones(2)).cpu())
        assert mode.on_device(CUDA.put(torch.ones(2)))


@pytest.fixture(scope="module")
def small_log() -> tuple[pd.DataFrame, pd.DataFrame]:
    """4,000 MovieLens events of 400 movies, and those movies' catalog."""
    events = pd.DataFrame(movielens.to_events(movielens.load_ratings(), 10 ** 12)).sort_values("ts")
    catalog = pd.DataFrame(movielens.to_catalog(movielens.load_movies()))
    catalog = catalog[catalog["item_id"].isin(events["item_id"][:6_000])][:400]
    return events[events["item_id"].isin(catalog["item_id"])][:4_000], catalog


@pytest.mark.parametrize("strategy, tuning, loss", [
    ("rehearsal", "frozen", "full"), pytest.param("rehearsal", "top", "sampled", marks=pytest.mark.slow),
    pytest.param("rehearsal", "lora", "full", marks=pytest.mark.slow), ("joint", "frozen", "sampled"),
    ("id-only", "frozen", "full")])
def test_backtest_strategies_train_and_rank_on_one_device(small_log, movielens_text_vectors, strategy, tuning, loss):
    events, catalog = small_log
    settings = BacktestSettings(windows=3, eval_sample=200, model=ModelConfig(dim=16, heads=1),
                                finetune=FineTuneConfig(train=TrainConfig(epochs=1, loss=loss, negatives=64),
                                                        text=TextTuningConfig(tuning=tuning, steps=2)))
    with CudaOnCpu():
        result = run_backtest(events, catalog, strategy, settings, cache=dict(movielens_text_vectors), device=CUDA)
    assert result["device"] == "cuda" and len(result["windows"]) == 3


def test_a_sampled_training_step_as_the_scale_benchmark_times_it():
    bundle = synthetic_bundle(5_000, seed=0)
    with CudaOnCpu() as mode:
        assert time_steps(bundle, "sampled", steps=2, negatives=128, seed=0, device=CUDA) > 0
        assert mode.on_device(bundle.model.item_ids.weight)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_training_job_judges_and_measures_drift_on_one_device(movielens_store):
    engine, config = movielens_store
    for window in (1, 2):  # the second job fine-tunes the first's version and measures how it moved
        with CudaOnCpu():
            outcome = run_job(engine, config, [window], "test/train", device=CUDA)
        assert outcome["status"] in ("promoted", "rejected") and outcome["trained_events"] > 0
    version = list_versions(engine)[0]
    assert version["device"] == "cuda" and version["metrics"]["candidate"]["recall@20"] > 0
    measured = {row["metric"] for row in recent(engine) if row["window_id"] == 2}
    assert {"purchase_share", "prequential_recall@20", "item_vector_shift", "topk_overlap@20",
            "serving_score_psi"} <= measured, measured


def test_serving_answers_on_one_device(small_log, movielens_text_vectors):
    events, catalog = small_log
    bundle = ModelBundle.build(ModelConfig(dim=16, heads=1), catalog=catalog, events=events,
                               cache=dict(movielens_text_vectors))
    history = [Click(item) for item in events["item_id"][:5]]
    with CudaOnCpu():
        recommender = build_snapshot({"id": 1}, bundle, catalog, encoder=TextEncoder(CUDA),
                                  cache=dict(movielens_text_vectors), device=CUDA)
        assert len(recommender.recommend(history, 10)) == 10
        assert len(recommender.similar(history[0].item_id, 5)) == 5
        query = recommender.text_encoder.encode(["a comedy"])[0]
        assert len(recommender.search(np.asarray(query), 5, history)) == 5
