"""The crash harness: a month's load SIGKILLed at a chosen write (the Autotask sandbox kills the loader's process
when that write reaches it, before Autotask processes it or after, with the answer lost), then the month run again
the way a person does it (a new run: extract, snapshot, link, reconcile, approve, load), and Autotask's final state
compared with the state one clean run of the month leaves. Autotask's state is read from the sandbox's own lists,
never from the loader's ledger.

A run here is the DAG's tasks in order, in-process, and the load in a child process (the one that gets killed);
`tests/e2e/test_crash_make_run.py` goes through `make run`'s own code and the approval form once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from include.plan import ActionStatus, load_plan, set_action_status
from include.warehouse import Warehouse
from stacks.launcher import REPO_ROOT, RunningServer
from stacks.local_stack import autotask_connection
from tests.include.loader_support import APPROVER, HOOK_EXTRA, MONTH, SETTINGS, SandboxAdmin, make_hook, universe

PROPOSED_ONLY = "proposed"
WITH_FLAGGED = "flagged"


def plan_and_approve(hook: Any, warehouse: Warehouse, run_id: str, approval: str) -> int:
    """One run of the month up to its approval, as the DAG's tasks do it (a new extract, a new Autotask snapshot,
    links, the plan), then the approval a person gives: the run's proposed lines, or its flagged lines too.
    Returns how many lines were approved."""
    from include.extract import extract_month
    from include.loader import settle_unknown_writes
    from include.mapping import link_month
    from include.reconcile import reconcile_month
    from include.snapshot import take_snapshot
    from sandbox.bss_server import UniverseSource

    extract_month(UniverseSource(universe()), warehouse, MONTH, run_id)
    settle_unknown_writes(hook, warehouse, MONTH, run_id, SETTINGS)  # the snapshot task does it first
    take_snapshot(hook, warehouse, MONTH, run_id, SETTINGS)
    link_month(warehouse, MONTH, run_id, SETTINGS)
    reconcile_month(warehouse, MONTH, run_id, SETTINGS)
    wanted = {ActionStatus.PROPOSED} | ({ActionStatus.FLAGGED} if approval == WITH_FLAGGED else set())
    ids = [action.action_id for action in load_plan(warehouse, MONTH, run_id) if action.status in wanted]
    set_action_status(warehouse, ids, "approved", APPROVER)
    return len(ids)


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from connectors.autotask_hook import AutotaskHook
    from include.loader import BudgetExhausted, load_plan_actions
    from include.warehouse import Warehouse
    from tests.include.loader_support import MONTH, SETTINGS

    print("ready", flush=True)
    sys.stdin.readline()  # the test arms the sandbox's kill switch with this process id first
    try:
        load_plan_actions(AutotaskHook("autotask_crash"), Warehouse(os.environ["CRASH_WAREHOUSE"]), MONTH,
                          os.environ["CRASH_RUN_ID"], SETTINGS)
    except BudgetExhausted:
        time.sleep(600)  # the DAG defers until the hour frees: a pause the test kills the process in
    """
)


@dataclass
class Kill:
    """Where the sandbox kills the load: the `after_writes`-th write (of `entity`, or of a contract service's chain
    when `chained`), `moment` before Autotask processes it or after (the answer lost); `budget_pause`: no write
    trigger, the process is killed while it waits out a budget pause."""

    after_writes: int = 1
    moment: str = "before"
    entity: str | None = None
    chained: bool = False
    budget_pause: bool = False
    label: str = ""

    def switch(self, pid: int) -> dict[str, Any]:
        return {
            "pid": pid,
            "after_writes": self.after_writes,
            "moment": self.moment,
            "entity": self.entity,
            "chained": self.chained,
        }


