"""What the loader does with writes Autotask refuses, records that exist already (another month, another
company), and a new contract service no approved adjustment creates."""

from __future__ import annotations

from collections import defaultdict

import pytest

from include.loader import load_plan_actions
from include.plan import ActionKind, ActionStatus, PlanAction, PlanSummary, load_plan, replace_plan, set_action_status
from include.warehouse import Warehouse, utcnow
from tests.include.loader_support import (
    ADJUSTING,
    APPROVER,
    MONTH,
    SETTINGS,
    assert_each_applied_exactly_once,
    make_hook,
    plan_month,
    seeded_adjustment_ids,
)

NOVEMBER = "2026-11"


@pytest.fixture
def warehouse(tmp_path) -> Warehouse:
    handle = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    handle.migrate()
    return handle


def test_a_write_autotask_refuses_fails_with_its_text_and_holds_back_what_depends_on_it(
    autotask, admin, warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    extended = {action.contract_id for action in approved if action.kind is ActionKind.EXTEND_CONTRACT}
    chains = defaultdict(list)
    for action in approved:
        if action.kind in ADJUSTING and action.contract_id is not None and action.contract_id not in extended:
            chains[action.target].append(action)
    chain = sorted(max(chains.values(), key=len), key=lambda action: action.effective_date)
    first = chain[0]
    contract = next(record for record in admin.state("Contracts") if record["id"] == first.contract_id)
    assert contract["startDate"][:10] < first.effective_date.isoformat()
    # someone shortens the contract in Autotask after the plan was made: the adjustment falls outside it
    day_before = first.effective_date.fromordinal(first.effective_date.toordinal() - 1)
    hook.update("Contracts", {"id": first.contract_id, "endDate": f"{day_before.isoformat()}T00:00:00"})
    seeded = seeded_adjustment_ids(admin)

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    assert summary.failed == len(chain) and summary.status == "succeeded"
    rows = {row["action_id"]: row for row in warehouse.query("SELECT action_id, status, error FROM plan_actions")}
    assert rows[first.action_id]["status"] == "failed"
    assert "effectiveDate must be between the start date and end date of the Contract" in rows[first.action_id]["error"]
    for later in chain[1:]:
        assert rows[later.action_id]["status"] == "failed"
        # held back by the failed adjustment, or by the new contract service it was to create
        blocked_by = {f"adjust_units {first.action_id}", f"create_contract_service {first.contract_service_action_id}"}
        assert any(f"depends on {name}, which failed" in rows[later.action_id]["error"] for name in blocked_by)
    (ledger,) = warehouse.query("SELECT state, error FROM load_ledger WHERE action_id = :id", {"id": first.action_id})
    assert ledger["state"] == "failed" and "effectiveDate" in ledger["error"]
    failed_ids = {action.action_id for action in chain}
    assert_each_applied_exactly_once(admin, [a for a in approved if a.action_id not in failed_ids], seeded)
    # a failed write is not tried again by the next load: a person decides
    admin.reset_stats()
    again = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert again.write_requests == 0 and admin.stats()["total"] == 0


def test_records_created_in_an_earlier_month_are_found_by_their_key_and_never_created_twice(
    autotask, admin, warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    applied_ids = {
        row["action_id"]: row["applied_entity_id"]
        for row in warehouse.query("SELECT action_id, applied_entity_id FROM plan_actions WHERE status = 'applied'")
    }
    company = next(action for action in approved if action.kind is ActionKind.CREATE_COMPANY)
    contract = next(
        action
        for action in approved
        if action.kind is ActionKind.CREATE_CONTRACT and action.company_action_id == company.action_id
    )
    # November was planned before October's creates were loaded: it proposes them again
    november_company = PlanAction(
        kind=ActionKind.CREATE_COMPANY,
        month=NOVEMBER,
        target=company.target,
        account_id=company.account_id,
        payload=dict(company.payload),
    )
    november_contract = PlanAction(
        kind=ActionKind.CREATE_CONTRACT,
        month=NOVEMBER,
        target=contract.target,
        account_id=contract.account_id,
        subscription_ids=contract.subscription_ids,
        company_action_id=november_company.action_id,
        payload=dict(contract.payload),
        depends_on=(november_company.action_id,),
    )
    # and a contract for another subscription number that Autotask holds under a different company
    other = next(
        record
        for record in admin.state("Contracts")
        if record.get("contractNumber") and record["companyID"] != applied_ids[company.action_id]
    )
    foreign = PlanAction(
        kind=ActionKind.CREATE_CONTRACT,
        month=NOVEMBER,
        target=f"subscription:{other['contractNumber']}",
        company_action_id=november_company.action_id,
        payload={**dict(contract.payload), "contractNumber": other["contractNumber"], "contractName": "Ünïcode & Co"},
        depends_on=(november_company.action_id,),
    )
    actions = [november_company, november_contract, foreign]
    replace_plan(warehouse, NOVEMBER, "run-nov", actions, PlanSummary("run-nov", NOVEMBER))
    set_action_status(warehouse, [action.action_id for action in actions], "approved", APPROVER)
    admin.reset_stats()

    summary = load_plan_actions(hook, warehouse, NOVEMBER, "run-nov", SETTINGS)

    assert summary.write_requests == 0 and admin.write_requests() == 0
    assert summary.found_applied == 2 and summary.failed == 1
    rows = {
        row["action_id"]: row
        for row in warehouse.query("SELECT action_id, status, applied_entity_id, error FROM plan_actions")
    }
    assert rows[november_company.action_id]["applied_entity_id"] == applied_ids[company.action_id]
    assert rows[november_contract.action_id]["applied_entity_id"] == applied_ids[contract.action_id]
    assert rows[foreign.action_id]["status"] == "failed"
    assert f"contract number {other['contractNumber']}" in rows[foreign.action_id]["error"]
    assert "a person decides" in rows[foreign.action_id]["error"]
    assert all(rows[action_id]["status"] == "applied" for action_id in applied_ids)  # October's rows stay


def test_a_new_contract_service_whose_adjustments_are_not_approved_is_created_on_its_own(
    autotask, admin, warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    created = next(
        action
        for action in approved
        if action.kind is ActionKind.CREATE_CONTRACT_SERVICE
        and action.contract_id is not None
        and action.service_id is not None
    )
    adjustments = sorted(
        (a for a in approved if a.kind in ADJUSTING and a.contract_service_action_id == created.action_id),
        key=lambda action: action.effective_date,
    )
    set_action_status(warehouse, [adjustments[0].action_id], "excluded", "reviewer")

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    pairs = {(record["contractID"], record["serviceID"]): record for record in admin.state("ContractServices")}
    record = pairs[(created.contract_id, created.service_id)]
    (row,) = warehouse.query(
        "SELECT status, applied_entity_id FROM plan_actions WHERE action_id = :id", {"id": created.action_id}
    )
    assert row["status"] == "applied" and row["applied_entity_id"] == record["id"]
    assert float(record["unitCost"]) == pytest.approx(float(created.payload["unitCost"]))
    # what follows the excluded adjustment waits, and the summary says for what
    later = adjustments[1:]
    assert summary.waiting == len(later)
    if later:
        assert summary.status == "incomplete"
        assert any(
            adjustments[0].action_id in wait["reason"] and "excluded" in wait["reason"] for wait in summary.waits
        )
    statuses = {action.action_id: action.status for action in load_plan(warehouse, MONTH)}
    assert all(statuses[action.action_id] == ActionStatus.APPROVED for action in later)
    assert statuses[adjustments[0].action_id] == ActionStatus.EXCLUDED


def test_blocked_rows_set_approved_by_hand_are_refused_and_reviews_write_nothing(
    autotask, admin, warehouse, monkeypatch
):
    """Defence in depth: a blocked row (Autotask would refuse it, or it would write a wrong figure) that someone
    sets to approved by SQL is never sent; a review of an unbilled contract service writes nothing."""
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    blocked = [action for action in load_plan(warehouse, MONTH) if action.status is ActionStatus.BLOCKED]
    # the sandbox month holds hand-made Autotask adjustments on BSS change dates and other currencies
    assert blocked and all(action.blocked_by_plan for action in blocked)
    contract_service = admin.state("ContractServices")[0]
    review = PlanAction(
        kind=ActionKind.REVIEW_UNBILLED,
        month=MONTH,
        target=f"cs:C{contract_service['contractID']}/V{contract_service['serviceID']}",
        reason="holds units in Autotask but the BSS billed nothing this month",
        contract_id=contract_service["contractID"],
        service_id=contract_service["serviceID"],
        contract_service_id=contract_service["id"],
    )
    with warehouse.begin() as conn:
        warehouse.insert(conn, "plan_actions", [review.to_row("run-1", 10_000, utcnow())])
        conn.exec_driver_sql("UPDATE plan_actions SET status = 'approved' WHERE status = 'blocked'")
    set_action_status(warehouse, [review.action_id], "approved", APPROVER)
    seeded = seeded_adjustment_ids(admin)
    admin.reset_stats()

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    assert summary.skipped == 1 and summary.failed == len(blocked)
    assert summary.write_requests == admin.write_requests() == len(approved)
    # only what was proposed reached Autotask, each once; nothing at a blocked slot
    assert_each_applied_exactly_once(admin, approved, seeded)
    pairs = {(record["contractID"], record["serviceID"]) for record in admin.state("ContractServices")}
    rows = {row["action_id"]: row for row in warehouse.query("SELECT action_id, status, error FROM plan_actions")}
    sent = {row["action_id"] for row in warehouse.query("SELECT action_id FROM load_ledger")}
    for action in blocked:
        assert rows[action.action_id]["status"] == "failed" and action.action_id not in sent
        assert "refused: the plan blocked this write" in rows[action.action_id]["error"]
        assert action.reason in rows[action.action_id]["error"]
        if action.kind is ActionKind.CREATE_CONTRACT_SERVICE and action.contract_id and action.service_id:
            assert (action.contract_id, action.service_id) not in pairs
    assert rows[review.action_id]["status"] == "approved" and review.action_id not in sent
    # the next load sends nothing either
    admin.reset_stats()
    again = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert again.write_requests == 0 and admin.write_requests() == 0
