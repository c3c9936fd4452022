"""Answering with one model version: recommendations, similar items and semantic search.

A :class:`Recommender` is an immutable snapshot: one version's bundle, extended with every
catalog item known when it was built (items newer than the version start among their
MiniLM look-alikes, as in training), its item vectors, the catalog's text embeddings and
the version's text encoder (pretrained MiniLM, or with the version's tuned adapter), which
encodes search queries. Each of the three answers searches an :class:`ItemIndex`: model
vectors by inner product (recommend), by cosine (similar), text vectors by cosine (search);
exact, or inverted-file indexes above a catalog size, which a snapshot of the same items
reuses (the text index across versions too, while the text encoder is the same). The worker
builds a new snapshot off the event loop and swaps the reference, so a request always sees
exactly one version, encoder included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from learner.bundle import ModelBundle
from learner.compiled import CompiledModule
from learner.device import Device, pick_device
from learner.idmap import PAD, UNKNOWN
from learner.model import SASRec
from learner.neighbours import ItemIndex
from learner.sequences import CLICK, PURCHASE, SequenceBatch
from learner.text import TEXT_DIM, TextEmbeddingCache, TextEncoder, catalog_texts, embed_texts

PERSONALISATION_WEIGHT = 0.05
"""Search: added to text cosine per standard deviation of the user's model score among the candidates."""
SEARCH_CANDIDATES = 100
"""Search: how many text matches are re-ranked for a user."""
BLEND_CANDIDATES = 100
"""Recommend with a text term: how many of the model's best and of the text's best are rescored."""
TUNING_USERS, TUNING_EVENTS = 200, 20
"""The recommend index is tuned with 200 users' states; histories of 20 random items stand in for missing users."""


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


