"""SASRec-style sequential recommender whose item vectors mix learned ids and frozen text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learner.idmap import PAD, UNKNOWN
from learner.sequences import SequenceBatch
from learner.text import TEXT_DIM, TEXT_DTYPE

PLACEMENT_CANDIDATES = 100_000
"""New items are placed among look-alikes found in at most this many items (a seeded sample)."""
PROJECTION_BLOCK = 65_536
"""Text rows are projected this many at a time: a million items' float16 text would be 1.5 GB
as float32 at once."""
ID_TABLES = {"item": "item_ids", "user": "users"}
"""The model's id tables by kind of id; ``<kind>_id_rows`` maps each id to its row (0: none)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a ``SASRec``.

    ``use_text=False`` is the id-only baseline (no text tower). ``user_embeddings`` adds a
    learned per-user vector to the sequence state. ``id_dropout`` is the share of item id
    vectors dropped (zeroed) per training step so the text projection learns to stand alone,
    which is what ranks new, never-interacted items sensibly.
    """

    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    use_text: bool = True
    user_embeddings: bool = False
    id_dropout: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        return cls(**values)


class SASRec(nn.Module):
    """Causal transformer over a user's recent events; scores are dot products with item vectors.

    Item vector = id embedding + bias-free projection of the item's MiniLM embedding
    (``item_text``, a float16 buffer, 768 bytes an item; zero for items without text). Padding and unknown rows score
    ``-inf`` in ``logits``. Each input position embeds item, event type, storefront and position.

    Examples
    --------
    >>> model = SASRec(ModelConfig(dim=8, heads=1, max_len=4), n_items=6, n_users=3, n_storefronts=3)
    >>> items, types = torch.tensor([[0, 0, 4, 5]]), torch.tensor([[0, 0, 1, 2]])
    >>> batch = SequenceBatch(items, types, storefronts=torch.tensor([[0, 0, 2, 2]]), users=torch.tensor([2]))
    >>> model.eval().user_vectors(batch).shape, model.item_vectors().shape
    (torch.Size([1, 8]), torch.Size([6, 8]))
    """

    def __init__(self, config: ModelConfig, n_items: int, n_users: int, n_storefronts: int):
        super().__init__()
        self.config = config
        d = config.dim
        self.item_ids = nn.Embedding(n_items, d, padding_idx=PAD)
        self._register_id_rows("item", n_items)
        if config.use_text:
            self.text_projection = nn.Linear(TEXT_DIM, d, bias=False)
            self.register_buffer("item_text", torch.zeros(n_items, TEXT_DIM, dtype=TEXT_DTYPE))
        if config.user_embeddings:
            self.users = nn.Embedding(n_users, d, padding_idx=PAD)
            nn.init.zeros_(self.users.weight)
            self._register_id_rows("user", n_users)
        self.event_types = nn.Embedding(3, d, padding_idx=PAD)
        self.storefronts = nn.Embedding(n_storefronts, d, padding_idx=PAD)
        self.positions = nn.Embedding(config.max_len, d)
        layer = nn.TransformerEncoderLayer(d, config.heads, dim_feedforward=d * 4, dropout=config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.input_dropout = nn.Dropout(config.dropout)
        for table in (self.item_ids, self.event_types, self.storefronts, self.positions):
            nn.init.normal_(table.weight, std=0.02)
            if table.padding_idx is not None:
                table.weight.data[table.padding_idx].zero_()

    def _register_id_rows(self, kind: str, n: int) -> None:
        """Buffers of an id table (see :meth:`admit`): each id's row in it, its interaction count
        and when it last interacted (event time, ms; -1: not yet)."""
        self.register_buffer(f"{kind}_id_rows", torch.arange(n))
        self.register_buffer(f"{kind}_counts", torch.zeros(n, dtype=torch.long))
        self.register_buffer(f"{kind}_last_seen", torch.full((n,), -1, dtype=torch.long))

    @property
    def n_items(self) -> int:
        return len(self.item_id_rows)

    def id_table(self, kind: str) -> nn.Embedding:
        """The trainable vectors of admitted item (``"item"``) or user (``"user"``) ids."""
        return getattr(self, ID_TABLES[kind])

    def item_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[n_items, dim] vectors of every item row (padding row is zero), or of ``rows`` only.

        Only the rows asked for are computed, so a training step that needs a few thousand
        items costs the same whatever the catalog's size. In training mode a random
        ``id_dropout`` share of id vectors is zeroed.
        """
        ids = self.item_ids(self.item_id_rows if rows is None else self.item_id_rows[rows])
        if self.training and self.config.id_dropout and self.config.use_text:
            keep = torch.rand(len(ids), 1, device=ids.device) >= self.config.id_dropout
            ids = ids * keep
        if not self.config.use_text:
            return ids
        text = self.item_text if rows is None else self.item_text[rows]
        dtype = self.text_projection.weight.dtype
        return ids + torch.cat([self.text_projection(block.to(dtype)) for block in text.split(PROJECTION_BLOCK)])

    def forward(self, batch: SequenceBatch, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence states [B, L, dim]; position t summarises events up to t."""
        vectors = self.item_vectors() if item_vectors is None else item_vectors
        items = batch.items
        length = items.shape[1]
        x = (F.embedding(items, vectors) + self.event_types(batch.types) + self.storefronts(batch.storefronts)
             + self.positions.weight[-length:])
        x = self.input_dropout(x * (items != PAD).unsqueeze(-1))
        future = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        blocked = future | (items == PAD).unsqueeze(1)  # [B, L, L]: no future, no padding keys ...
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=items.device)  # ... but always itself
        mask = blocked.repeat_interleave(self.config.heads, dim=0)
        h = self.norm(self.encoder(x, mask=mask))
        if self.config.user_embeddings:
            h = h + self.users(self.user_id_rows[batch.users]).unsqueeze(1)
        return h

    def user_vectors(self, batch: SequenceBatch) -> torch.Tensor:
        """[B, dim] user states: the sequence state at the newest (last) position."""
        return self(batch)[:, -1]

    def logits(self, states: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Scores [N, n_items] of ``states`` [N, dim]; padding and unknown rows are ``-inf``."""
        scores = states.float() @ item_vectors.float().T
        scores[:, [PAD, UNKNOWN]] = float("-inf")
        return scores

    @torch.no_grad()
    def grow(self, n_items: int, n_users: int, n_storefronts: int, admit: bool = True) -> None:
        """Enlarge the tables to the given numbers of ids; old rows are kept. New ids get id rows
        of their own starting at zero (so a new item's vector is its text projection, or zero
        without text), or with ``admit=False`` none yet (see :meth:`admit`)."""
        self._grow_ids("item", n_items, admit)
        self.storefronts = _grown(self.storefronts, n_storefronts)
        if self.config.user_embeddings:
            self._grow_ids("user", n_users, admit)
        if self.config.use_text and n_items > len(self.item_text):
            extra = self.item_text.new_zeros(n_items - len(self.item_text), TEXT_DIM)
            self.item_text = torch.cat([self.item_text, extra])

    def _grow_ids(self, kind: str, n: int, admit: bool) -> None:
        rows = getattr(self, f"{kind}_id_rows")
        new = n - len(rows)
        if new <= 0:
            return
        for name, fill in ((f"{kind}_counts", 0), (f"{kind}_last_seen", -1)):
            setattr(self, name, torch.cat([getattr(self, name), getattr(self, name).new_full((new,), fill)]))
        setattr(self, f"{kind}_id_rows", torch.cat([rows, rows.new_zeros(new)]))
        if admit:
            self.admit(kind, torch.arange(n - new, n, device=rows.device))

    @torch.no_grad()
    def admit(self, kind: str, ids: torch.Tensor) -> None:
        """Give the ``kind`` ids ``ids`` (those without one) a trainable row of their own,
        starting at zero. Until then an item's vector is its text projection alone and a user
        has no vector of its own."""
        rows = getattr(self, f"{kind}_id_rows")
        ids = ids.to(rows.device)
        ids = ids[(ids > PAD) & (rows[ids] == PAD)]
        if not len(ids):
            return
        table = self.id_table(kind)
        rows[ids] = torch.arange(table.num_embeddings, table.num_embeddings + len(ids), device=rows.device)
        setattr(self, ID_TABLES[kind], _grown(table, table.num_embeddings + len(ids)))

    @torch.no_grad()
    def retire(self, kind: str, ids: torch.Tensor) -> None:
        """Take the rows of the ``kind`` ids ``ids`` away (padding and unknown keep theirs) and
        compact the table: it then holds exactly the admitted ids' rows. An item keeps its text."""
        rows = getattr(self, f"{kind}_id_rows")
        rows[ids[ids > UNKNOWN]] = PAD
        used = torch.unique(rows[rows != PAD])
        table = self.id_table(kind)
        compact = nn.Embedding(len(used) + 1, table.embedding_dim, padding_idx=PAD, device=table.weight.device,
                               dtype=table.weight.dtype)
        compact.weight[0] = 0
        compact.weight[1:] = table.weight[used]
        rows[rows != PAD] = torch.searchsorted(used, rows[rows != PAD]) + 1
        setattr(self, ID_TABLES[kind], compact)

    @torch.no_grad()
    def init_from_text_neighbours(self, rows: torch.Tensor, k: int = 10, temperature: float = 0.02) -> None:
        """Start untrained items with text (``rows``) among their look-alikes: set their id rows
        so that each item's vector equals a weighted mean of the vectors of its ``k`` nearest
        other items by text cosine (softmax of cosine / ``temperature``). Rows are left as
        they are when no other item has text. In a catalog of more than
        :data:`PLACEMENT_CANDIDATES` items with text, the look-alikes are sought in a seeded
        sample of that many, which bounds the cost at any catalog size."""
        has_text = self.item_text.abs().sum(1) > 0
        has_text[rows] = False
        candidates = has_text.nonzero().squeeze(1)
        if not len(candidates) or not len(rows):
            return
        if len(candidates) > PLACEMENT_CANDIDATES:
            sample = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(0))
            candidates = candidates[sample[:PLACEMENT_CANDIDATES].sort().values]
        vectors = self.item_vectors()
        rows = rows[self.item_id_rows[rows] != PAD]  # only items with an id row of their own
        for chunk in rows.split(256):
            top, index = _nearest(self.item_text[chunk].float(), self.item_text, candidates, min(k, len(candidates)))
            weights = torch.softmax(top / temperature, dim=1).unsqueeze(-1)
            projected = self.text_projection(self.item_text[chunk].float())
            self.item_ids.weight[self.item_id_rows[chunk]] = (weights * vectors[index]).sum(1) - projected


