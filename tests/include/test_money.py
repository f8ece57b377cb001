"""include.money: how figures are written (no "−0.00", no "5.0"), the buckets in Python and in SQL agree, the seam
for the unit price a line loads, and a line's billed, cost and margin change from its recurring line, never a setup
fee."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from include.money import (
    BUCKETS,
    HELD,
    LOADS,
    WAITS,
    PriceBook,
    bucket_sql,
    line_money,
    loaded_unit_price,
    money_bucket,
    money_text,
    unit_amount_text,
    units_text,
)
from include.warehouse import Warehouse

STATUSES = ("proposed", "flagged", "needs-mapping", "blocked", "excluded", "approved", "applied", "failed", "odd")


@pytest.mark.parametrize(
    ("value", "signed", "text"),
    [
        (Decimal("1698.505"), False, "1,698.51"),  # half up, thousands separator
        (Decimal("-0.004"), False, "0.00"),  # never −0.00
        (Decimal("-0.004"), True, "0.00"),
        (Decimal("-1234567.891"), False, "−1,234,567.89"),
        (Decimal("12.5"), True, "+12.50"),
        (0, True, "0.00"),
        (None, False, ""),
    ],
)
def test_money_is_written_to_the_cent_with_separators_and_never_minus_zero(value, signed, text) -> None:
    assert money_text(value, signed=signed) == text


def test_units_are_whole_without_point_zero_and_unit_prices_keep_their_places() -> None:
    assert units_text(Decimal("5.0")) == "5"
    assert units_text(5.0) == "5"
    assert units_text(Decimal("12000")) == "12,000"
    assert units_text(Decimal("-3"), signed=True) == "−3"
    assert units_text(Decimal("2.50")) == "2.5"
    assert units_text(Decimal("-0")) == "0"
    assert unit_amount_text(Decimal("6.4283")) == "6.4283"
    assert unit_amount_text(Decimal("5")) == "5.00"
    assert unit_amount_text(Decimal("1234.5")) == "1,234.50"


def test_the_buckets_in_sql_are_the_buckets_in_python() -> None:
    warehouse = Warehouse("sqlite://")
    expression = bucket_sql("status", "approved_alone = 1")
    with warehouse.engine.connect() as conn:
        for status in STATUSES:
            for alone in (False, True):
                found = conn.execute(
                    sa.text(f"SELECT {expression} FROM (SELECT :status AS status, :alone AS approved_alone)"),
                    {"status": status, "alone": int(alone)},
                ).scalar_one()
                assert found == money_bucket(status, alone), (status, alone)
    assert money_bucket("flagged") == WAITS and money_bucket("flagged", True) == LOADS
    assert money_bucket("blocked") == money_bucket("excluded") == HELD
    assert money_bucket("needs-mapping") == WAITS and money_bucket("proposed") == LOADS
    assert set(BUCKETS) == {LOADS, WAITS, HELD}


def test_the_price_a_line_loads_is_the_plans_when_it_sets_one_else_the_bss_price() -> None:
    assert loaded_unit_price({"unit_price_after": Decimal("7.5")}, Decimal("6.4283")) == Decimal("7.5")
    assert loaded_unit_price({"unit_price_after": None}, Decimal("6.4283")) == Decimal("6.4283")
    assert loaded_unit_price({}, None) is None
    assert loaded_unit_price(SimpleNamespace(unit_price_after=Decimal("3")), Decimal("2.5713")) == Decimal("3")
    assert loaded_unit_price(SimpleNamespace(), Decimal("2.5713")) == Decimal("2.5713")


def _book(path: Path, lines: list[dict], contract_services: list[dict] = ()) -> PriceBook:
    warehouse = Warehouse(f"sqlite:///{path / 'warehouse.db'}")
    warehouse.migrate()
    with warehouse.begin() as conn:
        warehouse.insert(conn, "charge_lines", lines)
        warehouse.insert(
            conn,
            "at_snapshots",
            [
                {
                    "run_id": "run",
                    "month": "2026-10",
                    "taken_at": datetime(2026, 11, 1, 6),
                    "units_from": date(2026, 9, 1),
                    "units_to": date(2026, 11, 30),
                }
            ],
        )
        warehouse.insert(conn, "at_contract_services", list(contract_services))
    return PriceBook(warehouse, "2026-10", "run")


def _charge(charge_id: str, charge_type: str, price: str, cost: str, day: int, currency: str = "GBP") -> dict:
    return {
        "month": "2026-10",
        "charge_id": charge_id,
        "account_id": "ACC-47",
        "account_name": "Northwind Traders Ltd",
        "subscription_id": "SUB-000047",
        "product_id": "PRD-1",
        "product_name": "Seats",
        "billing_period": "Monthly",
        "billing_cycle": "Monthly",
        "charge_type": charge_type,
        "action": "New",
        "quantity": Decimal(3),
        "subscription_quantity": Decimal(3),
        "unit_cost": Decimal(cost),
        "unit_price": Decimal(price),
        "currency": currency,
        "charge_start_date": date(2026, 10, day),
        "charge_end_date": date(2026, 10, 31),
        "effective_date": date(2026, 10, day),
        "run_id": "run",
    }


def test_a_line_is_priced_at_its_recurring_line_not_the_setup_fee_that_follows_it(tmp_path: Path) -> None:
    book = _book(
        tmp_path,
        [
            _charge("CHG-1", "Prorated", "6.4283", "5.464", 10),
            _charge("CHG-2", "OneTime", "1.6071", "0", 10),  # the setup fee, later in the month's order
        ],
        [
            {
                "run_id": "run",
                "contract_service_id": 900,
                "contract_id": 1,
                "service_id": 2,
                "unit_price": Decimal("7.5"),
                "unit_cost": Decimal("6.375"),
            }
        ],
    )
    row = {
        "kind": "adjust_units",
        "status": "proposed",
        "subscription_ids": '["SUB-000047"]',
        "account_id": "ACC-47",
        "effective_date": "2026-10-10",
        "units_before": Decimal(2),
        "units_after": Decimal(5),
        "unit_change": Decimal(3),
        "unit_cost_before": None,
        "unit_cost_after": Decimal("5.464"),
        "contract_service_id": 900,
    }
    money = line_money(row, book)
    assert money.currency == "GBP"
    assert (money.bss_unit_price, money.bss_unit_cost) == (Decimal("6.4283"), Decimal("5.464"))
    assert (money.autotask_unit_price, money.autotask_unit_cost) == (Decimal("7.5"), Decimal("6.375"))
    assert money.unit_price == Decimal("6.4283")  # no price policy on the plan yet: the BSS price
    # 5 × 6.4283 − 2 × 6.4283 = 19.2849 → 19.28; cost 3 × 5.464 = 16.392 → 16.39
    assert (money.billed_change, money.cost_change, money.margin_change) == (
        Decimal("19.28"),
        Decimal("16.39"),
        Decimal("2.89"),
    )
    assert not money.below_cost
    priced = line_money({**row, "unit_price_before": Decimal("7.5"), "unit_price_after": Decimal("5")}, book)
    # the plan's price (wt: price policy) — 5 × 5 − 2 × 7.5 = 10.00; below the unit cost: flagged as such
    assert priced.unit_price == Decimal(5) and priced.billed_change == Decimal("10.00") and priced.below_cost