class Recommender:
    """One model version ready to answer; built once, then read-only.

    Parameters
    ----------
    version
        The ``model_versions`` row (without weights) the bundle was loaded from.
    bundle
        The version's bundle; it is copied, never changed.
    catalog
        Catalog rows (``storefront, item_id, title, description, category``).
    storefront_items
        Items seen in each storefront's events, besides its catalog.
    ann_above
        Above this many item rows, ``recommend``, ``similar`` and ``search`` search
        inverted-file indexes (:class:`learner.neighbours.ItemIndex`) instead of scoring every
        item (None: never).
    previous
        The snapshot this one replaces: when it served the same version, its indexes are
        reused and only new or changed items are inserted (its text index also when it served
        another version with the same text encoder).
    owned
        The bundle is this snapshot's (freshly loaded): it is extended in place, not copied,
        and its item id table and text rows are released once the item vectors are computed.
    precision
        How item vectors are held for answering: ``"float32"``, ``"float16"`` or ``"int8"``
        (see :class:`learner.neighbours.ItemIndex`); None: float16 in an index, else float32.
        Users' states are computed from the same vectors.
    ann_recall
        The share of the exact top 20 each index should find: it decides how many of an
        index's lists a search scans.
    users
        Histories (as for :meth:`recommend`) whose states tune the recommend index; up to
        :data:`TUNING_USERS` are read, and histories of :data:`TUNING_EVENTS` items drawn at
        random make up the rest.
    """

    def __init__(self, version: dict, bundle: ModelBundle, catalog: pd.DataFrame,
                 storefront_items: dict[str, set[str]] | None = None, encoder: TextEncoder | None = None,
                 cache: TextEmbeddingCache | None = None, device: Device | None = None,
                 ann_above: int | None = None, previous: Recommender | None = None, owned: bool = False,
                 precision: str | None = None, ann_recall: float = 0.95, users: Sequence[Sequence] = ()):
        self.version = version
        self.device = device or pick_device()
        bundle = bundle if owned else bundle.copy()
        if len(catalog):
            bundle.extend(catalog=catalog, encoder=encoder, cache=cache)
        self.text_encoder = bundle.text_encoder(encoder)
        self.text_encoder_name = bundle.text_encoder_name
        self.vocab = bundle.vocab
        self.max_len = bundle.model.config.max_len
        self.model = bundle.model.to(self.device.torch_device).eval()
        self.blend = bundle.text_blend
        self._text_weights = self.blend.item_weights(self.model.item_counts.cpu()).numpy() if self.blend.weight \
            else None
        self._state_module, self._state = UserState(self.model).eval(), None
        with torch.inference_mode(), self.device.autocast():
            vectors = self.model.item_vectors().float().cpu().numpy()
        same_items = previous is not None and previous.recommend_index.precision == (
            precision or previous.recommend_index.precision) and \
            previous.item_ids[2:].tolist() == bundle.vocab.items.keys()[:len(previous.item_ids) - 2]
        if same_items and previous.version["id"] == version["id"]:
            self.recommend_index = previous.recommend_index.extended(vectors)
            self.similar_index = previous.similar_index.extended(vectors)
        else:
            states = None
            if ann_above is not None and len(vectors) > ann_above:  # an index: tuned with users' states
                users = [*users[:TUNING_USERS], *self._random_users()[:max(0, TUNING_USERS - len(users))]]
                states = np.stack([self.user_vector(h, vectors).cpu().numpy() for h in users])
            self.recommend_index = self._index(vectors, "ip", ann_above, precision, ann_recall, states)
            self.similar_index = self._index(vectors, "cos", ann_above, precision, ann_recall)
        del vectors
        self.item_ids = np.array(["<pad>", "<unknown>", *self.vocab.items.keys()], dtype=object)
        self.titles = dict(zip(catalog["item_id"].astype(str), catalog["title"]))
        self._storefront_masks = self._masks(catalog, storefront_items or {})
        texts = self._text_rows(catalog, cache)
        self._has_text = texts.any(axis=1)
        if same_items and previous.text_encoder_name == self.text_encoder_name:  # text rows of the same encoder
            self.search_index = previous.search_index.extended(texts)
        else:
            self.search_index = self._index(texts, "cos", ann_above, precision, ann_recall)
        del texts
        if owned:  # answering reads the item vectors computed above, never the id table, its state or text rows
            with torch.no_grad():
                self.model.item_ids.weight.data = self.model.item_ids.weight.data.new_zeros(0, self.model.config.dim)
                for name in ("item_text", "item_id_rows", "item_counts", "item_last_seen"):
                    if hasattr(self.model, name):
                        setattr(self.model, name, getattr(self.model, name)[:0].clone())

    def describe_indexes(self) -> dict[str, dict]:
        """How each answer searches its items (:meth:`learner.neighbours.ItemIndex.describe`)."""
        return {name: getattr(self, f"{name}_index").describe() for name in ("recommend", "similar", "search")}

    @staticmethod
    def _index(vectors: np.ndarray, metric: str, ann_above: int | None, precision: str | None,
               recall: float, queries: np.ndarray | None = None) -> ItemIndex:
        approximate = ann_above is not None and len(vectors) > ann_above
        return ItemIndex(vectors, metric, approximate, precision, recall, queries=queries)

    def _random_users(self) -> list[list[Click]]:
        """:data:`TUNING_USERS` histories of :data:`TUNING_EVENTS` clicks on items drawn at random."""
        rng, keys = np.random.default_rng(0), self.vocab.items.keys()
        return [[Click(keys[i]) for i in rng.integers(0, len(keys), TUNING_EVENTS)] for _ in range(TUNING_USERS)]

    def _text_rows(self, catalog: pd.DataFrame, cache: TextEmbeddingCache | None) -> np.ndarray:
        """[n_items, 384] text vectors by item row (zero without text): the version's own float16
        rows, or with an id-only model the catalog's texts encoded here."""
        if self.model.config.use_text:
            return self.model.item_text.cpu().numpy()
        texts = catalog_texts(catalog)
        out = np.zeros((len(self.vocab.items), TEXT_DIM), dtype=np.float32)
        out[self.vocab.items.index(texts)] = embed_texts(list(texts.values()), self.text_encoder, cache)
        return out

    def _masks(self, catalog: pd.DataFrame, seen: dict[str, set[str]]) -> dict[str, np.ndarray]:
        """Per storefront, which item rows belong to it (its catalog or its events)."""
        members: dict[str, set[str]] = {s: set(items) for s, items in seen.items()}
        for storefront, item in zip(catalog["storefront"], catalog["item_id"].astype(str)):
            members.setdefault(storefront, set()).add(item)
        masks = {}
        for storefront, ids in members.items():
            mask = np.zeros(len(self.vocab.items), dtype=bool)
            mask[self.vocab.items.index(ids)] = True
            mask[[PAD, UNKNOWN]] = False
            masks[storefront] = mask
        return masks

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

    def _history_inputs(self, history: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The last ``max_len`` events of ``history`` as the model reads them: the catalog rows of
        their items, and for each event its item's position among those rows (0: padding, which
        stands alone for an empty history), its type and its storefront's row."""
        recent = history[-self.max_len:]
        if not len(recent):
            return np.array([PAD]), np.array([PAD]), np.array([PAD]), np.array([PAD])
        items = self.vocab.items.index(e.item_id for e in recent)
        types = np.array([PURCHASE if e.type == "purchase" else CLICK for e in recent])
        shops = self.vocab.storefronts.index(e.storefront for e in recent)
        rows, local = np.unique(np.r_[PAD, items], return_inverse=True)  # rows[0] is PAD: local 0 pads
        return rows, local[1:], types, shops

    @torch.inference_mode()
    def user_vector(self, history: Sequence, vectors: np.ndarray | None = None) -> torch.Tensor:
        """The model's state [dim] after a user's events (oldest first; ``item_id``, ``type``,
        ``storefront`` attributes), of which the last ``max_len`` are read; from the item
        ``vectors`` [n_items, dim] given, else as the recommend index holds them (by the ONNX
        Runtime export once :meth:`compile` has made one)."""
        rows, items, types, shops = self._history_inputs(history)
        vectors = self.recommend_index.rows(rows) if vectors is None else np.asarray(vectors[rows], np.float32)
        if self._state is not None:
            return torch.from_numpy(self._state(items=items, types=types, storefronts=shops, vectors=vectors))
        inputs = (torch.from_numpy(x).to(self.device.torch_device) for x in (items, types, shops, vectors))
        with self.device.autocast():
            return self._state_module(*inputs)

    @property
    def is_compiled(self) -> bool:
        """Whether users' states come from an ONNX Runtime export."""
        return self._state is not None

    def compile(self) -> bool:
        """Compute users' states with an ONNX Runtime export of the model from now on (the only
        change to a snapshot after it is built; same states within
        :data:`learner.compiled.TOLERANCE`). On a CPU only: a GPU keeps torch. Takes seconds:
        call it off the event loop. Whether it compiled; :class:`learner.compiled.CompileError`
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
        if self._text_weights is None:
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

    def _blended(self, user: np.ndarray, history: Sequence, k: int,
                 allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top ``k`` by the version's score plus its text term
        (:mod:`learner.blend`), as the gate scores: every item exactly with exact indexes; with
        inverted-file indexes, the model's :data:`BLEND_CANDIDATES` best and the text's best
        among new items (at most ``half_count`` interactions), rescored."""
        recent = self.vocab.items.index(e.item_id for e in history[-self.blend.recent:])
        known = recent[(recent > UNKNOWN) & self._has_text[recent]]
        if not len(known):
            return self.recommend_index.search(user, k, allowed)
        center = np.asarray(self.blend.center or np.zeros(TEXT_DIM), dtype=np.float32)
        profile = (self.search_index.rows(known) - center).sum(0) / len(recent)
        offset = float(profile @ center)  # text(i) . profile = unit(i) . profile - center . profile
        if not self.recommend_index.approximate and not self.search_index.approximate:
            text = np.where(self._has_text, self.search_index.dot(profile) - offset, 0.0)
            scores = self.recommend_index.dot(user) + self._text_weights * text
            scores[~allowed] = -np.inf
            scores[:UNKNOWN + 1] = -np.inf
            k = min(k, int(np.isfinite(scores).sum()))
            top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
            top = top[np.argsort(-scores[top], kind="stable")]
            return top, scores[top]
        pool = max(k, BLEND_CANDIDATES)
        new = allowed & self._has_text & (self._text_weights >= self.blend.weight / 2)
        rows = np.union1d(self.recommend_index.search(user, pool, allowed)[0],
                          self.search_index.search(profile, pool, new)[0])
        text = np.where(self._has_text[rows], self.search_index.rows(rows) @ profile - offset, 0.0)
        scores = self.recommend_index.rows(rows) @ user + self._text_weights[rows] * text
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top].astype(np.float32)

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
    model version serves: catalog items ranked by the cosine of their MiniLM text vectors.

    Parameters
    ----------
    catalog
        Catalog rows (``item_id, title, description, category``); items without text are left out.
    encoder
        The pretrained text encoder (embeds texts missing from ``cache`` and, elsewhere, queries).
    cache
        Text embeddings by key, read first and filled with what is embedded here.
    ann_above, precision, ann_recall
        As for :class:`Recommender`.
    previous
        The text ranker this one replaces: when its items are a prefix of this one's (the
        catalog only grew), its index is extended instead of built again.

    Examples
    --------
    >>> from learner.text import text_key
    >>> catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["x", "y", "z"],
    ...                         "description": None, "category": None})
    >>> cache = {text_key(t): v for t, v in zip("xyz", np.eye(3, TEXT_DIM, dtype=np.float32) + [[0], [0], [1]])}
    >>> ranker = TextRanker(catalog, None, cache)
    >>> [s.item_id for s in ranker.similar("a", 2)], ranker.search(np.eye(1, TEXT_DIM)[0], 1)[0].item_id
    (['c', 'b'], 'a')
    """

    text_encoder_name = "frozen"

    def __init__(self, catalog: pd.DataFrame, encoder: TextEncoder | None, cache: TextEmbeddingCache | None = None,
                 ann_above: int | None = None, precision: str | None = None, ann_recall: float = 0.95,
                 previous: TextRanker | None = None):
        texts = catalog_texts(catalog)
        self.text_encoder = encoder
        self.item_ids = np.array(["<pad>", "<unknown>", *texts], dtype=object)
        self._rows = {item: row for row, item in enumerate(self.item_ids[2:], start=2)}
        self.titles = dict(zip(catalog["item_id"].astype(str), catalog["title"]))
        vectors = np.zeros((len(self.item_ids), TEXT_DIM), dtype=np.float32)
        vectors[2:] = embed_texts(list(texts.values()), encoder, cache)
        if previous is not None and previous.item_ids.tolist() == self.item_ids[:len(previous.item_ids)].tolist():
            self.index = previous.index.extended(vectors)
        else:
            self.index = Recommender._index(vectors, "cos", ann_above, precision, ann_recall)

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
