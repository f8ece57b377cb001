"""The BSS sandbox's invoices and the month's close (`/api/invoices`, docs/bss-api.md "Invoices and the month's close").

An invoice bills one account's lines of one month in one currency: whatever charge lines the feed serves for
the month (the generator's, and lines injected through `/_admin/overrides`), grouped by account and currency.
Its `totalCost` and `totalPrice` are the sums of its lines' amounts as the BSS bills them: quantity × unit
figure, a seat line (Recurring, Prorated) prorated by the days of its charge period within its billing period,
every other line (OneTime, Usage, Credit) taken whole.

A month is either **open** (its invoices are `Draft`, rebuilt from the lines on every read: restated lines
flow in) or **closed** (its invoices `Issued` with `issuedAt`, frozen when the month closed). Every month
starts closed unless it is named in `--open-month`; the admin surface opens and closes months, withholds an
account's invoice (an account billed in the month without an invoice: the month is not closed), and voids an
invoice and issues its replacement (`Void` + a new `Issued` or `Draft` invoice of the same account and period).
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

DRAFT, ISSUED, VOID = "Draft", "Issued", "Void"
# Seat lines are billed for the days of their charge period; the others are billed whole.
SEAT_CHARGE_TYPES = frozenset({"Recurring", "Prorated"})
BILLING_PERIOD_MONTHS = {"Monthly": 1, "Quarterly": 3, "SemiAnnually": 6, "Annually": 12}
_CENT = Decimal("0.01")
# When a month that was never opened closes: its invoices' issue time, the 5th of the next month.
_ISSUE_DAY, _ISSUE_HOUR = 5, 6

INVOICE_FIELDS: dict[str, str] = {
    "id": "string",
    "number": "string",
    "account.id": "string",
    "periodStart": "date",
    "periodEnd": "date",
    "status": "string",
    "issuedAt": "string",
    "currency": "string",
    "totalCost": "number",
    "totalPrice": "number",
}
INVOICE_DATE_FIELDS = ("periodStart", "periodEnd")


class InvoiceAdminError(ValueError):
    """An admin request the sandbox cannot carry out (the message says why)."""


def line_amounts(line: dict) -> tuple[Decimal, Decimal]:
    """(cost, price) the BSS bills for one charge line, rounded to cents."""
    quantity = _decimal(line.get("quantity"))
    share = _billed_share(line)
    cost = (quantity * _decimal(line.get("unitCost")) * share).quantize(_CENT, ROUND_HALF_UP)
    price = (quantity * _decimal(line.get("unitPrice")) * share).quantize(_CENT, ROUND_HALF_UP)
    return cost, price


def _billed_share(line: dict) -> Decimal:
    """The share of the unit figures a line bills: days of its charge period over the days of the billing
    period ending with it, for a seat line; 1 for any other line."""
    if line.get("chargeType") not in SEAT_CHARGE_TYPES:
        return Decimal(1)
    try:
        start = date.fromisoformat(str(line["chargeStartDate"])[:10])
        end = date.fromisoformat(str(line["chargeEndDate"])[:10])
    except (KeyError, ValueError):
        return Decimal(1)
    plan = line.get("billingPlan") if isinstance(line.get("billingPlan"), dict) else {}
    months = BILLING_PERIOD_MONTHS.get(str(plan.get("billingPeriod")), 1)
    period_end = end + timedelta(days=1)
    period_start = _add_months(period_end, -months)
    return Decimal((period_end - start).days) / Decimal((period_end - period_start).days)


@dataclass
class MonthBilling:
    """One month's invoicing state."""

    closed: bool = True
    issued_at: str | None = None
    # invoices frozen at the close, by id (Issued, Void, and reissues)
    frozen: dict[str, dict] | None = None
    withheld: set[str] = field(default_factory=set)
    # reissues made while the month is open, kept across rebuilds: {old invoice id: new invoice number}
    reissued: dict[str, int] = field(default_factory=dict)


