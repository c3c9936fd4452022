"""Command line, configuration and the docs' promises about them (README and settings reference)."""

from __future__ import annotations

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
