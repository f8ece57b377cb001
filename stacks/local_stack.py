"""The local stack the demo and the end-to-end tests run: Airflow connections and environment for the sandboxes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from stacks.airflow_api import PASSWORDS_FILE
from stacks.launcher import REPO_ROOT

# The sandboxes' default credentials (see `sandbox.bss_server` and `sandbox.autotask_server`).
BSS_LOGIN, BSS_PASSWORD = "demo-user", "demo-password"
BSS_CLIENT_ID, BSS_CLIENT_SECRET = "demo-client", "demo-client-secret"
AUTOTASK_USER, AUTOTASK_SECRET, AUTOTASK_INTEGRATION_CODE = "api-user@demo.example", "demo-secret", "DEMOINTEGRATION"
# Seeded in the Autotask sandbox: the resource that owns new companies and the billing code of new services.
AUTOTASK_OWNER_RESOURCE_ID = 29682885
AUTOTASK_BILLING_CODE_ID = 29682801


def bss_connection(server_url: str, **extra: object) -> dict:
    """An Airflow connection (JSON form) for the BSS sandbox at `server_url`."""
    parsed = urlparse(server_url)
    return {
        "conn_type": "http",
        "host": parsed.hostname,
        "port": parsed.port,
        "schema": parsed.scheme,
        "login": BSS_LOGIN,
        "password": BSS_PASSWORD,
        "extra": {"client_id": BSS_CLIENT_ID, "client_secret": BSS_CLIENT_SECRET, **extra},
    }


def autotask_connection(server_url: str, **extra: object) -> dict:
    """An Airflow connection for the Autotask sandbox at `server_url` (an explicit host: no zone discovery)."""
    parsed = urlparse(server_url)
    return {
        "conn_type": "http",
        "host": parsed.hostname,
        "port": parsed.port,
        "schema": parsed.scheme,
        "login": AUTOTASK_USER,
        "password": AUTOTASK_SECRET,
        "extra": {"integration_code": AUTOTASK_INTEGRATION_CODE, **extra},
    }


def airflow_environment(
    airflow_home: Path,
    bss_url: str,
    autotask_url: str,
    warehouse_path: Path,
    data_docs_dir: Path,
) -> dict[str, str]:
    """The environment an Airflow process needs to run the project's DAGs against the local sandboxes."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}",
        "GX_ANALYTICS_ENABLED": "false",
        "BILLING_DATA_DOCS_DIR": str(data_docs_dir),
        "BILLING_SYNC_OWNER_RESOURCE_ID": str(AUTOTASK_OWNER_RESOURCE_ID),
        "BILLING_SYNC_BILLING_CODE_ID": str(AUTOTASK_BILLING_CODE_ID),
        "AIRFLOW_CONN_BSS_DEFAULT": json.dumps(bss_connection(bss_url)),
        "AIRFLOW_CONN_AUTOTASK_DEFAULT": json.dumps(autotask_connection(autotask_url)),
        "AIRFLOW_CONN_BILLING_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse_path)}),
    }


def migrate_metadata(env: dict[str, str], log_path: Path, timeout_s: float | None = 600.0) -> None:
    """`airflow db migrate` on the metadata database `env` names, its output in `log_path` (`timeout_s=None`: no
    limit); a failure raises RuntimeError with the log's tail."""
    with log_path.open("w") as log:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
    if result.returncode:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`airflow db migrate` failed ({result.returncode}); see {log_path}:\n{tail}")


def start_airflow_component(arguments: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`airflow <arguments>` (api-server, scheduler, a Celery worker…) in its own process group, so stopping it
    signals the whole group, children included; its output in `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", *arguments],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


LOCAL_USERS = ("admin", "finance")  # admin answers for the demo; finance is a second approver for scripts


def local_auth_environment(airflow_home: Path, users: tuple[str, ...] = LOCAL_USERS) -> dict[str, str]:
    """Fixed logins for the local api-server: each user an admin, passwords kept in `$AIRFLOW_HOME`."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    passwords_path = airflow_home / PASSWORDS_FILE
    passwords = json.loads(passwords_path.read_text()) if passwords_path.exists() else {}
    for user in users:
        passwords.setdefault(user, secrets.token_urlsafe(12))
    passwords_path.write_text(json.dumps(passwords, indent=2))
    passwords_path.chmod(0o600)
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:admin" for user in passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_path),
        "AIRFLOW__API__HOST": "127.0.0.1",
    }
