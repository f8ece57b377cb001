"""The read-back verification checks money as well as units, against the Autotask sandbox over HTTP: after a load
every contract service the plan priced holds its unit cost and unit price; a price changed in Autotask behind the
loader's back fails the verification with a line naming the contract service and both figures."""

from __future__ import annotations

from decimal import Decimal

import httpx

from include.loader import load_plan_actions
from include.plan import ActionKind
from include.verify import verify_load
from include.warehouse import Warehouse
from stacks.local_stack import AUTOTASK_INTEGRATION_CODE, AUTOTASK_SECRET, AUTOTASK_USER
from tests.include.loader_support import MONTH, SETTINGS, make_hook, plan_month


def test_verify_reads_back_units_cost_and_price_and_names_a_price_changed_behind_the_loaders_back(
    autotask, admin, warehouse: Warehouse, monkeypatch
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    created = [action for action in approved if action.kind is ActionKind.CREATE_CONTRACT_SERVICE]
    assert created and all(action.unit_price_after is not None for action in created)
    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert summary.status == "succeeded", summary.failures

    clean = verify_load(hook, warehouse, MONTH, "verify-1")
    assert clean.ok, clean.message()
    priced = [check for check in clean.checks if check.expected_price is not None]
    assert priced and all(check.found_price == check.expected_price for check in priced)
    assert all(check.found_cost == check.expected_cost for check in clean.checks if check.expected_cost is not None)

    # a person changes the price of one contract service the load created, in Autotask, not through the loader
    changed = created[0]
    (cs_id,) = [
        int(row["applied_entity_id"])
        for row in warehouse.query(
            "SELECT applied_entity_id FROM plan_actions WHERE action_id = :id", {"id": changed.action_id}
        )
    ]
    record = next(item for item in admin.state("ContractServices") if item["id"] == cs_id)
    new_price = float(changed.unit_price_after) + 1.25
    answer = httpx.patch(
        f"{autotask.url}/atservicesrest/v1.0/Contracts/{record['contractID']}/Services",
        json={"id": cs_id, "adjustedPrice": new_price},
        headers={
            "ApiIntegrationCode": AUTOTASK_INTEGRATION_CODE,
            "UserName": AUTOTASK_USER,
            "Secret": AUTOTASK_SECRET,
            "Content-Type": "application/json",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text

    after = verify_load(hook, warehouse, MONTH, "verify-2")
    assert not after.ok
    named = [check for check in after.differences if check.contract_service_id == cs_id]
    assert named and {check.contract_service_id for check in after.differences} == {cs_id}
    assert all(check.units_match and check.cost_matches and not check.price_matches for check in named)
    assert all(check.found_price == Decimal(str(new_price)) for check in named)
    message = after.message()
    assert f"contract service {cs_id}" in message
    assert (
        f"expected unit price {changed.unit_price_after:f}" in message
        and f"Autotask holds {Decimal(str(new_price)):f}" in message
    )
    stored = warehouse.query(
        "SELECT matches, expected_price, found_price FROM load_verifications WHERE run_id = 'verify-2'"
        " AND contract_service_id = :cs",
        {"cs": cs_id},
    )
    assert stored and all(row["matches"] == 0 for row in stored)
