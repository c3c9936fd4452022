"""Events frames to padded index tensors: training sequences and next-item examples.

Every user's events are ordered by ``(ts, event_id)``. Sequences are left-padded to
``max_len`` so the newest event always sits at the last position. Each position carries the
item, the event type (``click`` 1, ``purchase`` 2, padding 0) and the storefront.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch

from learner.device import Device
from learner.idmap import PAD, Vocabulary

EVENT_COLUMNS = ["event_id", "type", "user_id", "item_id", "storefront", "ts", "session_id"]
CLICK, PURCHASE = 1, 2


def events_frame(events: pd.DataFrame | None) -> pd.DataFrame:
    """``events``, or an empty frame with the event columns when it is None."""
    return pd.DataFrame(columns=EVENT_COLUMNS) if events is None else events


@dataclass
class SequenceBatch:
    """Left-padded histories: items, types, storefronts [B, L] and users [B] (all int64)."""

    items: torch.Tensor
    types: torch.Tensor
    storefronts: torch.Tensor
    users: torch.Tensor

    def __len__(self) -> int:
        return len(self.users)

    def select(self, rows: torch.Tensor | slice) -> SequenceBatch:
        return SequenceBatch(*(getattr(self, f.name)[rows] for f in fields(self)))

    def to(self, device: Device) -> SequenceBatch:
        return SequenceBatch(*(device.put(getattr(self, f.name)) for f in fields(self)))


@dataclass
class _Timelines:
    """All events of some users as parallel arrays, grouped by user and ordered in time."""

    items: np.ndarray
    types: np.ndarray
    storefronts: np.ndarray
    users: np.ndarray
    is_target: np.ndarray
    ts: np.ndarray
    starts: np.ndarray  # start offset of each user's run; ends are the next start

    def runs(self) -> Iterator[tuple[int, int]]:
        ends = np.append(self.starts[1:], len(self.items))
        return zip(self.starts.tolist(), ends.tolist())


def _timelines(context: pd.DataFrame, targets: pd.DataFrame, vocab: Vocabulary) -> _Timelines:
    """Targets plus the context events of the same users (an event in both counts as a target)."""
    target_users = set(targets["user_id"])
    context = context[context["user_id"].isin(target_users) & ~context["event_id"].isin(set(targets["event_id"]))]
    frame = pd.concat([targets[EVENT_COLUMNS].assign(is_target=True),
                       context[EVENT_COLUMNS].assign(is_target=False)], ignore_index=True)
    frame = frame.drop_duplicates("event_id").sort_values(["user_id", "ts", "event_id"], kind="stable")
    users = vocab.users.index(frame["user_id"])
    user_ids = frame["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if len(frame) else np.zeros(0, np.int64)
    return _Timelines(
        items=vocab.items.index(frame["item_id"]),
        types=np.where(frame["type"].to_numpy() == "purchase", PURCHASE, CLICK).astype(np.int64),
        storefronts=vocab.storefronts.index(frame["storefront"]),
        users=users,
        is_target=frame["is_target"].to_numpy(dtype=bool),
        ts=frame["ts"].to_numpy(dtype=np.int64),
        starts=starts,
    )


@dataclass
class TrainingSequences:
    """SASRec training data: position t of ``inputs`` predicts ``targets[:, t]`` (0: no target).

    ``target_types`` holds the event type of each target (for purchase weighting).
    """

    inputs: SequenceBatch
    targets: torch.Tensor
    target_types: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int,
                generator: torch.Generator) -> Iterator[tuple[SequenceBatch, torch.Tensor, torch.Tensor]]:
        """Shuffled ``(inputs, targets, target_types)`` batches."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            rows = order[start:start + batch_size]
            yield self.inputs.select(rows), self.targets[rows], self.target_types[rows]


