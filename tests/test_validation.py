"""Every rejection reason, timestamp normalisation and defaults of the validator."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings, strategies as st

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
                   "storefront": "default", "session_id": None, "price": 9.5, "quantity": 2}


@pytest.mark.parametrize("ts, expected", [
    (NOW, NOW), (float(NOW) + 0.4, NOW), ("2025-11-13T02:13:20Z", NOW),
    ("2025-11-13T02:13:20", NOW), ("2025-11-13 02:13:20.000+00:00", NOW),
])
def test_ts_forms_normalise_to_utc_epoch_ms(ts, expected):
    assert validator.interaction(orjson.dumps(event(ts=ts)))["ts"] == expected


@pytest.mark.parametrize("raw, reason", [
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
])
def test_each_bad_input_has_its_own_reason(raw, reason):
    assert reason_of(raw) == reason


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
