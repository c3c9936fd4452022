"""Shown positions: a storefront that displays fewer items than it fetched says which positions
were shown; the ingest writer keeps the union of its reports, inferred attribution and the
online metrics count only those positions, and a list without a report counts as wholly shown.
On Postgres and SQLite, through the real ingest writer and the served-topic validator."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select

from drift.online import online_metrics
from store.ingest import IngestBatch, IngestWriter
from store.models import attributed_events, shown_positions
from store.online import attributed_to, prune_served, served_since
from streams.validation import Invalid, Validator, ingest_table

T0 = 1_763_000_000_000
SERVED = "streamrec-served"
EVENTS = "streamrec-events"
LONG_ID = "storefront-request-" + "x" * 180  # ids of up to 256 characters are valid everywhere


class Feed:
    """Messages through the validator and the ingest writer, as the ingest processes pass them."""

    def __init__(self, engine):
        self.writer = IngestWriter(engine, "g", dedupe_horizon_s=3600, attribution_window_s=3600)
        self.validator = Validator(now_ms=lambda: T0 + 60_000)
        self.offsets = {SERVED: 0, EVENTS: 0}

    def served_topic(self, *messages: dict) -> None:
        batch = IngestBatch(received_at=T0 + 60_000)
        for message in messages:
            kind, clean = self.validator.served_message(orjson.dumps(message))
            (batch.shown if kind == "shown" else batch.served).append(clean)
        self._write(batch, SERVED, len(messages))

    def events(self, *events: dict) -> None:
        clean = [self.validator.interaction_from_obj(e) for e in events]
        self._write(IngestBatch(received_at=T0 + 60_000, events=ingest_table(clean)), EVENTS, len(events))

    def _write(self, batch: IngestBatch, topic: str, n: int) -> None:
        start = self.offsets[topic]
        batch.offsets = {(topic, 0): (start or None, start + n)}
        self.offsets[topic] = start + n
        self.writer.write(batch)


def served(request_id: str, user: str, items: list[str], at: int = T0) -> dict:
    return {"request_id": request_id, "served_at": at, "surface": "recommend", "storefront": "shop",
            "source": "model", "model_version": 1, "user_id": user, "items": items,
            "scores": [1.0 / (i + 1) for i in range(len(items))]}


def click(event_id: str, user: str, item: str, at: int, **feedback) -> dict:
    return {"event_id": event_id, "type": "click", "user_id": user, "item_id": item, "ts": at,
            "storefront": "shop", **feedback}


def test_shown_positions_limit_attribution_and_metrics_to_what_was_displayed(engine):
    feed = Feed(engine)
    items = [f"i{n}" for n in range(1, 11)]
    feed.served_topic(
        served("r-partial", "u1", items), served("r-hidden", "u2", items), served("r-whole", "u3", items),
        served(LONG_ID, "u4", items),
        {"request_id": "r-partial", "shown": [1, 2, 3], "ts": T0 + 1_000},
        {"request_id": "r-hidden", "shown": []})
    feed.served_topic({"request_id": "r-partial", "shown": [4, 2, 40]})  # a scroll reports more; 40 is past the end

    with engine.connect() as conn:
        stored = {r.request_id: r.shown for r in conn.execute(select(shown_positions))}
    assert stored == {"r-partial": [1, 2, 3, 4, 40], "r-hidden": []}

    feed.events(click("e1", "u1", "i2", T0 + 5_000),  # shown at 2: inferred
                click("e2", "u1", "i7", T0 + 5_000),  # fetched, never displayed: not inferred
                click("e3", "u1", "i9", T0 + 6_000, request_id="r-partial", position=9),  # the client says so
                click("e4", "u2", "i1", T0 + 5_000),  # the list displayed nothing
                click("e5", "u3", "i10", T0 + 5_000),  # no report: the whole list counts as shown
                click("e6", "u4", "i3", T0 + 5_000, request_id=LONG_ID, position=3))
    with engine.connect() as conn:
        attributed = {r.event_id: (r.request_id, r.inferred, r.position) for r in conn.execute(
            select(attributed_events))}
    assert attributed == {"e1": ("r-partial", True, 2), "e3": ("r-partial", False, 9),
                          "e5": ("r-whole", True, 10), "e6": (LONG_ID, False, 3)}

    lists = served_since(engine, T0).to_pandas()
    displayed = dict(zip(lists["request_id"], lists["displayed"].map(list)))
    assert displayed == {"r-partial": ["i1", "i2", "i3", "i4"], "r-whole": items, LONG_ID: items}
    rows = online_metrics(lists, attributed_to(engine, lists["request_id"]).to_pandas(), catalog_sizes={"shop": 20})
    (row,) = rows
    assert (row["lists"], row["clicks"], row["clicked_lists"]) == (3, 4, 3)
    assert row["metrics"]["coverage"] == 10 / 20  # every item was displayed by some list
    assert row["metrics"]["click_positions"] == {"10": 1, "2": 1, "3": 1, "9": 1}

    assert prune_served(engine, T0 + 120_000) == 4
    with engine.connect() as conn:
        assert conn.execute(select(shown_positions)).all() == []


@pytest.mark.parametrize("report, reason", [
    ({"request_id": "r1", "shown": [0]}, "invalid_value"),
    ({"request_id": "r1", "shown": [1001]}, "invalid_value"),
    ({"request_id": "r1", "shown": [1.0]}, "invalid_value"),
    ({"request_id": "r1", "shown": "1,2"}, "wrong_type"),
    ({"shown": [1]}, "missing_field"),
    ({"request_id": "r1", "shown": [1], "ts": 1_763_000_000}, "ts_before_2000"),
])
def test_a_bad_report_of_shown_positions_is_rejected_with_its_reason(report, reason):
    with pytest.raises(Invalid) as caught:
        Validator().served_message(orjson.dumps(report))
    assert caught.value.reason == reason
