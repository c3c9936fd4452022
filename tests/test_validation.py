"""Every rejection reason, timestamp normalisation and defaults of the validator."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.validation import REASONS, Invalid, Validator

NOW = 1_763_000_000_000  # 2025-11-13T02:13:20Z
validator = Validator(max_payload_bytes=65536, max_future_s=86400, now_ms=lambda: NOW)


def event(**overrides) -> dict:
    base = {"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1", "ts": NOW}
    return {k: v for k, v in {**base, **overrides}.items() if v is not ...}


def reason_of(raw: bytes, kind: str = "interaction") -> str:
    with pytest.raises(Invalid) as exc:
        getattr(validator, kind)(raw)
    assert exc.value.reason in REASONS
    return exc.value.reason


def test_valid_event_is_normalised_with_defaults():
    out = validator.interaction(orjson.dumps(event(ts="2025-11-13T03:13:20+01:00", price=9.5, quantity=2)))
    assert out == {"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1", "ts": NOW,
                   "storefront": "default", "session_id": None, "price": 9.5, "quantity": 2,
                   "request_id": None, "position": None, "value": None}


def test_feedback_fields_are_checked_on_both_paths():
    good = event(request_id="r1", position=3, value=19.99)
    assert {k: validator.interaction(orjson.dumps(good))[k] for k in ("request_id", "position", "value")} == {
        "request_id": "r1", "position": 3, "value": 19.99}
    bad = {"position 0": event(position=0), "negative value": event(value=-1.0),
           "position as text": event(position="3"), "blank request": event(request_id=" "),
           "huge position": event(position=10_001)}
    table, rows, rejected = validator.interactions([orjson.dumps(good)] + [orjson.dumps(e) for e in bad.values()])
    # a blank optional id means "none given", as for session_id
    assert rows == [0, 4] and table.column("request_id").to_pylist() == ["r1", None]
    reasons = {list(bad)[i - 1]: exc.reason for i, exc in rejected}
    assert reasons == {"position 0": "invalid_value", "negative value": "invalid_value",
                       "position as text": "wrong_type", "huge position": "invalid_value"}


def test_served_lists_are_checked():
    served = {"request_id": "r1", "served_at": NOW, "surface": "recommend", "storefront": "default",
              "source": "model", "model_version": 3, "user_id": "u1", "items": ["a", "b"], "scores": [0.9, 0.5]}
    assert validator.served(orjson.dumps(served))["items"] == ["a", "b"]
    assert reason_of(orjson.dumps({**served, "surface": "home"}), "served") == "invalid_value"
    assert reason_of(orjson.dumps({**served, "scores": [0.9]}), "served") == "invalid_value"
    assert reason_of(orjson.dumps({**served, "items": "a"}), "served") == "wrong_type"
    assert reason_of(orjson.dumps({k: v for k, v in served.items() if k != "request_id"}), "served") == "missing_field"


@pytest.mark.parametrize("ts, expected", [
    (NOW, NOW), (float(NOW) + 0.4, NOW), ("2025-11-13T02:13:20Z", NOW),
    ("2025-11-13T02:13:20", NOW), ("2025-11-13 02:13:20.000+00:00", NOW),
])
def test_ts_forms_normalise_to_utc_epoch_ms(ts, expected):
    assert validator.interaction(orjson.dumps(event(ts=ts)))["ts"] == expected


@pytest.mark.parametrize("raw, reason, kind", [(*case, "interaction")[:3] for case in [
    (b"x" * 70_000, "payload_too_large"),
    (b'{"event_id": "\xff\xfe"}', "not_utf8"),
    (b"{not json", "not_json"),
    (b"", "not_json"),
    (b"[1, 2]", "not_an_object"),
    (orjson.dumps(event(user_id=...)), "missing_field"),
    (orjson.dumps(event(user_id=None)), "missing_field"),
    (orjson.dumps(event(item_id="  ")), "empty_field"),
    (orjson.dumps(event(user_id=42)), "wrong_type"),
    (orjson.dumps(event(ts=True)), "wrong_type"),
    (orjson.dumps(event(price="9.99")), "wrong_type"),
    (orjson.dumps(event(quantity=1.5)), "wrong_type"),
    (orjson.dumps(event(type="view")), "unknown_type"),
    (orjson.dumps(event(ts="yesterday")), "invalid_ts"),
    (orjson.dumps(event(ts=NOW + 86_400_001)), "ts_in_future"),
    (orjson.dumps(event(ts=NOW // 1000)), "ts_before_2000"),
    (orjson.dumps(event(ts="1999-12-31T23:59:59Z")), "ts_before_2000"),
    (orjson.dumps(event(price=-1)), "invalid_value"),
    (orjson.dumps(event(quantity=0)), "invalid_value"),
    (orjson.dumps(event(event_id="x" * 300)), "invalid_value"),
    (orjson.dumps(event(quantity=2**31)), "invalid_value"),
    (orjson.dumps(event(event_id="a\x00b")), "invalid_value"),
    (orjson.dumps({"item_id": "i1", "title": "a\x00b"}), "invalid_value", "catalog"),
]])
def test_each_bad_input_has_its_own_reason(raw, reason, kind):
    assert reason_of(raw, kind) == reason


def test_seconds_instead_of_milliseconds_gets_a_hint():
    with pytest.raises(Invalid, match="looks like seconds"):
        validator.interaction(orjson.dumps(event(ts=NOW // 1000)))


def test_unknown_fields_are_ignored():
    assert "extra" not in validator.interaction(orjson.dumps(event(extra={"a": 1})))


def test_catalog_event_defaults_ts_to_now_and_storefront_to_default():
    out = validator.catalog(orjson.dumps({"item_id": "sku-1", "title": "Red shoes"}))
    assert out == {"item_id": "sku-1", "title": "Red shoes", "description": None, "category": None,
                   "storefront": "default", "ts": NOW}
    assert reason_of(orjson.dumps({"item_id": "sku-1"}), "catalog") == "missing_field"
    assert reason_of(orjson.dumps({"item_id": "sku-1", "title": ["x"]}), "catalog") == "wrong_type"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["event_id", "type", "user_id", "item_id", "ts", "price",
                                                  "quantity", "storefront", "session_id"]),
                                 st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                                           st.floats(), st.lists(st.integers(), max_size=2)))
                 .map(lambda d: json.dumps(d).encode())))
def test_any_input_is_either_valid_or_rejected_with_a_known_reason(raw):
    try:
        out = validator.interaction(raw)
    except Invalid as exc:
        assert exc.reason in REASONS
    else:
        assert out["type"] in ("click", "purchase") and isinstance(out["ts"], int)


def _one_by_one(raw: bytes):
    try:
        return validator.interaction(raw)
    except Invalid as exc:
        return (exc.reason, exc.detail)


def _in_a_batch(raws: list[bytes]) -> list:
    table, rows, rejected = validator.interactions(raws)
    outcomes: list = [None] * len(raws)
    for row, event in zip(rows, table.to_pylist()):
        outcomes[row] = event
    for i, exc in rejected:
        outcomes[i] = (exc.reason, exc.detail)
    return outcomes


_EDGE_VALUES = st.one_of(
    st.text(min_size=1, max_size=30), st.integers(min_value=NOW - 10**9, max_value=NOW),
    st.floats(min_value=0, max_value=1e6), st.integers(min_value=1, max_value=100), st.none(), st.booleans(),
    st.sampled_from(["", " ", "\t", "\u2003", "\x1c", "\x85", " a ", "a\x00"]),
    st.text(min_size=255, max_size=258), st.text(alphabet="é中😀", min_size=255, max_size=258),
    st.integers(), st.integers(min_value=NOW - 10**6, max_value=NOW + 86_400_010),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, -2**31, 2**63, 2**64, 10**30, 0.0, -0.0, 1.5, 1e308]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["click", "purchase", "Click", "view"]),
    st.sampled_from(["2025-11-13T02:13:20Z", "2025-11-13", "1999-12-31T23:59:59Z", "yesterday"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))

_MESSAGES = st.builds(
    lambda overrides, removed: json.dumps(
        {k: v for k, v in {**event(storefront="shop", session_id="s1", price=9.5, quantity=2),
                           **overrides}.items() if k not in removed}, ensure_ascii=False).encode(),
    st.dictionaries(st.sampled_from(["event_id", "type", "user_id", "item_id", "ts", "price", "quantity",
                                     "storefront", "session_id", "extra"]), _EDGE_VALUES, max_size=2),
    st.sets(st.sampled_from(["event_id", "type", "user_id", "item_id", "ts", "storefront", "price"]), max_size=1))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(_MESSAGES, st.binary(max_size=40)), min_size=1, max_size=12))
def test_a_batch_gets_the_answers_of_one_message_at_a_time(raws):
    """The ingest path's batch validation accepts, normalises and rejects exactly as the rules do."""
    assert _in_a_batch(raws) == [_one_by_one(raw) for raw in raws]


def test_a_batch_survives_what_the_decoders_refuse():
    deep = b'{"event_id": "e1", "extra": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    table, rows, rejected = validator.interactions([deep, b"\xff\xfe", orjson.dumps(event())])
    assert rows == [2] and [(i, exc.reason) for i, exc in rejected] == [(0, "not_json"), (1, "not_utf8")]


def test_a_batch_keeps_message_order_when_some_need_the_rule_by_rule_path():
    raws = [orjson.dumps(event(event_id=f"e{i}", ts=NOW if i % 3 else "2025-11-13T02:13:20Z", price=i))
            for i in range(30)] + [b"{bad"]
    table, rows, rejected = validator.interactions(raws)
    assert rows == list(range(30)) and table.column("event_id").to_pylist() == [f"e{i}" for i in range(30)]
    assert set(table.column("ts").to_pylist()) == {NOW}
    assert [(i, exc.reason) for i, exc in rejected] == [(30, "not_json")]
