"""Leakage after invoicing: what the BSS billed the MSP for a month against what Autotask billed the customers.

`audit_month(bss, autotask, warehouse, month, settings)` runs once Autotask has posted the month (Approve & Post
done, BillingItems exist) and the BSS month is closed:

1. **The BSS side**: the month's `Issued` invoices (`/api/invoices`; `Void` ones are replaced and ignored, a
   `Draft` one means the month is not closed: the audit stops and says so) and the charge lines they bill (their
   `chargeIds`, looked up in the month's `/api/charges`). A line's cost is quantity × unit cost and its expected
   price quantity × unit price, a seat line (Recurring, Prorated) prorated by the days of its charge period
   within its billing period (`bss_line_amounts`), every other line (OneTime, Usage, Credit) whole.
2. **The Autotask side**: the month's BillingItems (itemDate within the month) of every contract the sync
   knows for the invoiced accounts' companies (the month's snapshot plus the contracts it created, from the
   warehouse, plus those companies' contracts as Autotask holds them now: one made by hand after the snapshot bills
   them too), read by contract in `in` batches of at most 500 ids; the ContractCharges they bill (by id, for the
   BSS charge id in `purchaseOrderNumber`) and their Invoices (by id: items of a voided invoice do not count).
3. **Per account, product and currency**: an item belongs to the account and product of the BSS charge its
   ContractCharge names, else to the product linked to its service and the account of its contract's
   subscription (or the account linked to its company); billed amounts are in the company's Autotask currency,
   and the two sides are compared only within one currency.

What it finds (`LeakReason`): BSS cost with nothing billed (`not_billed`), billed below the BSS cost
(`billed_below_cost`), billed below the BSS price but not below cost (`under_billed`), billed with no BSS line
(`billed_not_in_bss`), and billed in another currency than the BSS billed (`billed_in_other_currency`, both sides
shown, each in its own currency). Differences within `audit_tolerance` are rounding, not leaks. The findings go to
the warehouse (`billing_audits`, `billing_audit_findings`, for the next month's run report) and to a report (HTML,
XLSX, CSV) in `$BILLING_DATA_DOCS_DIR/<month>/audit/`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from include.models import BillingMonth
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

AUDIT_DIR_NAME = "audit"
HTML_NAME, XLSX_NAME, CSV_NAME = "billing-audit.html", "billing-audit.xlsx", "billing-audit.csv"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
SEAT_CHARGE_TYPES = frozenset({"Recurring", "Prorated"})
BILLING_PERIOD_MONTHS = {"Monthly": 1, "Quarterly": 3, "SemiAnnually": 6, "Annually": 12}
ISSUED, DRAFT, VOID = "Issued", "Draft", "Void"
_CENT = Decimal("0.01")
_ZERO = Decimal(0)
BILLING_ITEM_FIELDS = [
    "id",
    "itemDate",
    "companyID",
    "contractID",
    "contractChargeID",
    "serviceID",
    "invoiceID",
    "quantity",
    "rate",
    "ourCost",
    "extendedPrice",
]
CONTRACT_FIELDS = ["id", "companyID", "contractNumber"]
CHARGE_FIELDS = ["id", "contractID", "name", "purchaseOrderNumber"]
INVOICE_FIELDS = ["id", "invoiceNumber", "companyID", "isVoided"]


class LeakReason(StrEnum):
    """Why an account and product is in the leakage report; each reason owns the sentence a person reads."""

    NOT_BILLED = "not_billed"
    BELOW_COST = "billed_below_cost"
    UNDER_BILLED = "under_billed"
    NOT_IN_BSS = "billed_not_in_bss"
    OTHER_CURRENCY = "billed_in_other_currency"

    @property
    def sentence(self) -> str:
        return {
            LeakReason.NOT_BILLED: "The BSS billed it; Autotask billed nothing for it this month.",
            LeakReason.BELOW_COST: "Autotask billed less than it costs (the BSS cost).",
            LeakReason.UNDER_BILLED: "Autotask billed less than the BSS price, though not below cost.",
            LeakReason.NOT_IN_BSS: "Autotask billed it; the BSS billed nothing for it this month.",
            LeakReason.OTHER_CURRENCY: "Billed in another currency than the BSS billed: compare by hand.",
        }[self]


class AuditInputError(ValueError):
    """The month cannot be audited as it stands (not closed, an invoice naming a line the BSS does not serve)."""


class BssBilling(Protocol):
    """What the audit reads from the BSS (`connectors.bss_hook.BssHook`)."""

    def iter_invoices(self, period_start: date) -> Iterator[list[dict]]: ...

    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]: ...


class AutotaskBilling(Protocol):
    """What the audit reads from Autotask (`connectors.autotask_hook.AutotaskHook`)."""

    def billing_items(
        self,
        contract_ids: Iterable[int],
        start: date,
        end: date,
        include_fields: list[str] | None = None,
        *,
        items_per_contract: float = 1.0,
    ) -> list[dict]: ...

    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[dict] | None = None,
        include_fields: list[str] | None = None,
    ) -> list[dict]: ...


# -- the BSS side ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BssLine:
    """One charge line an issued BSS invoice bills, with what it costs the MSP and what it is priced at."""

    charge_id: str
    invoice_id: str
    account_id: str
    account_name: str
    subscription_id: str | None
    product_id: str
    product_sku: str | None
    product_name: str
    currency: str
    cost: Decimal
    price: Decimal


def bss_line_amounts(record: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    """(cost, price) of one BSS charge line as the BSS bills it, rounded to cents: quantity × unit figure, a seat
    line prorated by the days of its charge period over the days of the billing period that ends with it."""
    quantity = _decimal(record.get("quantity"), "quantity", record)
    share = Decimal(1)
    if record.get("chargeType") in SEAT_CHARGE_TYPES:
        start = _day(record.get("chargeStartDate"), "chargeStartDate", record)
        end = _day(record.get("chargeEndDate"), "chargeEndDate", record)
        plan = record.get("billingPlan") if isinstance(record.get("billingPlan"), Mapping) else {}
        months = BILLING_PERIOD_MONTHS.get(str(plan.get("billingPeriod")), 1)
        period_end = end + timedelta(days=1)
        period_start = _add_months(period_end, -months)
        share = Decimal((period_end - start).days) / Decimal((period_end - period_start).days)
    cost = (quantity * _decimal(record.get("unitCost"), "unitCost", record) * share).quantize(_CENT, ROUND_HALF_UP)
    price = (quantity * _decimal(record.get("unitPrice"), "unitPrice", record) * share).quantize(_CENT, ROUND_HALF_UP)
    return cost, price


def read_bss_billing(bss: BssBilling, month: BillingMonth) -> tuple[list[dict], list[BssLine]]:
    """The month's invoices (every status) and the lines of its issued ones; refuses a month that is not closed."""
    invoices = [invoice for page in bss.iter_invoices(month.first_day) for invoice in page]
    drafts = [str(invoice.get("id")) for invoice in invoices if invoice.get("status") == DRAFT]
    if drafts:
        raise AuditInputError(
            f"the BSS month {month} is not closed: {len(drafts)} invoice(s) still Draft "
            f"({', '.join(drafts[:10])}); audit it once every invoice is issued"
        )
    charges = {
        str(record.get("id")): record
        for page in bss.iter_charges(month.first_day, month.last_day)
        for record in page
        if isinstance(record, Mapping)
    }
    lines: list[BssLine] = []
    missing: list[str] = []
    for invoice in invoices:
        if invoice.get("status") != ISSUED:
            continue
        for charge_id in invoice.get("chargeIds") or []:
            record = charges.get(str(charge_id))
            if record is None:
                missing.append(f"{invoice.get('id')}: {charge_id}")
                continue
            lines.append(_bss_line(record, str(invoice["id"]), str(invoice.get("currency") or record.get("currency"))))
    if missing:
        raise AuditInputError(
            f"{len(missing)} charge(s) billed by issued invoices of {month} are not among the month's charges: "
            + "; ".join(missing[:10])
        )
    return invoices, lines


