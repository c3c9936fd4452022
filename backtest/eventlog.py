"""Event logs and catalogs from CSV files, validated with errors that name the line and column.

``EVENTS.csv`` has a header with at least ``user_id,item_id,type,ts`` and optionally
``storefront`` and ``session_id`` (other columns are ignored):

* ``type`` is ``click`` or ``purchase``;
* ``ts`` is epoch seconds, epoch milliseconds or ISO-8601. A number below 10^11 is read as
  seconds (10^11 s is the year 5138), a larger one as milliseconds (10^11 ms is March 1973);
  naive ISO-8601 means UTC. Everything becomes UTC epoch milliseconds.

``ITEMS.csv`` has ``item_id,title`` and optionally ``category``, ``description`` and
``storefront``; a repeated ``item_id`` keeps its last row. Events may name items the catalog
lacks: such items have no text and are known only from their events.

Line numbers are those of the file (the header is line 1), so a quoted value spanning
several lines is reported at the line where its row starts. The first error in file order
is reported, with how many other lines have errors.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "EVENTS.csv"
>>> _ = path.write_text("user_id,item_id,type,ts\\nu1,i1,click,1700000000\\nu1,i2,purchase,2023-11-14T22:13:21Z\\n")
>>> load_events(path)[["event_id", "user_id", "item_id", "type", "ts"]].to_dict("records")
[{'event_id': 'e2', 'user_id': 'u1', 'item_id': 'i1', 'type': 'click', 'ts': 1700000000000}, \
{'event_id': 'e3', 'user_id': 'u1', 'item_id': 'i2', 'type': 'purchase', 'ts': 1700000001000}]
>>> _ = path.write_text("user_id,item_id,type,ts\\nu1,i1,click,yesterday\\n")
>>> load_events(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
backtest.eventlog.EventLogError: EVENTS.csv line 2, column ts: 'yesterday' is not epoch seconds, epoch milliseconds ...
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

EVENT_REQUIRED = ("user_id", "item_id", "type", "ts")
EVENT_OPTIONAL = ("storefront", "session_id")
ITEM_REQUIRED = ("item_id", "title")
ITEM_OPTIONAL = ("category", "description", "storefront")
EVENT_TYPES = ("click", "purchase")
DEFAULT_STOREFRONT = "default"
SECONDS_BELOW = 1e11  # a numeric ts below this is epoch seconds, else epoch milliseconds
MILLISECONDS_BELOW = 1e14  # the year 5138 in milliseconds: anything larger is not a timestamp


class EventLogError(ValueError):
    """A CSV file that cannot be used; the message names the file, line and column."""


class _Table:
    """The rows of one CSV file as strings, with the line each row starts at."""

    def __init__(self, path: Path, required: tuple[str, ...], optional: tuple[str, ...]):
        self.name = path.name
        text = _read_text(path)
        reader = csv.reader(io.StringIO(text, newline=""))
        lines, rows = [], []
        previous_end = 0
        try:
            for row in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if row and any(cell.strip() for cell in row):
                    lines.append(start)
                    rows.append(row)
        except csv.Error as exc:
            raise EventLogError(f"{self.name} line {reader.line_num}: not valid CSV ({exc})") from None
        if not rows:
            raise EventLogError(f"{self.name} line 1: the file is empty; expected a header with the columns "
                                f"{', '.join(required)}")
        header = [cell.strip().lstrip("\ufeff").strip() for cell in rows[0]]
        for column in header:
            if header.count(column) > 1:
                raise EventLogError(f"{self.name} line {lines[0]}, column {column}: appears twice in the header")
        for column in required:
            if column not in header:
                raise EventLogError(f"{self.name} line {lines[0]}, column {column}: missing from the header "
                                    f"(found: {', '.join(header)}; required: {', '.join(required)})")
        if len(rows) == 1:
            raise EventLogError(f"{self.name} line {lines[0] + 1}: no rows after the header")
        self.errors: list[tuple[int, str]] = []
        width = len(header)
        body = []
        for line, row in zip(lines[1:], rows[1:]):
            if len(row) != width:
                self.errors.append((line, f"{self.name} line {line}: {len(row)} fields, but the header has {width}"))
                row = (row + [""] * width)[:width]
            body.append(row)
        wanted = [c for c in (*required, *optional) if c in header]
        positions = [header.index(c) for c in wanted]
        self.frame = pd.DataFrame([[row[p].strip() for p in positions] for row in body], columns=wanted, dtype=object)
        self.lines = np.asarray(lines[1:], dtype=np.int64)

    def reject(self, bad: np.ndarray, message) -> None:
        """Record an error for each row where ``bad``; ``message(value)`` describes it."""
        for row in np.flatnonzero(bad):
            self.errors.append((int(self.lines[row]), message(row)))

    def require_values(self, columns: tuple[str, ...]) -> None:
        for column in columns:
            self.reject((self.frame[column] == "").to_numpy(),
                        lambda row, c=column: f"{self.name} line {self.lines[row]}, column {c}: empty")

    def raise_first(self) -> None:
        if self.errors:
            self.errors.sort(key=lambda error: error[0])  # stable: a row's field count comes first
            line, message = self.errors[0]
            more = len({line for line, _ in self.errors}) - 1
            raise EventLogError(message + (f" (and {more} more line{'s' if more > 1 else ''} with errors)"
                                           if more else ""))


def _read_text(path: Path) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise EventLogError(f"{Path(path).name} line {line}: not valid UTF-8 (byte {exc.start})") from None


def parse_ts(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(UTC epoch milliseconds as int64, which values could be parsed) of timestamp strings.

    >>> ms, ok = parse_ts(pd.Series(["1700000000", "1700000000123", "2023-11-14T22:13:20+01:00", "soon"]))
    >>> ms[ok].tolist(), ok.tolist()
    ([1700000000000, 1700000000123, 1699996400000], [True, True, True, False])
    """
    values = values.astype(str)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    numeric = ~np.isnan(numbers)
    with np.errstate(invalid="ignore"):
        ok_number = numeric & np.isfinite(numbers) & (numbers >= 0) & (numbers < MILLISECONDS_BELOW)
        ms = np.where(numbers < SECONDS_BELOW, numbers * 1000.0, numbers)
    out = np.zeros(len(values), dtype=np.int64)
    out[ok_number] = np.round(ms[ok_number]).astype(np.int64)
    ok = ok_number.copy()
    text = ~numeric
    if text.any():
        parsed = pd.to_datetime(pd.Series(values.to_numpy()[text]), format="ISO8601", utc=True, errors="coerce")
        good = parsed.notna().to_numpy()
        epoch = pd.Timestamp(0, tz="UTC")
        millis = ((parsed[good] - epoch) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)
        rows = np.flatnonzero(text)
        out[rows[good]] = millis
        ok[rows[good]] = True
    return out, ok


