"""A subscription that moves to another customer in the middle of a month: a cancellation credit on the old
account, a New line on the new one, the same subscription id. It is a moved subscription, planned as such and
flagged for a person: the old contract service goes to 0 from the move date, a contract of the new company
holds the units from then on. Nothing about it stops the month (`charge_lines.one_customer_per_subscription`
holds only a subscription billed to two customers at once)."""

from __future__ import annotations

from datetime import date, datetime

from include.extract import extract_month
from include.mapping import link_month
from include.plan import ActionStatus, load_plan
from include.quality import charge_lines_query, raise_on_critical, validate_charges, validate_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.warehouse import Warehouse
from tests.bss_sources import ListSource
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month
from tests.include.test_reconcile_defects import (
    ACME,
    M365,
    MONTH,
    SEPTEMBER,
    SETTINGS,
    _autotask,
    _store_company_currencies,
    _writes,
)

D = date
# the new customer: accents and a legal form, as real accounts come
NEW_OWNER = ("ACC-7", "Sørensen & Fils S.à r.l.")


def _month_with_a_move(new_units: int = 12) -> tuple[list[dict], list[dict]]:
    september = [line(SEPTEMBER, ACME, "SUB-9", M365, "Cycle", 10, 10, D(2026, 9, 1))]
    october = [
        line(MONTH, ACME, "SUB-9", M365, "Cycle", 10, 10, D(2026, 10, 1), charged_at=datetime(2026, 10, 1, 2)),
        # the move on the 15th: the old account is credited, the new one billed from that day
        line(MONTH, ACME, "SUB-9", M365, "Cancellation", -10, 0, D(2026, 10, 15), charged_at=datetime(2026, 10, 15, 9)),
        line(
            MONTH,
            NEW_OWNER,
            "SUB-9",
            M365,
            "New",
            new_units,
            new_units,
            D(2026, 10, 15),
            charged_at=datetime(2026, 10, 15, 9, 1),
        ),
    ]
    return september, october


def _plan_the_move(warehouse: Warehouse, fake: FakeAutotask, october: list[dict], september: list[dict]):
    accounts = [account_row(*ACME), account_row(*NEW_OWNER)]
    store_month(warehouse, SEPTEMBER, september, accounts)
    store_month(warehouse, MONTH, october, accounts)
    take_snapshot(fake, warehouse, MONTH, "run-1", SETTINGS)
    _store_company_currencies(warehouse, fake, "run-1")
    link_month(warehouse, MONTH, "run-1", SETTINGS)
    reconcile_month(warehouse, MONTH, "run-1", SETTINGS)
    return load_plan(warehouse, MONTH, "run-1")


def test_a_move_in_mid_month_zeroes_the_old_contract_service_and_bills_the_new_company(warehouse):
    fake, acme, service = _autotask()
    new_company = fake.add_company(NEW_OWNER[1], key=NEW_OWNER[0])
    old = fake.add_contract(acme, "M365 (SUB-9)", "SUB-9", D(2026, 1, 1), D(2026, 12, 31))
    old_cs = fake.add_contract_service(old, service, 10)
    september, october = _month_with_a_move()
    plan = _plan_the_move(warehouse, fake, october, september)
    assert _writes(plan) == [
        ("create_contract", "subscription:SUB-9", None, "flagged", None),
        ("create_contract_service", f"cs:S:SUB-9/V{service}", None, "flagged", None),
        ("adjust_units", f"cs:C{old}/V{service}", D(2026, 10, 15), "flagged", "-10"),
        ("adjust_units", f"cs:S:SUB-9/V{service}", D(2026, 10, 15), "flagged", "12"),
    ]
    assert plan[0].company_id == new_company and plan[0].payload["contractNumber"] == "SUB-9"
    assert all("moved to another customer" in action.reason for action in plan)
    created = fake.apply([action for action in plan if action.loadable])
    new_cs = next(new_id for kind, new_id in created.values() if kind == "create_contract_service")
    assert fake.units_on(old_cs, D(2026, 10, 14)) == 10 and fake.units_on(old_cs, D(2026, 10, 15)) == 0
    assert fake.units_on(new_cs, D(2026, 10, 15)) == 12
    assert fake.contracts[fake.contract_services[new_cs].contract_id]["companyID"] == new_company

    # the month reconciled again once loaded: the new company's contract (stamped with the subscription) carries
    # it; nothing is created or adjusted twice, the old contract service stays at 0
    take_snapshot(fake, warehouse, MONTH, "run-2", SETTINGS)
    _store_company_currencies(warehouse, fake, "run-2")
    link_month(warehouse, MONTH, "run-2", SETTINGS)
    reconcile_month(warehouse, MONTH, "run-2", SETTINGS)
    assert [action for action in load_plan(warehouse, MONTH, "run-2") if action.loadable] == []


