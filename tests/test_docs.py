"""The docs site: it builds with --strict, its generated pages and benchmark tables are current,
every results file it names exists, and the README stays a short way in."""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys

from bench import provenance, render
from tests.docs import ROOT, load_docs_generator

DOCS = ROOT / "docs"


def test_the_examples_of_the_docs_and_bench_tools_run():
    spec = importlib.util.spec_from_file_location("streamrec_griffe_doctests", DOCS / "griffe_doctests.py")
    griffe_doctests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(griffe_doctests)
    for module in (load_docs_generator(), griffe_doctests, render, provenance):
        failed, tried = doctest.testmod(module)
        assert tried and not failed, module.__name__


def test_generated_pages_are_current():
    generate = load_docs_generator()
    stale = [str(path.relative_to(ROOT)) for path in generate.stale()]
    assert not stale, f"stale: {stale}; run: ./dev docs"


def test_api_pages_cover_the_algorithm_packages_and_the_backtest():
    generate = load_docs_generator()
    learner = (DOCS / "reference" / "api" / "learner.md").read_text()
    assert "::: learner.trainer" in learner and "::: learner.blend" in learner
    assert "::: backtest.protocol" in (DOCS / "reference" / "api" / "backtest.md").read_text()
    for package in ("replay", "drift", "learner", "backtest"):
        for module in (ROOT / package).glob("*.py"):
            name = f"{package}.{module.stem}"
            if module.stem != "__init__" and name not in generate.API_LEFT_OUT:
                assert f"::: {name}\n" in (DOCS / "reference" / "api" / f"{package}.md").read_text(), name


def test_benchmark_tables_match_their_results_files():
    stale = [str(page.relative_to(ROOT)) for page, _ in render.stale_pages(DOCS)]
    assert not stale, f"tables differ from their results files in {stale}; run: python -m bench.render"
    marked = [m for page in DOCS.rglob("*.md") for m in render.MARKER.finditer(page.read_text())]
    assert len(marked) >= 15 and {m["kind"] for m in marked} >= {"ingest", "soak", "replay_memory", "backtest"}


def test_a_changed_figure_is_put_back_from_its_file():
    page = (DOCS / "benchmarks" / "ingest.md").read_text()
    rendered_rows = page.split("<!-- bench:begin ingest", 1)[1].split("<!-- bench:end -->", 1)[0]
    row = next(line for line in rendered_rows.splitlines() if line.startswith("| raw aiokafka"))
    changed = page.replace(row, row.replace("| 1.00 |", "| 1.01 |"))
    assert changed != page and render.rendered(changed) == page


def test_every_results_file_the_docs_name_exists():
    named = {match for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]
             for match in re.findall(r"bench/results/([\w./-]+\.(?:json|md|png))", page.read_text())}
    for page in DOCS.rglob("*.md"):
        for m in render.MARKER.finditer(page.read_text()):
            named |= {line.split("|")[0].strip() for line in m["sources"].splitlines() if line.strip()}
    missing = sorted(path for path in named if not (render.RESULTS / path).exists())
    assert named and not missing, f"named but not in bench/results: {missing}"


def test_site_builds_strict(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
                            str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "streamrec backtest" in cli and "--markdown" in cli  # rendered from click
    api = (tmp_path / "site" / "reference" / "api" / "replay" / "index.html").read_text()
    assert "RehearsalSampler" in api and 'class="highlight"' in api  # docstrings, doctests as code


def test_readme_is_a_short_way_in():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert links and all((ROOT / link).exists() for link in links), [link for link in links
                                                                     if not (ROOT / link).exists()]
