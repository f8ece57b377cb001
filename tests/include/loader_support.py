"""What the loader tests share: an Autotask sandbox, a month planned by the real pipeline, and checks that
read the sandbox's own state (never the loader's ledger) to tell what Autotask holds."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.plan import ActionKind, ActionStatus, PlanAction, load_plan, set_action_status
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from stacks.launcher import RunningServer
from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID, autotask_connection

MONTH = "2026-10"
CUSTOMERS = 60  # ~50 approved adjustments (a few chains of two dates), creates of every kind, extensions
SETTINGS = SyncSettings(owner_resource_id=AUTOTASK_OWNER_RESOURCE_ID, billing_code_id=AUTOTASK_BILLING_CODE_ID)
APPROVER = "Zoë O'Brien (finance)"
FAULTS_OFF = {"latency_ms": 0, "error_rate": 0.0, "lost_response_rate": 0.0, "hourly_limit": 10000}
# The loader keeps its own share of the budget free; the hook's slow-down from half the budget would only
# stretch the budget tests (its pacing is the hook's tests' business).
HOOK_EXTRA = {"budget_slowdown_ratio": 0.97, "budget_pause_ratio": 0.99, "retry_wait_s": 0.01, "retry_max_wait_s": 0.05}
ADJUSTING = (ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST)


@cache
def universe() -> Any:
    from sandbox.dataset import build_universe

    return build_universe(CUSTOMERS, 3, 42)  # what the Autotask sandbox seeds from (--seed-customers)


class SandboxAdmin:
    """The Autotask sandbox's admin API: faults, counters, and its state as stored (not counted)."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=30)

    def reset(self) -> None:
        self.client.post("/_admin/reset").raise_for_status()
        self.faults(**FAULTS_OFF)
        self.reset_stats()

    def faults(self, **faults: Any) -> None:
        self.client.post("/_admin/faults", json=faults).raise_for_status()

    def reset_stats(self) -> None:
        self.client.post("/_admin/stats/reset").raise_for_status()

    def stats(self) -> dict:
        return self.client.get("/_admin/stats").raise_for_status().json()

    def write_requests(self) -> int:
        """POST/PATCH requests on entity endpoints that are not queries (the sandbox counts queries as POSTs
        on the entity too, so creates are the stored writes)."""
        return int(self.stats()["writes"])

    def state(self, entity: str) -> list[dict]:
        return self.client.get(f"/_admin/state/{entity}").raise_for_status().json()["items"]


def make_hook(server: RunningServer, monkeypatch: pytest.MonkeyPatch, conn_id: str = "autotask_loader_test") -> Any:
    from connectors.autotask_hook import AutotaskHook

    connection = autotask_connection(server.url, **HOOK_EXTRA)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return AutotaskHook(conn_id)


def plan_month(hook: Any, warehouse: Warehouse, run_id: str = "run-1") -> list[PlanAction]:
    """Snapshot -> extract -> link -> reconcile (the real pipeline), then approve every proposed action as a
    person would. Returns the approved actions."""
    from include.extract import extract_month
    from include.mapping import link_month
    from include.reconcile import reconcile_month
    from include.snapshot import take_snapshot
    from sandbox.bss_server import UniverseSource

    take_snapshot(hook, warehouse, MONTH, run_id, SETTINGS)
    extract_month(UniverseSource(universe()), warehouse, MONTH, f"{run_id}-extract")
    link_month(warehouse, MONTH, run_id, SETTINGS)
    reconcile_month(warehouse, MONTH, run_id, SETTINGS)
    proposed = [action for action in load_plan(warehouse, MONTH, run_id) if action.status == ActionStatus.PROPOSED]
    set_action_status(warehouse, [action.action_id for action in proposed], "approved", APPROVER)
    return load_plan(warehouse, MONTH, run_id, statuses=["approved"])


@dataclass(frozen=True)
class ExpectedAdjustment:
    action_id: str
    contract_id: int
    service_id: int
    effective_date: date
    unit_change: float
    units_after: float