class Invoicing:
    """Invoices of every month, built from the lines the sandbox serves (`lines_of(month)`)."""

    def __init__(self, lines_of: Callable[[str], Iterable[Any]], open_months: Iterable[str] = ()) -> None:
        self._lines_of = lines_of
        self._open_at_start = set(open_months)
        self.reset()

    def reset(self) -> None:
        self.months: dict[str, MonthBilling] = {month: MonthBilling(closed=False) for month in self._open_at_start}

    def billing(self, month: str) -> MonthBilling:
        return self.months.setdefault(month, MonthBilling())

    # --- reads ------------------------------------------------------------------------------------------------

    def invoices(self, month: str) -> list[dict]:
        """The month's invoices: frozen ones once closed, else built from the lines now."""
        billing = self.billing(month)
        if billing.closed:
            if billing.frozen is None:
                billing.frozen = {invoice["id"]: invoice for invoice in self._issue(month, billing, billing.issued_at)}
            return list(billing.frozen.values())
        return self._build(month, billing, DRAFT, None)

    # --- admin ------------------------------------------------------------------------------------------------

    def open_month(self, month: str) -> dict:
        billing = self.billing(month)
        billing.closed, billing.frozen, billing.issued_at = False, None, None
        return self.summary(month)

    def close_month(self, month: str, issued_at: str | None = None) -> dict:
        billing = self.billing(month)
        if billing.closed:
            raise InvoiceAdminError(f"{month} is already closed; void and reissue an invoice to correct it")
        billing.closed, billing.frozen = True, None
        billing.issued_at = issued_at or _now()
        self.invoices(month)
        return self.summary(month)

    def withhold(self, month: str, account_ids: Iterable[str], withheld: bool = True) -> dict:
        billing = self.billing(month)
        if billing.closed:
            raise InvoiceAdminError(f"{month} is closed: its invoices are issued; open the month first")
        accounts = set(account_ids)
        billing.withheld = billing.withheld | accounts if withheld else billing.withheld - accounts
        return self.summary(month)

    def reissue(self, invoice_id: str, status: str = ISSUED) -> dict:
        """Void an invoice and issue its replacement (the same account and period, rebuilt from the lines)."""
        if status not in (ISSUED, DRAFT):
            raise InvoiceAdminError(f"a replacement is {ISSUED} or {DRAFT}, not {status!r}")
        month = _month_of_invoice(invoice_id)
        billing = self.billing(month)
        current = {invoice["id"]: invoice for invoice in self.invoices(month)}
        old = current.get(invoice_id)
        if old is None:
            raise InvoiceAdminError(f"no invoice {invoice_id}")
        if old["status"] == VOID:
            raise InvoiceAdminError(f"invoice {invoice_id} is already void")
        number = len(current) + 1
        if not billing.closed:
            billing.reissued[invoice_id] = number
            return {"voided": invoice_id, "invoice": self._find(month, number)}
        rebuilt = {
            (invoice["account"]["id"], invoice["currency"]): invoice
            for invoice in self._build(month, billing, status, None if status == DRAFT else _now())
        }
        replacement = dict(rebuilt[(old["account"]["id"], old["currency"])])
        replacement.update(id=_invoice_id(month, number), number=_invoice_number(month, number))
        assert billing.frozen is not None
        billing.frozen[invoice_id] = {**old, "status": VOID}
        billing.frozen[replacement["id"]] = replacement
        return {"voided": invoice_id, "invoice": replacement}

    def summary(self, month: str) -> dict:
        invoices = self.invoices(month)
        statuses: dict[str, int] = {}
        for invoice in invoices:
            statuses[invoice["status"]] = statuses.get(invoice["status"], 0) + 1
        billing = self.billing(month)
        return {
            "month": month,
            "closed": billing.closed,
            "issuedAt": billing.issued_at,
            "invoices": statuses,
            "withheld": sorted(billing.withheld),
        }

    # --- building ---------------------------------------------------------------------------------------------

    def _issue(self, month: str, billing: MonthBilling, issued_at: str | None) -> list[dict]:
        issued_at = issued_at or _default_issue_time(month)
        billing.issued_at = issued_at
        return self._build(month, billing, ISSUED, issued_at)

    def _find(self, month: str, number: int) -> dict | None:
        wanted = _invoice_id(month, number)
        return next((invoice for invoice in self.invoices(month) if invoice["id"] == wanted), None)

    def _build(self, month: str, billing: MonthBilling, status: str, issued_at: str | None) -> list[dict]:
        first = date.fromisoformat(f"{month}-01")
        last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
        groups: dict[tuple[str, str], list[dict]] = {}
        for line in self._lines_of(month):
            if not isinstance(line, dict):
                continue
            account = line.get("account") if isinstance(line.get("account"), dict) else {}
            account_id, currency = account.get("id"), line.get("currency")
            if not isinstance(account_id, str) or not isinstance(currency, str) or account_id in billing.withheld:
                continue
            groups.setdefault((account_id, currency), []).append(line)
        invoices = []
        for number, (account_id, currency) in enumerate(sorted(groups), start=1):
            lines = groups[(account_id, currency)]
            amounts = [line_amounts(line) for line in lines]
            invoice = {
                "id": _invoice_id(month, number),
                "number": _invoice_number(month, number),
                "account": {"id": account_id},
                "periodStart": first.isoformat(),
                "periodEnd": last.isoformat(),
                "status": status,
                "issuedAt": issued_at,
                "currency": currency,
                "totalCost": float(sum((cost for cost, _ in amounts), Decimal(0))),
                "totalPrice": float(sum((price for _, price in amounts), Decimal(0))),
                "chargeIds": [line.get("id") for line in lines],
            }
            invoices.append(invoice)
        # an open month's reissues: the old invoice void, its replacement a draft under the new number
        by_id = {invoice["id"]: invoice for invoice in invoices}
        for old_id, new_number in sorted(billing.reissued.items(), key=lambda item: item[1]):
            old = by_id.get(old_id)
            if old is None:
                continue
            replacement = {**old, "id": _invoice_id(month, new_number), "number": _invoice_number(month, new_number)}
            old["status"] = VOID
            invoices.append(replacement)
        return invoices


def _invoice_id(month: str, number: int) -> str:
    return f"INV-{month}-{number:06d}"


def _invoice_number(month: str, number: int) -> str:
    return f"{month.replace('-', '/')}/{number:03d}"


def _month_of_invoice(invoice_id: str) -> str:
    parts = invoice_id.split("-")
    if len(parts) != 4 or parts[0] != "INV":
        raise InvoiceAdminError(f"not an invoice id of this sandbox: {invoice_id!r}")
    return f"{parts[1]}-{parts[2]}"


def _default_issue_time(month: str) -> str:
    first = date.fromisoformat(f"{month}-01")
    following = _add_months(first, 1)
    return datetime(following.year, following.month, _ISSUE_DAY, _ISSUE_HOUR, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or value is None:
        return Decimal(0)
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))
