"""The docs generator (``docs/generate.py``, a script rather than a package) loaded for the tests."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


@cache
def load_docs_generator() -> ModuleType:
    """``docs/generate.py`` as a module (loaded once)."""
    spec = importlib.util.spec_from_file_location("streamrec_docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