def _bss_line(record: Mapping[str, Any], invoice_id: str, currency: str) -> BssLine:
    account = record.get("account") if isinstance(record.get("account"), Mapping) else {}
    product = record.get("product") if isinstance(record.get("product"), Mapping) else {}
    subscription = record.get("subscription") if isinstance(record.get("subscription"), Mapping) else {}
    cost, price = bss_line_amounts(record)
    return BssLine(
        charge_id=str(record.get("id")),
        invoice_id=invoice_id,
        account_id=str(account.get("id")),
        account_name=str(account.get("name") or account.get("id")),
        subscription_id=str(subscription["id"]) if subscription.get("id") else None,
        product_id=str(product.get("id")),
        product_sku=str(product["sku"]) if product.get("sku") else None,
        product_name=str(product.get("name") or product.get("id")),
        currency=currency,
        cost=cost,
        price=price,
    )


# -- what the warehouse knows of Autotask ----------------------------------------------------------------------


@dataclass
class AutotaskKnowledge:
    """Links and names from the warehouse: how an Autotask record leads back to a BSS key."""

    accounts_of_company: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    subscription_of_contract: dict[int, str] = field(default_factory=dict)
    product_of_service: dict[int, str] = field(default_factory=dict)
    company_of_contract: dict[int, int] = field(default_factory=dict)
    account_of_usage_contract: dict[int, str] = field(default_factory=dict)
    company_names: dict[int, str] = field(default_factory=dict)
    company_currency: dict[int, str] = field(default_factory=dict)
    service_names: dict[int, str] = field(default_factory=dict)
    contract_ids: set[int] = field(default_factory=set)
    companies: set[int] = field(default_factory=set)  # the companies of the invoiced accounts

    @classmethod
    def read(cls, warehouse: Warehouse, month: BillingMonth, accounts: set[str]) -> AutotaskKnowledge:
        known = cls()
        companies: set[int] = set()
        for link in warehouse.query("audit_links"):
            target = int(link["target_id"])
            if link["kind"] == "company":
                known.accounts_of_company[target].add(str(link["source_key"]))
                if link["source_key"] in accounts:
                    companies.add(target)
            elif link["kind"] == "contract":
                known.subscription_of_contract[target] = str(link["source_key"])
            elif link["kind"] == "service":
                known.product_of_service[target] = str(link["source_key"])
        for row in warehouse.query("audit_snapshot_names", {"month": month.key}):
            if row["kind"] == "company":
                known.company_names[int(row["record_id"])] = str(row["name"])
                if row["currency"]:
                    known.company_currency[int(row["record_id"])] = str(row["currency"])
            else:
                known.service_names[int(row["record_id"])] = str(row["name"])
        for row in warehouse.query("audit_snapshot_contracts", {"month": month.key}):
            contract_id, company_id = int(row["contract_id"]), int(row["company_id"])
            known.company_of_contract[contract_id] = company_id
            if row["contract_number"] in accounts:
                known.account_of_usage_contract[contract_id] = str(row["contract_number"])
            if company_id in companies:
                known.contract_ids.add(contract_id)
        # contracts the sync linked (created ones included) whose subscription the month billed
        known.contract_ids.update(known.subscription_of_contract)
        known.companies = companies
        return known

    def add_live_contracts(self, autotask: AutotaskBilling, accounts: set[str]) -> int:
        """The invoiced companies' contracts as Autotask holds them now: a contract made by hand after the month's
        snapshot (a one-off charge, a service the sync does not know) bills those customers too, and what it bills
        must be compared, not missed. Returns how many contracts the snapshot did not know."""
        if not self.companies:
            return 0
        live = autotask.query_in("Contracts", "companyID", sorted(self.companies), None, CONTRACT_FIELDS)
        new = 0
        for contract in live:
            contract_id, company_id = int(contract["id"]), int(contract["companyID"])
            if contract_id not in self.contract_ids:
                new += 1
            self.contract_ids.add(contract_id)
            self.company_of_contract.setdefault(contract_id, company_id)
            if contract.get("contractNumber") in accounts:
                self.account_of_usage_contract.setdefault(contract_id, str(contract["contractNumber"]))
        return new


