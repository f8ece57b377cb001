"""Exactly once when things go wrong: the sandbox loses answers to writes it applied, and the loader's
process is killed mid-load. What Autotask holds is read from the sandbox's own lists, not the ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from include.loader import LoadSettings, load_plan_actions
from include.warehouse import Warehouse
from stacks.launcher import REPO_ROOT
from stacks.local_stack import autotask_connection
from tests.include.loader_support import (
    HOOK_EXTRA,
    MONTH,
    SETTINGS,
    assert_each_applied_exactly_once,
    ledger_states,
    make_hook,
    plan_month,
    plan_statuses,
    seeded_adjustment_ids,
)


def test_lost_answers_to_applied_writes_are_found_in_autotask_not_sent_again(
    autotask, admin, warehouse: Warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    seeded = seeded_adjustment_ids(admin)
    admin.reset_stats()
    admin.faults(lost_response_rate=0.1)  # the write is applied, then the gateway answers 504

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    admin.faults(lost_response_rate=0.0)
    lost = admin.stats()["faults"].get("lost_responses", 0)
    assert lost >= 3
    assert summary.status == "succeeded", summary.waits
    assert summary.failed == 0 and summary.found_applied >= 1
    # each write reached Autotask once: the store counts one write per record created or changed
    writes = summary.written + summary.found_applied
    assert admin.write_requests() == writes == summary.write_requests
    assert_each_applied_exactly_once(admin, approved, seeded)
    assert ledger_states(warehouse) == {"confirmed": writes}
    found = warehouse.query("SELECT response_summary, attempts FROM load_ledger WHERE response_summary LIKE 'found%'")
    assert found and all(row["attempts"] == 1 for row in found)


def test_a_loader_killed_mid_load_resumes_without_repeating_or_losing_a_write(autotask, admin, tmp_path, monkeypatch):
    database = tmp_path / "warehouse.db"
    warehouse = Warehouse(f"sqlite:///{database}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    seeded = seeded_adjustment_ids(admin)
    admin.faults(latency_ms=150)  # a slow Autotask: the kill finds writes on the wire

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}",
            "AIRFLOW_CONN_AUTOTASK_CHILD": json.dumps(autotask_connection(autotask.url, **HOOK_EXTRA)),
            "LOADER_TEST_WAREHOUSE": f"sqlite:///{database}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60  # the child imports Airflow first (seconds on a busy machine)
        states = {}
        while time.monotonic() < deadline and child.poll() is None:
            states = ledger_states(warehouse)
            if states.get("confirmed", 0) >= 15 and states.get("sent", 0) >= 1:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert states.get("sent", 0) >= 1, states
    time.sleep(0.3)  # requests already on the wire finish in the sandbox (applied or not: both are handled)
    admin.faults(latency_ms=0)
    assert ledger_states(warehouse).get("sent", 0) >= 1

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    assert summary.status == "succeeded", summary.waits
    assert summary.failed == 0 and summary.already_applied == 0
    assert_each_applied_exactly_once(admin, approved, seeded)
    total = len(warehouse.query("SELECT 1 FROM load_ledger"))
    assert ledger_states(warehouse) == {"confirmed": total}
    assert "approved" not in plan_statuses(warehouse)
    runs = warehouse.query("SELECT status FROM load_runs ORDER BY started_at")
    assert [row["status"] for row in runs] == ["interrupted", "succeeded"]


def test_two_loads_of_one_month_at_once_never_send_the_same_write(autotask, admin, warehouse, monkeypatch):
    """An operator re-triggers the load while one is running: each write is claimed by one of them."""
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    seeded = seeded_adjustment_ids(admin)
    admin.faults(latency_ms=40)
    admin.reset_stats()
    with ThreadPoolExecutor(2) as pool:
        loads = [
            pool.submit(
                load_plan_actions,
                make_hook(autotask, monkeypatch, f"autotask_twin_{n}"),
                warehouse,
                MONTH,
                "run-1",
                SETTINGS,
            )
            for n in range(2)
        ]
        summaries = [load.result() for load in loads]
    admin.faults(latency_ms=0)
    sent = sum(summary.write_requests for summary in summaries)
    assert all(summary.failed == 0 for summary in summaries)  # a duplicate adjustment would be refused
    assert sent == admin.write_requests()  # no write went out twice: Autotask stored each one it was sent
    # whatever one load left to the other is finished by the next load, which sends only what is missing
    final = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert final.status == "succeeded" and final.failed == 0, final.waits
    assert_each_applied_exactly_once(admin, approved, seeded)
    assert sent + final.write_requests == len(warehouse.query("SELECT 1 FROM load_ledger"))


_CHILD = textwrap.dedent(
    """
    import os
    from connectors.autotask_hook import AutotaskHook
    from include.loader import LoadSettings, load_plan_actions
    from include.warehouse import Warehouse
    from tests.include.loader_support import MONTH, SETTINGS

    load_plan_actions(
        AutotaskHook("autotask_child"), Warehouse(os.environ["LOADER_TEST_WAREHOUSE"]), MONTH, "run-1", SETTINGS,
        LoadSettings(write_batch_size=20),
    )
    """
)


def test_the_loader_settings_refuse_a_reserve_that_leaves_nothing() -> None:
    with pytest.raises(ValueError, match="budget_reserve_share"):
        LoadSettings(budget_reserve_share=1.0)
