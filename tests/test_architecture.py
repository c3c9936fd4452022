"""The layer rules of pyproject.toml hold, and they catch an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).parents[1]
PACKAGES = ["streamrec", "streams", "training", "runtime", "store", "backtest", "drift", "learner", "replay"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, timeout=300)


def test_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    for name in [*PACKAGES, "pyproject.toml"]:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    idmap = tmp_path / "learner" / "idmap.py"
    idmap.write_text(idmap.read_text() + "\nfrom store.db import make_engine  # an algorithm reaching the store\n")
    metrics = tmp_path / "backtest" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom runtime.config import Config  # the backtest reading settings\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "Layers point one way" in result.stdout and "BROKEN" in result.stdout
    assert "learner.idmap -> store.db" in result.stdout
    assert "The backtest is offline" in result.stdout and "backtest.metrics -> runtime.config" in result.stdout


def test_no_module_imports_itself_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = [(module, imported) for module in sorted(graph.modules)
              for imported in graph.find_modules_directly_imported_by(module)
              if graph.chain_exists(importer=imported, imported=module)]
    assert not cycles, f"import cycles through: {cycles[:5]}"