# -- the Autotask side -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BilledItem:
    """One posted BillingItem on a non-voided invoice."""

    item_id: int
    contract_id: int | None
    company_id: int | None
    service_id: int | None
    charge_id: int | None
    amount: Decimal
    cost: Decimal


@dataclass
class AutotaskBillingRead:
    items: list[BilledItem]
    charge_po_numbers: dict[int, str]
    reads: dict[str, int]


def read_autotask_billing(
    autotask: AutotaskBilling, month: BillingMonth, contract_ids: Iterable[int], items_per_contract: float
) -> AutotaskBillingRead:
    """The month's BillingItems of the contracts, the ContractCharges and Invoices they name."""
    contracts = sorted({int(value) for value in contract_ids})
    # contracts the sync created lately (high ids) hold more items (split periods): spread them over the batches,
    # so that no batch overflows a page (the `audit` benchmark: reads within 1.05 x the lower bound)
    batches = max(1, -(-len(contracts) // 500))
    contracts = [contract for start in range(batches) for contract in contracts[start::batches]]
    raw = autotask.billing_items(
        contracts, month.first_day, month.last_day, BILLING_ITEM_FIELDS, items_per_contract=items_per_contract
    )
    charge_ids = sorted({int(item["contractChargeID"]) for item in raw if item.get("contractChargeID") is not None})
    invoice_ids = sorted({int(item["invoiceID"]) for item in raw if item.get("invoiceID") is not None})
    charges = autotask.query_in("ContractCharges", "id", charge_ids, None, CHARGE_FIELDS) if charge_ids else []
    invoices = autotask.query_in("Invoices", "id", invoice_ids, None, INVOICE_FIELDS) if invoice_ids else []
    voided = {int(invoice["id"]) for invoice in invoices if invoice.get("isVoided")}
    items = [
        BilledItem(
            item_id=int(item["id"]),
            contract_id=_int(item.get("contractID")),
            company_id=_int(item.get("companyID")),
            service_id=_int(item.get("serviceID")),
            charge_id=_int(item.get("contractChargeID")),
            amount=_decimal(item.get("extendedPrice"), "extendedPrice", item),
            cost=_decimal(item.get("ourCost"), "ourCost", item),
        )
        for item in raw
        if _int(item.get("invoiceID")) not in voided
    ]
    po_numbers = {int(charge["id"]): str(charge.get("purchaseOrderNumber") or "") for charge in charges}
    reads = {"BillingItems": len(contracts), "ContractCharges": len(charge_ids), "Invoices": len(invoice_ids)}
    return AutotaskBillingRead(items, po_numbers, reads)


# -- the comparison --------------------------------------------------------------------------------------------


@dataclass
class AuditRow:
    """One account, product and currency: what the BSS billed against what Autotask billed."""

    account_id: str | None
    account_name: str
    company_id: int | None
    product_id: str | None
    product_sku: str | None
    product_name: str
    currency: str
    bss_cost: Decimal = _ZERO
    bss_price: Decimal = _ZERO
    billed_amount: Decimal = _ZERO
    billed_cost: Decimal = _ZERO
    bss_lines: int = 0
    billed_items: int = 0
    reason: LeakReason | None = None

    @property
    def difference(self) -> Decimal:
        """Billed minus the BSS cost: the margin (negative: a loss)."""
        return self.billed_amount - self.bss_cost

    @property
    def shortfall(self) -> Decimal:
        """What was not billed of the BSS price (0 when billed in full or above)."""
        return max(_ZERO, self.bss_price - self.billed_amount) if self.bss_lines else _ZERO

    def as_record(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "account_name": self.account_name,
            "company_id": self.company_id,
            "product_id": self.product_id,
            "product_sku": self.product_sku,
            "product_name": self.product_name,
            "currency": self.currency,
            "bss_cost": self.bss_cost,
            "bss_price": self.bss_price,
            "billed_amount": self.billed_amount,
            "billed_cost": self.billed_cost,
            "difference": self.difference,
            "reason": str(self.reason) if self.reason else None,
        }


Key = tuple[str, str, str]  # (account key, product key, currency)


def compare(
    lines: Iterable[BssLine],
    items: Iterable[BilledItem],
    charge_po_numbers: Mapping[int, str],
    known: AutotaskKnowledge,
    tolerance: Decimal,
) -> list[AuditRow]:
    """Every account, product and currency with a leak, in account, product and currency order."""
    rows: dict[Key, AuditRow] = {}
    line_by_charge: dict[str, BssLine] = {}
    account_of_subscription: dict[str, str] = {}
    account_currency: dict[str, str] = {}
    account_names: dict[str, str] = {}
    product_names: dict[str, tuple[str | None, str]] = {}
    for line in lines:
        line_by_charge[line.charge_id] = line
        if line.subscription_id:
            account_of_subscription[line.subscription_id] = line.account_id
        account_currency.setdefault(line.account_id, line.currency)
        account_names[line.account_id] = line.account_name
        product_names[line.product_id] = (line.product_sku, line.product_name)
        row = rows.setdefault(
            (line.account_id, line.product_id, line.currency),
            AuditRow(
                line.account_id,
                line.account_name,
                None,
                line.product_id,
                line.product_sku,
                line.product_name,
                line.currency,
            ),
        )
        row.bss_cost += line.cost
        row.bss_price += line.price
        row.bss_lines += 1
    for item in items:
        account_id, product_id = _owner_of(item, charge_po_numbers, line_by_charge, account_of_subscription, known)
        company_currency = known.company_currency.get(item.company_id) if item.company_id is not None else None
        currency = company_currency or account_currency.get(account_id or "") or "?"
        account_key = account_id or f"company:{item.company_id}"
        product_key = product_id or (f"service:{item.service_id}" if item.service_id else f"charge:{item.charge_id}")
        row = rows.get((account_key, product_key, currency))
        if row is None:
            sku, name = product_names.get(product_key, (None, ""))
            if not name:
                name = known.service_names.get(item.service_id or -1) or f"Autotask {product_key.replace(':', ' ')}"
            row = rows[(account_key, product_key, currency)] = AuditRow(
                account_id,
                account_names.get(account_id or "") or known.company_names.get(item.company_id or -1, account_key),
                item.company_id,
                product_id,
                sku,
                name,
                currency,
            )
        row.company_id = row.company_id or item.company_id
        row.billed_amount += item.amount
        row.billed_cost += item.cost
        row.billed_items += 1
    currencies_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for account_key, product_key, currency in rows:
        currencies_of[(account_key, product_key)].add(currency)
    findings = []
    for key in sorted(rows):
        row = rows[key]
        row.reason = _reason(row, tolerance, len(currencies_of[key[:2]]) > 1)
        if row.reason is not None:
            findings.append(row)
    return findings


def _owner_of(
    item: BilledItem,
    charge_po_numbers: Mapping[int, str],
    line_by_charge: Mapping[str, BssLine],
    account_of_subscription: Mapping[str, str],
    known: AutotaskKnowledge,
) -> tuple[str | None, str | None]:
    """The BSS account and product a billed item belongs to (None where nothing links it)."""
    if item.charge_id is not None:
        line = line_by_charge.get(charge_po_numbers.get(item.charge_id, ""))
        if line is not None:
            return line.account_id, line.product_id
    product_id = known.product_of_service.get(item.service_id) if item.service_id is not None else None
    account_id = None
    if item.contract_id is not None:
        subscription = known.subscription_of_contract.get(item.contract_id)
        account_id = account_of_subscription.get(subscription or "") or known.account_of_usage_contract.get(
            item.contract_id
        )
    if account_id is None and item.company_id is not None:
        accounts = known.accounts_of_company.get(item.company_id, set())
        if len(accounts) == 1:
            account_id = next(iter(accounts))
    return account_id, product_id


def _reason(row: AuditRow, tolerance: Decimal, several_currencies: bool) -> LeakReason | None:
    billed, bss = row.billed_items > 0, row.bss_lines > 0
    if several_currencies and (
        (bss and not billed and row.bss_price > tolerance)
        or (billed and not bss and abs(row.billed_amount) > tolerance)
    ):
        return LeakReason.OTHER_CURRENCY
    if bss and not billed:
        # a net credit (a decrease, a refund) Autotask did not pass on loses the MSP nothing: not a leak
        return LeakReason.NOT_BILLED if row.bss_price > tolerance or row.bss_cost > tolerance else None
    if billed and not bss:
        return LeakReason.NOT_IN_BSS if abs(row.billed_amount) > tolerance else None
    if row.billed_amount < row.bss_cost - tolerance:
        return LeakReason.BELOW_COST
    if row.billed_amount < row.bss_price - tolerance:
        return LeakReason.UNDER_BILLED
    return None


# -- the audit -------------------------------------------------------------------------------------------------


@dataclass
class AuditResult:
    """What an audit found and where its report is (the DAG task's XCom is `as_dict()`)."""

    audit_id: str
    month: str
    findings: list[AuditRow]
    bss_invoices: int
    bss_lines: int
    billing_items: int
    reads: dict[str, int]
    report_dir: Path | None = None

    @property
    def leakage(self) -> dict[str, Decimal]:
        """Per currency: the BSS price not billed, over the findings (never summed across currencies)."""
        totals: dict[str, Decimal] = defaultdict(lambda: _ZERO)
        for row in self.findings:
            if row.reason is not LeakReason.NOT_IN_BSS:
                totals[row.currency] += row.shortfall
        return {currency: amount for currency, amount in sorted(totals.items()) if amount}

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for row in self.findings:
            counts[str(row.reason)] += 1
        return dict(sorted(counts.items()))

    @property
    def csv_path(self) -> Path | None:
        return self.report_dir / CSV_NAME if self.report_dir else None

    def above(self, threshold: Decimal) -> dict[str, Decimal]:
        """The currencies whose leakage is above `threshold`."""
        return {currency: amount for currency, amount in self.leakage.items() if amount > threshold}

    def as_dict(self) -> dict[str, Any]:
        return {
            "audit_id": self.audit_id,
            "month": self.month,
            "findings": len(self.findings),
            "by_reason": self.counts,
            "leakage": {currency: str(amount) for currency, amount in self.leakage.items()},
            "bss_invoices": self.bss_invoices,
            "bss_lines": self.bss_lines,
            "billing_items": self.billing_items,
            "reads": self.reads,
            "report_dir": str(self.report_dir) if self.report_dir else None,
            "csv_path": str(self.csv_path) if self.csv_path else None,
        }


def audit_month(
    bss: BssBilling,
    autotask: AutotaskBilling,
    warehouse: Warehouse,
    month: str,
    *,
    tolerance: Decimal | float = Decimal("0.05"),
    report_dir: Path | None = None,
    triggered_by: str | None = None,
) -> AuditResult:
    """Audit a posted month, store the findings and write the report; see the module docstring."""
    billing_month = BillingMonth.parse(month)
    tolerance = Decimal(str(tolerance))
    invoices, lines = read_bss_billing(bss, billing_month)
    accounts = {line.account_id for line in lines}
    known = AutotaskKnowledge.read(warehouse, billing_month, accounts)
    made_by_hand = known.add_live_contracts(autotask, accounts)
    if made_by_hand:
        log.info("audit of %s: %d contracts of the invoiced companies were not in the snapshot", month, made_by_hand)
    # the sync mirrors the BSS: about one item per BSS line, so that many per contract sizes the batches
    items_per_contract = len(lines) / max(1, len(known.contract_ids))
    autotask_read = read_autotask_billing(autotask, billing_month, known.contract_ids, items_per_contract)
    findings = compare(lines, autotask_read.items, autotask_read.charge_po_numbers, known, tolerance)
    autotask_read.reads["Contracts"] = len(known.companies)  # ids asked for, as for the other entities
    result = AuditResult(
        audit_id=f"audit-{billing_month.key}-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        month=billing_month.key,
        findings=findings,
        bss_invoices=sum(1 for invoice in invoices if invoice.get("status") == ISSUED),
        bss_lines=len(lines),
        billing_items=len(autotask_read.items),
        reads=autotask_read.reads,
    )
    result.report_dir = write_audit_report(result, report_dir or audit_dir(billing_month.key))
    store_audit(warehouse, result, triggered_by)
    log.info(
        "audit of %s: %d findings %s, leakage %s; report %s",
        result.month,
        len(findings),
        result.counts,
        result.leakage,
        result.report_dir,
    )
    return result


def audit_dir(month: str) -> Path:
    """`$BILLING_DATA_DOCS_DIR/<month>/audit/`: served by the review plugin next to the month's runs."""
    from include.quality import DATA_DOCS_DIR_ENV, DEFAULT_DATA_DOCS_DIR

    return (
        Path(os.environ.get(DATA_DOCS_DIR_ENV) or DEFAULT_DATA_DOCS_DIR)
        / BillingMonth.parse(month).key
        / AUDIT_DIR_NAME
    )


def store_audit(warehouse: Warehouse, result: AuditResult, triggered_by: str | None = None) -> None:
    """The audit and its findings, in one transaction."""
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "billing_audits",
            [
                {
                    "audit_id": result.audit_id,
                    "month": result.month,
                    "audited_at": utcnow(),
                    "status": "leaks_found" if result.findings else "clean",
                    "bss_invoices": result.bss_invoices,
                    "bss_lines": result.bss_lines,
                    "billing_items": result.billing_items,
                    "findings": len(result.findings),
                    "leakage": json.dumps({currency: str(amount) for currency, amount in result.leakage.items()}),
                    "reads": json.dumps(result.reads),
                    "report_dir": str(result.report_dir) if result.report_dir else None,
                    "triggered_by": triggered_by,
                }
            ],
        )
        if result.findings:
            warehouse.insert(
                conn,
                "billing_audit_findings",
                [
                    {
                        "audit_id": result.audit_id,
                        "month": result.month,
                        "seq": seq,
                        **{key: value for key, value in row.as_record().items()},
                    }
                    for seq, row in enumerate(result.findings, start=1)
                ],
            )


def latest_audit(warehouse: Warehouse, month: str) -> dict[str, Any] | None:
    """The last audit of a month with its findings by reason (for the run report and the months page)."""
    audits = warehouse.query(
        "SELECT * FROM billing_audits WHERE month = :month ORDER BY audited_at DESC, audit_id DESC",
        {"month": BillingMonth.parse(month).key},
    )
    if not audits:
        return None
    audit = audits[0]
    audit["leakage"] = json.loads(audit["leakage"] or "{}")
    audit["by_reason"] = {
        row["reason"]: int(row["n"])
        for row in warehouse.query(
            "SELECT reason, COUNT(*) AS n FROM billing_audit_findings WHERE audit_id = :audit_id GROUP BY reason",
            {"audit_id": audit["audit_id"]},
        )
    }
    return audit


# -- the report ------------------------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("account_id", "Account id", "text"),
    ("account_name", "Account name", "text"),
    ("product_sku", "Product SKU", "text"),
    ("product_name", "Product name", "text"),
    ("bss_cost", "BSS cost", "number"),
    ("billed_amount", "Billed amount", "number"),
    ("difference", "Difference", "number"),
    ("currency", "Currency", "text"),
    ("reason", "Reason", "text"),
    ("bss_price", "BSS price", "number"),
    ("explanation", "What it means", "text"),
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def report_rows(result: AuditResult) -> list[dict[str, Any]]:
    return [{**row.as_record(), "explanation": row.reason.sentence if row.reason else ""} for row in result.findings]


def write_audit_report(result: AuditResult, directory: Path) -> Path:
    """`billing-audit.html`, `.xlsx` and `.csv` in `directory` (each written whole, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = report_rows(result)
    _write_atomically(directory / CSV_NAME, lambda path: path.write_text(to_csv(rows), encoding="utf-8"))
    _write_atomically(directory / XLSX_NAME, lambda path: path.write_bytes(to_xlsx(rows, result)))
    _write_atomically(directory / HTML_NAME, lambda path: path.write_text(render_html(rows, result), encoding="utf-8"))
    return directory


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Numbers as plain decimals; a text a spreadsheet would read as a formula gets a leading quote."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([header for _, header, _ in COLUMNS])
    for row in rows:
        writer.writerow(
            [_money(row[key]) if kind == "number" else _safe_text(row.get(key)) for key, _, kind in COLUMNS]
        )
    return buffer.getvalue()


def to_xlsx(rows: list[dict[str, Any]], result: AuditResult) -> bytes:
    """Typed cells: numbers as numbers, every text a string cell (never a formula)."""
    import xlsxwriter

    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"in_memory": True, "strings_to_formulas": False, "strings_to_urls": False})
    bold = workbook.add_format({"bold": True})
    money = workbook.add_format({"num_format": "#,##0.00"})
    sheet = workbook.add_worksheet("Findings")
    for column, (_, header, _) in enumerate(COLUMNS):
        sheet.write_string(0, column, header, bold)
    for number, row in enumerate(rows, start=1):
        for column, (key, _, kind) in enumerate(COLUMNS):
            value = row.get(key)
            if kind == "number":
                sheet.write_number(number, column, float(value), money)
            else:
                sheet.write_string(number, column, "" if value is None else str(value))
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, max(1, len(rows)), len(COLUMNS) - 1)
    about = workbook.add_worksheet("About")
    facts = [
        ("Month", result.month),
        ("Audit", result.audit_id),
        ("BSS invoices issued", result.bss_invoices),
        ("BSS lines", result.bss_lines),
        ("Autotask billing items", result.billing_items),
        ("Findings", len(result.findings)),
        *((f"Not billed ({currency})", amount) for currency, amount in result.leakage.items()),
    ]
    for number, (label, value) in enumerate(facts):
        about.write_string(number, 0, label, bold)
        if isinstance(value, int | Decimal):
            about.write_number(number, 1, float(value))
        else:
            about.write_string(number, 1, str(value))
    workbook.close()
    return buffer.getvalue()


def render_html(rows: list[dict[str, Any]], result: AuditResult) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # a customer named <script> is text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["money"] = _money
    return environment.get_template("billing_audit.html.j2").render(
        result=result, rows=rows, columns=COLUMNS, reasons=list(LeakReason), csv_name=CSV_NAME, xlsx_name=XLSX_NAME
    )


def _money(value: Any) -> str:
    return f"{Decimal(value).quantize(_CENT, ROUND_HALF_UP)}"


def _safe_text(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- values ----------------------------------------------------------------------------------------------------


def _decimal(value: Any, name: str, record: Mapping[str, Any]) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, bool):
        raise AuditInputError(f"{name} of {record.get('id')} is not a number: {value!r}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise AuditInputError(f"{name} of {record.get('id')} is not a number: {value!r}") from None


def _day(value: Any, name: str, record: Mapping[str, Any]) -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise AuditInputError(f"{name} of {record.get('id')} is not a date: {value!r}") from None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _add_months(day: date, months: int) -> date:
    import calendar

    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def audit_and_alert(
    bss: BssBilling,
    autotask: AutotaskBilling,
    warehouse: Warehouse,
    month: str,
    settings: Any,
    triggered_by: str | None = None,
) -> AuditResult:
    """The audit as the DAG task and `make audit` run it: `audit_tolerance`, and one leakage alert
    (include/alerts.py) when any currency's leakage is above `audit_alert_threshold`."""
    from include.alerts import AlertEvent, alert

    result = audit_month(bss, autotask, warehouse, month, tolerance=settings.audit_tolerance, triggered_by=triggered_by)
    above = result.above(Decimal(str(settings.audit_alert_threshold)))
    if above:
        amounts = ", ".join(f"{currency} {amount:,.2f}" for currency, amount in above.items())
        summary = f"{len(result.findings)} findings {result.counts}; not billed: {amounts}. Report: {result.csv_path}"
        try:
            alert(AlertEvent.LEAKAGE, result.month, summary, details={"audit": result.audit_id, **result.counts})
        except Exception:  # the audit's findings are stored; a lost alert must not fail it
            log.exception("could not send the leakage alert")
    return result
