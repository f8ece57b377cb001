"""Lines beyond the recurring seat count (bss-api.md): setup fees (OneTime / Setup), usage (Usage / Usage) and
credits (Credit / Credit) are typed by the extract, kept in the warehouse, pass the charge-line checks, and never
move a contract service's units, unit cost or unit price. The price of a contract service is its recurring line's,
never a setup fee's."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from include.bss_adapter import to_charge_line
from include.models import ChargeAction, ChargeType, counts_seats
from include.plan import ActionKind
from include.quality import charge_lines_query
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import line
from tests.include.test_reconcile_defects import ACME, M365, MONTH, _autotask, _plan

D = date


def _record(charge_type: str, action: str, quantity: float, total: float, cost: float, price: float) -> dict:
    return {
        "id": f"CHG-2026-10-{charge_type}-{action}",
        "account": {"id": "ACC-1", "name": "Acme", "code": "ACME"},
        "subscription": {"id": "SUB-1", "status": "Active"},
        "product": {"id": "PRD-1", "sku": "SKU-1", "name": "Azure plan"},
        "billingPlan": {"id": "BP-1", "name": "Monthly billing", "billingPeriod": "Monthly"},
        "billingCycle": "Monthly",
        "chargeType": charge_type,
        "action": action,
        "quantity": quantity,
        "subscriptionQuantity": total,
        "unitCost": cost,
        "unitPrice": price,
        "currency": "EUR",
        "chargeStartDate": "2026-10-01",
        "chargeEndDate": "2026-10-31",
        "effectiveDate": "2026-10-31",
        "invoiceId": None,
        "meter": "GB stored",
        "creditFor": None,
    }


def test_the_extract_types_setup_usage_and_credit_lines_instead_of_rejecting_the_month():
    setup = to_charge_line(_record("OneTime", "Setup", 5, 5, 2.5, 3.0))
    usage = to_charge_line(_record("Usage", "Usage", 12.375, 0, 0.021, 0.03))
    credit = to_charge_line(_record("Credit", "Credit", -1, 5, 10.0, 12.0))
    assert (setup.charge_type, setup.action) == (ChargeType.ONE_TIME, ChargeAction.SETUP)
    assert (usage.charge_type, usage.action, usage.quantity) == (
        ChargeType.USAGE,
        ChargeAction.USAGE,
        Decimal("12.375"),
    )
    assert (credit.charge_type, credit.action) == (ChargeType.CREDIT, ChargeAction.CREDIT)
    assert not any(counts_seats(item.charge_type, item.action) for item in (setup, usage, credit))
    assert counts_seats("Credit", "Cancellation") and counts_seats("Prorated", "QuantityIncrease")


def _month_with_extras() -> list[dict]:
    """A new subscription of 10 seats at 12.00 / 10.00 with a setup fee (3.00 / 2.50 each), an increase, a usage
    line of fractional GB, and a goodwill credit: only the seat lines count."""
    return [
        line(MONTH, ACME, "SUB-1", M365, "New", 10, 10, D(2026, 10, 1)),
        line(
            MONTH,
            ACME,
            "SUB-1",
            M365,
            "New",
            10,
            10,
            D(2026, 10, 1),
            unit_cost="2.5000",
            unit_price="3.0000",
            charge_type="OneTime",
        ),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 2, 12, D(2026, 10, 12)),
        line(
            MONTH,
            ACME,
            "SUB-1",
            M365,
            "Setup",
            2,
            2,
            D(2026, 10, 12),
            unit_cost="2.5000",
            unit_price="3.0000",
            charge_type="OneTime",
        ),
        line(
            MONTH,
            ACME,
            "SUB-1",
            M365,
            "Usage",
            12.375,
            0,
            D(2026, 10, 31),
            unit_cost="0.0210",
            unit_price="0.0300",
            charge_type="Usage",
        ),
        line(
            MONTH,
            ACME,
            "SUB-1",
            M365,
            "Credit",
            -1,
            4,
            D(2026, 10, 20),
            unit_cost="5.0000",
            unit_price="6.0000",
            charge_type="Credit",
        ),
    ]


def test_setup_usage_and_credit_lines_never_disturb_the_seat_units_cost_or_price(warehouse):
    fake, company, _ = _autotask()
    fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    plan = _plan(warehouse, fake, _month_with_extras())
    created = next(action for action in plan if action.kind is ActionKind.CREATE_CONTRACT_SERVICE)
    # the recurring line's money, not the setup fee's (3.00 / 2.50) nor the credit's
    assert (created.payload["unitPrice"], created.payload["unitCost"]) == (Decimal("12.0000"), Decimal("10.0000"))
    adjustments = [(action.effective_date, action.unit_change) for action in plan if action.unit_change is not None]
    assert adjustments == [(D(2026, 10, 1), Decimal("10.0000")), (D(2026, 10, 12), Decimal("2.0000"))]
    assert all(action.unit_cost_after in (None, Decimal("10.0000")) for action in plan)
    # every line is kept in the warehouse for the charges part
    kept = warehouse.query("SELECT charge_type, action FROM charge_lines WHERE month = :month", {"month": MONTH})
    assert sorted((row["charge_type"], row["action"]) for row in kept) == sorted(
        [
            ("Recurring", "New"),
            ("OneTime", "New"),
            ("Prorated", "QuantityIncrease"),
            ("OneTime", "Setup"),
            ("Usage", "Usage"),
            ("Credit", "Credit"),
        ]
    )


def test_the_charge_line_checks_compare_seat_lines_only(warehouse):
    fake = FakeAutotask()
    _plan(warehouse, fake, _month_with_extras())
    checked = warehouse.read_frame(charge_lines_query(), {"month": MONTH})
    seats = checked[checked["seat_line"] == 1]
    others = checked[checked["seat_line"] == 0]
    assert len(seats) == 2 and len(others) == 4
    # the increase follows the New line's 10, not the setup fee's or the credit's figures
    assert (seats["subscription_quantity"] == seats["expected_subscription_quantity"]).all()
    assert (others["subscription_quantity"] == others["expected_subscription_quantity"]).all()
    # a usage line's fractional GB is not a fractional seat
    assert (checked["quantity_fraction"] == 0).all()


def test_the_review_grid_shows_the_recurring_lines_price_not_the_setup_fees(warehouse):
    """The setup fee (3.00) and the credit (6.00) come after the New line (12.00) in the month: the grid's unit price
    of the subscription's lines is still 12.00."""
    from include.review import grid_rows

    fake, company, _ = _autotask()
    fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    plan = _plan(warehouse, fake, _month_with_extras())
    rows = grid_rows(warehouse, "run-1")
    assert len(rows) == len(plan) and rows
    assert {row["unit_price"] for row in rows if row["subscription"]} == {12.0}
