"""Turn raw message bytes into normalised events, or a rejection with a reason.

The rules follow the field declarations of :mod:`streams.schema`, and the same code serves
the Kafka ingest path, ``POST /events`` and the producer client (which validates before
sending). The ingest path validates a whole poll at once (:meth:`Validator.interactions`):
msgspec decodes and type-checks each message in one C pass, with a decoder generated from the
same field declarations, and the values are checked column-wise. Anything that path does not
accept outright goes through the rule-by-rule checks, which name the reason, so both paths
give the same answer for every input (a property test holds them to it).

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

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from replay import codec
from streams.schema import EVENT_TYPES, SURFACES, CatalogEvent, InteractionEvent, ServedList, ShownPositions

MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 16_384
MAX_QUANTITY = 2**31 - 1

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
    "invalid_value": "a value is out of range (negative price or value, quantity below 1 or above 2^31-1, position "
                     "below 1 or above 10,000, id too long, a NUL character)",
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
    if typing.get_origin(only) is list or only in (list, typing.List):
        return "list", nullable
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
SERVED_RULES = _field_rules(ServedList)
SHOWN_RULES = _field_rules(ShownPositions)
MAX_SERVED_ITEMS = 1000
ID_FIELDS = {"event_id", "user_id", "item_id", "session_id", "storefront", "request_id"}
MAX_POSITION = 10_000
# What the ingest path reads of an event: what replay windows keep, and the feedback on a served list.
FEEDBACK_SCHEMA = pa.schema([("request_id", pa.string()), ("position", pa.int32()), ("value", pa.float64())])
INGEST_SCHEMA = pa.schema([*codec.EVENT_SCHEMA, *FEEDBACK_SCHEMA])


def ingest_table(events: list[dict]) -> pa.Table:
    """Validated event dicts as an Arrow table of :data:`INGEST_SCHEMA`."""
    return pa.table({name: [e.get(name) for e in events] for name in INGEST_SCHEMA.names}, schema=INGEST_SCHEMA)


def _fast_decoder(rules) -> msgspec.json.Decoder:
    """A msgspec decoder that accepts only well-typed, non-empty, not-too-long objects of
    ``rules``, each of whose values fits its column (blanks, ``ts`` and value ranges are checked after it)."""
    fields = []
    for name, kind, required, default in rules:
        kind_type = {"str": typing.Annotated[str, msgspec.Meta(
                         min_length=1, max_length=MAX_ID_LENGTH if name in ID_FIELDS else MAX_TEXT_LENGTH)],
                     "int": typing.Annotated[int, msgspec.Meta(ge=-MAX_QUANTITY, le=MAX_QUANTITY)],  # int32 columns
                     "number": float, "ts": typing.Union[int, float, str]}[kind]
        if required:
            fields.append((name, kind_type))
        else:  # null stands for the default only when the default is null; else the slow path decides
            fields.append((name, typing.Optional[kind_type] if default is None else kind_type, default))
    return msgspec.json.Decoder(msgspec.defstruct("FastMessage", fields, gc=False))


_FAST_INTERACTION = _fast_decoder(INTERACTION_RULES)
_WHITESPACE = pa.array([chr(c) for c in range(0x110000) if chr(c).isspace()])


def _suspect_rows(table: pa.Table) -> np.ndarray:
    """Rows of fast-decoded events that may break a rule: a string that starts with whitespace
    (it may be blank) or holds NUL, an unknown type, a negative price or value, a quantity or
    position out of range."""
    checks = [pc.invert(pc.is_in(table["type"], pa.array(EVENT_TYPES))),
              pc.less(table["price"], 0), pc.less(table["quantity"], 1), pc.less(table["value"], 0),
              pc.less(table["position"], 1), pc.greater(table["position"], MAX_POSITION)]
    for name in table.column_names:
        if pa.types.is_string(table.schema.field(name).type):
            checks.append(pc.is_in(pc.utf8_slice_codeunits(table[name], 0, 1), _WHITESPACE))
            checks.append(pc.match_substring(table[name], "\x00"))
    suspect = np.zeros(table.num_rows, dtype=bool)
    for check in checks:
        suspect |= check.fill_null(False).to_numpy(zero_copy_only=False)
    return suspect


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

    def decode_or_none(self, raw: bytes | str) -> dict | None:
        """The JSON object in ``raw``, or None if it is not one (to label a rejected message)."""
        try:
            return self.decode(raw)
        except Invalid:
            return None

    def interaction(self, raw: bytes | str) -> dict:
        """Validate one interaction message; returns the normalised event dict."""
        return self.interaction_from_obj(self.decode(raw))

    def interactions(self, raws: list[bytes]) -> tuple[pa.Table, list[int], list[tuple[int, Invalid]]]:
        """Validate many interaction messages at once, as the ingest path does.

        Returns the accepted events as one table (:data:`INGEST_SCHEMA`, message
        order), the index in ``raws`` of each table row, and ``(index, error)`` for each rejected
        message: the same answers as :meth:`interaction` one message at a time. Plainly valid
        messages are decoded and type-checked by msgspec and their values checked column-wise;
        the rest go through the rule-by-rule path, which names the reason.
        """
        decode = _FAST_INTERACTION.decode
        latest_ts = self.now_ms() + self.max_future_ms
        fast, fast_at, slow_at = [], [], []
        for i, raw in enumerate(raws):
            if len(raw) <= self.max_payload_bytes:
                try:
                    event = decode(raw)
                except (msgspec.MsgspecError, ValueError, RecursionError):  # bad UTF-8, deep nesting
                    pass
                else:
                    if type(event.ts) is int and MIN_TS_MS <= event.ts <= latest_ts:
                        fast.append(event)
                        fast_at.append(i)
                        continue
            slow_at.append(i)
        table = pa.table({name: [getattr(e, name) for e in fast] for name in INGEST_SCHEMA.names},
                         schema=INGEST_SCHEMA)
        suspect = _suspect_rows(table)
        if suspect.any():
            table = table.filter(pa.array(~suspect))
            slow_at += [i for i, bad in zip(fast_at, suspect) if bad]
            fast_at = [i for i, bad in zip(fast_at, suspect) if not bad]
        rejected, slow, slow_ok_at = [], [], []
        for i in sorted(slow_at):
            try:
                slow.append(self.interaction(raws[i]))
                slow_ok_at.append(i)
            except Invalid as exc:
                rejected.append((i, exc))
        if not slow:
            return table, fast_at, rejected
        rows = fast_at + slow_ok_at
        order = np.argsort(rows, kind="stable")
        return (pa.concat_tables([table, ingest_table(slow)]).take(order),
                [rows[k] for k in order], rejected)

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
        if event["quantity"] is not None and not 1 <= event["quantity"] <= MAX_QUANTITY:
            raise Invalid("invalid_value", f"quantity must be between 1 and {MAX_QUANTITY}, got {event['quantity']}")
        if event["value"] is not None and event["value"] < 0:
            raise Invalid("invalid_value", f"value must not be negative, got {event['value']}")
        if event["position"] is not None and not 1 <= event["position"] <= MAX_POSITION:
            raise Invalid("invalid_value", f"position must be between 1 and {MAX_POSITION} (1 = first), "
                                           f"got {event['position']}")
        return event

    def catalog_from_obj(self, obj: dict) -> dict:
        item = self._apply(obj, CATALOG_RULES)
        if item["ts"] is None:
            item["ts"] = self.now_ms()
        return item

    def served_message(self, raw: bytes | str) -> tuple[str, dict]:
        """Validate one message of the served topic: ``("list", served list)`` or, for an object
        with ``shown``, ``("shown", shown positions)``.

        >>> Validator().served_message(b'{"request_id": "r1", "shown": [2, 1, 2]}')[1]["shown"]
        [1, 2]
        """
        obj = self.decode(raw)
        return ("shown", self.shown_from_obj(obj)) if "shown" in obj else ("list", self.served_from_obj(obj))

    def served(self, raw: bytes | str) -> dict:
        """Validate one served-list message (:class:`streams.schema.ServedList`).

        >>> Validator().served(b'{"request_id": "r1", "served_at": 1763000000000, "surface": "search",'
        ...                    b' "storefront": "default", "source": "text", "items": ["a"], "scores": [0.5]}')["items"]
        ['a']
        """
        return self.served_from_obj(self.decode(raw))

    def shown_from_obj(self, obj: dict) -> dict:
        """Validate a report of shown positions (:class:`streams.schema.ShownPositions`): positions
        are sorted and each kept once; none may be below 1 or above the most items a list holds.

        >>> Validator(now_ms=lambda: 1_763_000_000_000).shown_from_obj({"request_id": "r1", "shown": []})
        {'request_id': 'r1', 'shown': [], 'ts': 1763000000000}
        """
        report = self._apply(obj, SHOWN_RULES)
        shown = report["shown"]
        if len(shown) > MAX_SERVED_ITEMS or not all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= MAX_SERVED_ITEMS for p in shown):
            raise Invalid("invalid_value", f"shown must be at most {MAX_SERVED_ITEMS} positions, each an integer "
                                           f"from 1 (the first item) to {MAX_SERVED_ITEMS}")
        report["shown"] = sorted(set(shown))
        if report["ts"] is None:
            report["ts"] = self.now_ms()
        return report

    def served_from_obj(self, obj: dict) -> dict:
        """Validate a decoded served list (see :meth:`served`)."""
        served = self._apply(obj, SERVED_RULES)
        if served["surface"] not in SURFACES:
            raise Invalid("invalid_value",
                          f"surface must be one of {', '.join(SURFACES)}, got {served['surface'][:64]!r}")
        items, scores = served["items"], served["scores"]
        if len(items) > MAX_SERVED_ITEMS or len(scores) != len(items):
            raise Invalid("invalid_value", f"items must be at most {MAX_SERVED_ITEMS} ids with one score each, got "
                                           f"{len(items)} items and {len(scores)} scores")
        if not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_LENGTH and "\x00" not in i for i in items):
            raise Invalid("invalid_value", "items must be item ids (non-empty strings of at most 256 characters)")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in scores):
            raise Invalid("invalid_value", "scores must be finite numbers")
        teams = served["teams"]
        if teams is not None and (len(teams) != len(items) or not all(t in ("control", "treatment") for t in teams)):
            raise Invalid("invalid_value", "teams must name one arm ('control' or 'treatment') per item")
        return served

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
                elif "\x00" in value:  # no database stores it in text
                    raise Invalid("invalid_value", f"{name} contains a NUL character (U+0000)")
            elif kind == "list":
                if not isinstance(value, list):
                    raise Invalid("wrong_type", f"{name} must be an array, got {type(value).__name__}")
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
