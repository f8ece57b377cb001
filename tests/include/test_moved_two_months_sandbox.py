"""Two months on the sandboxes, each with subscriptions that move to another customer in mid-month (the BSS data
set's moves: a cancellation credit on the old account, a New line on the new one, whose name has accents and a
legal form). Both months are planned through the real gates and loaded by the real loader into the Autotask sandbox
over HTTP; nothing about a move stops a month. Checked on the sandbox's own units, never on the ledger: the old
contract service holds 0 from the move date, a contract of the new customer's company holds the units."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

from include.extract import extract_month
from include.loader import load_plan_actions
from include.mapping import link_month, set_manual_link
from include.plan import MOVED_SUBSCRIPTION, ActionKind, ActionStatus, PlanAction, load_plan, set_action_status
from include.quality import QualityReport, raise_on_critical, validate_charges, validate_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.warehouse import Warehouse
from sandbox.bss_server import UniverseSource
from tests.include.loader_support import APPROVER, SETTINGS, SandboxAdmin, make_hook, universe

OCTOBER, NOVEMBER = "2026-10", "2026-11"
MONTH_ENDS = {OCTOBER: date(2026, 10, 31), NOVEMBER: date(2026, 11, 30)}


def _moves(month: str) -> list:
    return [s for s in universe().subscriptions if s.moved_mid_month and s.moved_on.strftime("%Y-%m") == month]


def _seeded_companies(admin: SandboxAdmin) -> dict[str, int]:
    """Each BSS account's own company as the sandbox seeded it (its record of the truth)."""
    facts = admin.client.get("/_admin/seed-facts").raise_for_status().json()["items"]
    return {fact["bssId"]: fact["autotaskId"] for fact in facts if fact["kind"] == "company" and fact["autotaskId"]}


def _run_month(hook, warehouse: Warehouse, month: str, run_id: str) -> tuple[QualityReport, list[PlanAction]]:
    """The DAG's steps up to the approval, each gate raising as the DAG's would."""
    extract_month(UniverseSource(universe()), warehouse, month, run_id)
    charges = raise_on_critical(validate_charges(warehouse, month, run_id))
    take_snapshot(hook, warehouse, month, run_id, SETTINGS)
    link_month(warehouse, month, run_id, SETTINGS)
    reconcile_month(warehouse, month, run_id, SETTINGS)
    raise_on_critical(validate_plan(warehouse, month, run_id))
    return charges, load_plan(warehouse, month, run_id)


def _confirm_suggested_companies(admin: SandboxAdmin, warehouse: Warehouse, plan: list[PlanAction]) -> set[str]:
    """What a person does with a new customer's company that waits for a mapping: confirms the customer's own
    company in Autotask (the seed's record of it), never a look-alike."""
    truth = _seeded_companies(admin)
    waiting = {
        action.account_id
        for action in plan
        if action.kind is ActionKind.CREATE_COMPANY and action.status is ActionStatus.NEEDS_MAPPING
    }
    for account_id in waiting:
        if truth.get(account_id):
            set_manual_link(warehouse, "company", account_id, int(truth[account_id]), by=APPROVER)
    return waiting


def _approve_including_flagged_and_load(hook, warehouse: Warehouse, month: str, run_id: str) -> None:
    plan = load_plan(warehouse, month, run_id)
    loadable = [action.action_id for action in plan if action.loadable]
    set_action_status(warehouse, loadable, "approved", APPROVER)
    summary = load_plan_actions(hook, warehouse, month, run_id, SETTINGS)
    assert summary.status == "succeeded" and summary.failed == 0, summary.waits or summary.failures


