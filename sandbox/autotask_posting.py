"""Autotask's "Approve and Post" for one month, in the sandbox: what Autotask really bills.

Posting turns the month's recurring-service periods and contract charges into BillingItems and one Invoice per
company:
- every ContractServiceUnits row of an active Recurring Service contract that **starts in the month** (Autotask
  bills a period in advance, on its first day) and holds units becomes one item: `quantity` = the units, `rate`
  = the period's price times the share of the period the row covers (a row split by a mid-period adjustment is
  prorated by its days), `ourCost` = units × cost × the same share, `extendedPrice` = quantity × rate; the row
  gets its `approveAndPostDate`;
- every ContractCharge of the month (`datePurchased` in the month) that is billable and not billed yet becomes
  one item (`quantity` = unitQuantity, `rate` = unitPrice, `ourCost` = unitQuantity × unitCost) and is marked
  `isBilled` (from then on it can be neither changed nor deleted);
- a period or charge already posted is never posted again.

Switches plant the leaks an audit must find, by contract id: `unbilled_contracts` are left out (their periods
and charges stay unposted), `below_cost_contracts` are posted at half their cost, `under_billed_contracts` at
the midpoint between cost and price (below the price, not below the cost). A share switch
(`unbilled_share`, `below_cost_share`, `under_billed_share`) picks contracts by a stable hash of their id. The
answer names every contract each switch hit, so a test knows exactly what was planted.

`unpost` undoes a month as Autotask's users do: its invoices are voided, their items removed, the charges
un-billed and the periods' approveAndPostDate cleared.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.autotask_errors import ApiError
from sandbox.autotask_schema import PERIOD_MONTHS, RECURRING_SERVICE_CONTRACT, format_date, now_text, to_date
from sandbox.autotask_store import Store

RECURRING_SERVICE_ITEM, CONTRACT_CHARGE_ITEM = 5, 4
ACTIVE_CONTRACT = 1
_CENT = Decimal("0.01")
_RATE = Decimal("0.0001")


@dataclass
class PostingSwitches:
    """Leaks the post plants, so leakage tests have something to find (contract ids, or shares of contracts)."""

    unbilled_contracts: set[int] = field(default_factory=set)
    below_cost_contracts: set[int] = field(default_factory=set)
    under_billed_contracts: set[int] = field(default_factory=set)
    unbilled_share: float = 0.0
    below_cost_share: float = 0.0
    under_billed_share: float = 0.0

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PostingSwitches:
        switches = cls()
        for name in ("unbilled_contracts", "below_cost_contracts", "under_billed_contracts"):
            values = payload.get(name, [])
            if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ApiError(f"'{name}' must be a list of contract ids", 400)
            setattr(switches, name, set(values))
        for name in ("unbilled_share", "below_cost_share", "under_billed_share"):
            value = payload.get(name, 0.0)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ApiError(f"'{name}' must be a number between 0 and 1", 400)
            setattr(switches, name, float(value))
        return switches

    def leak_of(self, contract_id: int) -> str | None:
        """Which leak this contract gets: unbilled, below_cost, under_billed, or None (posted as it stands)."""
        for leak, chosen, share in (
            ("unbilled", self.unbilled_contracts, self.unbilled_share),
            ("below_cost", self.below_cost_contracts, self.below_cost_share),
            ("under_billed", self.under_billed_contracts, self.under_billed_share),
        ):
            if contract_id in chosen or (share and _fraction(leak, contract_id) < share):
                return leak
        return None


def approve_and_post(store: Store, month: str, switches: PostingSwitches, posted_at: str | None = None) -> dict:
    """Post the month; returns counts and the contracts each switch hit."""
    first, last = _month_bounds(month)
    low, high = format_date(first), format_date(last)
    posted_at = posted_at or now_text()
    planted: dict[str, set[int]] = {"unbilled": set(), "below_cost": set(), "under_billed": set()}
    items_by_company: dict[int, list[dict]] = {}
    contracts = store.tables["Contracts"]
    for contract in list(contracts.records.values()):
        leak = switches.leak_of(contract["id"])
        items = [
            *_period_items(store, contract, low, high, posted_at),
            *_charge_items(store, contract, low, high, posted_at),
        ]
        if not items:
            continue
        if leak is not None:
            planted[leak].add(contract["id"])
        if leak == "unbilled":
            continue
        for item in items:
            _apply_leak(item, leak)
            items_by_company.setdefault(contract["companyID"], []).append(item)
    invoices = []
    for company_id in sorted(items_by_company):
        items = items_by_company[company_id]
        invoice_id = _insert_invoice(store, company_id, items, first, last, posted_at)
        invoices.append(invoice_id)
        for item in items:
            _commit_item(store, item, invoice_id, posted_at)
    store._changed()
    return {
        "month": month,
        "postedDate": posted_at,
        "invoices": len(invoices),
        "billingItems": sum(len(items) for items in items_by_company.values()),
        "planted": {leak: sorted(ids) for leak, ids in planted.items()},
    }


def unpost(store: Store, month: str) -> dict:
    """Void the month's invoices and un-post their items (periods and charges can be posted again)."""
    first, _ = _month_bounds(month)
    voided = 0
    removed = 0
    now = now_text()
    for invoice in list(store.tables["Invoices"].records.values()):
        if invoice["isVoided"] or to_date(invoice["fromDate"]) != first:
            continue
        invoice.update(isVoided=True, voidedDate=now)
        voided += 1
        for item in store.tables["BillingItems"].find("invoiceID", invoice["id"]):
            charge_id = item.get("contractChargeID")
            if charge_id is not None and (charge := store.tables["ContractCharges"].get(charge_id)) is not None:
                charge["isBilled"] = False
            cs_id = item.get("_contractServiceID")
            if cs_id is not None:
                store.posted_periods.get(cs_id, {}).pop(item["itemDate"], None)
                store.forget_units(cs_id)
            store.tables["BillingItems"].remove(item["id"])
            removed += 1
    store._changed()
    return {"month": month, "voidedInvoices": voided, "removedBillingItems": removed}


