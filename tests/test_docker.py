"""The container files in ``docker/`` agree with the code.

No Docker engine needed: ``compose.yaml`` and the ``Dockerfile`` are parsed and
checked against :mod:`runtime.config` and ``pyproject.toml``.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from runtime.config import SETTINGS, Config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
WORKERS = ["worker", "worker-2"]


# --- helpers -----------------------------------------------------------------------------

def load_compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def services() -> dict:
    return load_compose()["services"]


def env_of(service: str) -> dict[str, str]:
    """A service's environment as a dict of strings (compose allows a list or a mapping)."""
    env = services()[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def container_ports(service: str) -> list[int]:
    """Container side of each published port: "6066:6066", "127.0.0.1:6066:6066/tcp", "6066"."""
    return [int(str(spec).split(":")[-1].split("/")[0]) for spec in services()[service].get("ports", [])]


def listener_ports(listeners: str) -> dict[str, int]:
    """``PLAINTEXT://:9092,CONTROLLER://:9093`` -> ``{"PLAINTEXT": 9092, "CONTROLLER": 9093}``."""
    ports = {}
    for listener in listeners.split(","):
        name, address = listener.strip().split("://", 1)
        ports[name] = int(address.rsplit(":", 1)[1])
    return ports


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def exec_form(args: str) -> list[str]:
    """The command of a CMD / HEALTHCHECK: JSON exec form, or shell form split like a shell."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def healthcheck_command() -> list[str]:
    """The command after HEALTHCHECK's ``--option=value`` flags and its ``CMD`` keyword."""
    (args,) = dockerfile_args("HEALTHCHECK")
    words = args.split()
    while words and words[0].startswith("--"):
        words.pop(0)
    assert words[0].upper() == "CMD", args
    return exec_form(" ".join(words[1:]))


def copied_paths() -> set[str]:
    """Every source path of every COPY (the last argument is the destination)."""
    sources = set()
    for args in dockerfile_args("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.update(w.rstrip("/").removeprefix("./") for w in words[:-1])
    return sources


def packages_in_pyproject() -> list[str]:
    """Top-level packages of ``[tool.setuptools.packages.find] include``: "streams*" -> "streams"."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in include})


# --- compose.yaml --------------------------------------------------------------------------

def test_compose_has_kafka_postgres_and_workers():
    assert {"kafka", "postgres", *WORKERS} <= set(services())


def test_kafka_runs_in_kraft_mode_without_zookeeper():
    env = env_of("kafka")
    assert "controller" in env["KAFKA_PROCESS_ROLES"].split(",")
    assert "broker" in env["KAFKA_PROCESS_ROLES"].split(",")
    assert not [name for name in services() if "zookeeper" in name.lower()]
    assert not [key for key in env if "ZOOKEEPER" in key]


def test_kafka_leaves_topic_creation_to_the_worker():
    assert env_of("kafka")["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


@pytest.mark.parametrize("worker", WORKERS)
def test_every_streamrec_variable_is_a_known_setting(worker):
    known = {setting.env for setting in SETTINGS.values()}
    used = {key for key in env_of(worker) if key.startswith("STREAMREC_")}
    assert used, "the worker sets no STREAMREC_* variable"
    assert used <= known, f"not settings of runtime.config: {sorted(used - known)}"


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_reach_kafka_on_an_advertised_broker_listener(worker):
    address = urlsplit(env_of(worker)["STREAMREC_KAFKA_URL"])
    kafka = env_of("kafka")
    controllers = set(kafka["KAFKA_CONTROLLER_LISTENER_NAMES"].split(","))
    broker_ports = {port for name, port in listener_ports(kafka["KAFKA_LISTENERS"]).items()
                    if name not in controllers}
    advertised = {urlsplit(listener.strip()).netloc for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert address.scheme == "kafka"
    assert address.hostname == "kafka"
    assert address.port in broker_ports
    assert address.netloc in advertised


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_use_the_postgres_service_and_its_credentials(worker):
    url = make_url(env_of(worker)["STREAMREC_DATABASE_URL"])
    postgres = env_of("postgres")
    assert url.get_backend_name() == "postgresql"
    assert url.host == "postgres"
    assert (url.port or 5432) == 5432
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_wait_for_healthy_kafka_and_postgres(worker):
    depends_on = services()[worker]["depends_on"]
    for dependency in ("kafka", "postgres"):
        assert depends_on[dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services()[dependency]


def test_workers_share_one_configuration():
    assert env_of("worker") == env_of("worker-2")
    assert services()["worker"]["build"] == services()["worker-2"]["build"]


def test_only_the_first_worker_publishes_the_web_port():
    web_port = int(env_of("worker")["STREAMREC_WEB_PORT"])
    assert container_ports("worker") == [web_port]
    assert container_ports("worker-2") == []


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_environment_is_a_valid_config(worker):
    config = Config.from_env(env_of(worker))
    assert config.bootstrap_servers == "kafka:9092"


# --- Dockerfile ----------------------------------------------------------------------------

def test_dockerfile_exposes_the_web_port():
    web_port = env_of("worker")["STREAMREC_WEB_PORT"]
    exposed = {port.split("/")[0] for args in dockerfile_args("EXPOSE") for port in args.split()}
    assert web_port in exposed


def test_healthcheck_requests_health_on_the_web_port():
    web_port = int(env_of("worker")["STREAMREC_WEB_PORT"])
    command = " ".join(healthcheck_command())
    assert "urllib" in command
    assert f"http://127.0.0.1:{web_port}/health" in command


def test_dockerfile_runs_the_faust_worker():
    (cmd,) = dockerfile_args("CMD")
    assert exec_form(cmd)[:4] == ["faust", "-A", "streams.app", "worker"]


def test_dockerfile_installs_cpu_torch_pinned_like_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]
    torch_installs = [args for args in dockerfile_args("RUN") if "torch" in args]
    assert any("--index-url https://download.pytorch.org/whl/cpu" in args and "torch==2.13.0" in args.split()
               for args in torch_installs), torch_installs


def test_dockerfile_copies_every_package_and_the_build_files():
    copied = copied_paths()
    missing = [name for name in [*packages_in_pyproject(), "pyproject.toml", "README.md"] if name not in copied]
    assert not missing, f"not copied into the image: {missing}"


def test_dockerfile_runs_as_a_non_root_user():
    users = dockerfile_args("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
