"""Answering from a snapshot: recommendations, similar items and semantic search.

A :class:`Recommender` answers with one model version (built by
:func:`serving.snapshot.build_snapshot`): its item vectors, the catalog's text vectors and the
version's text encoder (pretrained MiniLM, or with the version's tuned adapter), which encodes
search queries. Each of the three answers searches an :class:`~serving.index.ItemIndex`:
model vectors by inner product (recommend), by cosine (similar), text vectors by cosine
(search). A :class:`TextRanker` answers ``similar`` and ``search`` by text alone while no
version serves. Both are read-only once built; the only change after building is
:meth:`Recommender.compile`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from learner.blend import TextBlend
from learner.device import Device
from learner.idmap import PAD, UNKNOWN, Vocabulary
from learner.model import SASRec
from learner.sequences import CLICK, PURCHASE, SequenceBatch
from learner.text import TEXT_DIM, TextEncoder
from serving.compiled import CompiledModule
from serving.index import ItemIndex

PERSONALISATION_WEIGHT = 0.05
"""Search: added to text cosine per standard deviation of the user's model score among the candidates."""
SEARCH_CANDIDATES = 100
"""Search: how many text matches are re-ranked for a user."""
BLEND_CANDIDATES = 100
"""Recommend with a text term: how many of the model's best and of the text's best are rescored."""
MOMENT_ROWS = 65_536
"""Most items whose text vectors the live term's spread of similarities is measured on (a seeded
sample beyond): 0.1 GB of float32 vectors, a fraction of a second at a version's swap."""


class UnknownItem(KeyError):
    """An item id neither the model nor the catalog knows."""


@dataclass(frozen=True)
class Click:
    """An event as :meth:`Recommender.recommend` reads it."""
    item_id: str
    type: str = "click"
    storefront: str = ""


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    because: tuple[str, float] | None = None  # (history item, cosine similarity) explaining it


class UserState(torch.nn.Module):
    """A model's state [dim] after one user's events: each event's item as a position in
    ``vectors`` [rows, dim] (0: padding), its type and its storefront's row; unpadded, as
    positions are embedded from the newest backwards."""

    def __init__(self, model: SASRec):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, types: torch.Tensor, storefronts: torch.Tensor,
                vectors: torch.Tensor) -> torch.Tensor:
        unknown_user = torch.full((1,), UNKNOWN, device=items.device)
        batch = SequenceBatch(items[None], types[None], storefronts[None], users=unknown_user)
        return self.model(batch, item_vectors=vectors)[0, -1].float()


def history_inputs(vocab: Vocabulary, max_len: int, history: Sequence) -> tuple[np.ndarray, ...]:
    """The last ``max_len`` events of ``history`` as a model reads them: the rows of their items,
    and for each event its item's position among those rows (0: padding, which stands alone for
    an empty history), its type and its storefront's row."""
    recent = history[-max_len:]
    if not len(recent):
        return np.array([PAD]), np.array([PAD]), np.array([PAD]), np.array([PAD])
    items = vocab.items.index(e.item_id for e in recent)
    types = np.array([PURCHASE if e.type == "purchase" else CLICK for e in recent])
    shops = vocab.storefronts.index(e.storefront for e in recent)
    rows, local = np.unique(np.r_[PAD, items], return_inverse=True)  # rows[0] is PAD: local 0 pads
    return rows, local[1:], types, shops


@torch.inference_mode()
def state_after(module: UserState, vocab: Vocabulary, history: Sequence, rows_of, device: Device) -> torch.Tensor:
    """``module``'s state [dim] after ``history``, reading its items' vectors as ``rows_of(rows)``
    gives them (float32 [len(rows), dim])."""
    rows, items, types, shops = history_inputs(vocab, module.model.config.max_len, history)
    vectors = np.asarray(rows_of(rows), np.float32)
    inputs = (torch.from_numpy(x).to(device.torch_device) for x in (items, types, shops, vectors))
    with device.autocast():
        return module(*inputs)


def item_rows(vocab: Vocabulary) -> np.ndarray:
    """The item id of each row of a model's item vectors (rows 0 and 1: padding, unknown)."""
    return np.array(["<pad>", "<unknown>", *vocab.items.keys()], dtype=object)


