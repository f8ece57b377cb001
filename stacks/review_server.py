"""An Airflow api-server with the billing review plugin, on a temporary Airflow home with two fixed logins (admin with
the admin role, viewer with the viewer role) and a SQLite warehouse: what the review page's tests and the review
benchmarks run against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from stacks.launcher import REPO_ROOT, RunningServer
from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID

USERS = {"admin": ("admin", "admin-secret-1"), "viewer": ("viewer", "viewer-secret-1")}


def airflow_env(home: Path, warehouse_path: Path, data_docs: Path) -> dict[str, str]:
    """An Airflow home with fixed logins (admin: admin role, viewer: viewer role) and the warehouse connection."""
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({user: password for user, (_role, password) in USERS.items()}))
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__SECRET_KEY": "review-test-secret-key",
        "AIRFLOW__API_AUTH__JWT_SECRET": "review-test-jwt-secret",
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}",
        "GX_ANALYTICS_ENABLED": "false",
        "BILLING_DATA_DOCS_DIR": str(data_docs),
        "BILLING_SYNC_OWNER_RESOURCE_ID": str(AUTOTASK_OWNER_RESOURCE_ID),
        "BILLING_SYNC_BILLING_CODE_ID": str(AUTOTASK_BILLING_CODE_ID),
        "AIRFLOW_CONN_BILLING_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse_path)}),
    }


def start_api_server(env: dict[str, str], work: Path, timeout_s: float = 240) -> RunningServer:
    """`airflow db migrate`, then an `airflow api-server` (one worker) in its own process group: `stop_group`
    ends it with every process it started."""
    import time

    from stacks.launcher import free_port

    with (work / "migrate.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=log,
            check=True,
            timeout=300,
        )
    port = free_port()
    log_path = work / "api-server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--workers", "1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(process, port, log_path, "/api/v2/monitor/health", ["airflow", "api-server"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"api-server exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.url + server.health_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_group(server)
    raise RuntimeError(f"api-server not ready within {timeout_s} s:\n{server.log()[-4000:]}")


def stop_group(server: RunningServer) -> None:
    """SIGTERM to the server's process group, SIGKILL after 15 s."""
    import signal

    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


def token(base_url: str, user: str) -> str:
    name, password = user, USERS[user][1]
    response = httpx.post(f"{base_url}/auth/token", json={"username": name, "password": password}, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]
