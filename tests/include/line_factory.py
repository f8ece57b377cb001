"""Hand-written BSS charge lines and accounts for reconciliation tests, stored as the extract stage would."""

from __future__ import annotations

import itertools
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from include.warehouse import Warehouse, utcnow

_SEQUENCE = itertools.count(1)
RESTATING = {"Cycle": "Recurring", "Renewal": "Recurring", "New": "Recurring"}
CHANGE_TYPES = {"QuantityIncrease": "Prorated", "QuantityDecrease": "Prorated", "Cancellation": "Credit"}


def line(
    month: str,
    account: tuple[str, str],
    subscription: str,
    product: tuple[str, str | None, str],
    action: str,
    quantity: float,
    total: float,
    effective: date,
    cycle: str = "Monthly",
    period: str = "Monthly",
    unit_cost: str = "10.0000",
    unit_price: str = "12.0000",
    charge_id: str | None = None,
    charge_type: str | None = None,
    currency: str = "EUR",
    charge_end: date | None = None,
    charged_at: datetime | None = None,
    charge_sequence: int | None = None,
) -> dict[str, Any]:
    """One `charge_lines` row. account = (id, name); product = (id, sku, name)."""
    if charge_type is None:  # a type given is kept (a setup fee is a OneTime line of action New on any day)
        charge_type = RESTATING.get(action) or CHANGE_TYPES[action]
        if action == "New" and effective.day != 1:
            charge_type = "Prorated"
    return {
        "month": month,
        "charge_id": charge_id or f"CHG-{month}-{next(_SEQUENCE):06d}",
        "account_id": account[0],
        "account_name": account[1],
        "account_code": None,
        "subscription_id": subscription,
        "subscription_status": "Cancelled" if action == "Cancellation" else "Active",
        "product_id": product[0],
        "product_sku": product[1],
        "product_name": product[2],
        "billing_plan_id": None,
        "billing_plan_name": None,
        "billing_period": period,
        "billing_cycle": cycle,
        "charge_type": charge_type,
        "action": action,
        "quantity": Decimal(str(quantity)),
        "subscription_quantity": Decimal(str(total)),
        "unit_cost": Decimal(unit_cost),
        "unit_price": Decimal(unit_price),
        "currency": currency,
        "charge_start_date": effective,
        "charge_end_date": charge_end or effective.replace(day=28),
        "effective_date": effective,
        "invoice_id": None,
        "run_id": "extract-test",
        "charged_at": charged_at,
        "charge_sequence": charge_sequence,
    }


def account_row(account_id: str, name: str, phone: str | None = "+44 20 1234 5678") -> dict[str, Any]:
    return {
        "account_id": account_id,
        "name": name,
        "code": None,
        "status": "Active",
        "phone": phone,
        "email": None,
        "vat_number": None,
        "street": "1 High Street",
        "city": "London",
        "postal_code": "EC1A 1BB",
        "country": "GB",
        "run_id": "extract-test",
        "fetched_at": utcnow(),
    }


def store_month(warehouse: Warehouse, month: str, lines: list[dict], accounts: list[dict]) -> None:
    """Replace the month's lines and upsert the accounts, as a successful extract does."""
    lines_table = warehouse.table("charge_lines")
    accounts_table = warehouse.table("bss_accounts")
    with warehouse.begin() as conn:
        conn.execute(lines_table.delete().where(lines_table.c.month == month))
        conn.execute(
            accounts_table.delete().where(accounts_table.c.account_id.in_([a["account_id"] for a in accounts]))
        )
        warehouse.insert(conn, "charge_lines", lines)
        warehouse.insert(conn, "bss_accounts", accounts)
