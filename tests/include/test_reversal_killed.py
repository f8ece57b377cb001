"""A reversal killed half-way (SIGKILL of the loading process, not an exception) and loaded again finishes
correctly: every opposite adjustment and every extension taken back exactly once, nothing reversed twice, and
Autotask's units those of before the reversed run. Against the Autotask sandbox over HTTP; what Autotask holds is
read from its own lists, never from the ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from datetime import date

import pytest

from include.loader import load_plan_actions
from include.plan import ActionKind, load_plan, set_action_status
from include.reversal import ReversalError, plan_reversal, verify_reversal
from include.warehouse import Warehouse
from stacks.launcher import REPO_ROOT
from stacks.local_stack import autotask_connection
from tests.include.loader_support import HOOK_EXTRA, MONTH, SETTINGS, make_hook, plan_month, seeded_adjustment_ids

MONTH_END = date(2026, 10, 31)

_CHILD = textwrap.dedent(
    """
    import os
    from connectors.autotask_hook import AutotaskHook
    from include.loader import LoadSettings, load_plan_actions
    from include.warehouse import Warehouse
    from tests.include.loader_support import MONTH, SETTINGS

    load_plan_actions(
        AutotaskHook("autotask_child"), Warehouse(os.environ["LOADER_TEST_WAREHOUSE"]), MONTH, "reverse-1", SETTINGS,
        LoadSettings(write_batch_size=5),
    )
    """
)


def _units(admin) -> dict[tuple[int, int], list[dict]]:
    rows = defaultdict(list)
    for row in admin.state("ContractServiceUnits"):
        rows[(row["contractID"], row["serviceID"])].append(row)
    return rows


def _units_on(rows: list[dict], day: date) -> float | None:
    covering = [row for row in rows if row["startDate"][:10] <= day.isoformat() <= row["endDate"][:10]]
    assert len(covering) <= 1, covering
    return float(covering[0]["units"]) if covering else None


def _reversal_ledger(warehouse: Warehouse) -> Counter:
    return Counter(row["state"] for row in warehouse.query("SELECT state FROM load_ledger WHERE run_id = 'reverse-1'"))


def test_a_reversal_killed_half_way_and_loaded_again_reverses_everything_once(autotask, admin, tmp_path, monkeypatch):
    database = tmp_path / "warehouse.db"
    warehouse = Warehouse(f"sqlite:///{database}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    plan_month(hook, warehouse)
    seeded = seeded_adjustment_ids(admin)
    contracts_before = {record["id"]: record["endDate"][:10] for record in admin.state("Contracts")}
    before = _units(admin)
    assert load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS).status == "succeeded"
    run_adjustments = {item["id"] for item in admin.state("ContractServiceAdjustments")} - seeded

    plan_reversal(warehouse, MONTH, "run-1", "reverse-1")
    reversal = [action for action in load_plan(warehouse, MONTH, "reverse-1") if action.loadable]
    set_action_status(warehouse, [action.action_id for action in reversal], "approved", "Ana (finance)")
    shortened = [action for action in reversal if action.kind is ActionKind.EXTEND_CONTRACT]
    adjusting = [action for action in reversal if action.kind is not ActionKind.EXTEND_CONTRACT]
    assert shortened and len(adjusting) > 10

    admin.faults(latency_ms=150)  # a slow Autotask: the kill finds the reversal half done, writes on the wire
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
        deadline = time.monotonic() + 90  # the child imports Airflow first (seconds on a busy machine)
        states: Counter = Counter()
        while time.monotonic() < deadline and child.poll() is None:
            states = _reversal_ledger(warehouse)
            if states.get("confirmed", 0) >= len(reversal) // 2:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert 0 < states.get("confirmed", 0) < len(reversal), states
    time.sleep(0.5)  # requests already on the wire finish in the sandbox (applied or not: both are handled)
    admin.faults(latency_ms=0)

    again = load_plan_actions(hook, warehouse, MONTH, "reverse-1", SETTINGS)

    assert again.status == "succeeded" and again.failed == 0, again.failures
    assert _reversal_ledger(warehouse) == {"confirmed": len(reversal)}
    # Autotask's own lists: each opposite adjustment once, none on a slot twice, none lost
    stored = [
        item
        for item in admin.state("ContractServiceAdjustments")
        if item["id"] not in seeded and item["id"] not in run_adjustments
    ]
    slots = Counter((item["contractID"], item["serviceID"], item["effectiveDate"][:10]) for item in stored)
    assert max(slots.values()) == 1, "an opposite adjustment written twice"
    assert set(slots) == {(a.contract_id, a.service_id, a.effective_date.isoformat()) for a in adjusting}
    # each extension taken back once: the contract ends where it ended before the run
    ends = {record["id"]: record["endDate"][:10] for record in admin.state("Contracts")}
    for action in shortened:
        assert ends[action.contract_id] == contracts_before[action.contract_id] == action.end_date_after.isoformat()
    # the units of before the run at the month end, on every contract service that existed before it
    after = _units(admin)
    touched = {(a.contract_id, a.service_id) for a in adjusting} & set(before)
    assert touched
    for pair in touched:
        expected = _units_on(before[pair], MONTH_END)
        assert (_units_on(after[pair], MONTH_END) or 0.0) == pytest.approx(expected or 0.0), pair
    assert verify_reversal(hook, warehouse, MONTH, "reverse-1").ok

    # nothing reversed twice: loading it again writes nothing, another reversal of the run is refused
    admin.reset_stats()
    assert load_plan_actions(hook, warehouse, MONTH, "reverse-1", SETTINGS).write_requests == 0
    assert admin.write_requests() == 0
    with pytest.raises(ReversalError, match="already reversed"):
        plan_reversal(warehouse, MONTH, "run-1", "reverse-2")