def _nearest(queries: torch.Tensor, texts: torch.Tensor, candidates: torch.Tensor, k: int,
             block: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """(dot products, rows) of the ``k`` rows of ``texts`` among ``candidates`` nearest each query,
    taken a block of candidates at a time so memory stays bounded at any catalog size.

    >>> texts = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    >>> top, rows = _nearest(texts[:2], texts, torch.arange(2, 10), k=3, block=3)
    >>> torch.equal(rows, (texts[:2] @ texts[2:].T).topk(3).indices + 2)
    True
    """
    best = (torch.full((len(queries), 0), float("-inf"), device=queries.device),
            torch.zeros((len(queries), 0), dtype=torch.long, device=queries.device))
    for part in candidates.split(block):
        scores = queries @ texts[part].float().T
        values = torch.cat([best[0], scores], dim=1)
        rows = torch.cat([best[1], part.expand(len(queries), -1)], dim=1)
        top, at = values.topk(min(k, values.shape[1]), dim=1)
        best = top, rows.gather(1, at)
    return best


def _grown(table: nn.Embedding, rows: int) -> nn.Embedding:
    if rows <= table.num_embeddings:
        return table
    grown = nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx,
                         device=table.weight.device, dtype=table.weight.dtype)
    grown.weight.zero_()
    grown.weight[:table.num_embeddings] = table.weight
    return grown
