"""The loader against the real Autotask sandbox over HTTP, on a month planned by the real pipeline:
a full load, a second load of the applied month, and the read-back verification."""

from __future__ import annotations

import json

from include.loader import LoadSettings, load_plan_actions
from include.plan import ActionKind, ActionStatus, load_plan
from include.verify import verify_load
from include.warehouse import Warehouse
from tests.include.loader_support import (
    APPROVER,
    MONTH,
    SETTINGS,
    assert_each_applied_exactly_once,
    ledger_states,
    make_hook,
    plan_month,
    seeded_adjustment_ids,
)


def test_a_full_load_applies_every_approved_action_once_and_a_second_load_writes_nothing(
    autotask, admin, warehouse: Warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    kinds = {action.kind for action in approved}
    assert {ActionKind.CREATE_COMPANY, ActionKind.CREATE_CONTRACT, ActionKind.ADJUST_UNITS} <= kinds
    assert ActionKind.EXTEND_CONTRACT in kinds and ActionKind.CREATE_CONTRACT_SERVICE in kinds
    adjustments = [action for action in approved if action.kind in (ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST)]
    new_contract_services = [action for action in approved if action.kind is ActionKind.CREATE_CONTRACT_SERVICE]
    seeded = seeded_adjustment_ids(admin)
    admin.reset_stats()

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    assert summary.status == "succeeded", summary.waits or summary.failures
    assert summary.failed == 0 and summary.waiting == 0
    # one request per write: each create, extension and adjustment once; a new contract service is a write of its
    # own, carrying its unit price and unit cost (the record holds the customer's money, not the catalogue's)
    writes = len(approved)
    assert summary.write_requests == writes == admin.write_requests()
    assert summary.folded == 0
    stats = admin.stats()
    assert stats["requests"]["ContractServiceAdjustments"]["POST"] == len(adjustments)
    # /Contracts/{id}/Services counts as the ContractServices endpoint (its queries too)
    assert stats["requests"]["ContractServices"]["POST"] >= len(new_contract_services) > 0
    assert stats["max_concurrency"].get("ContractServiceAdjustments", 0) <= 3
    assert_each_applied_exactly_once(admin, approved, seeded)

    # the plan rows record the outcome; who approved them stays
    rows = warehouse.query("SELECT kind, status, decided_by, applied_entity_id, error FROM plan_actions")
    loaded = [row for row in rows if row["decided_by"] == APPROVER]
    assert loaded and all(row["status"] == "applied" and row["error"] is None for row in loaded)
    created = [row for row in loaded if row["kind"].startswith("create_")]
    assert all(row["applied_entity_id"] for row in created)
    assert ledger_states(warehouse) == {"confirmed": writes}
    # the ledger keeps what was sent, and never a secret
    payloads = [json.loads(row["payload"]) for row in warehouse.query("SELECT payload FROM load_ledger")]
    assert all("Secret" not in payload and "demo-secret" not in json.dumps(payload) for payload in payloads)
    company = next(action for action in approved if action.kind is ActionKind.CREATE_COMPANY)
    stored = next(
        record for record in admin.state("Companies") if record["companyName"] == company.payload["companyName"]
    )
    assert {"name": SETTINGS.company_key_udf, "value": company.account_id} in stored["userDefinedFields"]

    verification = verify_load(hook, warehouse, MONTH, "run-1")
    assert verification.ok, verification.message()
    assert verification.contract_services > 0 and len(verification.checks) > len(adjustments)
    # the last day checked is the month end, or the contract's end (as Autotask holds it after the load) when a
    # term the BSS did not renew ends inside the month: after it Autotask has no units row, and should not
    ends = {record["id"]: record["endDate"][:10] for record in admin.state("Contracts")}
    last_days = [check for check in verification.checks if check.check_kind != "effective_date"]
    assert len(last_days) == verification.contract_services
    for check in last_days:
        assert str(check.check_date) == min(ends[check.contract_id], "2026-10-31")
        assert check.check_kind == ("month_end" if str(check.check_date) == "2026-10-31" else "contract_end")
    assert any(check.check_kind == "contract_end" for check in last_days)  # the sandbox month has such a term
    stored_checks = warehouse.scalar("SELECT COUNT(*) FROM load_verifications WHERE run_id = 'run-1' AND matches = 1")
    assert stored_checks == len(verification.checks)

    # the applied month again: zero requests of any kind, and nothing changes
    admin.reset_stats()
    again = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert again.status == "succeeded" and again.write_requests == 0 and again.approved == 0
    assert admin.stats()["total"] == 0
    runs = warehouse.query("SELECT status, writes FROM load_runs ORDER BY started_at")
    assert [(row["status"], row["writes"]) for row in runs] == [("succeeded", writes), ("succeeded", 0)]


def test_approved_actions_whose_plan_row_was_not_marked_are_confirmed_from_the_ledger_without_writing(
    autotask, admin, tmp_path, monkeypatch
):
    """A plan row put back to approved (e.g. restored from a backup) whose write the ledger holds as
    confirmed is not sent again."""
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    with warehouse.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE plan_actions SET status = 'approved' WHERE status = 'applied'")
    admin.reset_stats()
    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert summary.write_requests == 0 and admin.write_requests() == 0
    assert summary.status == "succeeded" and summary.already_applied == summary.approved
    approved_ids = {action.action_id for action in approved}
    statuses = {action.status for action in load_plan(warehouse, MONTH) if action.action_id in approved_ids}
    assert statuses == {ActionStatus.APPLIED}


def test_verification_reports_a_contract_service_changed_in_autotask_after_the_load(
    autotask, admin, tmp_path, monkeypatch
):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS, LoadSettings(workers=3))
    # someone adds 2 units by hand on the month's last day to a contract service the load adjusted earlier
    # (one whose contract runs past the month: Autotask refuses an adjustment after a contract's end)
    runs_past_month = {record["id"] for record in admin.state("Contracts") if record["endDate"][:10] >= "2026-10-31"}
    target = next(
        action
        for action in approved
        if action.kind is ActionKind.ADJUST_UNITS
        and action.contract_service_id is not None
        and action.contract_id in runs_past_month
        and action.effective_date.day < 31
        and not any(
            other.target == action.target and other.effective_date.day == 31
            for other in approved
            if other.kind is ActionKind.ADJUST_UNITS
        )
    )
    hook.create(
        "ContractServiceAdjustments",
        {"contractServiceID": target.contract_service_id, "effectiveDate": "2026-10-31T00:00:00", "unitChange": 2},
    )

    verification = verify_load(hook, warehouse, MONTH, "run-2")

    assert not verification.ok
    (difference,) = verification.differences
    assert difference.check_kind == "month_end" and str(difference.check_date) == "2026-10-31"
    assert difference.subscription_ids == target.subscription_ids
    assert difference.found == difference.expected + 2
    assert target.subscription_ids[0] in verification.message()
    stored = warehouse.query("SELECT * FROM load_verifications WHERE run_id = 'run-2' AND matches = 0")
    assert len(stored) == 1 and json.loads(stored[0]["subscription_ids"]) == list(target.subscription_ids)
