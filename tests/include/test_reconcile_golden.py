"""The golden scenario: hand-written BSS lines and Autotask state for 2026-10, and the plan written out by hand.

Autotask (ids are assigned by the fake in creation order):
  companies 101 Contoso Ltd (UDF key ACC-1), 102 Fabrikam, Inc. (exact name), 103 Northwind Traders Ltd (no key),
            104 Müller GmbH (UDF key ACC-4)
  services  501 Microsoft 365 Business Standard (sku M365-BS, cost 10), 502 Exchange Online (Plan 1) (no sku,
            cost 4), 503 Veeam Backup (inactive; remembered link for PRD-VEEAM)
  contracts 1001 Contoso  SUB-1  2026-01-01..2026-12-31   cs 5001 (1001, 501) 10 units; +1 on 2026-10-15
            1002 Contoso  SUB-2  2026-01-01..2026-12-31   cs 5002 (1002, 502) 7 units (SUB-2 5 + SUB-3 2)
            1003 Müller   SUB-4  2025-10-01..2026-09-30   cs 5003 (1003, 501) 20 units (ended: renewal)
            1004 Fabrikam SUB-5  2026-03-01..2027-02-28   cs 5004 (1004, 501) 30 units (annual)
            1005 Müller   SUB-6  2026-01-01..2026-12-31   cs 5005 (1005, 503) 4 units (inactive service)
            1006 Fabrikam SUB-7  2026-01-01..2026-12-31   cs 5006 (1006, 502) 3 units (in sync)
Links made before the month: SUB-3 -> 1002 by hand (many-to-one); PRD-VEEAM -> 503 (remembered).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from include.mapping import link_month, record_created_link, set_manual_link, stored_links
from include.plan import ActionKind, ActionStatus, load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month

MONTH = "2026-10"
SETTINGS = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
CONTOSO = ("ACC-1", "Contoso Ltd")
FABRIKAM = ("ACC-2", "Fabrikam, Inc.")
NORTHWIND = ("ACC-3", "Northwind Trading Ltd")
MULLER = ("ACC-4", "Müller GmbH")
ZETA = ("ACC-9", "Zeta Unique Widgets")
M365 = ("PRD-M365", "M365-BS", "Microsoft 365 Business Standard")
EXCHANGE = ("PRD-EXO", "EXO-P1", "Exchange Online (Plan 1)")
VEEAM = ("PRD-VEEAM", None, "Veeam Backup for Microsoft 365")
POWERBI = ("PRD-PBI", "PBI-PRO", "Power BI Pro")
D = date


def autotask_state() -> FakeAutotask:
    fake = FakeAutotask()
    contoso = fake.add_company("Contoso Ltd", key="ACC-1")
    fabrikam = fake.add_company("Fabrikam, Inc.")
    fake.add_company("Northwind Traders Ltd")
    muller = fake.add_company("Müller GmbH", key="ACC-4")
    m365 = fake.add_service("Microsoft 365 Business Standard", "M365-BS", 10.0, 12.0)
    exchange = fake.add_service("Exchange Online (Plan 1)", None, 4.0, 5.0)
    veeam = fake.add_service("Veeam Backup", None, 2.0, 2.5, active=False)
    year = (D(2026, 1, 1), D(2026, 12, 31))
    k1 = fake.add_contract(contoso, "Microsoft 365", "SUB-1", *year)
    k2 = fake.add_contract(contoso, "Exchange", "SUB-2", *year)
    k3 = fake.add_contract(muller, "M365 annual", "SUB-4", D(2025, 10, 1), D(2026, 9, 30))
    k4 = fake.add_contract(fabrikam, "M365 annual", "SUB-5", D(2026, 3, 1), D(2027, 2, 28))
    k5 = fake.add_contract(muller, "Backup", "SUB-6", *year)
    k6 = fake.add_contract(fabrikam, "Exchange", "SUB-7", *year)
    cs1 = fake.add_contract_service(k1, m365, 10)
    fake.adjust(cs1, D(2026, 10, 15), 1)  # made in Autotask only
    fake.add_contract_service(k2, exchange, 7)
    fake.add_contract_service(k3, m365, 20)
    fake.add_contract_service(k4, m365, 30)
    fake.add_contract_service(k5, veeam, 4, unit_cost=2.0)
    fake.add_contract_service(k6, exchange, 3)
    return fake


def bss_month() -> tuple[list[dict], list[dict]]:
    lines = [
        # SUB-1: cost lowered to 9.5; two changes on 10-08 net to +2
        line(MONTH, CONTOSO, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1), unit_cost="9.5000"),
        line(MONTH, CONTOSO, "SUB-1", M365, "QuantityIncrease", 3, 13, D(2026, 10, 8), unit_cost="9.5000"),
        line(MONTH, CONTOSO, "SUB-1", M365, "QuantityDecrease", -1, 12, D(2026, 10, 8), unit_cost="9.5000"),
        # SUB-2 and SUB-3 share contract 1002: 5 + 2, SUB-3 +1 on 10-05, SUB-2 cancelled on 10-20
        line(MONTH, CONTOSO, "SUB-2", EXCHANGE, "Cycle", 5, 5, D(2026, 10, 1), unit_cost="4.0000"),
        line(MONTH, CONTOSO, "SUB-2", EXCHANGE, "Cancellation", -5, 0, D(2026, 10, 20), unit_cost="4.0000"),
        line(MONTH, CONTOSO, "SUB-3", EXCHANGE, "Cycle", 2, 2, D(2026, 10, 1), unit_cost="4.0000"),
        line(MONTH, CONTOSO, "SUB-3", EXCHANGE, "QuantityIncrease", 1, 3, D(2026, 10, 5), unit_cost="4.0000"),
        # SUB-4 renews on 10-01 (contract ended 09-30) and grows on 10-15
        line(MONTH, MULLER, "SUB-4", M365, "Renewal", 20, 20, D(2026, 10, 1), cycle="Annual"),
        line(MONTH, MULLER, "SUB-4", M365, "QuantityIncrease", 5, 25, D(2026, 10, 15), cycle="Annual"),
        # SUB-5: a decrease inside an annual commitment
        line(MONTH, FABRIKAM, "SUB-5", M365, "Cycle", 30, 30, D(2026, 10, 1), cycle="Annual"),
        line(MONTH, FABRIKAM, "SUB-5", M365, "QuantityDecrease", -4, 26, D(2026, 10, 12), cycle="Annual"),
        # SUB-6 on an inactive service
        line(MONTH, MULLER, "SUB-6", VEEAM, "Cycle", 4, 4, D(2026, 10, 1), unit_cost="2.0000"),
        line(MONTH, MULLER, "SUB-6", VEEAM, "QuantityIncrease", 1, 5, D(2026, 10, 10), unit_cost="2.0000"),
        # SUB-7 already matches
        line(MONTH, FABRIKAM, "SUB-7", EXCHANGE, "Cycle", 3, 3, D(2026, 10, 1), unit_cost="4.0000"),
        # SUB-8: new, for a customer whose name only nearly matches
        line(MONTH, NORTHWIND, "SUB-8", M365, "New", 5, 5, D(2026, 10, 18)),
        line(MONTH, NORTHWIND, "SUB-8", M365, "New", 5, 5, D(2026, 10, 18), charge_type="OneTime", unit_cost="2.5000"),
        # SUB-9: new subscription of a product Autotask does not have
        line(MONTH, CONTOSO, "SUB-9", POWERBI, "New", 2, 2, D(2026, 10, 1), unit_cost="11.0000", unit_price="13.1000"),
        # SUB-10: a customer Autotask has never seen
        line(MONTH, ZETA, "SUB-10", EXCHANGE, "New", 1, 1, D(2026, 10, 7), unit_cost="4.0000"),
    ]
    accounts = [
        account_row(*CONTOSO),
        account_row(*FABRIKAM),
        account_row(*NORTHWIND),
        account_row(*MULLER),
        account_row(ZETA[0], ZETA[1], phone="+353 1 555 0199"),
    ]
    return lines, accounts


# (kind, target, effective date, status, unit change, units before, units after, cost after, end date after)
EXPECTED = [
    ("create_company", "account:ACC-3", None, "needs-mapping", None, None, None, None, None),
    ("create_company", "account:ACC-9", None, "proposed", None, None, None, None, None),
    ("create_service", "product:PRD-PBI", None, "proposed", None, None, None, None, None),
    ("create_contract", "subscription:SUB-10", None, "proposed", None, None, None, None, D(2027, 10, 31)),
    ("create_contract", "subscription:SUB-8", None, "needs-mapping", None, None, None, None, D(2027, 10, 31)),
    ("create_contract", "subscription:SUB-9", None, "proposed", None, None, None, None, D(2027, 9, 30)),
    # a new contract service carries the BSS unit cost of its recurring line (never the setup fee's 2.50 of SUB-8)
    ("create_contract_service", "cs:S:SUB-10/V502", None, "proposed", None, None, None, "4", None),
    ("create_contract_service", "cs:S:SUB-8/V501", None, "needs-mapping", None, None, None, "10", None),
    ("create_contract_service", "cs:S:SUB-9/P:PRD-PBI", None, "proposed", None, None, None, "11", None),
    ("extend_contract", "contract:C1003", None, "proposed", None, None, None, None, D(2027, 9, 30)),
    ("change_cost", "cs:C1001/V501", D(2026, 10, 1), "proposed", "0", "10", "10", "9.5", None),
    ("adjust_units", "cs:C1001/V501", D(2026, 10, 8), "proposed", "2", "10", "12", None, None),
    ("adjust_units", "cs:C1001/V501", D(2026, 10, 15), "blocked", "-1", "13", "12", None, None),
    ("adjust_units", "cs:C1002/V502", D(2026, 10, 5), "proposed", "1", "7", "8", None, None),
    ("adjust_units", "cs:C1002/V502", D(2026, 10, 20), "proposed", "-5", "8", "3", None, None),
    ("adjust_units", "cs:C1003/V501", D(2026, 10, 15), "proposed", "5", "20", "25", None, None),
    ("adjust_units", "cs:C1004/V501", D(2026, 10, 12), "flagged", "-4", "30", "26", None, None),
    ("adjust_units", "cs:C1005/V503", D(2026, 10, 10), "flagged", "1", "4", "5", None, None),
    ("adjust_units", "cs:S:SUB-10/V502", D(2026, 10, 7), "proposed", "1", "0", "1", None, None),
    ("adjust_units", "cs:S:SUB-8/V501", D(2026, 10, 18), "needs-mapping", "5", "0", "5", None, None),
    ("adjust_units", "cs:S:SUB-9/P:PRD-PBI", D(2026, 10, 1), "proposed", "2", "0", "2", None, None),
]


def _number(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _projection(action) -> tuple:
    return (
        str(action.kind),
        action.target,
        action.effective_date,
        str(action.status),
        _number(action.unit_change),
        _number(action.units_before),
        _number(action.units_after),
        _number(action.unit_cost_after),
        action.end_date_after,
    )


@pytest.fixture
def golden(tmp_path) -> tuple[Warehouse, FakeAutotask]:
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'golden.db'}")
    warehouse.migrate()
    fake = autotask_state()
    lines, accounts = bss_month()
    store_month(warehouse, MONTH, lines, accounts)
    set_manual_link(warehouse, "contract", "SUB-3", 1002, by="alice")
    record_created_link(warehouse, "service", "PRD-VEEAM", 503, by="loader")
    yield warehouse, fake
    warehouse.dispose()


def _run(warehouse: Warehouse, fake: FakeAutotask, run_id: str):
    take_snapshot(fake, warehouse, MONTH, run_id, SETTINGS)
    mapping = link_month(warehouse, MONTH, run_id, SETTINGS)
    summary = reconcile_month(warehouse, MONTH, run_id, SETTINGS)
    return mapping, summary, load_plan(warehouse, MONTH, run_id)


def test_golden_plan_matches_the_hand_written_plan(golden):
    warehouse, fake = golden
    _, summary, plan = _run(warehouse, fake, "run-1")
    assert [_projection(action) for action in plan] == EXPECTED
    assert summary.actions == len(EXPECTED)
    assert summary.contract_services == 9
    assert summary.contract_services_in_sync == 1  # SUB-7


def test_golden_links_are_made_by_key_name_remembered_and_manual(golden):
    warehouse, fake = golden
    mapping, _, _ = _run(warehouse, fake, "run-1")
    resolutions = {
        (row["kind"], row["source_key"]): (row["target_id"], row["resolution"], row["flag"])
        for row in warehouse.query("SELECT * FROM month_links WHERE run_id = 'run-1'")
    }
    assert resolutions[("company", "ACC-1")] == (101, "key", None)
    assert resolutions[("company", "ACC-2")] == (102, "name", None)
    assert resolutions[("company", "ACC-3")] == (None, "unlinked", None)
    assert resolutions[("company", "ACC-9")] == (None, "unlinked", None)
    assert resolutions[("contract", "SUB-3")] == (1002, "manual", None)
    assert resolutions[("contract", "SUB-4")] == (1003, "key", None)
    assert resolutions[("service", "PRD-M365")] == (501, "key", None)
    assert resolutions[("service", "PRD-EXO")] == (502, "name", None)
    assert resolutions[("service", "PRD-VEEAM")] == (503, "remembered", "target_inactive")
    assert mapping.count("company", "unlinked") == 2
    # the near miss is a suggestion with a score, not a link
    suggestions = warehouse.query("SELECT * FROM mapping_suggestions")
    assert [(s["kind"], s["source_key"], s["target_id"], s["status"]) for s in suggestions] == [
        ("company", "ACC-3", 103, "open")
    ]
    assert 80 <= float(suggestions[0]["score"]) < 100
    assert ("company", "ACC-3") not in {(link["kind"], link["source_key"]) for link in stored_links(warehouse)}
    inactive = [link for link in stored_links(warehouse, "service") if link["source_key"] == "PRD-VEEAM"]
    assert inactive[0]["flag"] == "target_inactive"


def test_golden_references_point_at_the_creating_actions(golden):
    warehouse, fake = golden
    _, _, plan = _run(warehouse, fake, "run-1")
    by_target = {(str(action.kind), action.target): action for action in plan}
    contract = by_target[("create_contract", "subscription:SUB-10")]
    company = by_target[("create_company", "account:ACC-9")]
    assert contract.company_id is None and contract.company_action_id == company.action_id
    assert contract.payload["contractNumber"] == "SUB-10"
    assert contract.payload["contractType"] == 7
    assert contract.payload["startDate"] == "2026-10-07T00:00:00"
    assert company.payload["ownerResourceID"] == 29682885 and company.payload["phone"] == "+353 1 555 0199"
    assert company.payload["userDefinedFields"] == [{"name": "BSS Account ID", "value": "ACC-9"}]
    cs = by_target[("create_contract_service", "cs:S:SUB-9/P:PRD-PBI")]
    service = by_target[("create_service", "product:PRD-PBI")]
    assert cs.service_action_id == service.action_id
    assert service.payload["periodType"] == 2 and service.payload["billingCodeID"] == 29682801
    assert service.payload["sku"] == "PBI-PRO" and service.payload["unitCost"] == 11
    adjust = by_target[("adjust_units", "cs:S:SUB-9/P:PRD-PBI")]
    assert adjust.contract_service_action_id == cs.action_id and adjust.contract_service_id is None
    renewal = by_target[("adjust_units", "cs:C1003/V501")]
    extend = by_target[("extend_contract", "contract:C1003")]
    assert extend.action_id in renewal.depends_on
    assert extend.end_date_before == D(2026, 9, 30)
    # inputs: the BSS lines behind the netted change
    netted = next(a for a in plan if a.target == "cs:C1001/V501" and a.effective_date == D(2026, 10, 8))
    assert len(netted.charge_ids) == 2
    assert "decrease of 4" in by_target[("adjust_units", "cs:C1004/V501")].reason
    assert "503 is inactive" in by_target[("adjust_units", "cs:C1005/V503")].reason


def test_rerun_on_the_same_inputs_gives_the_identical_plan(golden):
    warehouse, fake = golden
    _, _, first = _run(warehouse, fake, "run-1")
    _, _, second = _run(warehouse, fake, "run-2")
    assert [(a.action_id, a.idempotency_key, a.status) for a in first] == [
        (a.action_id, a.idempotency_key, a.status) for a in second
    ]
    # the second run replaced the first run's machine-owned rows
    assert warehouse.scalar("SELECT COUNT(*) FROM plan_actions WHERE run_id = 'run-1'") == 0


def test_rerun_keeps_decided_rows_and_flags_a_conflicting_change(golden):
    from include.plan import set_action_status

    warehouse, fake = golden
    _, _, first = _run(warehouse, fake, "run-1")
    approved = next(a for a in first if a.target == "cs:C1002/V502" and a.effective_date == D(2026, 10, 5))
    set_action_status(warehouse, [approved.action_id], ActionStatus.APPROVED, by="bob")
    _, summary, second = _run(warehouse, fake, "run-2")
    assert approved.action_id not in {a.action_id for a in second}
    assert summary.already_decided == 1
    assert load_plan(warehouse, MONTH, "run-1")[0].status is ActionStatus.APPROVED

    # the BSS now says +2 on that date: same Autotask slot, other content. The approved +1 never reached Autotask, so
    # the new run's +2 takes its place (one line for the slot, never two approved), saying which approval it replaces;
    # run-1's review keeps its approved line
    lines, accounts = bss_month()
    for row in lines:
        if row["subscription_id"] == "SUB-3" and row["action"] == "QuantityIncrease":
            row["quantity"], row["subscription_quantity"] = Decimal(2), Decimal(4)
    store_month(warehouse, MONTH, lines, accounts)
    _, summary, third = _run(warehouse, fake, "run-3")
    conflicting = [a for a in third if a.target == "cs:C1002/V502" and a.effective_date == D(2026, 10, 5)]
    assert len(conflicting) == 1 and conflicting[0].status is ActionStatus.PROPOSED
    assert approved.action_id in conflicting[0].reason and "never reached Autotask" in conflicting[0].reason
    assert summary.conflicting_with_decided == 1
    slot = [a for a in load_plan(warehouse, MONTH) if a.idempotency_key == conflicting[0].idempotency_key]
    assert [a.action_id for a in slot] == [conflicting[0].action_id]
    kept = warehouse.query(
        "SELECT status, superseded_by FROM superseded_plan_actions WHERE action_id = :id", {"id": approved.action_id}
    )
    assert kept == [{"status": "approved", "superseded_by": "run-3"}]


def test_applying_the_proposed_plan_leaves_nothing_to_do(golden):
    warehouse, fake = golden
    _, _, plan = _run(warehouse, fake, "run-1")
    proposed = [a for a in plan if a.status is ActionStatus.PROPOSED]
    created = fake.apply(proposed)
    for action_id, (_kind, new_id) in created.items():
        action = next(a for a in proposed if a.action_id == action_id)
        if action.kind is ActionKind.CREATE_COMPANY:
            record_created_link(warehouse, "company", action.account_id, new_id, by="loader")
    _, _, again = _run(warehouse, fake, "run-2")
    # only what was held back remains, unchanged
    held = sorted(_projection(a) for a in plan if a.status is not ActionStatus.PROPOSED)
    assert sorted(_projection(a) for a in again) == held
