"""docker-compose.yaml, checked statically (no Docker engine runs on these machines), against the settings it
shares with `make stack` and the Celery deployment test (deploy/airflow.env); its init script, run for real."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from stacks.celery_stack import SHARED_ENV_FILE, CeleryStack, StackSettings, read_env_file

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker --queues default",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def service_env(compose: dict, name: str) -> dict[str, str]:
    """What a service's container gets: the shared env file, then the service's own environment."""
    service = compose["services"][name]
    files = [entry["path"] if isinstance(entry, dict) else entry for entry in service.get("env_file", [])]
    assert "deploy/airflow.env" in files, f"{name} does not read deploy/airflow.env"
    return {**read_env_file(ROOT / "deploy" / "airflow.env"), **service["environment"]}


def _default(value: str) -> str:
    """The default of a `${VAR:-default}` value (the value itself when it has none)."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
    return match.group(1) if match else value


def test_every_airflow_3_component_runs_with_its_command(compose: dict) -> None:
    services = compose["services"]
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert services["airflow-init"]["command"] == ["/opt/billing/deploy/init.sh"]
    assert "\n    airflow db migrate\n" in (ROOT / "deploy" / "init.sh").read_text()


def test_celery_executor_with_redis_and_postgres_metadata(compose: dict) -> None:
    env = service_env(compose, "airflow-scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = env["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://") and "@redis:6379" in broker
    assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    # SQLAlchemy 2.1 picks psycopg 3 (not installed) for a bare postgresql://: the driver is named
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert {"postgres", "redis", "warehouse-db"} <= set(compose["services"])
    assert compose["services"]["redis"]["image"].startswith("redis:")


def test_the_warehouse_is_its_own_postgres_reached_through_the_connection(compose: dict) -> None:
    env = service_env(compose, "airflow-worker")
    assert env["AIRFLOW_CONN_BILLING_WAREHOUSE"].startswith("postgres://")
    assert "@warehouse-db:5432/" in env["AIRFLOW_CONN_BILLING_WAREHOUSE"]
    assert compose["services"]["warehouse-db"]["image"].startswith("postgres:")


def test_project_folders_are_mounted_where_airflow_looks(compose: dict) -> None:
    volumes = compose["services"]["airflow-worker"]["volumes"]
    for folder in ("dags", "plugins", "include", "expectations"):
        assert f"./{folder}:/opt/airflow/{folder}" in volumes
        assert (ROOT / folder).is_dir()
    assert "/opt/airflow/plugins" in service_env(compose, "airflow-worker")["PYTHONPATH"]


def test_sandboxes_start_only_with_their_profile_and_the_connections_default_to_them(compose: dict) -> None:
    services = compose["services"]
    for name, module in (("bss-sandbox", "sandbox.bss_server"), ("autotask-sandbox", "sandbox.autotask_server")):
        assert services[name]["profiles"] == ["sandbox"]
        assert module in services[name]["command"]
        assert "0.0.0.0" in services[name]["command"]
    env = service_env(compose, "airflow-worker")
    assert "bss-sandbox:8781" in env["AIRFLOW_CONN_BSS_DEFAULT"]
    assert "autotask-sandbox:8782" in env["AIRFLOW_CONN_AUTOTASK_DEFAULT"]


def test_the_sandbox_connections_speak_plain_http_and_creates_have_their_owner_and_billing_code(compose) -> None:
    from airflow.models.connection import Connection

    from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID

    env = service_env(compose, "airflow-worker")
    bss = Connection(conn_id="bss_default", uri=_default(env["AIRFLOW_CONN_BSS_DEFAULT"]))
    assert (bss.schema, bss.host, bss.port) == ("http", "bss-sandbox", 8781)
    assert bss.extra_dejson["client_id"] and bss.extra_dejson["client_secret"]
    autotask = Connection(conn_id="autotask_default", uri=_default(env["AIRFLOW_CONN_AUTOTASK_DEFAULT"]))
    assert (autotask.schema, autotask.host, autotask.port) == ("http", "autotask-sandbox", 8782)
    assert autotask.login == "api-user@demo.example" and autotask.extra_dejson["integration_code"]
    assert _default(env["BILLING_SYNC_OWNER_RESOURCE_ID"]) == str(AUTOTASK_OWNER_RESOURCE_ID)
    assert _default(env["BILLING_SYNC_BILLING_CODE_ID"]) == str(AUTOTASK_BILLING_CODE_ID)


def test_services_wait_for_their_dependencies(compose: dict) -> None:
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"


def test_the_image_installs_the_runtime_lock_only(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2" in dockerfile
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert "-r /opt/billing/requirements.txt" in instructions and "requirements-dev" not in instructions
    assert compose["services"]["airflow-worker"]["build"] == "."
    runtime = _pinned(ROOT / "requirements.txt")
    development = _pinned(ROOT / "requirements-dev.txt")
    tooling = {"pytest", "pytest-timeout", "hypothesis", "playwright", "ruff"}
    assert not tooling & set(runtime), tooling & set(runtime)
    assert tooling <= set(development)
    # PostgreSQL metadata needs asyncpg; both locks pin the same version of what they share
    assert runtime["asyncpg"] == "0.32.0"
    assert all(runtime[name] == version for name, version in development.items() if name in runtime)
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements.txt -r requirements-dev.txt" in makefile
    assert "requirements-dev.in -o requirements-dev.txt" in makefile


def _pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


# --- one source of settings ----------------------------------------------------------------------------------


def test_every_airflow_service_reads_the_shared_settings_and_none_overrides_them(compose: dict) -> None:
    shared = read_env_file(SHARED_ENV_FILE)
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = service_env(compose, name)
        overridden = set(shared) & set(compose["services"][name]["environment"])
        assert not overridden, f"{name} overrides the shared settings {overridden}: change deploy/airflow.env"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_the_local_stack_runs_on_the_same_shared_settings(tmp_path: Path) -> None:
    shared = read_env_file(SHARED_ENV_FILE)
    stack = CeleryStack(
        StackSettings(
            "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
            "redis://127.0.0.1:6379",
            tmp_path,
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
        )
    )
    stack.redis_url = "redis://127.0.0.1:6379/6"  # what start() claims
    env = stack._environment()
    assert {key: env[key] for key in shared} == shared
    # and the settings this machine needs besides: the same kind of addresses the compose file names
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")


def test_the_worker_listens_on_the_queue_the_tasks_go_to(compose: dict) -> None:
    queue = read_env_file(SHARED_ENV_FILE)["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert compose["services"]["airflow-worker"]["command"].split("--queues ", 1)[1].split()[0] == queue
    from stacks.celery_stack import QUEUE

    assert queue == QUEUE


# --- volumes, logins, secrets ------------------------------------------------------------------------------


def test_data_docs_are_on_a_volume_the_workers_write_and_the_api_server_serves(compose: dict) -> None:
    for name in ("airflow-worker", "airflow-apiserver"):
        folder = service_env(compose, name)["BILLING_DATA_DOCS_DIR"]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["services"][name]["volumes"]}
        assert mounts.get(folder) in compose["volumes"], f"{name}: {folder} is not on a named volume"
    assert compose["services"]["airflow-init"]["command"] == ["/opt/billing/deploy/init.sh"]
    assert compose["services"]["airflow-init"]["user"] == "0:0"
    assert "COPY --chown=airflow:root deploy /opt/billing/deploy" in (ROOT / "Dockerfile").read_text()


def test_secrets_have_no_usable_defaults(compose: dict) -> None:
    env = service_env(compose, "airflow-init")
    for key in (
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW_DB_PASSWORD",
        "WAREHOUSE_DB_PASSWORD",
    ):
        assert _default(env[key]) == "", f"{key} has a default: {env[key]}"
    text = (ROOT / "docker-compose.yaml").read_text()
    assert ":-airflow}" not in text and ":-warehouse}" not in text  # no well-known database password


# Who gets which secret: a worker runs any task's code, so it gets no login, no key that signs a login or a task
# token, and no session key; the login file only reaches the api-server (read only) and airflow-init.
LOGIN_SECRETS = {"AIRFLOW_PASSWORDS", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"}


def test_each_container_gets_only_the_settings_it_needs(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        files = [entry["path"] if isinstance(entry, dict) else entry for entry in service.get("env_file", [])]
        assert ".env" not in files, f"{name} is handed the whole .env"
    worker = service_env(compose, "airflow-worker")
    assert not LOGIN_SECRETS & set(worker), LOGIN_SECRETS & set(worker)
    # the Celery deployment test's workers run without the same settings, for real
    from stacks.celery_stack import WORKER_WITHHELD

    assert not WORKER_WITHHELD & set(worker) and WORKER_WITHHELD & set(service_env(compose, "airflow-apiserver"))
    assert not any("auth" in volume for volume in services["airflow-worker"]["volumes"])
    assert {"AIRFLOW_CONN_BSS_DEFAULT", "AIRFLOW_CONN_AUTOTASK_DEFAULT", "AIRFLOW_CONN_BILLING_WAREHOUSE"} <= set(
        worker
    )
    assert "BILLING_SYNC_APPROVERS" in worker and "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" in worker
    api_server = service_env(compose, "airflow-apiserver")
    assert {"AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"} <= set(api_server)
    assert (
        "AIRFLOW_PASSWORDS" not in api_server
        and "airflow-auth:/opt/airflow/auth:ro" in services["airflow-apiserver"]["volumes"]
    )
    assert not {"AIRFLOW_CONN_BSS_DEFAULT", "AIRFLOW_CONN_AUTOTASK_DEFAULT"} & set(api_server)
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        env = service_env(compose, name)
        assert "AIRFLOW__API_AUTH__JWT_SECRET" in env, name  # they sign or check task tokens
        assert not {"AIRFLOW_PASSWORDS", "AIRFLOW__API__SECRET_KEY", "AIRFLOW_CONN_BSS_DEFAULT"} & set(env), name
    for name in ("bss-sandbox", "autotask-sandbox"):
        assert set(services[name]["environment"]) == {"PYTHONPATH"}, name
    init = service_env(compose, "airflow-init")
    assert {"AIRFLOW_PASSWORDS", "AIRFLOW_DB_PASSWORD", "WAREHOUSE_DB_PASSWORD"} <= set(init)
    assert "put tls in front" in (ROOT / "README.md").read_text().lower()


def test_env_example_lists_every_setting_and_secret_with_a_comment() -> None:
    from include.sync_settings import SyncSettings

    text = (ROOT / ".env.example").read_text()
    lines = text.splitlines()
    named = {}
    for index, line in enumerate(lines):
        match = re.match(r"^#?([A-Z][A-Z0-9_]+)=", line)
        if match:
            named[match.group(1)] = index
    compose_vars = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", (ROOT / "docker-compose.yaml").read_text()))
    sync_vars = {f"BILLING_SYNC_{spec.name.upper()}" for spec in fields(SyncSettings) if spec.name != "period_types"}
    missing = (compose_vars | sync_vars) - set(named)
    assert not missing, f".env.example does not list {sorted(missing)}"
    for name, index in named.items():  # a comment above each setting (or above its group of settings)
        above = index - 1
        while re.match(r"^#?[A-Z][A-Z0-9_]+=", lines[above]):
            above -= 1
        assert lines[above].startswith("# "), f"{name} has no comment"


def _init_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHON": os.environ.get("PYTHON_FOR_INIT", "python3"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "a-real-jwt-secret-of-this-deployment",
        "AIRFLOW__API__SECRET_KEY": "a-real-api-secret-key",
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,finance:op",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "auth" / "passwords.json"),
        "AIRFLOW_PASSWORDS": json.dumps({"admin": "correct horse battery", "finance": "staple of the month"}),
        "AIRFLOW_AUTH_DIR": str(tmp_path / "auth"),
        "BILLING_DATA_DOCS_DIR": str(tmp_path / "var" / "data_docs"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "logs"),
        "AIRFLOW_UID": str(os.getuid()),
        "AIRFLOW_DB_PASSWORD": "a-long-metadata-password",
        "WAREHOUSE_DB_PASSWORD": "a-long-warehouse-password",
        "BILLING_INIT_SKIP_MIGRATE": "1",
    }
    env.update(values)
    return env


def _run_init(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "deploy" / "init.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def test_init_prepares_the_writable_folders_and_the_logins(tmp_path: Path) -> None:
    result = _run_init(_init_env(tmp_path))
    assert result.returncode == 0, result.stderr
    for folder in (tmp_path / "var" / "data_docs", tmp_path / "logs", tmp_path / "auth"):
        assert folder.is_dir() and folder.stat().st_uid == os.getuid()
    passwords = tmp_path / "auth" / "passwords.json"
    assert json.loads(passwords.read_text()) == {"admin": "correct horse battery", "finance": "staple of the month"}
    assert passwords.stat().st_mode & 0o777 == 0o600
    assert "correct horse" not in result.stdout + result.stderr  # never a password in the log


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"AIRFLOW__API_AUTH__JWT_SECRET": ""}, "AIRFLOW_JWT_SECRET is empty or the example's placeholder"),
        ({"AIRFLOW__API_AUTH__JWT_SECRET": "change-me-in-production"}, "AIRFLOW_JWT_SECRET is empty or"),
        ({"AIRFLOW__API__SECRET_KEY": ""}, "AIRFLOW_API_SECRET_KEY is empty"),
        ({"AIRFLOW__CORE__FERNET_KEY": ""}, "AIRFLOW_FERNET_KEY is empty"),
        ({"AIRFLOW__CORE__FERNET_KEY": "not-a-key"}, "AIRFLOW_FERNET_KEY is not a Fernet key"),
        (
            {"AIRFLOW_PASSWORDS": json.dumps({"admin": "correct horse battery"})},
            "no password in AIRFLOW_PASSWORDS for finance",
        ),
        ({"AIRFLOW_PASSWORDS": ""}, "no password in AIRFLOW_PASSWORDS for admin, finance"),
        (
            {"AIRFLOW_PASSWORDS": json.dumps({"admin": "admin", "finance": "x"})},
            "the password of admin is a placeholder",
        ),
        ({"AIRFLOW_DB_PASSWORD": "airflow"}, "AIRFLOW_DB_PASSWORD (the metadata database's"),
        ({"AIRFLOW_DB_PASSWORD": ""}, "AIRFLOW_DB_PASSWORD (the metadata database's"),
        ({"WAREHOUSE_DB_PASSWORD": "warehouse"}, "WAREHOUSE_DB_PASSWORD (the warehouse's user"),
        ({"WAREHOUSE_DB_PASSWORD": "short"}, "WAREHOUSE_DB_PASSWORD (the warehouse's user"),
    ],
)
def test_init_refuses_to_start_without_real_secrets_and_says_which(tmp_path: Path, values, message) -> None:
    result = _run_init(_init_env(tmp_path, **values))
    assert result.returncode == 1
    assert message in result.stderr and "nothing was started" in result.stderr
    assert not (tmp_path / "auth" / "passwords.json").exists()