def load_killed(autotask: RunningServer, admin: SandboxAdmin, database_url: str, run_id: str, kill: Kill) -> int:
    """The run's load in a child process, SIGKILLed where `kill` says. Returns the sandbox's write attempts when it
    died. Fails when the child ended by itself (the trigger never came: the test would prove nothing)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}",
        "AIRFLOW_CONN_AUTOTASK_CRASH": json.dumps(autotask_connection(autotask.url, **HOOK_EXTRA)),
        "CRASH_WAREHOUSE": database_url,
        "CRASH_RUN_ID": run_id,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()[-3000:]
        if not kill.budget_pause:
            admin.client.post("/_admin/kill-switch", json=kill.switch(child.pid)).raise_for_status()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        if kill.budget_pause:
            _kill_in_budget_pause(child, Warehouse(database_url), run_id)
        child.wait(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        admin.client.post("/_admin/kill-switch", json={}).raise_for_status()
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr.read().decode()[-3000:])
    time.sleep(0.2)  # writes already on the wire end in the sandbox (applied or not: both are handled)
    return sum(admin.stats()["write_attempts"].values())


def crash_and_rerun(
    autotask: RunningServer, admin: SandboxAdmin, database_url: str, approval: str, kill: Kill, expected, monkeypatch
) -> CrashOutcome:
    """Run 1 planned, approved and its load killed where `kill` says; then run 2 of the month as a person does it
    (planned, approved the same way, loaded, and loaded once more as a retry would); Autotask compared with
    `expected` (`clean_run`)."""
    admin.reset()
    warehouse = Warehouse(database_url)
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    plan_and_approve(hook, warehouse, "run-1", approval)
    if kill.budget_pause:  # the hour's budget runs out about half-way through the month's writes
        used = int(admin.stats()["total"])
        admin.faults(hourly_limit=int((used + 10 + expected[1] // 2 + 4) / 0.8) + 1)
    killed_at = load_killed(autotask, admin, database_url, "run-1", kill)
    assert killed_at < expected[1], "the kill came after the month's last write: it proved nothing"
    if kill.budget_pause:
        admin.faults(hourly_limit=10000)  # the hour frees
    plan_and_approve(hook, warehouse, "run-2", approval)
    summary = load_in_process(hook, warehouse, "run-2")
    assert summary.status == "succeeded" and summary.failed == 0, summary.failures or summary.waits
    assert load_in_process(hook, warehouse, "run-2").write_requests == 0  # a retry of the load writes nothing
    return compare(admin, killed_at, expected)


# The kill points that matter to the ledger (besides a share of the month's writes, `Kill(after_writes=n)`):
KILL_POINTS = {
    # the ledger row says sent, the request is on the wire, Autotask never processes it
    "before-the-request-is-processed": Kill(moment="before"),
    # Autotask applied it, the answer never reaches the ledger
    "after-the-request-before-the-answer": Kill(moment="after"),
    # every create confirmed, the first adjustment (which uses them) dies on the wire
    "between-a-create-and-its-first-adjustment": Kill(entity="ContractServiceAdjustments", moment="before"),
    # a contract service's first adjustment applied, its second (relative to the first) applied without an answer
    "mid-way-through-a-contract-service's-adjustments": Kill(chained=True, moment="after"),
    "during-a-budget-pause": Kill(budget_pause=True),
}


def _kill_in_budget_pause(child: subprocess.Popen, warehouse: Warehouse, run_id: str) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        rows = warehouse.query("SELECT status FROM load_runs WHERE run_id = :run_id", {"run_id": run_id})
        if any(row["status"] == "paused" for row in rows):
            os.kill(child.pid, signal.SIGKILL)
            return
        time.sleep(0.05)
    raise AssertionError(f"the load never paused for the budget (exit {child.poll()})")


def load_in_process(hook: Any, warehouse: Warehouse, run_id: str) -> Any:
    from include.loader import load_plan_actions

    return load_plan_actions(hook, warehouse, MONTH, run_id, SETTINGS)


# -- Autotask's state, by keys that do not depend on the ids it gave ---------------------------------------------


@dataclass
class AutotaskState:
    """What Autotask holds that a month's load writes, each record named by its keys (company key, contract
    number, service sku or name), so two sandboxes that gave other ids compare equal when they bill the same."""

    companies: Counter = field(default_factory=Counter)
    contracts: Counter = field(default_factory=Counter)  # (contract number, company key, end date)
    services: Counter = field(default_factory=Counter)
    contract_services: Counter = field(default_factory=Counter)  # (contract number, service)
    adjustments: Counter = field(default_factory=Counter)  # (contract number, service, date, unit change, cost)
    units: Counter = field(default_factory=Counter)  # (contract number, service, start, end, units)

    def differences(self, expected: AutotaskState) -> dict[str, dict[str, list]]:
        """Per kind of record: what is here more often than expected (duplicate or unexpected) and what is missing."""
        found = {}
        for name in ("companies", "contracts", "services", "contract_services", "adjustments", "units"):
            mine, theirs = getattr(self, name), getattr(expected, name)
            extra, missing = mine - theirs, theirs - mine
            if extra or missing:
                found[name] = {
                    "extra": sorted(extra.elements(), key=str),
                    "missing": sorted(missing.elements(), key=str),
                }
        return found


def autotask_state(admin: SandboxAdmin) -> AutotaskState:
    key_field = SETTINGS.company_key_udf
    companies = {}
    for record in admin.state("Companies"):
        keys = [udf.get("value") for udf in record.get("userDefinedFields") or [] if udf.get("name") == key_field]
        companies[record["id"]] = (keys[0] if keys and keys[0] else None) or f"name:{record.get('companyName')}"
    contracts = {record["id"]: record for record in admin.state("Contracts")}
    services = {record["id"]: record.get("sku") or f"name:{record.get('name')}" for record in admin.state("Services")}

    def contract(contract_id: Any) -> str:
        record = contracts.get(contract_id) or {}
        return str(record.get("contractNumber") or f"contract:{contract_id}")

    state = AutotaskState()
    state.companies.update(companies.values())
    state.services.update(services.values())
    for record in contracts.values():
        state.contracts[
            (contract(record["id"]), companies.get(record.get("companyID")), str(record.get("endDate"))[:10])
        ] += 1
    for record in admin.state("ContractServices"):
        state.contract_services[(contract(record["contractID"]), services.get(record["serviceID"]))] += 1
    for record in admin.state("ContractServiceAdjustments"):
        state.adjustments[
            (
                contract(record["contractID"]),
                services.get(record["serviceID"]),
                str(record.get("effectiveDate"))[:10],
                float(record.get("unitChange") or 0),
                None if record.get("adjustedUnitCost") is None else float(record["adjustedUnitCost"]),
            )
        ] += 1
    for record in admin.state("ContractServiceUnits"):
        state.units[
            (
                contract(record["contractID"]),
                services.get(record["serviceID"]),
                str(record.get("startDate"))[:10],
                str(record.get("endDate"))[:10],
                float(record.get("units") or 0),
            )
        ] += 1
    return state


@dataclass
class CrashOutcome:
    killed_at: int  # write attempts the sandbox had seen when the load died
    month_writes: int  # writes one clean run of the month makes
    writes: int  # write attempts of the killed load and every load after it
    duplicates: int  # records Autotask holds more often than after one clean run
    missing: int  # records one clean run leaves that Autotask does not hold
    unexpected: int  # writes beyond what one clean run makes (refused ones included)
    differences: dict[str, dict[str, list]]

    @property
    def clean(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.unexpected == 0


def clean_run(autotask: RunningServer, admin: SandboxAdmin, warehouse: Warehouse, approval: str, monkeypatch) -> tuple:
    """One clean run of the month on a reset sandbox: Autotask's state after it, and the writes it made."""
    admin.reset()
    hook = make_hook(autotask, monkeypatch)
    plan_and_approve(hook, warehouse, "clean-run", approval)
    summary = load_in_process(hook, warehouse, "clean-run")
    assert summary.status == "succeeded" and summary.failed == 0, summary.waits or summary.failures
    writes = sum(admin.stats()["write_attempts"].values())
    assert writes == summary.write_requests
    return autotask_state(admin), writes


def compare(admin: SandboxAdmin, killed_at: int, expected: tuple[AutotaskState, int]) -> CrashOutcome:
    state, month_writes = expected
    differences = autotask_state(admin).differences(state)
    stats = admin.stats()
    writes = sum(stats["write_attempts"].values())
    extra_records = sum(len(kind["extra"]) for name, kind in differences.items() if name != "units")
    missing_records = sum(len(kind["missing"]) for name, kind in differences.items() if name != "units")
    return CrashOutcome(
        killed_at=killed_at,
        month_writes=month_writes,
        writes=writes,
        duplicates=extra_records,
        missing=missing_records + sum(len(kind["missing"]) for name, kind in differences.items() if name == "units"),
        unexpected=max(0, writes - month_writes),
        differences=differences,
    )
