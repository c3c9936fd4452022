"""Text-embedding caches that outlive a process: one interface, a file and a store implementation.

Embedding a catalog's texts with MiniLM is the slow part of building a model or a snapshot,
so embeddings are kept by ``TextEncoder.key(text)``. Every cache is a mutable mapping from
that key to a [384] vector (:data:`learner.text.TextEmbeddingCache`; a plain ``dict`` will do
within one process). One that outlives the process is a :class:`KeptTextCache`: it is loaded
when made, and :meth:`~KeptTextCache.save` keeps what was added since. Two implement it:

* :class:`FileTextCache`: a safetensors file (the backtest's, between runs);
* ``store.registry.StoredTextEmbeddings``: the store's ``text_embeddings`` table (workers
  and trainers, shared by all of them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from learner.text import TEXT_DIM


@runtime_checkable
class KeptTextCache(Protocol):
    """A text-embedding cache kept somewhere beyond this process: what it held is loaded when it
    is made; :meth:`save` keeps the vectors added since and returns how many."""

    def __getitem__(self, key: str) -> np.ndarray: ...

    def __setitem__(self, key: str, vector: np.ndarray) -> None: ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    def save(self) -> int: ...


class FileTextCache(dict):
    """A :class:`KeptTextCache` in a safetensors file (no pickle).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "texts.safetensors"
    >>> cache = FileTextCache(path)
    >>> cache["ab" * 32] = np.ones(TEXT_DIM, np.float32)
    >>> cache.save()
    1
    >>> len(FileTextCache(path)), float(FileTextCache(path)["ab" * 32].sum())
    (1, 384.0)
    """

    def __init__(self, path: str | Path):
        super().__init__()
        from safetensors.numpy import load_file

        self.path = Path(path)
        if self.path.exists():
            from safetensors import safe_open

            with safe_open(str(self.path), framework="numpy") as f:
                keys = json.loads(f.metadata()["keys"])
            vectors = load_file(str(self.path))["vectors"]
            self.update(zip(keys, vectors))
        self._saved = len(self)

    def save(self) -> int:
        """Write the file if anything was added since it was read (a whole file at once: runs
        sharing it never read half of one); returns how many vectors were added."""
        added = len(self) - self._saved
        if not added:
            return 0
        from safetensors.numpy import save_file

        keys = list(self)
        vectors = np.stack([np.asarray(self[k], np.float32) for k in keys]) if keys else np.zeros((0, TEXT_DIM),
                                                                                                   np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        save_file({"vectors": vectors}, str(partial), metadata={"keys": json.dumps(keys)})
        os.replace(partial, self.path)
        self._saved = len(self)
        return added
