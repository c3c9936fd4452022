"""`streamrec backtest` on a small synthetic event log, through the real command line.

The log: 36 catalog items in four categories, 30 users who each browse one category, and
two "hit" items that half of all events name. Four cold items (in the catalog
from the start) are first clicked in the last quarter of the log. Timestamps mix epoch
seconds, epoch milliseconds and ISO-8601. The learned strategies use a tiny model (width 16,
two epochs) and, with the text tower, the real MiniLM encoder.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from backtest.eventlog import load_events, load_items, parse_ts
from backtest.metrics import transfer
from backtest.protocol import split_windows
from backtest.strategies import STRATEGIES
from learner.evaluate import BEYOND_ACCURACY
from streamrec.cli import BACKTEST_STRATEGIES, main

CATEGORIES = {"shoes": "Trail running shoe", "books": "Mystery novel", "games": "Board game", "music": "Jazz album"}
START = 1_700_000_000  # epoch seconds
N_EVENTS, WINDOWS, K = 400, 4, 5
COLD = [f"new-{c}" for c in CATEGORIES]
BEYOND = [f"{name}@{K}" for name in BEYOND_ACCURACY]
TINY = ["--dim", "16", "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--eval-sample", "50",
        "--rehearsal-capacity", "200"]


def _ts(i: int) -> str:
    """Event i's time, one minute apart, written as seconds, milliseconds or ISO-8601 in turn."""
    seconds = START + 60 * i
    if i % 3 == 0:
        return str(seconds)
    if i % 3 == 1:
        return str(seconds * 1000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def synthetic_log(folder: Path) -> tuple[Path, Path, list[dict]]:
    rng = np.random.default_rng(0)
    items = []
    for category, noun in CATEGORIES.items():
        items += [{"item_id": f"{category}-{n}", "title": f"{noun} number {n}", "category": category,
                   "description": f"A {noun.lower()} for fans of {category}."} for n in range(8)]
        items.append({"item_id": f"new-{category}", "title": f"{noun}, new edition", "category": category,
                      "description": ""})
    rows = []
    for i in range(N_EVENTS):
        user = int(rng.integers(30))
        category = list(CATEGORIES)[user % 4]
        if rng.random() < 0.5:
            item = ("shoes-0", "books-1")[i % 2]  # the two hits
        elif i >= 3 * N_EVENTS // 4 and rng.random() < 0.3:
            item = f"new-{category}"
        else:
            item = f"{category}-{int(rng.integers(8))}"
        rows.append({"user_id": f"user-{user}", "item_id": item, "type": "purchase" if i % 5 == 0 else "click",
                     "ts": _ts(i), "storefront": "shop", "session_id": f"s-{user}-{i // 50}"})
    order = rng.permutation(N_EVENTS)  # the file is not in time order
    events_path, items_path = folder / "EVENTS.csv", folder / "ITEMS.csv"
    _write(events_path, [rows[i] for i in order])
    _write(items_path, items)
    return events_path, items_path, rows


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def log_files(tmp_path_factory):
    return synthetic_log(tmp_path_factory.mktemp("log"))


def backtest(*args: str):
    return CliRunner().invoke(main, ["backtest", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def results(log_files, tmp_path_factory):
    """Every strategy's RESULT.json for the synthetic log."""
    events_path, items_path, _ = log_files
    out = tmp_path_factory.mktemp("results")
    found = {}
    for strategy in STRATEGIES:
        result = backtest("--events", str(events_path), "--items", str(items_path), "--windows", str(WINDOWS),
                          "--strategy", strategy, "--k", str(K), "--out", str(out / f"{strategy}.json"), *TINY)
        assert result.exit_code == 0, result.output
        found[strategy] = (json.loads((out / f"{strategy}.json").read_text()), result)
    return found


def test_cli_offers_exactly_the_engine_strategies():
    assert BACKTEST_STRATEGIES == STRATEGIES


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_result_has_the_documented_shape(results, strategy):
    result, run = results[strategy]
    recall, ndcg, cold = f"recall@{K}", f"ndcg@{K}", f"cold_recall@{K}"
    assert {"strategy", "windows", "mean", "bwt", "forgetting", "total_train_seconds", "device"} <= set(result)
    assert result["strategy"] == strategy and result["k"] == K
    assert result["device"] == "cpu" or result["device"].startswith("cuda")
    windows = result["windows"]
    assert [w["window"] for w in windows] == list(range(WINDOWS))
    assert [w["events"] for w in windows] == [N_EVENTS // WINDOWS] * WINDOWS  # distinct times: equal counts
    for w in windows:
        assert {"window", "events", recall, ndcg, cold, "train_seconds"} <= set(w)
        assert 0 <= w[recall] <= 1 and 0 <= w[ndcg] <= w[recall] + 1e-9
        assert w[cold] is None or 0 <= w[cold] <= 1
        assert w["train_seconds"] >= 0
    assert result["total_train_seconds"] == pytest.approx(sum(w["train_seconds"] for w in windows), abs=0.01)
    for name in (recall, ndcg, "train_seconds", *BEYOND):  # means are over the windows after the first training
        assert result["mean"][name] == pytest.approx(np.mean([w[name] for w in windows[1:]]))
    assert f"{strategy}: mean recall@{K}" in run.stderr and f"coverage@{K}" in run.stderr


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_window_is_measured_beyond_accuracy(results, log_files, strategy):
    result, _ = results[strategy]
    _, items_path, rows = log_files
    assert result["diversity_vectors"] == "text"  # every strategy by the catalog's MiniLM vectors
    for w in result["windows"]:
        assert 0 < w[f"coverage@{K}"] <= 1 and 0 <= w[f"diversity@{K}"] <= 2
        assert w[f"novelty@{K}"] > 0 and w[f"avg_popularity@{K}"] >= 0
    first = result["windows"][0]
    assert first[f"avg_popularity@{K}"] == 0  # nothing before the first window: no item has been seen
    never_named = set(load_items(items_path)["item_id"]) - {r["item_id"] for r in rows}
    known = len({r["item_id"] for r in rows[:N_EVENTS // WINDOWS]} | never_named)  # the catalog of window 0
    assert first[f"novelty@{K}"] == pytest.approx(np.log2(known))  # -log2(1 / known): every item alike


def test_popularity_recommends_fewer_and_more_popular_items(results):
    """One list for everyone covers less of the catalog, with more popular, less novel items."""
    popularity, learned = results["popularity"][0]["mean"], results["rehearsal"][0]["mean"]
    assert popularity[f"coverage@{K}"] < learned[f"coverage@{K}"]
    assert popularity[f"avg_popularity@{K}"] > learned[f"avg_popularity@{K}"]
    assert popularity[f"novelty@{K}"] < learned[f"novelty@{K}"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_forgetting_and_bwt_follow_from_the_R_matrix(results, strategy):
    result, _ = results[strategy]
    R = result["R"]
    assert len(R) == WINDOWS and all(len(row) == WINDOWS for row in R)
    for i in range(WINDOWS):
        for j in range(WINDOWS):
            assert (R[i][j] is None) == (j > i)
            assert R[i][j] is None or 0 <= R[i][j] <= 1
    last = WINDOWS - 1
    forgetting = np.mean([max(R[i][j] for i in range(j, last)) - R[last][j] for j in range(last)])
    bwt = np.mean([R[last][j] - R[j][j] for j in range(last)])
    assert result["forgetting"] == pytest.approx(forgetting) and result["bwt"] == pytest.approx(bwt)
    assert result["R_events"] == [50] * WINDOWS


def test_text_tower_ranks_cold_items(results):
    """Cold items join the catalog before their window; with text they start among their look-alikes."""
    cold = f"cold_recall@{K}"
    with_text, id_only = results["rehearsal"][0]["mean"][cold], results["id-only"][0]["mean"][cold]
    assert with_text > id_only + 0.1, (with_text, id_only)


def test_cold_items_are_those_first_seen_in_the_window(results, log_files):
    _, _, rows = log_files
    per_window = N_EVENTS // WINDOWS  # rows are in time order, one minute apart
    seen, expected = set(), []
    for w in range(WINDOWS):
        items = [r["item_id"] for r in rows[w * per_window:(w + 1) * per_window]]
        expected.append(sum(item not in seen for item in items))
        seen.update(items)
    assert expected[0] == per_window and expected[-1] > 0
    for strategy, (result, _) in results.items():
        assert [w["cold_events"] for w in result["windows"]] == expected, strategy


def test_popularity_follows_the_recent_hits(results):
    windows = results["popularity"][0]["windows"]
    assert windows[0][f"recall@{K}"] == 0  # nothing counted yet: every item ties, and ties count against
    assert all(w[f"recall@{K}"] > 0.4 for w in windows[1:])  # half the events are the two hits
    assert all(w[f"cold_recall@{K}"] == 0 for w in windows[1:] if w["cold_events"])  # never counted, never ranked


def test_learned_strategies_learn_and_rehearse(results):
    for strategy in ("rehearsal", "naive", "joint", "id-only", "river-mf"):
        result, _ = results[strategy]
        first, later = result["windows"][0][f"recall@{K}"], result["mean"][f"recall@{K}"]
        assert later > (0.25 if strategy == "joint" else 0.4), (strategy, first, later)  # random: about 0.15
        assert all(w["train_seconds"] > 0 for w in result["windows"]), strategy
    rehearsal = [w["rehearsal_events"] for w in results["rehearsal"][0]["windows"]]
    assert rehearsal[0] == 0 and all(n > 0 for n in rehearsal[1:])  # the memory minus the window itself
    assert all(w["rehearsal_events"] == 0 for w in results["naive"][0]["windows"])
    joint = [w["trained_events"] for w in results["joint"][0]["windows"]]
    assert joint == [N_EVENTS // WINDOWS * (w + 1) for w in range(WINDOWS)]  # everything so far, every time
    assert all(w["epochs"] >= 1 for w in results["rehearsal"][0]["windows"])


def test_text_cache_file_is_reused(log_files, tmp_path):
    events_path, items_path, _ = log_files
    cache = tmp_path / "texts.safetensors"
    args = ["--events", str(events_path), "--items", str(items_path), "--windows", "2", "--strategy", "naive",
            "--text-cache", str(cache), "--k", str(K), *TINY]
    first = backtest(*args, "--out", str(tmp_path / "a.json"))
    assert first.exit_code == 0, first.output
    written = cache.stat().st_mtime_ns
    second = backtest(*args, "--out", str(tmp_path / "b.json"))
    assert second.exit_code == 0, second.output
    assert cache.stat().st_mtime_ns == written  # nothing new to embed, nothing rewritten
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert [w[f"recall@{K}"] for w in a["windows"]] == [w[f"recall@{K}"] for w in b["windows"]]  # seeded
    assert a["embed_seconds"] > b["embed_seconds"]


def test_unknown_items_are_allowed_and_reported(tmp_path):
    events = tmp_path / "EVENTS.csv"
    items = tmp_path / "ITEMS.csv"
    events.write_text("user_id,item_id,type,ts\n" + "".join(
        f"u{i % 3},i{i % 4},click,{START + i}\n" for i in range(12)))
    items.write_text("item_id,title\ni0,First\ni1,Second\n")
    result = backtest("--events", str(events), "--items", str(items), "--windows", "2", "--strategy", "popularity")
    assert result.exit_code == 0, result.output
    assert "2 items of EVENTS.csv are not in ITEMS.csv; they have no text" in result.stderr
    out = json.loads(result.stdout)
    assert out["items"] == 4 and out["items_without_text"] == 2 and len(out["windows"]) == 2


HEADER = "user_id,item_id,type,ts\n"


@pytest.mark.parametrize("events, message", [
    ("", "EVENTS.csv line 1: the file is empty; expected a header with the columns user_id, item_id, type, ts"),
    ("user_id,item_id,type\nu1,i1,click\n", "EVENTS.csv line 1, column ts: missing from the header"),
    (HEADER, "EVENTS.csv line 2: no rows after the header"),
    (HEADER + "u1,i1,click,1700000000\nu1,i2,click,abc\n",
     "EVENTS.csv line 3, column ts: 'abc' is not epoch seconds, epoch milliseconds or ISO-8601"),
    (HEADER + "u1,i1,click,1700000000\nu1,i2,click,2023-02-30T10:00:00\n",
     "EVENTS.csv line 3, column ts: '2023-02-30T10:00:00' is not epoch seconds"),
    (HEADER + "u1,i1,click,-5\n", "EVENTS.csv line 2, column ts: '-5' is not epoch seconds"),
    (HEADER + "u1,i1,view,1700000000\n", "EVENTS.csv line 2, column type: 'view' is not click or purchase"),
    (HEADER + "u1,i1,click,1700000000\n,i2,click,1700000001\n", "EVENTS.csv line 3, column user_id: empty"),
    (HEADER + "u1,i1,click\n", "EVENTS.csv line 2: 3 fields, but the header has 4"),
    (HEADER + "u1,i1,click,1\n\nu1,i1,buy,2\nu1,,click,x\nu2,i3,click,4\n",
     "EVENTS.csv line 4, column type: 'buy' is not click or purchase (and 1 more line with errors)"),
    ("user_id,item_id,type,ts,ts\nu1,i1,click,1,2\n", "EVENTS.csv line 1, column ts: appears twice in the header"),
    (b"user_id,item_id,type,ts\nu1,i1,click,1\nu\xff1,i1,click,2\n", "EVENTS.csv line 3: not valid UTF-8"),
])
def test_malformed_events_name_line_and_column(tmp_path, events, message):
    path = tmp_path / "EVENTS.csv"
    path.write_bytes(events if isinstance(events, bytes) else events.encode())
    result = backtest("--events", str(path), "--strategy", "popularity", "--windows", "2")
    assert result.exit_code == 1
    assert f"Error: {message}" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("items, message", [
    ("item_id,category\ni1,x\n", "ITEMS.csv line 1, column title: missing from the header"),
    ("item_id,title\ni1,First\ni2,\n", "ITEMS.csv line 3, column title: empty"),
    ('item_id,title,description\ni1,First,"two\nlines"\n,Second,\n', "ITEMS.csv line 4, column item_id: empty"),
])
def test_malformed_items_name_line_and_column(tmp_path, items, message):
    events = tmp_path / "EVENTS.csv"
    events.write_text(HEADER + "u1,i1,click,1700000000\nu1,i2,click,1700000001\n")
    path = tmp_path / "ITEMS.csv"
    path.write_text(items)
    result = backtest("--events", str(events), "--items", str(path), "--strategy", "popularity", "--windows", "2")
    assert result.exit_code == 1 and f"Error: {message}" in result.stderr


def test_windows_that_cannot_be_formed_are_refused(tmp_path):
    path = tmp_path / "EVENTS.csv"
    path.write_text(HEADER + "u1,i1,click,1700000000\nu1,i2,click,1700000001\nu1,i3,click,1700009000\n")
    too_many = backtest("--events", str(path), "--strategy", "popularity", "--windows", "4")
    assert too_many.exit_code == 1 and "cannot split 3 events into 4 windows" in too_many.stderr
    gap = backtest("--events", str(path), "--strategy", "popularity", "--windows", "3", "--split", "time")
    assert gap.exit_code == 1 and "window 1 would be empty" in gap.stderr
    assert backtest("--events", str(path), "--strategy", "popularity", "--windows", "2",
                    "--split", "time").exit_code == 0


def test_loaders_normalise_times_and_defaults(log_files):
    events_path, items_path, rows = log_files
    events = load_events(events_path)
    assert events["ts"].tolist() == [(START + 60 * i) * 1000 for i in range(N_EVENTS)]  # sorted, all formats
    assert events["item_id"].tolist() == [r["item_id"] for r in rows]
    assert events["event_id"].is_unique and set(events["storefront"]) == {"shop"}
    catalog = load_items(items_path)
    assert len(catalog) == 36 and catalog["description"].isna().sum() == 4 and set(catalog["storefront"]) == {"default"}
    ms, ok = parse_ts(pd.Series(["2023-11-14T22:13:20", "1e20", "nan", "99999999999"]))
    assert ok.tolist() == [True, False, False, True] and ms[0] == 1_700_000_000_000 and ms[3] == 99_999_999_999_000


def test_split_and_transfer_helpers():
    ts = np.array([1, 1, 1, 1, 1, 1, 2, 3, 4, 5])
    assert split_windows(ts, 2) == [(0, 6), (6, 10)]  # the six events at time 1 stay together
    assert split_windows(ts, 3) == [(0, 6), (6, 7), (7, 10)]
    assert split_windows(ts, 2, by="time") == [(0, 7), (7, 10)]  # [1, 3) and [3, 5]
    forgetting, bwt = transfer([[0.4, None, None], [0.3, 0.5, None], [0.2, 0.1, 0.6]])
    assert forgetting == pytest.approx(((0.4 - 0.2) + (0.5 - 0.1)) / 2)
    assert bwt == pytest.approx(((0.2 - 0.4) + (0.1 - 0.5)) / 2)
    assert all(math.isnan(v) for v in transfer([[0.4]]))
