"""What the review-page tests share: a month planned by the real pipeline (Autotask sandbox over HTTP, the BSS
sandbox's data) with a customer whose name is an XSS probe, and an `airflow api-server` with fixed logins that
serves the billing_review plugin against that warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from stacks.launcher import REPO_ROOT, RunningServer, start_server
from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID, autotask_connection

MONTH = "2026-10"
RUN_ID = "manual__2026-11-01T06:00:00+00:00"
DAG_ID = "bss_autotask_billing_sync"
CUSTOMERS = 40
XSS_NAME = "<img src=x onerror=alert(1)>"
FORMULA_NAME = '=HYPERLINK("http://evil","x")'
SETTINGS = SyncSettings(owner_resource_id=AUTOTASK_OWNER_RESOURCE_ID, billing_code_id=AUTOTASK_BILLING_CODE_ID)
USERS = {"admin": ("admin", "admin-secret-1"), "viewer": ("viewer", "viewer-secret-1")}


def universe_with_probes(customers: int = CUSTOMERS) -> Any:
    """The sandbox universe with two customers renamed: an HTML probe and a spreadsheet-formula probe."""
    from sandbox.dataset import Universe, build_universe

    universe = build_universe(customers, 3, 42)
    accounts = list(universe.accounts)
    # the last customers have generated names (the first ones hold the awkward names the linking tests use)
    accounts[-1] = replace(accounts[-1], name=XSS_NAME)
    accounts[-3] = replace(accounts[-3], name=FORMULA_NAME)
    return Universe(
        accounts=accounts, products=universe.products, subscriptions=universe.subscriptions, months=universe.months
    )


def start_autotask(work: Path, customers: int = CUSTOMERS) -> RunningServer:
    return start_server(
        ["sandbox.autotask_server", "--seed-customers", str(customers), "--state-file", str(work / "autotask.json")],
        log_dir=work,
    )


def plan_month(
    autotask: RunningServer,
    warehouse: Warehouse,
    run_id: str = RUN_ID,
    universe: Any = None,
    month: str = MONTH,
    dag_id: str = DAG_ID,
) -> None:
    """Snapshot (over HTTP) -> extract -> link -> reconcile (and the review grid's lines): the month as the DAG
    plans it (a run of `dag_id`, with its settings), waiting for approval."""
    from connectors.autotask_hook import AutotaskHook
    from include.extract import extract_month
    from include.mapping import link_month
    from include.reconcile import reconcile_month
    from include.review import build_grid
    from include.runs import register_run
    from include.snapshot import take_snapshot
    from sandbox.bss_server import UniverseSource

    conn_id = "autotask_review_test"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(autotask_connection(autotask.url))
    warehouse.migrate()
    take_snapshot(AutotaskHook(conn_id), warehouse, month, run_id, SETTINGS)
    extract_month(UniverseSource(universe or universe_with_probes()), warehouse, month, run_id)
    link_month(warehouse, month, run_id, SETTINGS)
    register_run(warehouse, run_id, dag_id, month, SETTINGS)
    reconcile_month(warehouse, month, run_id, SETTINGS)
    build_grid(warehouse, run_id)


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