def _period_items(store: Store, contract: dict, low: str, high: str, posted_at: str) -> list[dict]:
    if contract["contractType"] != RECURRING_SERVICE_CONTRACT or contract.get("status") != ACTIVE_CONTRACT:
        return []
    items = []
    for cs in store.tables["ContractServices"].find("contractID", contract["id"]):
        service = store.tables["Services"].get(cs["serviceID"]) or {}
        months = PERIOD_MONTHS.get(service.get("periodType"), 1)
        for row in store.unit_rows(cs["id"]):
            if not low <= row["startDate"] <= high or row["approveAndPostDate"] or not row["units"]:
                continue
            start, end = to_date(row["startDate"]), to_date(row["endDate"])
            share = _period_share(start, end, to_date(contract["startDate"]), months)
            price, cost = Decimal(str(row["price"] or 0)), Decimal(str(row["cost"] or 0))
            items.append(
                {
                    "itemDate": row["startDate"],
                    "companyID": contract["companyID"],
                    "contractID": contract["id"],
                    "contractChargeID": None,
                    "serviceID": cs["serviceID"],
                    "billingCodeID": service.get("billingCodeID"),
                    "billingItemType": RECURRING_SERVICE_ITEM,
                    "subType": None,
                    "description": service.get("invoiceDescription") or service.get("name"),
                    "quantity": Decimal(row["units"]),
                    "rate": (price * share).quantize(_RATE, ROUND_HALF_UP),
                    "unit_cost": (cost * share).quantize(_RATE, ROUND_HALF_UP),
                    "_contractServiceID": cs["id"],
                }
            )
    return items


