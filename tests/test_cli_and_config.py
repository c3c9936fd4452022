"""Command line, configuration and the docs' promises about them (README and settings reference)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from replay.memory import POLICIES
from runtime.config import (
    SECTIONS,
    SETTINGS,
    Config,
    ConfigError,
    settings_table,
    with_settings_table,
)
from store.db import make_engine, migrate
from streamrec.cli import main
from tests.docs import load_docs_generator

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"


def test_every_command_has_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in main.commands:
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output, name


def test_defaults_and_derived_names():
    config = Config.from_env({})
    assert config.kafka_url == "kafka://127.0.0.1:9092"
    assert config.database_url.startswith("sqlite:///var/")
    assert (config.events_topic, config.catalog_topic, config.dead_letter_topic, config.windows_topic) == (
        "streamrec-events", "streamrec-catalog", "streamrec-dead-letters", "streamrec-windows")
    assert Config.from_env({"STREAMREC_REHEARSAL_RATIO": "0"}).rehearsal_ratio == 0.0  # rehearsal off
    custom = Config.from_env({"STREAMREC_TOPIC_PREFIX": "shop", "STREAMREC_KAFKA_URL": "kafka://a:1;b:2"})
    assert custom.events_topic == "shop-events" and custom.bootstrap_servers == "a:1,b:2"


@pytest.mark.parametrize("env, message", [
    ({"STREAMREC_WEB_PORT": "http"}, "STREAMREC_WEB_PORT='http' is not a whole number"),
    ({"STREAMREC_TOPIC_PARTITIONS": "0"}, "must be positive"),
    ({"STREAMREC_KAFKA_URL": "127.0.0.1:9092"}, "must start with kafka://"),
    ({"STREAMREC_LOG_LEVEL": "loud"}, "must be one of"),
    ({"STREAMREC_REHEARSAL_POLICY": "fifo"}, "must be one of reservoir, frequency, recency"),
    ({"STREAMREC_WINDOW_MAX_AGE_S": "soon"}, "STREAMREC_WINDOW_MAX_AGE_S='soon' is not a number"),
    ({"STREAMREC_REHEARSAL_RATIO": "-1"}, "must be positive"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


def test_cli_reports_bad_settings_without_a_traceback(monkeypatch):
    monkeypatch.setenv("STREAMREC_WEB_PORT", "http")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1 and "STREAMREC_WEB_PORT='http'" in result.output


def test_settings_reference_documents_every_setting_in_its_section():
    page = SETTINGS_PAGE.read_text()
    for setting in SETTINGS.values():
        assert setting.section in SECTIONS, f"{setting.env} names no section of runtime.config.SECTIONS"
        section = page.split(f"\n## {setting.section}\n", 1)[1].split("\n## ", 1)[0]
        assert f"| `{setting.env}` | `{setting.default}` |" in section, setting.env


def test_settings_reference_is_generated():
    generate = load_docs_generator()
    assert SETTINGS_PAGE.read_text() == generate.settings_page(), "run: ./dev docs"
    result = CliRunner().invoke(main, ["config", "--markdown"])
    assert result.exit_code == 0 and result.output == settings_table()
    table = "<!-- settings:begin -->\n<!-- settings:end -->\n"
    assert with_settings_table(table) == f"<!-- settings:begin -->\n{settings_table()}<!-- settings:end -->\n"


def test_settings_round_trip_and_replace():
    config = Config.from_env({"STREAMREC_API_TOKEN": "t", "STREAMREC_WEB_PORT": " 7000 ", "STREAMREC_SEED": " "})
    assert (config.web_port, config.seed) == (7000, 1)  # stripped; blank means the default
    assert Config.from_env({s.env: str(getattr(config, name)) for name, s in SETTINGS.items()}) == config
    changed = config.replace(model_dim=32, rehearsal_policy="recency")
    assert (changed.model_dim, changed.rehearsal_policy, config.model_dim) == (32, "recency", 64)
    with pytest.raises(ConfigError, match="STREAMREC_MODEL_DIM=0 must be positive"):
        config.replace(model_dim=0)
    with pytest.raises(ConfigError, match="must be below 1"):
        Config.from_env({"STREAMREC_GATE_HOLDOUT": "1"})
    with pytest.raises(ValueError):
        config.seed = 2  # frozen
    assert Config.from_env({"STREAMREC_GATE_TOLERANCE": "0", "STREAMREC_DISTILL_WEIGHT": "0"}).gate_tolerance == 0
    with pytest.raises(ConfigError, match="must be one of " + ", ".join(POLICIES)):  # the implemented policies
        Config.from_env({"STREAMREC_REHEARSAL_POLICY": "x"})


def test_from_env_reads_only_the_given_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMREC_SEED", "7")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STREAMREC_MODEL_DIM=8\n")
    assert (Config.from_env({}).seed, Config.from_env().seed, Config.from_env().model_dim) == (1, 7, 64)


def test_readme_starts_with_the_run_and_test_commands():
    title, rest = README.split("\n\n", 1)
    assert title == "# streamrec" and rest.startswith("```bash\n"), "the two commands come first"
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "./dev run" in first_block and "./dev test" in first_block
    assert "./dev test --quick" in README


def test_secrets_are_never_shown(monkeypatch):
    monkeypatch.setenv("STREAMREC_API_TOKEN", "s3cret-token")
    monkeypatch.setenv("STREAMREC_DATABASE_URL", "postgresql+psycopg2://ops:pa55word@db:5432/streamrec")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0 and "s3cret-token" not in result.output and "pa55word" not in result.output
    assert "postgresql+psycopg2://ops:***@db:5432/streamrec" in result.output
    assert "STREAMREC_API_TOKEN" in result.output and "(set)" in result.output
    config = Config.from_env()
    assert config.api_token == "s3cret-token" and "s3cret-token" not in repr(config) and "pa55word" not in repr(config)


READ_ONLY = [["models"], ["drift"], ["report", "--out", "report.html"], ["stats"], ["dead-letters"], ["windows"],
             ["memory"], ["online"], ["experiment", "status"]]
MIGRATIONS = sorted(p.name[:4] for p in (Path(__file__).parents[1] / "store" / "migrations" / "versions").glob("0*.py"))
OLDER, HEAD = MIGRATIONS[-2:]  # the schema of the release before, and this one's


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_never_create_or_migrate_a_store(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "store" / "streamrec.db"
    monkeypatch.setenv("STREAMREC_DATABASE_URL", f"sqlite:///{path}")
    runner = CliRunner()
    missing = runner.invoke(main, command)
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert f"Error: there is no store at sqlite:///{path}: run `streamrec migrate` first" in missing.output
    assert not path.parent.exists()  # not even its folder

    path.parent.mkdir()
    sqlite3.connect(path).close()  # an empty database file
    empty = runner.invoke(main, command)
    assert empty.exit_code == 1 and "has no schema yet: run `streamrec migrate` first" in empty.output
    assert tables(path) == set()

    engine = make_engine(f"sqlite:///{path}")
    migrate(engine, OLDER)  # a store an older streamrec migrated
    behind = runner.invoke(main, command)
    assert behind.exit_code == 1 and f"has schema revision {OLDER}, behind this streamrec's {HEAD}" in behind.output
    assert alembic_revision(path) == OLDER

    assert runner.invoke(main, ["migrate"]).exit_code == 0
    assert alembic_revision(path) == HEAD
    current = runner.invoke(main, command)
    assert current.exit_code == 0, current.output
    engine.dispose()


def test_writing_commands_migrate_the_store_first(tmp_path, monkeypatch):
    path = tmp_path / "streamrec.db"
    monkeypatch.setenv("STREAMREC_DATABASE_URL", f"sqlite:///{path}")
    result = CliRunner().invoke(main, ["promote", "3"])
    assert result.exit_code == 1 and "no model version 3" in result.output  # refused by the registry, not the schema
    assert alembic_revision(path) == HEAD and "model_versions" in tables(path)


def test_a_store_newer_than_this_streamrec_is_named(tmp_path, monkeypatch):
    path = tmp_path / "streamrec.db"
    migrate(make_engine(f"sqlite:///{path}"))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    monkeypatch.setenv("STREAMREC_DATABASE_URL", f"sqlite:///{path}")
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 1
    assert "has schema revision 0099, which this streamrec does not know" in result.output
    assert result.output.rstrip().endswith("upgrade streamrec")


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def alembic_revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
