"""What the review-page tests share: a month planned by the real pipeline (Autotask sandbox over HTTP, the BSS
sandbox's data) with a customer whose name is an XSS probe, and an `airflow api-server` with fixed logins that
serves the billing_review plugin against that warehouse."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from stacks.launcher import RunningServer, start_server
from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID, autotask_connection
from stacks.review_server import USERS, airflow_env, start_api_server, stop_group, token  # noqa: F401 (the tests use them from here)

MONTH = "2026-10"
RUN_ID = "manual__2026-11-01T06:00:00+00:00"
DAG_ID = "bss_autotask_billing_sync"
CUSTOMERS = 40
XSS_NAME = "<img src=x onerror=alert(1)>"
FORMULA_NAME = '=HYPERLINK("http://evil","x")'
SETTINGS = SyncSettings(owner_resource_id=AUTOTASK_OWNER_RESOURCE_ID, billing_code_id=AUTOTASK_BILLING_CODE_ID)


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
