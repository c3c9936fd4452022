"""Turn raw message bytes into normalised events, or a rejection with a reason.

The rules follow the field declarations of :mod:`streams.schema`; one call costs a few
microseconds, so the same code serves the Kafka ingest path, ``POST /events`` and the
producer client (which validates before sending).

>>> v = Validator(now_ms=lambda: 1_763_000_000_000)
>>> v.interaction(b'{"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i9",'
...               b' "ts": "2025-11-13T02:13:20Z"}')["ts"]
1763000000000
>>> try:
...     v.interaction(b'{"event_id": "e1", "type": "view", "user_id": "u1", "item_id": "i9",'
...                   b' "ts": 1763000000000}')
... except Invalid as exc:
...     print(exc.reason, "-", exc.detail)
unknown_type - type must be one of click, purchase, got 'view'
"""

from __future__ import annotations

import math
import time
import typing
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from streams.schema import EVENT_TYPES, CatalogEvent, InteractionEvent

MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 16_384

# Every reason a message can be rejected for; the README documents each one.
REASONS = {
    "payload_too_large": "the message is larger than STREAMREC_MAX_PAYLOAD_BYTES",
    "not_utf8": "the bytes are not valid UTF-8",
    "not_json": "the text is not valid JSON",
    "not_an_object": "the JSON is not an object",
    "missing_field": "a required field is absent",
    "empty_field": "a required field is an empty or blank string",
    "wrong_type": "a field has the wrong JSON type",
    "unknown_type": "`type` is neither click nor purchase",
    "invalid_ts": "`ts` is a string but not ISO-8601",
    "ts_in_future": "`ts` is further in the future than STREAMREC_MAX_FUTURE_S",
    "ts_before_2000": "`ts` is before 2000-01-01 (often: seconds sent instead of milliseconds)",
    "invalid_value": "a value is out of range (negative price, quantity below 1, id too long)",
    "duplicate_event_id": "the event_id was already accepted within STREAMREC_DEDUPE_HORIZON_S",
}


class Invalid(ValueError):
    """A message broke a rule; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _kind(annotation: Any) -> tuple[str, bool]:
    """Map a Record field annotation to (kind, nullable)."""
    args = set(typing.get_args(annotation)) or {annotation}
    nullable = type(None) in args
    args.discard(type(None))
    if args == {int, str}:
        return "ts", nullable
    (only,) = args
    return {str: "str", int: "int", float: "number"}[only], nullable


def _field_rules(record: type) -> list[tuple[str, str, bool, Any]]:
    """(name, kind, required, default) for each field of a faust Record."""
    opts = record._options
    rules = []
    for name, annotation in opts.fields.items():
        kind, _ = _kind(annotation)
        rules.append((name, kind, name not in opts.defaults, opts.defaults.get(name)))
    return rules


INTERACTION_RULES = _field_rules(InteractionEvent)
CATALOG_RULES = _field_rules(CatalogEvent)
ID_FIELDS = {"event_id", "user_id", "item_id", "session_id", "storefront"}


def parse_ts(value: Any) -> int:
    """Epoch milliseconds (int or float) or ISO-8601 text to UTC epoch milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid("wrong_type", f"ts must be epoch milliseconds or an ISO-8601 string, "
                                    f"got {type(value).__name__}")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Invalid("invalid_ts", f"ts {value[:64]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return int(parsed.timestamp() * 1000)
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid("wrong_type", "ts must be a finite number")
    return int(value)


class Validator:
    """Validate and normalise storefront messages.

    Parameters
    ----------
    max_payload_bytes
        Larger messages are rejected as ``payload_too_large``.
    max_future_s
        Events stamped more than this far ahead of ``now_ms()`` are rejected.
    now_ms
        Clock, in epoch milliseconds (injectable for tests).
    """

    def __init__(self, max_payload_bytes: int = 65536, max_future_s: int = 86400,
                 now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000):
        self.max_payload_bytes = max_payload_bytes
        self.max_future_ms = max_future_s * 1000
        self.now_ms = now_ms

    def decode(self, raw: bytes | str) -> dict:
        """Size, encoding and JSON checks; returns the JSON object."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if len(raw) > self.max_payload_bytes:
            raise Invalid("payload_too_large",
                          f"{len(raw)} bytes, the limit is {self.max_payload_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as uexc:
                raise Invalid("not_utf8", f"invalid UTF-8 at byte {uexc.start}") from None
            raise Invalid("not_json", str(exc)) from None
        if not isinstance(obj, dict):
            raise Invalid("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def interaction(self, raw: bytes | str) -> dict:
        """Validate one interaction message; returns the normalised event dict."""
        return self.interaction_from_obj(self.decode(raw))

    def catalog(self, raw: bytes | str) -> dict:
        """Validate one catalog message; returns the normalised item dict."""
        return self.catalog_from_obj(self.decode(raw))

    def interaction_from_obj(self, obj: dict) -> dict:
        event = self._apply(obj, INTERACTION_RULES)
        if event["type"] not in EVENT_TYPES:
            raise Invalid("unknown_type",
                          f"type must be one of {', '.join(EVENT_TYPES)}, got {event['type'][:64]!r}")
        if event["price"] is not None and event["price"] < 0:
            raise Invalid("invalid_value", f"price must not be negative, got {event['price']}")
        if event["quantity"] is not None and event["quantity"] < 1:
            raise Invalid("invalid_value", f"quantity must be at least 1, got {event['quantity']}")
        return event

    def catalog_from_obj(self, obj: dict) -> dict:
        item = self._apply(obj, CATALOG_RULES)
        if item["ts"] is None:
            item["ts"] = self.now_ms()
        return item

    def _apply(self, obj: dict, rules) -> dict:
        out = {}
        for name, kind, required, default in rules:
            value = obj.get(name)
            if value is None:
                if required:
                    raise Invalid("missing_field", f"{name} is required")
                out[name] = default
                continue
            if kind == "ts":
                value = self._check_ts(parse_ts(value))
            elif kind == "str":
                if not isinstance(value, str):
                    raise Invalid("wrong_type", f"{name} must be a string, got {type(value).__name__}")
                if not value.strip():
                    if required:
                        raise Invalid("empty_field", f"{name} must not be empty")
                    value = default
                elif len(value) > (MAX_ID_LENGTH if name in ID_FIELDS else MAX_TEXT_LENGTH):
                    raise Invalid("invalid_value", f"{name} is {len(value)} characters long")
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise Invalid("wrong_type", f"{name} must be an integer, got {type(value).__name__}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Invalid("wrong_type", f"{name} must be a number, got {type(value).__name__}")
            elif not math.isfinite(value):
                raise Invalid("invalid_value", f"{name} must be finite, got {value}")
            out[name] = value
        return out

    def _check_ts(self, ts: int) -> int:
        if ts < MIN_TS_MS:
            hint = " (it looks like seconds; send milliseconds)" if ts > 0 and ts * 1000 >= MIN_TS_MS else ""
            raise Invalid("ts_before_2000", f"ts {ts} is before 2000-01-01{hint}")
        if ts > self.now_ms() + self.max_future_ms:
            raise Invalid("ts_in_future", f"ts {ts} is more than {self.max_future_ms // 1000} s in the future")
        return ts