def test_a_move_to_a_customer_autotask_does_not_know_yet_never_lands_on_the_old_customers_contract(warehouse):
    fake, acme, service = _autotask()
    old = fake.add_contract(acme, "M365 (SUB-9)", "SUB-9", D(2026, 1, 1), D(2026, 12, 31))
    old_cs = fake.add_contract_service(old, service, 10)
    september, october = _month_with_a_move(new_units=7)
    plan = _plan_the_move(warehouse, fake, october, september)
    # the old customer's company is suggested for the new account (it owns the subscription's contract): a person
    # confirms it or approves creating the new company; the new contract and its units wait for that
    assert _writes(plan) == [
        ("create_company", f"account:{NEW_OWNER[0]}", None, "needs-mapping", None),
        ("create_contract", "subscription:SUB-9", None, "needs-mapping", None),
        ("create_contract_service", f"cs:S:SUB-9/V{service}", None, "needs-mapping", None),
        ("adjust_units", f"cs:C{old}/V{service}", D(2026, 10, 15), "flagged", "-10"),
        ("adjust_units", f"cs:S:SUB-9/V{service}", D(2026, 10, 15), "needs-mapping", "7"),
    ]
    assert plan[0].payload["companyName"] == NEW_OWNER[1]
    assert plan[1].company_action_id == plan[0].action_id
    # every write on the old customer's contract takes units away, none adds the new customer's
    on_old = [action for action in plan if action.contract_id == old]
    assert [action.unit_change for action in on_old] == [-10]
    fake.apply([action for action in plan if action.loadable])
    assert fake.units_on(old_cs, D(2026, 10, 15)) == 0


def _record(
    charge_id: str,
    account: tuple[str, str],
    action: str,
    quantity: int,
    total: int,
    day: str,
    at: str,
    subscription: str = "SUB-9",
) -> dict:
    """A BSS charge record (as the BSS API serves it), of SUB-9 unless said."""
    return {
        "id": charge_id,
        "account": {"id": account[0], "name": account[1], "code": None},
        "subscription": {"id": subscription, "status": "Cancelled" if action == "Cancellation" else "Active"},
        "product": {"id": M365[0], "sku": M365[1], "name": M365[2]},
        "billingPlan": {"id": "BP-M", "name": "Monthly billing", "billingPeriod": "Monthly"},
        "billingCycle": "Monthly",
        "chargeType": {"Cycle": "Recurring", "New": "Prorated", "Cancellation": "Credit"}[action],
        "action": action,
        "quantity": quantity,
        "subscriptionQuantity": total,
        "unitCost": 10.0,
        "unitPrice": 12.0,
        "currency": "EUR",
        "chargeStartDate": day,
        "chargeEndDate": day[:8] + "30" if day[5:7] == "09" else day[:8] + "31",
        "effectiveDate": day,
        "invoiceId": None,
        "createdDate": at,
    }


SEPTEMBER_RECORDS = [
    _record("CHG-9-1", ACME, "Cycle", 10, 10, "2026-09-01", "2026-09-01T02:00:00Z"),
    _record("CHG-9-2", ACME, "Cycle", 4, 4, "2026-09-01", "2026-09-01T02:00:00Z", subscription="SUB-1"),
]
OCTOBER_RECORDS = [
    _record("CHG-10-0", ACME, "Cycle", 4, 4, "2026-10-01", "2026-10-01T02:00:00Z", subscription="SUB-1"),
    _record("CHG-10-1", ACME, "Cycle", 10, 10, "2026-10-01", "2026-10-01T02:00:00Z"),
    _record("CHG-10-2", ACME, "Cancellation", -10, 0, "2026-10-15", "2026-10-15T09:00:00Z"),
    _record("CHG-10-3", NEW_OWNER, "New", 12, 12, "2026-10-15", "2026-10-15T09:01:00Z"),
]


