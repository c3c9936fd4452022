"""``ModelBundle`` to bytes and back: safetensors tensors plus JSON metadata in its header.

The text encoder's adapter, when the bundle has one, travels as tensors named
``text_adapter.<parameter>`` next to the model's. The metadata (format, model config, id maps,
item text hashes, adapter tuning and settings, info) is one JSON string under
the header's ``__metadata__["streamrec"]``, so the same bundle always gives the same bytes.
No pickle anywhere. The bytes are checked against their sha256 before anything is parsed.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from learner.bundle import ModelBundle
from learner.idmap import IdMap, Vocabulary
from learner.model import ID_TABLES, ModelConfig, SASRec
from learner.text import TEXT_DTYPE, TextAdapter

FORMAT = "streamrec-bundle/1"
ADAPTER_PREFIX = "text_adapter."


class ChecksumMismatch(ValueError):
    """The bytes are not the ones the checksum was taken of."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump_bundle(bundle: ModelBundle) -> tuple[bytes, str]:
    """Serialise ``bundle``; returns ``(data, sha256 hex of data)``.

    Examples
    --------
    >>> bundle = ModelBundle.build(ModelConfig(dim=8, heads=1, use_text=False))
    >>> data, checksum = dump_bundle(bundle)
    >>> load_bundle(data, checksum).vocab == bundle.vocab
    True
    """
    tensors = {name: t.detach().cpu().contiguous() for name, t in bundle.model.state_dict().items()}
    adapter = bundle.adapter
    if adapter is not None:
        tensors.update({ADAPTER_PREFIX + name: t.detach().cpu().contiguous() for name, t in adapter.tensors.items()})
    metadata = {
        "format": FORMAT,
        "config": bundle.model.config.to_dict(),
        "items": bundle.vocab.items.keys(),
        "users": bundle.vocab.users.keys(),
        "storefronts": bundle.vocab.storefronts.keys(),
        "text_hashes": bundle.text_hashes,
        "info": bundle.info,
        "text_adapter": None if adapter is None else {"tuning": adapter.tuning, "settings": adapter.settings},
    }
    data = save_tensors(tensors, metadata={"streamrec": json.dumps(metadata, sort_keys=True)})
    return data, sha256(data)


def load_bundle(data: bytes, expected_sha256: str) -> ModelBundle:
    """Verify ``data`` against ``expected_sha256``, then deserialise it.

    Raises ``ChecksumMismatch`` before parsing when the checksum differs.
    """
    actual = sha256(data)
    if actual != expected_sha256.lower():
        raise ChecksumMismatch(f"bundle checksum mismatch: expected sha256 {expected_sha256}, got {actual}")
    metadata = _header_metadata(data)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} bundle (format {metadata.get('format')!r})")
    config = ModelConfig.from_dict(metadata["config"])
    users = metadata["users"] if config.user_embeddings else ()  # earlier releases kept them for every model
    vocab = Vocabulary(IdMap(metadata["items"]), IdMap(users), IdMap(metadata["storefronts"]))
    with torch.device("meta"):
        model = SASRec(config, *vocab.sizes())
    tensors = load_tensors(data)
    adapter_tensors = {name[len(ADAPTER_PREFIX):]: tensors.pop(name) for name in list(tensors)
                       if name.startswith(ADAPTER_PREFIX)}
    if "item_text" in tensors:  # float32 in bundles of earlier releases
        tensors["item_text"] = tensors["item_text"].to(TEXT_DTYPE)
    for kind, table in ID_TABLES.items():
        if f"{table}.weight" in tensors:
            _fit_id_table(model, kind, tensors)
    model.load_state_dict(tensors, strict=True, assign=True)
    described = metadata.get("text_adapter")
    adapter = None if described is None else TextAdapter(described["tuning"], described["settings"], adapter_tensors)
    return ModelBundle(model, vocab, metadata["text_hashes"], metadata["info"], adapter)


def _fit_id_table(model: SASRec, kind: str, tensors: dict[str, torch.Tensor]) -> None:
    """Size the model's ``kind`` id table as stored (it holds only admitted ids' rows); bundles of
    earlier releases, with a row for every id and no admission buffers, get an identity mapping."""
    table = ID_TABLES[kind]
    weight = tensors[f"{table}.weight"]
    setattr(model, table, torch.nn.Embedding(*weight.shape, padding_idx=0, device="meta", dtype=weight.dtype))
    n = len(tensors.setdefault(f"{kind}_id_rows", torch.arange(len(weight))))
    tensors.setdefault(f"{kind}_counts", torch.zeros(n, dtype=torch.long))
    tensors.setdefault(f"{kind}_last_seen", torch.full((n,), -1, dtype=torch.long))


def _header_metadata(data: bytes) -> dict:
    """Our JSON from the ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8:8 + length]).get("__metadata__", {}).get("streamrec", "{}"))
