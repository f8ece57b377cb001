"""Two months in a row against the real Autotask sandbox over HTTP, with the real loader: October approved but
not loaded when November is planned; then both load in order. Checked on the sandbox's own adjustment list
and by reading its units back, never on the loader's ledger."""

from __future__ import annotations

from collections import Counter

from include.extract import extract_month
from include.loader import load_plan_actions
from include.mapping import link_month
from include.plan import ActionKind, ActionStatus, PlanAction, load_plan, set_action_status
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.warehouse import Warehouse
from sandbox.bss_server import UniverseSource
from tests.include.loader_support import (
    APPROVER,
    SETTINGS,
    loaded_adjustments,
    make_hook,
    seeded_adjustment_ids,
    universe,
)

OCTOBER = "2026-10"
NOVEMBER = "2026-11"
WRITING = {kind for kind in ActionKind if kind is not ActionKind.REVIEW_UNBILLED}


def _plan_and_approve(hook, warehouse: Warehouse, month: str, run_id: str) -> list[PlanAction]:
    """The real pipeline for `month` (snapshot, extract, link, reconcile), then every proposed action approved."""
    take_snapshot(hook, warehouse, month, run_id, SETTINGS)
    extract_month(UniverseSource(universe()), warehouse, month, f"{run_id}-extract")
    link_month(warehouse, month, run_id, SETTINGS)
    reconcile_month(warehouse, month, run_id, SETTINGS)
    plan = load_plan(warehouse, month, run_id)
    proposed = [action for action in plan if action.status is ActionStatus.PROPOSED]
    set_action_status(warehouse, [action.action_id for action in proposed], "approved", APPROVER)
    return plan


def _load(hook, warehouse: Warehouse, month: str, run_id: str) -> int:
    """The real loader on the month's approved rows; returns the write requests it sent."""
    summary = load_plan_actions(hook, warehouse, month, run_id, SETTINGS)
    assert summary.status == "succeeded" and summary.failed == 0, summary.waits or summary.failures
    return summary.write_requests


def test_october_approved_not_loaded_then_november_planned_loads_each_change_once(
    autotask, admin, warehouse: Warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    seeded = seeded_adjustment_ids(admin)
    october = _plan_and_approve(hook, warehouse, OCTOBER, "run-oct")
    october_creates = {
        (action.kind, action.target)
        for action in october
        if action.status is ActionStatus.PROPOSED and action.kind.value.startswith("create_")
    }
    assert any(kind is ActionKind.CREATE_COMPANY for kind, _ in october_creates)

    # November is planned while October is approved but not loaded: no record October creates is proposed again
    november = _plan_and_approve(hook, warehouse, NOVEMBER, "run-nov")
    again = [action for action in november if (action.kind, action.target) in october_creates]
    assert again and all(action.status is ActionStatus.BLOCKED for action in again)
    assert all("is not loaded yet: load that run first" in action.reason for action in again)

    # both months load in order; then November is re-planned for what waited on October's creates
    _load(hook, warehouse, OCTOBER, "run-oct")
    _load(hook, warehouse, NOVEMBER, "run-nov")
    rest = _plan_and_approve(hook, warehouse, NOVEMBER, "run-nov-2")
    assert not [a for a in rest if a.kind.value.startswith("create_") and (a.kind, a.target) in october_creates]
    _load(hook, warehouse, NOVEMBER, "run-nov-2")

    # the sandbox's own adjustments: none on one contract service and date twice
    stored = loaded_adjustments(admin, seeded)
    slots = Counter((item["contractID"], item["serviceID"], item["effectiveDate"][:10]) for item in stored)
    assert stored and not {slot: count for slot, count in slots.items() if count > 1}
    # every company October created exists once (its key carries the account id)
    keys = Counter(
        udf["value"]
        for record in admin.state("Companies")
        for udf in record.get("userDefinedFields") or []
        if udf["name"] == SETTINGS.company_key_udf and udf.get("value")
    )
    created = [target.split(":", 1)[1] for kind, target in october_creates if kind is ActionKind.CREATE_COMPANY]
    assert all(keys[account] == 1 for account in created), keys

    # Autotask now holds the BSS units: a fresh plan of November proposes no write at all; what is left is
    # what a person never approved (flagged in October and still flagged: e.g. a subscription that moved)
    final = _plan_and_approve(hook, warehouse, NOVEMBER, "run-nov-3")
    assert [action for action in final if action.kind in WRITING and action.status is ActionStatus.PROPOSED] == []
    # (and November's own flagged lines: e.g. a subscription that moved to another customer in mid-November)
    flagged_before = {action.target for action in [*october, *november] if action.status is ActionStatus.FLAGGED}
    assert {action.target for action in final if action.loadable} <= flagged_before