def _plan_and_load(hook, admin: SandboxAdmin, warehouse: Warehouse, month: str) -> list[PlanAction]:
    charges, plan = _run_month(hook, warehouse, month, f"run-{month}")
    moves = _moves(month)
    assert moves
    # the charges gate lets the month through: a move neither stops nor holds it (the plan flags it)
    moved_ids = {s.id for s in moves}
    moved_lines = {
        line["id"] for line in universe().charges_for_month(month) if line["subscription"]["id"] in moved_ids
    }
    assert not charges.critical and not charges.holds
    assert not {key for failure in charges.failures for key in failure.example_keys("charge_id")} & moved_lines
    # planned as moves: flagged (or waiting for a person's mapping of the new customer), never proposed
    for subscription in moves:
        actions = [action for action in plan if subscription.id in action.subscription_ids]
        assert actions, subscription.id
        for action in actions:
            assert action.status in (ActionStatus.FLAGGED, ActionStatus.NEEDS_MAPPING), action
            assert MOVED_SUBSCRIPTION in action.reason
    run_id = f"run-{month}"
    if _confirm_suggested_companies(admin, warehouse, plan):  # the month planned again, as a review decision does
        run_id = f"run-{month}-mapped"
        _, plan = _run_month(hook, warehouse, month, run_id)
    for subscription in moves:  # now every write of each move can be approved (flagged lines included)
        assert all(action.loadable for action in plan if subscription.id in action.subscription_ids)
    _approve_including_flagged_and_load(hook, warehouse, month, run_id)
    return plan


def _units(admin: SandboxAdmin) -> dict[tuple[int, int], list[dict]]:
    rows = defaultdict(list)
    for row in admin.state("ContractServiceUnits"):
        rows[(row["contractID"], row["serviceID"])].append(row)
    return rows


def _units_on(rows: list[dict], day: date) -> float:
    covering = [row for row in rows if row["startDate"][:10] <= day.isoformat() <= row["endDate"][:10]]
    assert len(covering) <= 1, covering
    return float(covering[0]["units"]) if covering else 0.0


def test_two_months_with_moves_in_mid_month_plan_and_load_and_the_units_follow_the_customer(
    autotask, admin: SandboxAdmin, warehouse: Warehouse, data_docs_dir, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    _plan_and_load(hook, admin, warehouse, OCTOBER)
    _plan_and_load(hook, admin, warehouse, NOVEMBER)

    companies = admin.state("Companies")
    company_of = {
        udf["value"]: record["id"]
        for record in companies
        for udf in record.get("userDefinedFields") or []
        if udf["name"] == SETTINGS.company_key_udf and udf.get("value")
    }
    truth = _seeded_companies(admin)
    contracts = admin.state("Contracts")
    services = {record.get("sku"): record["id"] for record in admin.state("Services") if record.get("sku")}
    units = _units(admin)
    checked_old = 0
    for month in (OCTOBER, NOVEMBER):
        for subscription in _moves(month):
            service = services[universe().product(subscription.product_id).sku]
            moved_on, held = subscription.moved_on, subscription.units_on(subscription.moved_on)
            new_company = truth.get(subscription.moved_to) or company_of[subscription.moved_to]
            old_company = truth.get(subscription.account_id) or company_of.get(subscription.account_id)
            numbered = [record for record in contracts if record.get("contractNumber") == subscription.id]
            (new_contract,) = [record for record in numbered if record["companyID"] == new_company]
            assert _units_on(units[(new_contract["id"], service)], moved_on) == held
            assert _units_on(units[(new_contract["id"], service)], moved_on - timedelta(days=1)) == 0
            assert _units_on(units[(new_contract["id"], service)], MONTH_ENDS[NOVEMBER]) == subscription.units_on(
                MONTH_ENDS[NOVEMBER]
            )
            for old in [record for record in numbered if record["companyID"] == old_company]:
                rows = units[(old["id"], service)]
                if rows:  # Autotask billed the old customer for it: 0 from the move on, the days before kept
                    assert _units_on(rows, moved_on - timedelta(days=1)) == subscription.units_before(moved_on)
                    assert _units_on(rows, moved_on) == 0
                    assert _units_on(rows, MONTH_ENDS[NOVEMBER]) == 0
                    checked_old += 1
    assert checked_old >= 2  # the old contract service zeroed, in both months