def test_the_charges_gate_lets_a_move_through_without_a_failure(warehouse, data_docs_dir):
    # the move is the plan's to flag (its lines say why): the gate neither stops, holds nor warns about it, so a
    # month whose move a person dealt with can still be clean for the auto_if_clean policy
    extract_month(ListSource(SEPTEMBER_RECORDS), warehouse, SEPTEMBER, "run-09")
    extract_month(ListSource(OCTOBER_RECORDS), warehouse, MONTH, "run-10")
    report = validate_charges(warehouse, MONTH, "run-10")
    # (the hand-made month grows from 2 lines to 4: only the row-count band notices that)
    assert [failure.name for failure in report.failures] == ["row_count_within_usual_band"]
    moved = warehouse.read_frame(charge_lines_query(), {"month": MONTH})
    assert dict(zip(moved["charge_id"], moved["subscription_moved"], strict=True)) == {
        "CHG-10-0": 0,
        "CHG-10-1": 1,
        "CHG-10-2": 1,
        "CHG-10-3": 1,
    }
    assert set(moved["subscription_mixed_account"]) == {0}


def test_a_subscription_billed_to_two_customers_at_once_holds_its_lines_and_the_month_goes_on(warehouse, data_docs_dir):
    # both accounts billed for the whole month, no cancellation between them: not a move, and whose contract holds
    # the units is a person's decision. Its lines are held (blocked, with the reason); SUB-1 is planned as usual.
    fake, acme, service = _autotask()
    fake.add_company(NEW_OWNER[1], key=NEW_OWNER[0])
    old = fake.add_contract(acme, "M365 (SUB-9)", "SUB-9", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(old, service, 10)
    other = fake.add_contract(acme, "M365 (SUB-1)", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(other, service, 3)
    both = [
        _record("CHG-10-0", ACME, "Cycle", 4, 4, "2026-10-01", "2026-10-01T02:00:00Z", subscription="SUB-1"),
        _record("CHG-10-1", ACME, "Cycle", 10, 10, "2026-10-01", "2026-10-01T02:00:00Z"),
        _record("CHG-10-3", NEW_OWNER, "Cycle", 11, 11, "2026-10-01", "2026-10-01T02:01:00Z"),
    ]
    # the month's other customers' lines: the two held lines are a few of the month's, not most of it
    both += [
        _record(
            f"CHG-10-X{n}",
            (f"ACC-X{n}", f"Kunde {n} AG"),
            "Cycle",
            2,
            2,
            "2026-10-01",
            "2026-10-01T03:00:00Z",
            subscription=f"SUB-X{n}",
        )
        for n in range(10)
    ]
    extract_month(ListSource(both), warehouse, MONTH, "run-1")
    report = validate_charges(warehouse, MONTH, "run-1")
    assert report.passed, [str(failure) for failure in report.critical]
    failure = next(failure for failure in report.holds if failure.name == "one_customer_per_subscription")
    assert failure.held_keys == ("CHG-10-1", "CHG-10-3")
    assert set(warehouse.read_frame(charge_lines_query(), {"month": MONTH})["subscription_moved"]) == {0}
    assert raise_on_critical(report) is report

    take_snapshot(fake, warehouse, MONTH, "run-1", SETTINGS)
    _store_company_currencies(warehouse, fake, "run-1")
    link_month(warehouse, MONTH, "run-1", SETTINGS)
    reconcile_month(warehouse, MONTH, "run-1", SETTINGS)
    plan = load_plan(warehouse, MONTH, "run-1")
    on_sub9 = [action for action in plan if "SUB-9" in action.subscription_ids]
    assert on_sub9 and all(action.status is ActionStatus.BLOCKED for action in on_sub9)
    for action in on_sub9:
        assert "one_customer_per_subscription" in action.reason and "CHG-10-1, CHG-10-3" in action.reason
        assert "whose contract holds the units is a person's decision" in action.reason
    assert _writes([action for action in plan if action.subscription_ids == ("SUB-1",)]) == [
        ("adjust_units", f"cs:C{other}/V{service}", D(2026, 10, 1), "proposed", "1")
    ]
    # the plan's own gate lets the month through too: the held lines are blocked, never loaded
    assert validate_plan(warehouse, MONTH, "run-1").passed


def test_a_move_of_a_subscription_autotask_never_had_writes_only_the_new_customers_part(warehouse):
    fake, _acme, service = _autotask()
    new_company = fake.add_company(NEW_OWNER[1], key=NEW_OWNER[0])
    september, october = _month_with_a_move()
    plan = _plan_the_move(warehouse, fake, october, september)
    assert _writes(plan) == [
        ("create_contract", "subscription:SUB-9", None, "flagged", None),
        ("create_contract_service", f"cs:S:SUB-9/V{service}", None, "flagged", None),
        ("adjust_units", f"cs:S:SUB-9/V{service}", D(2026, 10, 15), "flagged", "12"),
    ]
    assert plan[0].company_id == new_company
    assert all("the old customer's lines up to the move are not written" in action.reason for action in plan)
