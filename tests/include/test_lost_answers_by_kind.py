"""A lost answer on every kind of write: Autotask applied it, the answer never came (504). The loader settles each one
by reading Autotask — company by its key, contract by its number, extension by its end date, service by its SKU,
contract service by contract + service, adjustment by the units on its effective date — and never sends it again.
What Autotask holds is read from the sandbox's own lists."""

from __future__ import annotations

from decimal import Decimal

import pytest

from include.loader import load_plan_actions
from include.plan import ActionKind, ActionStatus, PlanAction, load_plan, set_action_status
from include.warehouse import Warehouse, utcnow
from tests.include.loader_support import (
    MONTH,
    SETTINGS,
    assert_each_applied_exactly_once,
    ledger_states,
    make_hook,
    plan_month,
    seeded_adjustment_ids,
)

# kind -> (the sandbox's lost-answer filter, the plan's action kind)
KINDS = {
    "company": ("POST Companies", ActionKind.CREATE_COMPANY),
    "contract": ("POST Contracts", ActionKind.CREATE_CONTRACT),
    "extension": ("PATCH Contracts", ActionKind.EXTEND_CONTRACT),
    "contract service": ("POST ContractServices", ActionKind.CREATE_CONTRACT_SERVICE),
    "adjustment": ("POST ContractServiceAdjustments", ActionKind.ADJUST_UNITS),
    "service": ("POST Services", ActionKind.CREATE_SERVICE),
}


def _standalone_contract_service(warehouse: Warehouse, approved: list[PlanAction]) -> None:
    """A new contract service of an existing contract whose first adjustment is excluded: created on its own."""
    created = next(
        action
        for action in approved
        if action.kind is ActionKind.CREATE_CONTRACT_SERVICE
        and action.contract_id is not None
        and action.service_id is not None
    )
    first = min(
        (
            a
            for a in approved
            if a.kind is ActionKind.ADJUST_UNITS and a.contract_service_action_id == created.action_id
        ),
        key=lambda action: action.effective_date,
    )
    set_action_status(warehouse, [first.action_id], "excluded", "reviewer")


def _new_service(warehouse: Warehouse) -> PlanAction:
    """A catalogue service the month creates (approved), as reconciliation plans one for a product Autotask lacks."""
    action = PlanAction(
        kind=ActionKind.CREATE_SERVICE,
        month=MONTH,
        target="product:PRD-LOST-ANSWER",
        status=ActionStatus.APPROVED,
        product_id="PRD-LOST-ANSWER",
        payload={
            "name": "Backup 1 TB (lost answer)",
            "unitPrice": Decimal("12.5000"),
            "unitCost": Decimal("7.2500"),
            "periodType": SETTINGS.period_type(next(iter(SETTINGS.period_types))),
            "billingCodeID": SETTINGS.billing_code_id,
            "sku": "LOST-ANSWER-1TB",
            "isActive": True,
        },
    )
    with warehouse.begin() as conn:
        warehouse.insert(conn, "plan_actions", [action.to_row("run-1", 10_000, utcnow())])
    return action


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_lost_answer_on_each_kind_of_write_is_settled_by_reading_never_by_sending_again(
    autotask, admin, tmp_path, monkeypatch, kind
):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    plan_month(hook, warehouse)
    approved = load_plan(warehouse, MONTH, statuses=["approved"])
    if kind == "contract service":
        _standalone_contract_service(warehouse, approved)
    if kind == "service":
        _new_service(warehouse)
    approved = load_plan(warehouse, MONTH, statuses=["approved"])
    seeded = seeded_adjustment_ids(admin)
    only, action_kind = KINDS[kind]
    of_kind = [action for action in approved if action.kind is action_kind]
    admin.reset_stats()
    admin.faults(lost_response_rate=1.0, lost_response_only=only)  # every answer of this kind is lost

    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)

    admin.faults(lost_response_rate=0.0, lost_response_only="")
    stats = admin.stats()
    lost = stats["faults"].get("lost_responses", 0)
    assert summary.status in ("succeeded", "incomplete") and summary.failed == 0, summary.failures
    assert lost >= 1, f"no answer of a {kind} write was lost: the test proved nothing"
    assert summary.found_applied >= lost  # each lost answer settled by reading
    # every write reached Autotask once: attempts == writes stored, none refused, none sent twice
    assert sum(stats["write_attempts"].values()) == stats["writes"] == summary.write_requests
    assert not stats["refused_writes"], stats["refused_writes"]
    rows = warehouse.query("SELECT kind, state, attempts FROM load_ledger")
    assert all(row["attempts"] <= 1 for row in rows), [row for row in rows if row["attempts"] > 1]
    assert "sent" not in ledger_states(warehouse) and "unknown" not in ledger_states(warehouse)
    # what loaded, exactly once (an adjustment after an excluded one waits for it, unsent)
    assert_each_applied_exactly_once(admin, load_plan(warehouse, MONTH, statuses=["applied"]), seeded)
    if kind == "service":
        skus = [record.get("sku") for record in admin.state("Services")]
        assert skus.count("LOST-ANSWER-1TB") == 1
    else:
        assert of_kind, f"the month has no {kind} write"
