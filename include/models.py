"""The canonical objects that cross module boundaries: a typed BSS charge line and its vocabularies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

MONTH_PATTERN = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class BillingPeriod(StrEnum):
    """How often a product is billed (BSS `billingPlan.billingPeriod`)."""

    MONTHLY = "Monthly"
    QUARTERLY = "Quarterly"
    SEMI_ANNUALLY = "SemiAnnually"
    ANNUALLY = "Annually"


class BillingCycle(StrEnum):
    """The commitment term (BSS `billingCycle`)."""

    MONTHLY = "Monthly"
    ANNUAL = "Annual"
    BIENNIAL = "Biennial"
    TRIENNIAL = "Triennial"


class ChargeType(StrEnum):
    RECURRING = "Recurring"
    PRORATED = "Prorated"
    ONE_TIME = "OneTime"  # a setup fee or one-off purchase: billed once, no seat count
    USAGE = "Usage"  # consumption billed in arrears (Azure, storage, SPLA): no seat count
    CREDIT = "Credit"  # a cancellation's refund (a seat line) or money back (action Credit: not one)


class ChargeAction(StrEnum):
    CYCLE = "Cycle"
    NEW = "New"
    RENEWAL = "Renewal"
    QUANTITY_INCREASE = "QuantityIncrease"
    QUANTITY_DECREASE = "QuantityDecrease"
    CANCELLATION = "Cancellation"
    SETUP = "Setup"  # a setup fee (OneTime)
    USAGE = "Usage"  # a rated consumption line (Usage)
    CREDIT = "Credit"  # money back, e.g. a goodwill credit (Credit); `creditFor` names what it reverses


# The lines that carry the seat count (units, and the recurring unit cost and price): every other line (setup
# fees, usage, credits that are not a cancellation) is kept in the warehouse for the charges part, and never
# moves the units, cost or price of a contract service. The SQL that reads seat lines spells the same rule
# (`reconcile_lines.sql`, `subscription_history.sql`, `quality_charge_lines.sql`).
SEAT_CHARGE_TYPES = frozenset({ChargeType.RECURRING, ChargeType.PRORATED, ChargeType.CREDIT})
SEAT_ACTIONS = frozenset(
    {
        ChargeAction.CYCLE,
        ChargeAction.NEW,
        ChargeAction.RENEWAL,
        ChargeAction.QUANTITY_INCREASE,
        ChargeAction.QUANTITY_DECREASE,
        ChargeAction.CANCELLATION,
    }
)
# The lines whose unit price and cost are the subscription's recurring ones (a cancellation's credit is not)
RECURRING_PRICE_CHARGE_TYPES = frozenset({ChargeType.RECURRING, ChargeType.PRORATED})


def counts_seats(charge_type: str, action: str) -> bool:
    """Whether a line of this type and action carries the subscription's seat count."""
    return charge_type in SEAT_CHARGE_TYPES and action in SEAT_ACTIONS


@dataclass(frozen=True, slots=True)
class BillingMonth:
    """One billing month `YYYY-MM`; the unit of work of a run."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> BillingMonth:
        match = MONTH_PATTERN.match(text.strip()) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"month must look like YYYY-MM (e.g. 2026-10), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def key(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last_day(self) -> date:
        return self.next().first_day - timedelta(days=1)

    def next(self) -> BillingMonth:
        return BillingMonth(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> BillingMonth:
        return BillingMonth(self.year - (self.month == 1), 12 if self.month == 1 else self.month - 1)

    def shifted(self, months: int) -> BillingMonth:
        index = self.year * 12 + (self.month - 1) + months
        return BillingMonth(index // 12, index % 12 + 1)

    @classmethod
    def of(cls, day: date) -> BillingMonth:
        return cls(day.year, day.month)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One BSS charge line, typed. Built only by `include.bss_adapter` from the API's record."""

    charge_id: str
    account_id: str
    account_name: str
    account_code: str | None
    subscription_id: str
    subscription_status: str | None
    product_id: str
    product_sku: str | None
    product_name: str
    billing_plan_id: str | None
    billing_plan_name: str | None
    billing_period: BillingPeriod
    billing_cycle: BillingCycle
    charge_type: ChargeType
    action: ChargeAction
    quantity: Decimal
    subscription_quantity: Decimal
    unit_cost: Decimal
    unit_price: Decimal
    currency: str
    charge_start_date: date
    charge_end_date: date
    effective_date: date
    invoice_id: str | None
    # The BSS's own order of charges: its timestamp of the charge (UTC, when it sends one) and the numeric
    # sequence of the charge id (`CHG-2026-10-9` -> 9). Lines of one subscription and date follow
    # (effective_date, charged_at, charge_sequence, charge_id), never the text order of the ids.
    charged_at: datetime | None = None
    charge_sequence: int | None = None


@dataclass(frozen=True, slots=True)
class BssAccount:
    """A BSS account (end customer): what is needed to create the Autotask company."""

    account_id: str
    name: str
    code: str | None
    status: str | None
    phone: str | None
    email: str | None
    vat_number: str | None
    street: str | None
    city: str | None
    postal_code: str | None
    country: str | None
