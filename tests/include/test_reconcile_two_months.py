"""Two months in a row, the first approved but not loaded before the second is planned: no double count.
Each test on SQLite and PostgreSQL (the `warehouse` fixture), with an in-memory Autotask that is written only
when a test loads a month (as the loader would: approved rows, in apply order, then marked applied)."""

from __future__ import annotations

from datetime import date, datetime

from include.mapping import link_month
from include.plan import BLOCKED_MARK, ActionKind, ActionStatus, PlanAction, load_plan, set_action_status
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month

OCTOBER = "2026-10"
NOVEMBER = "2026-11"
SETTINGS = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
ACME = ("ACC-1", "Acme Bäckerei GmbH")
NEW_CUSTOMER = ("ACC-7", "Société Générale de Boulangerie S.A.")
M365 = ("PRD-M365", "M365-BS", "Microsoft 365 Business Standard")
D = date


def _autotask() -> tuple[FakeAutotask, int]:
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0])
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    contract = fake.add_contract(company, "M365 (SUB-1)", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    return fake, fake.add_contract_service(contract, service, 10)


def _plan(warehouse: Warehouse, fake: FakeAutotask, month: str, lines: list[dict], run_id: str) -> list[PlanAction]:
    store_month(warehouse, month, lines, [account_row(*ACME), account_row(*NEW_CUSTOMER)])
    take_snapshot(fake, warehouse, month, run_id, SETTINGS)
    link_month(warehouse, month, run_id, SETTINGS)
    reconcile_month(warehouse, month, run_id, SETTINGS)
    return load_plan(warehouse, month, run_id)


def _approve(warehouse: Warehouse, plan: list[PlanAction]) -> list[PlanAction]:
    approved = [action for action in plan if action.loadable]
    assert set_action_status(warehouse, [action.action_id for action in approved], "approved", "alice") == len(approved)
    return approved


def _load(warehouse: Warehouse, fake: FakeAutotask, month: str) -> None:
    """What the loader does with a month: write its approved rows in apply order, mark them applied."""
    approved = load_plan(warehouse, month, statuses=["approved"])
    fake.apply(approved)
    set_action_status(warehouse, [action.action_id for action in approved], "applied", "loader")


def _writable(plan: list[PlanAction]) -> list[tuple]:
    return [
        (str(action.kind), action.effective_date, format(action.unit_change.normalize(), "f"))
        for action in plan
        if action.loadable
    ]


def _october_plus_three(warehouse: Warehouse, fake: FakeAutotask) -> None:
    october = [
        line(OCTOBER, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1)),
        line(OCTOBER, ACME, "SUB-1", M365, "QuantityIncrease", 3, 13, D(2026, 10, 15)),
    ]
    plan = _plan(warehouse, fake, OCTOBER, october, "run-oct")
    assert _writable(plan) == [("adjust_units", D(2026, 10, 15), "3")]
    _approve(warehouse, plan)


def test_an_approved_october_change_not_yet_loaded_is_not_proposed_again_in_november(warehouse):
    fake, cs = _autotask()
    _october_plus_three(warehouse, fake)
    november = [line(NOVEMBER, ACME, "SUB-1", M365, "Cycle", 13, 13, D(2026, 11, 1))]
    # Autotask still holds 10 (October is approved, not loaded); the BSS says 13 since 10-15
    assert fake.units_on(cs, D(2026, 11, 1)) == 10
    assert _plan(warehouse, fake, NOVEMBER, november, "run-nov") == []
    # October loads; November re-planned against the new snapshot still proposes nothing
    _load(warehouse, fake, OCTOBER)
    assert fake.units_on(cs, D(2026, 10, 15)) == 13
    assert _plan(warehouse, fake, NOVEMBER, november, "run-nov-2") == []
    assert fake.units_on(cs, D(2026, 11, 30)) == 13


def test_a_november_change_on_top_of_an_unloaded_october_change_proposes_only_its_own_units(warehouse):
    fake, cs = _autotask()
    _october_plus_three(warehouse, fake)
    november = [
        line(NOVEMBER, ACME, "SUB-1", M365, "Cycle", 13, 13, D(2026, 11, 1)),
        line(NOVEMBER, ACME, "SUB-1", M365, "QuantityIncrease", 2, 15, D(2026, 11, 10)),
    ]
    plan = _plan(warehouse, fake, NOVEMBER, november, "run-nov")
    assert _writable(plan) == [("adjust_units", D(2026, 11, 10), "2")]
    (adjust,) = plan
    assert (adjust.units_before, adjust.units_after) == (13, 15)
    _approve(warehouse, plan)
    # both months load in order: the BSS units, each change written once
    _load(warehouse, fake, OCTOBER)
    _load(warehouse, fake, NOVEMBER)
    assert [fake.units_on(cs, day) for day in (D(2026, 10, 14), D(2026, 10, 15), D(2026, 11, 10))] == [10, 13, 15]
    assert [(day, change) for day, change, _ in fake.contract_services[cs].adjustments[1:]] == [
        (D(2026, 10, 15), 3.0),
        (D(2026, 11, 10), 2.0),
    ]