def _charge_items(store: Store, contract: dict, low: str, high: str, posted_at: str) -> list[dict]:
    items = []
    for charge in store.tables["ContractCharges"].find("contractID", contract["id"]):
        billable = charge.get("isBillableToCompany") and not charge.get("isBilled")
        if not billable or not low <= charge["datePurchased"] <= high:
            continue
        items.append(
            {
                "itemDate": charge["datePurchased"],
                "companyID": contract["companyID"],
                "contractID": contract["id"],
                "contractChargeID": charge["id"],
                "serviceID": None,
                "billingCodeID": charge.get("billingCodeID"),
                "billingItemType": CONTRACT_CHARGE_ITEM,
                "subType": None,
                "description": charge.get("description") or charge["name"],
                "quantity": Decimal(str(charge["unitQuantity"])),
                "rate": Decimal(str(charge.get("unitPrice") or 0)),
                "unit_cost": Decimal(str(charge.get("unitCost") or 0)),
                "_contractServiceID": None,
            }
        )
    return items


def _apply_leak(item: dict, leak: str | None) -> None:
    if leak == "below_cost":
        item["rate"] = (item["unit_cost"] / 2).quantize(_RATE, ROUND_HALF_UP)
    elif leak == "under_billed":
        item["rate"] = ((item["unit_cost"] + item["rate"]) / 2).quantize(_RATE, ROUND_HALF_UP)


def _commit_item(store: Store, item: dict, invoice_id: int, posted_at: str) -> None:
    quantity, rate, unit_cost = item.pop("quantity"), item.pop("rate"), item.pop("unit_cost")
    extended = (quantity * rate).quantize(_CENT, ROUND_HALF_UP)
    record = {
        **item,
        "postedDate": posted_at,
        "invoiceID": invoice_id,
        "quantity": float(quantity),
        "rate": float(rate),
        "ourCost": float((quantity * unit_cost).quantize(_CENT, ROUND_HALF_UP)),
        "extendedPrice": float(extended),
        "totalAmount": float(extended),
    }
    store.tables["BillingItems"].insert(record)
    if record["contractChargeID"] is not None:
        store.tables["ContractCharges"].get(record["contractChargeID"])["isBilled"] = True
    cs_id = record["_contractServiceID"]
    if cs_id is not None:
        store.posted_periods.setdefault(cs_id, {})[record["itemDate"]] = posted_at
        store.forget_units(cs_id)


def _insert_invoice(store: Store, company_id: int, items: Iterable[dict], first: date, last: date, at: str) -> int:
    total = sum(((item["quantity"] * item["rate"]).quantize(_CENT, ROUND_HALF_UP) for item in items), Decimal(0))
    table = store.tables["Invoices"]
    return table.insert(
        {
            "invoiceNumber": f"AT-{first:%Y%m}-{table.next_id}",
            "companyID": company_id,
            "invoiceDateTime": at,
            "fromDate": format_date(first),
            "toDate": format_date(last),
            "invoiceTotal": float(total),
            "isVoided": False,
            "voidedDate": None,
            "createDateTime": at,
        }
    )


def _period_share(start: date, end: date, contract_start: date, months: int) -> Decimal:
    """The share of its billing period a units row covers: its days over the period's days (periods run from
    the contract start, `months` long)."""
    elapsed = (start.year - contract_start.year) * 12 + start.month - contract_start.month
    if start.day < contract_start.day:
        elapsed -= 1
    period_start = _add_months(contract_start, elapsed // months * months)
    period_end = _add_months(contract_start, (elapsed // months + 1) * months)
    return Decimal((end - start).days + 1) / Decimal((period_end - period_start).days)


def _month_bounds(month: str) -> tuple[date, date]:
    try:
        first = date.fromisoformat(f"{month}-01")
    except (TypeError, ValueError):
        raise ApiError(f"'month' must be YYYY-MM, got {month!r}", 400) from None
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _fraction(kind: str, contract_id: int) -> float:
    digest = hashlib.sha256(f"{kind}:{contract_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