class Recommender:
    """One model version ready to answer (built by :func:`serving.snapshot.build_snapshot`), then
    read-only but for items' live interactions (:meth:`set_live` swaps them in whole).

    It holds the version's model and vocabulary (``model``, ``vocab``), its text encoder, its
    text and live terms (``blend``, with each item row's ``evidence`` factor, None without
    either term), three :class:`~serving.index.ItemIndex`: model vectors by inner product
    (``recommend_index``), by cosine (``similar_index``) and text vectors by cosine
    (``search_index``), the item ids by row, the catalog titles, which rows belong to each
    storefront and which rows have text.
    """

    def __init__(self, version: dict, device: Device, model: SASRec, vocab: Vocabulary, text_encoder: TextEncoder,
                 text_encoder_name: str, blend: TextBlend, evidence: np.ndarray | None, recommend_index: ItemIndex,
                 similar_index: ItemIndex, search_index: ItemIndex, titles: dict[str, str],
                 storefront_masks: dict[str, np.ndarray], has_text: np.ndarray):
        self.version, self.device, self.model, self.vocab = version, device, model, vocab
        self.max_len = model.config.max_len
        self.text_encoder, self.text_encoder_name = text_encoder, text_encoder_name
        self.blend = blend
        self._text_weights = None if evidence is None or not blend.weight else blend.weight * evidence
        self._live_weights = None if evidence is None or not blend.live else blend.live * evidence
        self._live: tuple[np.ndarray, np.ndarray] | None = None  # (term per item row, new rows with one): set_live
        self.recommend_index, self.similar_index, self.search_index = recommend_index, similar_index, search_index
        self.item_ids = item_rows(vocab)
        self.titles = titles
        self._storefront_masks = storefront_masks
        self._has_text = has_text
        self._text_moment = self._second_moment() if self._live_weights is not None else None
        self._state_module, self._state = UserState(model).eval(), None

    def describe_indexes(self) -> dict[str, dict]:
        """How each answer searches its items (:meth:`serving.index.ItemIndex.describe`)."""
        return {name: getattr(self, f"{name}_index").describe() for name in ("recommend", "similar", "search")}

    @property
    def storefronts(self) -> list[str]:
        return sorted(self._storefront_masks)

    def knows_storefront(self, storefront: str) -> bool:
        return storefront in self._storefront_masks

    def _row(self, item_id: str) -> int:
        row = int(self.vocab.items.index([item_id])[0])
        if row == UNKNOWN:
            raise UnknownItem(item_id)
        return row

    @torch.inference_mode()
    def user_vector(self, history: Sequence) -> torch.Tensor:
        """The model's state [dim] after a user's events (oldest first; ``item_id``, ``type``,
        ``storefront`` attributes), of which the last ``max_len`` are read, from the item vectors
        as the recommend index holds them (by the ONNX Runtime export once :meth:`compile` has
        made one)."""
        if self._state is None:
            return state_after(self._state_module, self.vocab, history, self.recommend_index.rows, self.device)
        rows, items, types, shops = history_inputs(self.vocab, self.max_len, history)
        return torch.from_numpy(self._state(items=items, types=types, storefronts=shops,
                                            vectors=self.recommend_index.rows(rows)))

    @property
    def is_compiled(self) -> bool:
        """Whether users' states come from an ONNX Runtime export."""
        return self._state is not None

    def compile(self) -> bool:
        """Compute users' states with an ONNX Runtime export of the model from now on (the only
        change to a snapshot after it is built; same states within
        :data:`serving.compiled.TOLERANCE`). On a CPU only: a GPU keeps torch. Takes seconds:
        call it off the event loop. Whether it compiled; :class:`serving.compiled.CompileError`
        when the export fails or answers differently."""
        if self.device.is_cuda or self._state is not None:
            return self._state is not None
        dim = self.model.config.dim
        example = (torch.tensor([1, 2, 1]), torch.tensor([CLICK, PURCHASE, CLICK]), torch.tensor([1, 1, 1]),
                   torch.randn(3, dim))
        longest = self.max_len
        checks = ((torch.tensor([1]), torch.tensor([CLICK]), torch.tensor([1]), torch.randn(2, dim)),
                  (torch.arange(1, longest + 1), torch.full((longest,), CLICK), torch.ones(longest, dtype=torch.long),
                   torch.randn(longest + 1, dim)))
        events = {0: "events"}
        self._state = CompiledModule(self._state_module, example, ("items", "types", "storefronts", "vectors"),
                                     {"items": events, "types": events, "storefronts": events,
                                      "vectors": {0: "rows"}}, checks)
        return True

    @torch.inference_mode()
    def recommend(self, history: Sequence, k: int, storefront: str | None = None,
                  exclude: set[str] = frozenset()) -> list[Scored]:
        """Top ``k`` items after ``history`` (non-empty), within ``storefront`` if given, without
        ``exclude``; each explained by the history item most similar to it."""
        if storefront is not None:
            allowed = self._storefront_masks[storefront].copy()
        else:
            allowed = np.ones(len(self.item_ids), dtype=bool)
        if exclude:
            allowed[self.vocab.items.index(exclude)] = False
        user = self.user_vector(history).cpu().numpy()
        if self._text_weights is None and self._live is None:
            rows, scores = self.recommend_index.search(user, k, allowed)
        else:
            rows, scores = self._blended(user, history, k, allowed)
        top = list(zip(rows.tolist(), scores.tolist()))
        seen = torch.from_numpy(np.unique(self.vocab.items.index(e.item_id for e in history)))
        seen = seen[seen > UNKNOWN]
        if not len(top) or not len(seen):
            return [Scored(self.item_ids[row], score) for row, score in top]
        units = torch.from_numpy(self.similar_index.rows(np.array([row for row, _ in top])))
        similarity = units @ torch.from_numpy(self.similar_index.rows(seen.numpy())).T
        best, at = similarity.clamp(-1.0, 1.0).max(dim=1)
        return [Scored(self.item_ids[row], score, (self.item_ids[int(seen[a])], float(b)))
                for (row, score), a, b in zip(top, at.tolist(), best.tolist())]

    def set_live(self, counts: dict[str, int]) -> None:
        """Items' live interactions (events the version has not trained on,
        :class:`serving.history.LiveInteractions`), for the live term of the next answers."""
        if self._live_weights is None:
            return
        live = np.zeros(len(self.item_ids), dtype=np.float32)
        rows = self.vocab.items.index(counts.keys())
        np.add.at(live, rows, np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
        term = (self._live_weights * np.log1p(live)).astype(np.float32)
        term[:UNKNOWN + 1] = 0.0
        new = np.flatnonzero((term > 0) & (self._live_weights >= self.blend.live / 2))
        self._live = (term, new) if term.any() else None  # one assignment: readers see both or neither

    def _blended(self, user: np.ndarray, history: Sequence, k: int,
                 allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top ``k`` by the version's score plus its text and live terms
        (:mod:`learner.blend`), as the gate scores: every item exactly with exact indexes; with
        inverted-file indexes, the model's :data:`BLEND_CANDIDATES` best, the text's best among
        new items (at most ``half_count`` interactions) and every new item with live interactions, rescored."""
        live, live_rows = self._live or (None, None)
        text_weights = self._text_weights
        profile, offset = self._profile(history) if text_weights is not None or live is not None else (None, 0.0)
        if profile is None:  # neither term, or no recent item with text: the gate's terms are 0 then too
            return self.recommend_index.search(user, k, allowed)
        spread = 1.0 if live is None else max(float(np.sqrt(max(profile @ self._text_moment @ profile, 0.0))), 1e-12)

        def terms(rows: np.ndarray | slice, text_scores: np.ndarray) -> np.ndarray:
            """The text and live terms of ``rows``, given their text vectors' scores against the profile."""
            similarity = np.where(self._has_text[rows], text_scores - offset, 0.0)
            term = 0.0 if text_weights is None else text_weights[rows] * similarity
            return term if live is None else term + live[rows] * np.maximum(similarity, 0.0) / spread

        if not self.recommend_index.approximate and not self.search_index.approximate:
            scores = self.recommend_index.dot(user) + terms(slice(None), self.search_index.dot(profile))
            scores[~allowed] = -np.inf
            scores[:UNKNOWN + 1] = -np.inf
            k = min(k, int(np.isfinite(scores).sum()))
            top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
            top = top[np.argsort(-scores[top], kind="stable")]
            return top, scores[top]
        pool = max(k, BLEND_CANDIDATES)
        rows = self.recommend_index.search(user, pool, allowed)[0]
        if text_weights is not None:
            new = allowed & self._has_text & (text_weights >= self.blend.weight / 2)
            rows = np.union1d(rows, self.search_index.search(profile, pool, new)[0])
        if live is not None:
            rows = np.union1d(rows, live_rows[allowed[live_rows]])
        scores = self.recommend_index.rows(rows) @ user + terms(rows, self.search_index.rows(rows) @ profile)
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top].astype(np.float32)

    def _second_moment(self) -> np.ndarray:
        """``mean text(i) text(i)^T`` over the items with text (a seeded sample of
        :data:`MOMENT_ROWS` of them in a larger catalog): ``spread(u)^2 = profile^T M profile``,
        the mean of ``s^2`` over those items (:mod:`learner.blend`), without scoring every item."""
        rows = np.flatnonzero(self._has_text)
        if len(rows) > MOMENT_ROWS:
            rows = np.sort(np.random.default_rng(0).choice(rows, MOMENT_ROWS, replace=False))
        center = np.asarray(self.blend.center or np.zeros(TEXT_DIM), dtype=np.float32)
        texts = self.search_index.rows(rows).astype(np.float32) - center
        return texts.T @ texts / max(len(rows), 1)

    def _profile(self, history: Sequence) -> tuple[np.ndarray | None, float]:
        """(The text term's user profile over the search index's rows, ``center . profile``), or
        (None, 0) when none of the user's recent items has text."""
        recent = self.vocab.items.index(e.item_id for e in history[-self.blend.recent:])
        known = recent[(recent > UNKNOWN) & self._has_text[recent]]
        if not len(known):
            return None, 0.0
        center = np.asarray(self.blend.center or np.zeros(TEXT_DIM), dtype=np.float32)
        profile = (self.search_index.rows(known) - center).sum(0) / len(recent)
        return profile, float(profile @ center)  # text(i) . profile = unit(i) . profile - center . profile

    @torch.inference_mode()
    def similar(self, item_id: str, k: int) -> list[Scored]:
        """The ``k`` items whose vectors are nearest (cosine) to ``item_id``'s; :class:`UnknownItem` otherwise."""
        row = self._row(item_id)
        allowed = np.ones(len(self.item_ids), dtype=bool)
        allowed[row] = False
        rows, scores = self.similar_index.search(self.similar_index.rows(np.array([row]))[0], k, allowed)
        return [Scored(self.item_ids[r], s) for r, s in zip(rows.tolist(), scores.tolist())]

    @torch.inference_mode()
    def search(self, query: np.ndarray, k: int, history: Sequence = (),
               exclude: set[str] = frozenset()) -> list[Scored]:
        """Catalog items whose text is nearest to ``query`` (a unit vector by :attr:`text_encoder`,
        which with a tuned version has learned from behaviour which texts shoppers treat alike),
        without ``exclude``.

        With a ``history``, the best :data:`SEARCH_CANDIDATES` text matches are re-ranked by
        ``cosine + PERSONALISATION_WEIGHT * z``, where z is the user's model score of the item
        standardised over those candidates.
        """
        if not self._has_text.any():
            return []
        allowed = self._has_text.copy()
        if exclude:
            allowed[self.vocab.items.index(exclude)] = False
        rows, cosines = self.search_index.search(query, max(k, SEARCH_CANDIDATES) if len(history) else k, allowed)
        rows, scores = torch.from_numpy(rows), torch.from_numpy(cosines)
        if len(history) and len(rows) > 1:
            vectors = torch.from_numpy(self.recommend_index.rows(rows.numpy())).to(self.device.torch_device)
            affinity = (vectors @ self.user_vector(history)).cpu()
            scores = scores + PERSONALISATION_WEIGHT * (affinity - affinity.mean()) / affinity.std().clamp(min=1e-6)
        order = scores.argsort(descending=True)[:k]
        return [Scored(self.item_ids[int(rows[i])], float(scores[i])) for i in order.tolist()]


class TextRanker:
    """Answers ``similar`` and ``search`` by the pretrained text encoder alone, for while no
    model version serves: catalog items ranked by the cosine of their MiniLM text vectors
    (built by :func:`serving.snapshot.build_text_ranker`)."""

    text_encoder_name = "frozen"

    def __init__(self, item_ids: np.ndarray, titles: dict[str, str], index: ItemIndex, encoder: TextEncoder | None):
        self.item_ids, self.titles, self.index, self.text_encoder = item_ids, titles, index, encoder
        self._rows = {item: row for row, item in enumerate(item_ids[2:], start=2)}

    def __len__(self) -> int:
        """How many items it ranks."""
        return len(self.item_ids) - 2

    def similar(self, item_id: str, k: int) -> list[Scored]:
        """The ``k`` catalog items whose text is nearest to ``item_id``'s; :class:`UnknownItem` for an
        item without catalog text."""
        row = self._rows.get(item_id)
        if row is None:
            raise UnknownItem(item_id)
        allowed = np.ones(len(self.item_ids), dtype=bool)
        allowed[row] = False
        rows, scores = self.index.search(self.index.rows(np.array([row]))[0], k, allowed)
        return [Scored(self.item_ids[r], s) for r, s in zip(rows.tolist(), scores.tolist())]

    def search(self, query: np.ndarray, k: int, exclude: set[str] = frozenset()) -> list[Scored]:
        """The ``k`` catalog items whose text is nearest to ``query`` (a unit vector by
        :attr:`text_encoder`), without ``exclude``."""
        allowed = np.ones(len(self.item_ids), dtype=bool)
        allowed[[self._rows[item] for item in exclude if item in self._rows]] = False
        rows, scores = self.index.search(np.asarray(query, dtype=np.float32), k, allowed)
        return [Scored(self.item_ids[r], s) for r, s in zip(rows.tolist(), scores.tolist())]