def load_events(path: str | Path) -> pd.DataFrame:
    """The events of ``path`` in the learner's frame, ordered by time (ties keep file order).

    Columns: ``event_id`` (``e<line>``, zero-padded so that the id order is the file order),
    ``type``, ``user_id``, ``item_id``, ``storefront`` (``default`` when absent or blank),
    ``ts`` (UTC epoch ms), ``session_id`` (None when absent or blank), ``price`` and
    ``quantity`` (None). Raises :class:`EventLogError` for anything malformed.
    """
    table = _Table(Path(path), EVENT_REQUIRED, EVENT_OPTIONAL)
    frame, name = table.frame, table.name
    table.require_values(EVENT_REQUIRED)
    types = frame["type"]
    table.reject(((types != "") & ~types.isin(EVENT_TYPES)).to_numpy(),
                 lambda row: f"{name} line {table.lines[row]}, column type: {types.iloc[row]!r} is not click or "
                             "purchase")
    ms, ok = parse_ts(frame["ts"])
    table.reject(~ok & (frame["ts"] != "").to_numpy(), lambda row: (
        f"{name} line {table.lines[row]}, column ts: {frame['ts'].iloc[row]!r} is not epoch seconds, "
        "epoch milliseconds or ISO-8601"))
    table.raise_first()
    width = len(str(int(table.lines.max())))
    storefront = frame["storefront"] if "storefront" in frame else pd.Series("", index=frame.index)
    session = frame["session_id"] if "session_id" in frame else pd.Series("", index=frame.index)
    events = pd.DataFrame({
        "event_id": [f"e{line:0{width}d}" for line in table.lines],
        "type": frame["type"].astype(str).to_numpy(),
        "user_id": frame["user_id"].astype(str).to_numpy(),
        "item_id": frame["item_id"].astype(str).to_numpy(),
        "storefront": storefront.where(storefront != "", DEFAULT_STOREFRONT).astype(str).to_numpy(),
        "ts": ms,
        "session_id": session.where(session != "", None).to_numpy(dtype=object),
        "price": np.full(len(frame), None, dtype=object),
        "quantity": np.full(len(frame), None, dtype=object),
    })
    return events.sort_values("ts", kind="stable").reset_index(drop=True)


def load_items(path: str | Path) -> pd.DataFrame:
    """The catalog of ``path``: ``item_id``, ``title``, ``category``, ``description`` (None when
    absent or blank) and ``storefront`` (``default``), one row per item (the last one wins).
    Raises :class:`EventLogError` for anything malformed."""
    table = _Table(Path(path), ITEM_REQUIRED, ITEM_OPTIONAL)
    table.require_values(ITEM_REQUIRED)
    table.raise_first()
    frame = table.frame
    items = pd.DataFrame({"item_id": frame["item_id"].astype(str), "title": frame["title"].astype(str)})
    for column in ("category", "description"):
        values = frame[column] if column in frame else pd.Series("", index=frame.index)
        items[column] = values.where(values != "", None).to_numpy(dtype=object)
    storefront = frame["storefront"] if "storefront" in frame else pd.Series("", index=frame.index)
    items["storefront"] = storefront.where(storefront != "", DEFAULT_STOREFRONT).astype(str).to_numpy()
    return items.drop_duplicates("item_id", keep="last").reset_index(drop=True)
