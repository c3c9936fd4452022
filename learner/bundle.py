"""A model together with the id maps and item texts it is indexed by."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import pandas as pd
import torch

from learner.blend import TextBlend
from learner.device import Device, pick_device
from learner.idmap import Vocabulary
from learner.model import ModelConfig, SASRec
from learner.sequences import events_frame, history_batch
from learner.text import (
    TextAdapter,
    TextEmbeddingCache,
    TextEncoder,
    adapted_encoder,
    catalog_texts,
    embed_texts,
    text_key,
)

log = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    """Everything needed to score: model, vocabulary, text encoder weights, and the text hash
    behind each item row.

    ``text_hashes`` maps item_id to the key (``TextEncoder.key``) of the text its ``item_text``
    row was computed from. ``adapter`` holds the text encoder's tuned weights (None: the
    pretrained MiniLM); the item texts are encoded with it. ``info`` is free-form JSON-able
    metadata (window, metrics, parent checksum).

    Examples
    --------
    >>> events = pd.DataFrame({"event_id": ["e1", "e2"], "type": ["click", "purchase"],
    ...     "user_id": ["u1", "u1"], "item_id": ["m1", "m2"], "storefront": ["shop", "shop"],
    ...     "ts": [1, 2], "session_id": [None, None]})
    >>> bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, use_text=False), events=events)
    >>> users, vectors = bundle.user_vectors(events)
    >>> users, tuple(vectors.shape), tuple(bundle.item_vectors().shape)
    (['u1'], (1, 8), (4, 8))
    """

    model: SASRec
    vocab: Vocabulary
    text_hashes: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    adapter: TextAdapter | None = None

    @classmethod
    def build(cls, config: ModelConfig, *, catalog: pd.DataFrame | None = None, events: pd.DataFrame | None = None,
              encoder: TextEncoder | None = None, cache: TextEmbeddingCache | None = None,
              seed: int = 0) -> ModelBundle:
        """A fresh, untrained bundle knowing the items of ``catalog`` and the ids in ``events``.

        With ``config.use_text``, item texts missing from ``cache`` are embedded by ``encoder``.
        """
        vocab = Vocabulary()
        _add_ids(vocab, catalog, events, users=config.user_embeddings)
        torch.manual_seed(seed)
        bundle = cls(SASRec(config, *vocab.sizes()), vocab)
        if config.use_text and catalog is not None:
            bundle.set_texts(catalog_texts(catalog), encoder, cache)
        return bundle

    def copy(self) -> ModelBundle:
        """An independent deep copy (the model is trained in place by the trainer)."""
        return copy.deepcopy(self)

    def extend(self, *, catalog: pd.DataFrame | None = None, events: pd.DataFrame | None = None,
               encoder: TextEncoder | None = None, cache: TextEmbeddingCache | None = None,
               admit: bool = True) -> dict[str, int]:
        """Add unseen items (catalog, then events), storefronts and, for a model with user vectors,
        users; grow the model in place.

        Existing rows are untouched, so scores of old users and items do not change, except
        for items whose catalog text changed: their text row is recomputed. New items get the
        embedding of their text (so a cold item scores by content), or a zero vector. Texts are
        encoded by ``encoder`` with this bundle's adapter. With ``admit=False`` new ids get no id
        row yet (:mod:`learner.admission`). Returns the number of ids added per map.
        """
        before = self.vocab.sizes()
        _add_ids(self.vocab, catalog, events, users=self.model.config.user_embeddings)
        self.model.grow(*self.vocab.sizes(), admit=admit)
        if self.model.config.use_text and catalog is not None:
            self.set_texts(catalog_texts(catalog), self.text_encoder(encoder), cache)
            new_items = torch.arange(before[0], len(self.vocab.items), device=self.model.item_text.device)
            self.model.init_from_text_neighbours(new_items[self.model.item_text[new_items].abs().sum(1) > 0])
        names = ("items", "users", "storefronts")
        added = {name: after - b for name, b, after in zip(names, before, self.vocab.sizes())}
        log.info("vocabulary extended by %s to %s", added, self.vocab)
        return added

    def text_encoder(self, base: TextEncoder | None) -> TextEncoder | None:
        """The encoder of this bundle's texts: ``base`` (the pretrained MiniLM) with this bundle's adapter."""
        return None if base is None else adapted_encoder(base, self.adapter)

    @property
    def text_blend(self) -> TextBlend:
        """The text term of this bundle's scores (:mod:`learner.blend`; off without a text tower or a fit)."""
        if not self.model.config.use_text or "text_blend" not in self.info:
            return TextBlend()
        return TextBlend(**self.info["text_blend"])

    @property
    def text_encoder_name(self) -> str:
        """'frozen' (the pretrained MiniLM), or the adapter's tuning, shape and the start of its id."""
        return "frozen" if self.adapter is None else f"{self.adapter.describe()} #{self.adapter.id[:8]}"

    def set_texts(self, texts: dict[str, str], encoder: TextEncoder | None,
                  cache: TextEmbeddingCache | None = None) -> None:
        """Encode the texts (item_id -> text) whose row is missing or was computed from another
        text or encoder, with ``encoder`` (already this bundle's)."""
        key = (lambda text: text_key(text, self.adapter.id if self.adapter else "")) if encoder is None else encoder.key
        keys = {item: key(text) for item, text in texts.items()}
        changed = {item: text for item, text in texts.items() if self.text_hashes.get(item) != keys[item]}
        if not changed:
            return
        vectors = embed_texts(list(changed.values()), encoder, cache)
        rows = torch.from_numpy(self.vocab.items.index(changed))
        with torch.no_grad():
            self.model.item_text[rows] = torch.from_numpy(vectors).to(self.model.item_text)
        self.text_hashes.update({item: keys[item] for item in changed})

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """[n_items, dim] float32 CPU vectors in ``vocab.items`` index order (row 0 padding, 1 unknown)."""
        return self.model.eval().item_vectors().float().cpu()

    @torch.no_grad()
    def user_vectors(self, history: pd.DataFrame, device: Device | None = None,
                     batch_size: int = 1024) -> tuple[list[str], torch.Tensor]:
        """States of the users in ``history`` from their last ``max_len`` events: (user_ids, [U, dim])."""
        device = device or pick_device()
        user_ids, batch = history_batch(history, self.vocab, self.model.config.max_len)
        model = self.model.to(device.torch_device).eval()
        out = []
        for start in range(0, len(batch), batch_size):
            with device.autocast():
                out.append(model.user_vectors(batch.select(slice(start, start + batch_size)).to(device)).float())
        return user_ids, torch.cat(out).cpu() if out else torch.zeros(0, model.config.dim)


def _add_ids(vocab: Vocabulary, catalog: pd.DataFrame | None, events: pd.DataFrame | None, users: bool) -> None:
    """Add the ids of ``catalog`` and ``events``; user ids only with ``users`` (a model without
    user vectors needs none, so its vocabulary does not grow with every visitor)."""
    if catalog is not None:
        vocab.items.add(catalog["item_id"].astype(str))
    events = events_frame(events)
    vocab.add_events(events["user_id"] if users else (), events["item_id"], events["storefront"])
