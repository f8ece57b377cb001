"""Done when (issue 15): after a run and an approval on the sandbox month (customers in EUR, GBP and USD), every
contract service the month touched holds the BSS unit cost and the price policy's unit price in the customer's
currency, read back from the Autotask sandbox over HTTP (never from the loader's ledger or the plan)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal

import pytest

from include.extract import extract_month
from include.loader import load_plan_actions
from include.mapping import link_month
from include.plan import ADJUSTMENT_KINDS, ActionKind, ActionStatus, load_plan, set_action_status
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.verify import verify_load
from include.warehouse import Warehouse
from sandbox.bss_server import UniverseSource
from tests.include.loader_support import APPROVER, MONTH, SETTINGS, make_hook, universe

FOUR = Decimal("0.0001")
PRICE_REASONS = ("raises the unit price the customer pays",)


def _approve(warehouse: Warehouse) -> None:
    """What a finance person approves: the proposed lines, and the flagged ones held back only for a price raise
    they have read (old and new figure on the line)."""
    chosen = []
    for action in load_plan(warehouse, MONTH, "run-1"):
        reasons = (action.reason or "").split("; ")
        if action.status is ActionStatus.PROPOSED or (
            action.status is ActionStatus.FLAGGED and all(part.startswith(PRICE_REASONS) for part in reasons)
        ):
            chosen.append(action.action_id)
    set_action_status(warehouse, chosen, "approved", APPROVER)


def _month_end_rows(hook, contract_ids: list[int]) -> dict[tuple[int, int], dict]:
    """Each contract service's ContractServiceUnits row in force on the last day it bills in the month."""
    rows = hook.query_in(
        "ContractServiceUnits",
        "contractID",
        contract_ids,
        [{"op": "lte", "field": "startDate", "value": "2026-10-31T00:00:00"}],
        ["id", "contractID", "serviceID", "contractServiceID", "startDate", "endDate", "units", "cost", "price"],
    )
    latest: dict[tuple[int, int], dict] = {}
    for row in rows:
        pair = (int(row["contractID"]), int(row["serviceID"]))
        if pair not in latest or row["startDate"] > latest[pair]["startDate"]:
            latest[pair] = row
    return latest


@pytest.mark.parametrize("policy", ["keep", "bss"])
def test_every_contract_service_the_month_touched_holds_the_bss_cost_and_the_policys_price(
    autotask, admin, warehouse: Warehouse, monkeypatch, policy
):
    settings = replace(SETTINGS, price_policy=policy)
    hook = make_hook(autotask, monkeypatch)
    take_snapshot(hook, warehouse, MONTH, "run-1", settings)
    extract_month(UniverseSource(universe()), warehouse, MONTH, "run-1-extract")
    link_month(warehouse, MONTH, "run-1", settings)
    reconcile_month(warehouse, MONTH, "run-1", settings)
    _approve(warehouse)
    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", settings)
    assert summary.status == "succeeded" and summary.failed == 0, summary.failures
    assert verify_load(hook, warehouse, MONTH, "verify-1").ok

    # the contract services the load touched, located by what was sent (contract and service ids resolved)
    sent = {
        row["action_id"]: row["payload"]
        for row in warehouse.query("SELECT action_id, payload FROM load_ledger WHERE state = 'confirmed'", {})
    }
    touched: dict[tuple[int, int], set[str]] = defaultdict(set)
    existing: set[tuple[int, int]] = set()
    for action in load_plan(warehouse, MONTH, "run-1", statuses=["applied"]):
        if action.kind not in (*ADJUSTMENT_KINDS, ActionKind.CREATE_CONTRACT_SERVICE):
            continue
        body = json.loads(sent[action.action_id])
        pair = (int(body["contractID"]), int(body["serviceID"]))
        touched[pair] |= set(action.subscription_ids)
        if action.contract_service_id is not None:
            existing.add(pair)
    assert len(touched) >= 20

    # the BSS's recurring line of each subscription (last Recurring/Prorated line of the month) and its currency
    recurring: dict[str, tuple[Decimal, Decimal, str]] = {}
    for row in warehouse.query(
        "SELECT subscription_id, unit_cost, unit_price, currency FROM charge_lines WHERE month = :month"
        " AND charge_type IN ('Recurring', 'Prorated') ORDER BY effective_date, charged_at, charge_sequence",
        {"month": MONTH},
    ):
        recurring[row["subscription_id"]] = (
            Decimal(str(row["unit_cost"])).quantize(FOUR),
            Decimal(str(row["unit_price"])).quantize(FOUR),
            row["currency"],
        )
    # what Autotask held before the run, for `keep`
    before = {
        (int(row["contract_id"]), int(row["service_id"])): Decimal(str(row["price"])).quantize(FOUR)
        for row in warehouse.query(
            "SELECT cs.contract_id, cs.service_id, units.price, units.start_date FROM at_contract_service_units units"
            " JOIN at_contract_services cs ON cs.run_id = units.run_id"
            " AND cs.contract_service_id = units.contract_service_id"
            " WHERE units.run_id = 'run-1' AND units.start_date <= '2026-10-31' ORDER BY units.start_date",
            {},
        )
        if row["price"] is not None
    }
    currency_of_contract = {
        int(row["contract_id"]): row["currency"]
        for row in warehouse.query(
            "SELECT c.contract_id, co.currency FROM at_contracts c JOIN at_companies co ON co.run_id = c.run_id"
            " AND co.company_id = c.company_id WHERE c.run_id = 'run-1'",
            {},
        )
    }

    rows = _month_end_rows(hook, sorted({pair[0] for pair in touched}))
    checked = defaultdict(int)
    for pair, subscriptions in sorted(touched.items()):
        figures = {recurring[s] for s in subscriptions if s in recurring}
        if len(figures) != 1:
            continue  # subscriptions at different figures are a person's (flagged, never approved here)
        ((cost, price, currency),) = figures
        row = rows[pair]
        assert Decimal(str(row["cost"])).quantize(FOUR) == cost, (pair, row, cost)
        # `keep`: an existing contract service keeps its Autotask price; else the BSS unit price of the recurring
        # line, in the customer's currency
        expected_price = before[pair] if policy == "keep" and pair in existing else price
        assert Decimal(str(row["price"])).quantize(FOUR) == expected_price, (pair, row, expected_price)
        if pair[0] in currency_of_contract and currency_of_contract[pair[0]]:
            assert currency_of_contract[pair[0]] == currency, (pair, currency)
        checked[currency] += 1
    # three currencies, each with contract services checked
    assert set(checked) == {"EUR", "GBP", "USD"} and all(count > 0 for count in checked.values()), checked
