"""Item text embeddings kept in a file between backtest runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from learner.text import TEXT_DIM


class FileTextCache(dict):
    """A text embedding cache kept in a safetensors file between runs (no pickle).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "texts.safetensors"
    >>> cache = FileTextCache(path)
    >>> cache["ab" * 32] = np.ones(TEXT_DIM, np.float32)
    >>> cache.save()
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

    def save(self) -> None:
        """Write the file if anything was added since it was read (a whole file at once: runs
        sharing it never read half of one)."""
        if len(self) == self._saved:
            return
        from safetensors.numpy import save_file

        keys = list(self)
        vectors = np.stack([np.asarray(self[k], np.float32) for k in keys]) if keys else np.zeros((0, TEXT_DIM),
                                                                                                   np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        save_file({"vectors": vectors}, str(partial), metadata={"keys": json.dumps(keys)})
        os.replace(partial, self.path)
        self._saved = len(self)