def test_an_approved_october_cost_change_not_yet_loaded_is_not_proposed_again(warehouse):
    fake, cs = _autotask()
    october = [line(OCTOBER, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1), unit_cost="11.5000")]
    plan = _plan(warehouse, fake, OCTOBER, october, "run-oct")
    assert [(str(a.kind), a.unit_cost_after) for a in plan if a.loadable] == [("change_cost", 11.5)]
    _approve(warehouse, plan)
    november = [line(NOVEMBER, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 11, 1), unit_cost="11.5000")]
    assert _plan(warehouse, fake, NOVEMBER, november, "run-nov") == []
    _load(warehouse, fake, OCTOBER)
    assert _plan(warehouse, fake, NOVEMBER, november, "run-nov-2") == []
    assert (fake.cost_on(cs, D(2026, 9, 30)), fake.cost_on(cs, D(2026, 11, 30))) == (10.0, 11.5)


def test_a_company_approved_in_october_and_not_loaded_is_not_created_again_in_november(warehouse):
    fake, _ = _autotask()
    october = [line(OCTOBER, NEW_CUSTOMER, "SUB-7", M365, "New", 4, 4, D(2026, 10, 1))]
    october_plan = _plan(warehouse, fake, OCTOBER, october, "run-oct")
    assert [str(a.kind) for a in october_plan if a.loadable] == [
        "create_company",
        "create_contract",
        "create_contract_service",
        "adjust_units",
    ]
    _approve(warehouse, october_plan)
    november = [
        line(NOVEMBER, NEW_CUSTOMER, "SUB-7", M365, "Cycle", 4, 4, D(2026, 11, 1)),
        line(NOVEMBER, NEW_CUSTOMER, "SUB-7", M365, "QuantityIncrease", 1, 5, D(2026, 11, 20)),
    ]
    plan = _plan(warehouse, fake, NOVEMBER, november, "run-nov")
    assert not [action for action in plan if action.loadable]
    creates = [action for action in plan if action.kind is ActionKind.CREATE_COMPANY]
    assert [(action.target, action.status) for action in creates] == [("account:ACC-7", ActionStatus.BLOCKED)]
    assert (
        creates[0]
        .reason.removeprefix(BLOCKED_MARK)
        .startswith("2026-10's approved create_company of account:ACC-7 is not loaded yet")
    )
    assert all(action.status is ActionStatus.BLOCKED and "load that run first" in action.reason for action in plan)
    # October loads (one company); November re-planned links to it and proposes only its own +1
    _load(warehouse, fake, OCTOBER)
    plan = _plan(warehouse, fake, NOVEMBER, november, "run-nov-2")
    assert _writable(plan) == [("adjust_units", D(2026, 11, 20), "1")]
    _approve(warehouse, plan)
    _load(warehouse, fake, NOVEMBER)
    named = [company for company in fake.companies.values() if company["companyName"] == NEW_CUSTOMER[1]]
    assert len(named) == 1


def test_an_october_adjustment_whose_load_was_interrupted_holds_novembers_adjustments_of_that_service(warehouse):
    # the loader sent October's +3 and lost the answer: Autotask may or may not hold it, so November neither
    # counts it nor proposes it again; its adjustments of that contract service wait for October's load
    fake, _cs = _autotask()
    _october_plus_three(warehouse, fake)
    (approved,) = load_plan(warehouse, OCTOBER, statuses=["approved"])
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "load_ledger",
            [
                {
                    "idempotency_key": approved.idempotency_key,
                    "action_id": approved.action_id,
                    "month": OCTOBER,
                    "run_id": "run-oct",
                    "load_id": "load-1",
                    "kind": str(approved.kind),
                    "entity": "ContractServiceAdjustments",
                    "verb": "POST",
                    "payload": "{}",
                    "state": "unknown",
                    "attempts": 1,
                    "created_at": datetime(2026, 11, 2, 9, 0),
                }
            ],
        )
    november = [
        line(NOVEMBER, ACME, "SUB-1", M365, "Cycle", 13, 13, D(2026, 11, 1)),
        line(NOVEMBER, ACME, "SUB-1", M365, "QuantityIncrease", 2, 15, D(2026, 11, 10)),
    ]
    plan = _plan(warehouse, fake, NOVEMBER, november, "run-nov")
    assert plan and not [action for action in plan if action.loadable]
    assert all(action.kind is ActionKind.ADJUST_UNITS for action in plan)
    assert all("2026-10's load of an approved adjustment of cs:C" in action.reason for action in plan)