def expected_adjustments(admin: SandboxAdmin, approved: list[PlanAction]) -> list[ExpectedAdjustment]:
    """Where each approved adjustment must land, found from the sandbox's records by their keys (contracts by
    contractNumber, services by sku or name) — independent of the loader's ledger."""
    by_id = {action.action_id: action for action in approved}
    contracts = defaultdict(list)
    for record in admin.state("Contracts"):
        contracts[record.get("contractNumber")].append(record["id"])
    services = defaultdict(list)
    for record in admin.state("Services"):
        services[record.get("sku") or record.get("name")].append(record["id"])
    expected = []
    for action in approved:
        if action.kind not in ADJUSTING:
            continue
        contract_id = action.contract_id
        if contract_id is None:
            number = by_id[action.contract_action_id].payload["contractNumber"]
            (contract_id,) = contracts[number]  # exactly one contract carries the subscription id
        service_id = action.service_id
        if service_id is None:
            created = by_id[action.service_action_id].payload
            (service_id,) = services[created.get("sku") or created["name"]]
        expected.append(
            ExpectedAdjustment(
                action.action_id,
                int(contract_id),
                int(service_id),
                action.effective_date,
                float(action.unit_change),
                float(action.units_after),
            )
        )
    return expected


def loaded_adjustments(admin: SandboxAdmin, seeded_ids: set[int]) -> list[dict]:
    """The adjustments the sandbox stored since the seed (its own list: what Autotask would bill)."""
    return [item for item in admin.state("ContractServiceAdjustments") if item["id"] not in seeded_ids]


def assert_each_applied_exactly_once(admin: SandboxAdmin, approved: list[PlanAction], seeded_ids: set[int]) -> None:
    """No duplicate adjustment, none missing, each with the planned unit change; the units on each date
    equal the plan's units_after; every created company, contract and service exists exactly once."""
    expected = expected_adjustments(admin, approved)
    stored = loaded_adjustments(admin, seeded_ids)
    slots = Counter((item["contractID"], item["serviceID"], item["effectiveDate"][:10]) for item in stored)
    duplicates = {slot: count for slot, count in slots.items() if count > 1}
    assert not duplicates, f"adjustments applied twice: {duplicates}"
    wanted = {(e.contract_id, e.service_id, e.effective_date.isoformat()): e for e in expected}
    assert set(slots) == set(wanted), f"missing {set(wanted) - set(slots)}, unexpected {set(slots) - set(wanted)}"
    for item in stored:
        planned = wanted[(item["contractID"], item["serviceID"], item["effectiveDate"][:10])]
        assert float(item["unitChange"]) == pytest.approx(planned.unit_change)
    units = defaultdict(list)
    for row in admin.state("ContractServiceUnits"):
        units[(row["contractID"], row["serviceID"])].append(row)
    for planned in expected:
        day = planned.effective_date.isoformat()
        covering = [
            row
            for row in units[(planned.contract_id, planned.service_id)]
            if row["startDate"][:10] <= day <= row["endDate"][:10]
        ]
        assert len(covering) == 1 and float(covering[0]["units"]) == pytest.approx(planned.units_after), (
            planned,
            covering,
        )
    created_numbers = [
        action.payload["contractNumber"] for action in approved if action.kind is ActionKind.CREATE_CONTRACT
    ]
    numbers = Counter(record.get("contractNumber") for record in admin.state("Contracts"))
    assert all(numbers[number] == 1 for number in created_numbers), numbers
    keys = Counter(
        udf["value"]
        for record in admin.state("Companies")
        for udf in record.get("userDefinedFields") or []
        if udf["name"] == SETTINGS.company_key_udf and udf.get("value")
    )
    created_accounts = [action.account_id for action in approved if action.kind is ActionKind.CREATE_COMPANY]
    assert all(keys[account] == 1 for account in created_accounts), keys


def seeded_adjustment_ids(admin: SandboxAdmin) -> set[int]:
    return {item["id"] for item in admin.state("ContractServiceAdjustments")}


def plan_statuses(warehouse: Warehouse) -> Counter:
    return Counter(row["status"] for row in warehouse.query("SELECT status FROM plan_actions"))


def ledger_states(warehouse: Warehouse) -> Counter:
    return Counter(row["state"] for row in warehouse.query("SELECT state FROM load_ledger"))


def sandbox_server(log_dir: Path) -> Iterator[RunningServer]:
    from tests.servers import start_server

    server = start_server(["sandbox.autotask_server", "--seed-customers", str(CUSTOMERS)], log_dir=log_dir)
    try:
        yield server
    finally:
        server.stop()