def training_sequences(context: pd.DataFrame | None, targets: pd.DataFrame, vocab: Vocabulary,
                       max_len: int) -> TrainingSequences:
    """Sequences whose targets are exactly the events in ``targets``, each predicted once.

    A user's timeline is their ``targets`` and ``context`` events in time order; it is cut from
    the end into chunks of ``max_len + 1`` events (each chunk's inputs are its first ``max_len``
    events, its targets the last ``max_len``), so every target is predicted from up to
    ``max_len`` earlier events, which may be context. Context events are never targets, and
    stretches of context without targets yield no chunk.
    """
    tl = _timelines(events_frame(context), targets, vocab)
    rows: list[tuple[int, int, int]] = []  # (user run start, chunk start, chunk end)
    for start, end in tl.runs():
        target_pos = np.flatnonzero(tl.is_target[start:end]) + start
        target_pos = target_pos[target_pos > start]  # a user's first event has nothing to predict it
        while len(target_pos):
            chunk_end = int(target_pos[-1]) + 1
            rows.append((start, max(start, chunk_end - max_len - 1), chunk_end))
            target_pos = target_pos[target_pos < chunk_end - max_len]
    n = len(rows)
    names = ("items", "types", "storefronts", "targets", "target_types")
    arrays = {name: np.zeros((n, max_len), np.int64) for name in names}
    users = np.zeros(n, np.int64)
    for row, (user_start, lo, hi) in enumerate(rows):
        width = hi - lo - 1
        arrays["items"][row, max_len - width:] = tl.items[lo:hi - 1]
        arrays["types"][row, max_len - width:] = tl.types[lo:hi - 1]
        arrays["storefronts"][row, max_len - width:] = tl.storefronts[lo:hi - 1]
        is_target = tl.is_target[lo + 1:hi]
        arrays["targets"][row, max_len - width:] = np.where(is_target, tl.items[lo + 1:hi], PAD)
        arrays["target_types"][row, max_len - width:] = np.where(is_target, tl.types[lo + 1:hi], PAD)
        users[row] = tl.users[user_start]
    t = {name: torch.from_numpy(a) for name, a in arrays.items()}
    return TrainingSequences(SequenceBatch(t["items"], t["types"], t["storefronts"], torch.from_numpy(users)),
                             t["targets"], t["target_types"])


@dataclass
class NextItemExamples:
    """One example per evaluated event: the history before it, its item, and items seen before.

    ``seen_items[seen_offsets[i]:seen_offsets[i + 1]]`` are all items of example i's user before
    the event (not only the last ``max_len``); ``times`` the events' ``ts``.
    """

    inputs: SequenceBatch
    targets: torch.Tensor
    seen_offsets: np.ndarray
    seen_items: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def seen_pairs(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within the slice, item) pairs of the items seen before examples ``lo:hi``."""
        counts = np.diff(self.seen_offsets[lo:hi + 1])
        rows = np.repeat(np.arange(hi - lo), counts)
        items = self.seen_items[self.seen_offsets[lo]:self.seen_offsets[hi]]
        return torch.from_numpy(rows), torch.from_numpy(items)


def next_item_examples(history: pd.DataFrame | None, events: pd.DataFrame, vocab: Vocabulary,
                       max_len: int) -> NextItemExamples:
    """Examples for every event in ``events``; the input is the user's last ``max_len`` events
    before it, from ``history`` and from earlier ``events``."""
    tl = _timelines(events_frame(history), events, vocab)
    positions = np.flatnonzero(tl.is_target)
    run_start = np.repeat(tl.starts, np.diff(np.append(tl.starts, len(tl.items))))
    windows = {}
    for name in ("items", "types", "storefronts"):
        padded = np.concatenate([np.zeros(max_len, np.int64), getattr(tl, name)])
        view = np.lib.stride_tricks.sliding_window_view(padded, max_len)[positions]  # events p-L .. p-1
        offsets = np.arange(-max_len, 0)[None, :] + positions[:, None]
        windows[name] = torch.from_numpy(np.where(offsets >= run_start[positions][:, None], view, PAD))
    counts = positions - run_start[positions]
    seen_offsets = np.r_[0, np.cumsum(counts)]
    seen_items = (np.concatenate([tl.items[s:p] for s, p in zip(run_start[positions], positions)])
                  if len(positions) else np.zeros(0, np.int64))
    inputs = SequenceBatch(windows["items"], windows["types"], windows["storefronts"],
                           torch.from_numpy(tl.users[positions]))
    return NextItemExamples(inputs, torch.from_numpy(tl.items[positions]), seen_offsets, seen_items.astype(np.int64),
                            tl.ts[positions])


def history_batch(history: pd.DataFrame, vocab: Vocabulary, max_len: int) -> tuple[list[str], SequenceBatch]:
    """Each user's last ``max_len`` events in ``history`` as one row, for computing user states."""
    history = history.sort_values(["user_id", "ts", "event_id"], kind="stable")
    tail = history.groupby("user_id", sort=False).tail(max_len)
    tl = _timelines(events_frame(None), tail, vocab)
    user_ids = tail["user_id"].drop_duplicates().tolist()
    n = len(user_ids)
    arrays = {name: np.zeros((n, max_len), np.int64) for name in ("items", "types", "storefronts")}
    for row, (start, end) in enumerate(tl.runs()):
        for name in arrays:
            arrays[name][row, max_len - (end - start):] = getattr(tl, name)[start:end]
    return user_ids, SequenceBatch(*(torch.from_numpy(a) for a in arrays.values()),
                                   torch.from_numpy(tl.users[tl.starts]))
