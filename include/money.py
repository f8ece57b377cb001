"""What a plan line does to the money: billed, cost and margin, per currency, the one place every page takes it from.

Words (README, *Billed, cost and margin*):
- **billed**: what the customer is billed, unit price × units, per billing period; a line's *billed change* is
  (units after × unit price after) − (units before × unit price before): the price × unit change of an adjustment;
- **cost**: what the MSP pays, the BSS unit cost × units; a line's *cost change* likewise;
- **margin**: billed − cost (per unit: unit price − unit cost; a line's margin change: billed change − cost change).

Per line (`line_money`): the BSS unit price and cost of the subscription's recurring line (a seat line, never a
setup fee or another one-off line), Autotask's unit price and cost (the run's snapshot of the contract service), the
unit price and cost the line loads, and the billed, cost and margin change, each rounded to the cent once (sums of
cents are exact). The unit price a line loads comes from one seam, `loaded_unit_price`: the plan action's
`unit_price_after` when the plan sets one (the price policy), else the BSS unit price.

Totals (`money_totals`, `Money`) are kept per currency and per bucket (`money_bucket`): what loads on approval, what
waits for a person, what is blocked or excluded. Amounts in different currencies are never added together: there is
no function here that could.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from include.warehouse import Warehouse

CENT = Decimal("0.01")
ZERO = Decimal(0)
# The kinds whose lines change units or cost in Autotask (creates carry no units: their first adjustment does).
ADJUSTING_KINDS = frozenset({"adjust_units", "change_cost", "change_price"})
# The BSS lines that state the seat count, and so the recurring unit price and cost (a OneTime setup fee never).
SEAT_CHARGE_TYPES = ("Recurring", "Prorated", "Credit")
ONE_OFF_CHARGE_TYPE = "OneTime"
ONE_OFF_STATE = "one-off charge, not posted yet"
UNKNOWN_CURRENCY = "?"
# plan_actions columns of the price policy (unit price before and after), read where the plan has them
PRICE_COLUMNS = ("unit_price_before", "unit_price_after")

# The buckets of the totals: what loads on approval, what waits for a person, what is blocked or excluded.
LOADS, WAITS, HELD = "loads", "waits", "held"
BUCKETS = {LOADS: "loads on approval", WAITS: "waits for a person", HELD: "blocked or excluded"}
_LOADING_STATUSES = ("proposed", "approved", "applied")
_HELD_STATUSES = ("blocked", "excluded")


def money_bucket(status: str, line_approved: bool = False) -> str:
    """The bucket of a line with this status: proposed lines (and flagged lines a reviewer approved one by one) load
    on approval, as approved and applied lines did; blocked and excluded lines never load as they stand; the rest
    (flagged, needs-mapping, failed, a status unknown here) wait for a person."""
    if status in _LOADING_STATUSES or (status == "flagged" and line_approved):
        return LOADS
    if status in _HELD_STATUSES:
        return HELD
    return WAITS


def bucket_sql(status: str, line_approved: str) -> str:
    """`money_bucket` as an SQL expression over a status column and a condition true when the line was approved one
    by one (the grid's totals run in SQL)."""
    loading = ", ".join(f"'{value}'" for value in _LOADING_STATUSES)
    held = ", ".join(f"'{value}'" for value in _HELD_STATUSES)
    return (
        f"CASE WHEN {status} IN ({loading}) OR ({status} = 'flagged' AND {line_approved}) THEN '{LOADS}'"
        f" WHEN {status} IN ({held}) THEN '{HELD}' ELSE '{WAITS}' END"
    )


# -- formatting -------------------------------------------------------------------------------------------------


def cents(value: Any) -> Decimal:
    """The amount rounded to the cent (half up), never −0."""
    amount = _decimal(value) or ZERO
    rounded = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    return rounded if rounded else ZERO.quantize(CENT)


def money_text(value: Any, signed: bool = False) -> str:
    """Money as a page shows it: 2 decimals, thousands separators, "−" for a negative amount, never "−0.00";
    `signed`: "+" before a positive amount. "" for no amount."""
    if value is None or value == "":
        return ""
    amount = cents(value)
    text = f"{abs(amount):,.2f}"
    if amount < 0:
        return "−" + text
    return ("+" + text) if signed and amount > 0 else text


def units_text(value: Any, signed: bool = False) -> str:
    """Units as a page shows them: whole units without ".0" (with thousands separators), fractions as they are."""
    number = _decimal(value)
    if number is None:
        return ""
    number = number.normalize()
    if number == number.to_integral_value():
        text = f"{abs(int(number)):,}"
    else:
        whole, _, places = f"{abs(number):f}".partition(".")
        text = f"{int(whole):,}.{places}"
    if number < 0:
        return "−" + text
    return ("+" + text) if signed and number > 0 else text


def unit_amount_text(value: Any) -> str:
    """A unit price or cost: at least 2 decimals, up to the 4 the BSS and Autotask keep (6.4283, 12.50)."""
    number = _decimal(value)
    if number is None:
        return ""
    number = number.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    whole, _, places = f"{abs(number):f}".partition(".")
    places = places.rstrip("0").ljust(2, "0")
    text = f"{int(whole):,}.{places}"
    return ("−" + text) if number < 0 else text


# -- per line ---------------------------------------------------------------------------------------------------


def loaded_unit_price(action: Any, bss_unit_price: Decimal | None) -> Decimal | None:
    """The unit price a plan line loads into Autotask — the seam between the price policy and every figure shown:
    the plan action's `unit_price_after` when the plan sets one (a `PlanAction` or a `plan_actions` row), else the
    BSS unit price of the subscription's recurring line."""
    after = action.get("unit_price_after") if isinstance(action, Mapping) else getattr(action, "unit_price_after", None)
    after = _decimal(after)
    return after if after is not None else bss_unit_price


def _price_before(action: Any) -> Decimal | None:
    before = (
        action.get("unit_price_before") if isinstance(action, Mapping) else getattr(action, "unit_price_before", None)
    )
    return _decimal(before)


@dataclass(frozen=True)
class LineMoney:
    """What one plan line does to the money, in its currency (amounts to the cent, unit figures as stored)."""

    currency: str
    bss_unit_price: Decimal | None = None
    bss_unit_cost: Decimal | None = None
    autotask_unit_price: Decimal | None = None
    autotask_unit_cost: Decimal | None = None
    unit_price: Decimal | None = None  # what the line loads (`loaded_unit_price`)
    unit_cost: Decimal | None = None
    units_added: Decimal = ZERO
    units_removed: Decimal = ZERO
    billed_change: Decimal = ZERO
    cost_change: Decimal = ZERO

    @property
    def margin_change(self) -> Decimal:
        return self.billed_change - self.cost_change

    @property
    def unit_margin(self) -> Decimal | None:
        if self.unit_price is None or self.unit_cost is None:
            return None
        return self.unit_price - self.unit_cost

    @property
    def below_cost(self) -> bool:
        """Sold below cost: the unit price the line loads is under its unit cost."""
        return self.unit_margin is not None and self.unit_margin < 0


class PriceBook:
    """The prices and costs a month's plan lines are shown at: the BSS recurring lines of the month (per subscription,
    by date), the run's snapshot of Autotask's contract services (the run's own snapshot wins over earlier ones of the
    month), the currencies of accounts and companies, and the prices a plan gives the contract services it creates.

    `accounts`: only these customers' lines (a review decision's re-planned lines)."""

    def __init__(
        self,
        warehouse: Warehouse,
        month: str,
        run_id: str,
        plan_rows: Sequence[Mapping[str, Any]] = (),
        accounts: Collection[str] | None = None,
    ) -> None:
        params: dict[str, Any] = {"month": month}
        only = ""
        if accounts is not None:
            from include.plan import sql_in

            condition, account_params = sql_in("account_id", accounts, "acc")
            only, params = f" AND {condition}", {**params, **account_params}
        # per subscription its seat lines of the month in order: (ISO date, unit price, unit cost) as read
        self.seats: dict[str, list[tuple[str, Any, Any]]] = {}
        self.subscription_currency: dict[str, str] = {}
        self.account_currency: dict[str, str] = {}
        with warehouse.engine.connect() as conn:
            lines = conn.execute(
                sa.text(
                    "SELECT subscription_id, account_id, charge_type, unit_price, unit_cost, currency, effective_date"
                    f" FROM charge_lines WHERE month = :month{only}"
                    " ORDER BY effective_date, charged_at, charge_sequence, charge_id"
                ),
                params,
            ).all()
            for subscription, account, charge_type, price, cost, currency, day in lines:
                self.subscription_currency.setdefault(subscription, currency)
                self.account_currency.setdefault(account, currency)
                if charge_type in SEAT_CHARGE_TYPES:
                    self.seats.setdefault(subscription, []).append((_iso_day(day), price, cost))
            only_contracts, contract_params = "", {}
            if accounts is not None:  # a scope's lines: the contract services of the contracts they name
                from include.plan import sql_in

                contract_ids = {int(row["contract_id"]) for row in plan_rows if row.get("contract_id") is not None}
                condition, contract_params = sql_in("t.contract_id", contract_ids, "con")
                only_contracts = f" AND {condition}"
            snapshot = conn.execute(
                sa.text(
                    "SELECT t.run_id, t.contract_service_id, t.contract_id, t.service_id, t.unit_price, t.unit_cost,"
                    " s.taken_at FROM at_contract_services t JOIN at_snapshots s ON s.run_id = t.run_id"
                    f" WHERE s.month = :month{only_contracts}"
                ),
                {"month": month, **contract_params},
            ).all()
            companies = conn.execute(
                sa.text(
                    "SELECT t.run_id, t.company_id, t.currency, s.taken_at FROM at_companies t"
                    " JOIN at_snapshots s ON s.run_id = t.run_id WHERE s.month = :month"
                ),
                {"month": month},
            ).all()
        # the run's own snapshot last, so it wins; earlier snapshots by time
        snapshot = sorted(snapshot, key=lambda row: (row[0] == run_id, str(row[6])))
        self.contract_services = {int(row[1]): (_decimal(row[4]), _decimal(row[5])) for row in snapshot}
        self.pairs = {(int(row[2]), int(row[3])): (_decimal(row[4]), _decimal(row[5])) for row in snapshot}
        companies = sorted(companies, key=lambda row: (row[0] == run_id, str(row[3])))
        self.company_currency = {int(row[1]): row[2] for row in companies if row[2]}
        # each line's money once worked out (by action id), for a caller that needs it twice
        self.priced: dict[str, LineMoney] = {}
        self.created: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        for row in plan_rows:
            if row["kind"] == "create_contract_service":
                payload = _json_object(row.get("payload"))
                self.created[row["action_id"]] = (_decimal(payload.get("unitPrice")), _decimal(payload.get("unitCost")))

    def add_created(self, plan_rows: Iterable[Mapping[str, Any]]) -> None:
        """Learn the prices the plan gives the contract services it creates (rows named by a scoped line)."""
        for row in plan_rows:
            if row["kind"] == "create_contract_service" and row["action_id"] not in self.created:
                payload = _json_object(row.get("payload"))
                self.created[row["action_id"]] = (_decimal(payload.get("unitPrice")), _decimal(payload.get("unitCost")))

    def currency_of(self, row: Mapping[str, Any], subscriptions: Sequence[str] | None = None) -> str:
        for subscription in _subscriptions(row) if subscriptions is None else subscriptions:
            if self.subscription_currency.get(subscription):
                return self.subscription_currency[subscription]
        if row.get("account_id") in self.account_currency:
            return self.account_currency[row["account_id"]]
        company = _int(row.get("company_id"))
        return self.company_currency.get(company, "") if company is not None else ""

    def bss_seat(
        self, row: Mapping[str, Any], subscriptions: Sequence[str] | None = None
    ) -> tuple[Decimal | None, Decimal | None]:
        """The BSS unit price and cost of the line's subscription: its recurring line in force on the line's date
        (the latest one of the month up to that date, else the month's first)."""
        day = _iso_day(row.get("effective_date")) or "9999-12-31"
        for subscription in _subscriptions(row) if subscriptions is None else subscriptions:
            seats = self.seats.get(subscription)
            if not seats:
                continue
            chosen = seats[0]
            for seat in seats:
                if seat[0] and seat[0] > day:
                    break
                chosen = seat
            return _decimal(chosen[1]), _decimal(chosen[2])
        return None, None

    def autotask(self, row: Mapping[str, Any]) -> tuple[Decimal | None, Decimal | None]:
        """Autotask's unit price and cost of the line's contract service (the run's snapshot), if it exists yet."""
        cs_id = _int(row.get("contract_service_id"))
        if cs_id is not None and cs_id in self.contract_services:
            return self.contract_services[cs_id]
        pair = (_int(row.get("contract_id")), _int(row.get("service_id")))
        if None not in pair and pair in self.pairs:
            return self.pairs[pair]  # type: ignore[index]
        return None, None


def line_money(row: Mapping[str, Any], book: PriceBook) -> LineMoney:
    """What a plan line (a `plan_actions` row) does to the money, in its currency. The unit cost it is priced at:
    the plan's, else Autotask's contract service's, else the one the plan gives a new contract service, else the BSS
    recurring line's. The unit price: `loaded_unit_price`."""
    subscriptions = _subscriptions(row)
    currency = book.currency_of(row, subscriptions) or UNKNOWN_CURRENCY
    bss_price, bss_cost = book.bss_seat(row, subscriptions)
    at_price, at_cost = book.autotask(row)
    _created_price, created_cost = book.created.get(row.get("contract_service_action_id") or "", (None, None))
    if row["kind"] == "create_contract_service":
        created_cost = _decimal(_json_object(row.get("payload")).get("unitCost"))
    cost_after = _first(_decimal(row.get("unit_cost_after")), at_cost, created_cost, bss_cost)
    cost_before = _first(_decimal(row.get("unit_cost_before")), cost_after)
    price_after = loaded_unit_price(row, bss_price)
    price_before = _first(_price_before(row), price_after)
    prices = (currency, bss_price, bss_cost, at_price, at_cost, price_after, cost_after)
    if row["kind"] not in ADJUSTING_KINDS:
        return LineMoney(*prices)
    after, before, change = (_decimal(row.get(key)) for key in ("units_after", "units_before", "unit_change"))
    if before is None and after is not None and change is not None:
        before = after - change
    if after is None and before is not None and change is not None:
        after = before + change
    if change is None and None not in (after, before):
        change = after - before  # type: ignore[operator]
    change = change or ZERO
    billed = cost = ZERO
    if None not in (after, before):
        if None not in (price_after, price_before):
            billed = cents(after * price_after - before * price_before)  # type: ignore[operator]
        if None not in (cost_after, cost_before):
            cost = cents(after * cost_after - before * cost_before)  # type: ignore[operator]
    return LineMoney(*prices, max(change, ZERO), max(-change, ZERO), billed, cost)


# -- totals -----------------------------------------------------------------------------------------------------


_NET = ("billed", "cost", "margin")


@dataclass
class Money:
    """Lines, units and money added and removed, in one currency and one bucket: billed, cost and margin."""

    lines: int = 0
    units_added: Decimal = ZERO
    units_removed: Decimal = ZERO
    billed_added: Decimal = ZERO
    billed_removed: Decimal = ZERO
    cost_added: Decimal = ZERO
    cost_removed: Decimal = ZERO

    def add(self, line: LineMoney) -> None:
        self.lines += 1
        self.units_added += line.units_added
        self.units_removed += line.units_removed
        self.billed_added += max(line.billed_change, ZERO)
        self.billed_removed += max(-line.billed_change, ZERO)
        self.cost_added += max(line.cost_change, ZERO)
        self.cost_removed += max(-line.cost_change, ZERO)

    @property
    def billed(self) -> Decimal:
        return self.billed_added - self.billed_removed

    @property
    def cost(self) -> Decimal:
        return self.cost_added - self.cost_removed

    @property
    def margin(self) -> Decimal:
        return self.billed - self.cost

    def as_dict(self) -> dict[str, Any]:
        """Exact figures as text (money to the cent, units as they are) with the page's texts next to them."""
        figures = {
            "billed_added": self.billed_added,
            "billed_removed": self.billed_removed,
            "billed": self.billed,
            "cost_added": self.cost_added,
            "cost_removed": self.cost_removed,
            "cost": self.cost,
            "margin": self.margin,
        }
        return {
            "lines": self.lines,
            "units_added": _plain(self.units_added),
            "units_removed": _plain(self.units_removed),
            **{key: str(cents(value)) for key, value in figures.items()},
            "text": {
                "units_added": units_text(self.units_added),
                "units_removed": units_text(self.units_removed),
                **{key: money_text(value, signed=key in _NET) for key, value in figures.items()},
            },
        }


@dataclass
class MoneyTotals:
    """Per currency, per bucket (`BUCKETS`): the money of the lines added. Never a sum across currencies."""

    by_currency: dict[str, dict[str, Money]] = field(default_factory=dict)

    def add(self, line: LineMoney, bucket: str) -> None:
        if line.units_added or line.units_removed or line.billed_change or line.cost_change:
            self.of(line.currency, bucket).add(line)

    def of(self, currency: str, bucket: str) -> Money:
        return self.by_currency.setdefault(currency or UNKNOWN_CURRENCY, {}).setdefault(bucket, Money())

    def currencies(self) -> list[str]:
        return sorted(self.by_currency)

    def as_dict(self) -> dict[str, Any]:
        """{currency: {bucket: figures}} with every bucket present, in the order of `BUCKETS`."""
        return {
            currency: {bucket: (self.by_currency[currency].get(bucket) or Money()).as_dict() for bucket in BUCKETS}
            for currency in self.currencies()
        }


def money_totals(lines: Iterable[tuple[LineMoney, str]]) -> MoneyTotals:
    """The totals of (line money, bucket) pairs, per currency and bucket."""
    totals = MoneyTotals()
    for line, bucket in lines:
        totals.add(line, bucket)
    return totals


# -- one-off charges ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneOffCharge:
    """A BSS OneTime line (a setup fee): shown with the month, not posted to Autotask yet."""

    charge_id: str
    account_id: str
    customer: str
    subscription_id: str
    product: str
    sku: str
    effective_date: date | None
    quantity: Decimal
    unit_price: Decimal
    unit_cost: Decimal
    currency: str
    state: str = ONE_OFF_STATE

    @property
    def amount(self) -> Decimal:
        """What the customer is billed for it: quantity × unit price, to the cent."""
        return cents(self.quantity * self.unit_price)

    @property
    def cost(self) -> Decimal:
        return cents(self.quantity * self.unit_cost)

    def as_dict(self) -> dict[str, Any]:
        return {
            "charge_id": self.charge_id,
            "account_id": self.account_id,
            "customer": self.customer,
            "subscription": self.subscription_id,
            "product": self.product,
            "sku": self.sku,
            "effective_date": self.effective_date.isoformat() if self.effective_date else "",
            "quantity": float(self.quantity),
            "unit_price": float(self.unit_price),
            "unit_cost": float(self.unit_cost),
            "amount": float(self.amount),
            "cost": float(self.cost),
            "currency": self.currency,
            "state": self.state,
            "text": {
                "quantity": units_text(self.quantity),
                "unit_price": unit_amount_text(self.unit_price),
                "amount": money_text(self.amount),
                "cost": money_text(self.cost),
            },
        }


def one_off_charges(warehouse: Warehouse, month: str, accounts: Collection[str] | None = None) -> list[OneOffCharge]:
    """The month's OneTime charge lines (setup fees), per customer and date: shown, not posted yet."""
    params: dict[str, Any] = {"month": month, "one_off": ONE_OFF_CHARGE_TYPE}
    only = ""
    if accounts is not None:
        from include.plan import sql_in

        condition, account_params = sql_in("account_id", accounts, "acc")
        only, params = f" AND {condition}", {**params, **account_params}
    rows = warehouse.query(
        "SELECT charge_id, account_id, account_name, subscription_id, product_name, product_sku, effective_date,"
        " quantity, unit_price, unit_cost, currency FROM charge_lines"
        f" WHERE month = :month AND charge_type = :one_off{only} ORDER BY account_name, effective_date, charge_id",
        params,
    )
    return [
        OneOffCharge(
            charge_id=row["charge_id"],
            account_id=row["account_id"],
            customer=row["account_name"],
            subscription_id=row["subscription_id"],
            product=row["product_name"],
            sku=row["product_sku"] or "",
            effective_date=_day(row["effective_date"]),
            quantity=_decimal(row["quantity"]) or ZERO,
            unit_price=_decimal(row["unit_price"]) or ZERO,
            unit_cost=_decimal(row["unit_cost"]) or ZERO,
            currency=row["currency"] or UNKNOWN_CURRENCY,
        )
        for row in rows
    ]


def one_off_totals(charges: Iterable[OneOffCharge]) -> dict[str, dict[str, Any]]:
    """Per currency: how many one-off charges, their amount and cost (never summed across currencies)."""
    totals: dict[str, dict[str, Any]] = {}
    for charge in charges:
        of = totals.setdefault(charge.currency, {"charges": 0, "amount": ZERO, "cost": ZERO})
        of["charges"] += 1
        of["amount"] += charge.amount
        of["cost"] += charge.cost
    return {
        currency: {
            "charges": values["charges"],
            "amount": str(values["amount"]),
            "cost": str(values["cost"]),
            "text": {"amount": money_text(values["amount"]), "cost": money_text(values["cost"])},
        }
        for currency, values in sorted(totals.items())
    }


# -- helpers ----------------------------------------------------------------------------------------------------


def _first(*values: Decimal | None) -> Decimal | None:
    return next((value for value in values if value is not None), None)


def _subscriptions(row: Mapping[str, Any]) -> Sequence[str]:
    value = row.get("subscription_ids")
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return _parsed_subscriptions(value or "[]")


@lru_cache(maxsize=65_536)
def _parsed_subscriptions(text: str) -> tuple[str, ...]:
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return ()
    return tuple(str(item) for item in parsed) if isinstance(parsed, list) else ()


def _iso_day(value: Any) -> str:
    """A date as ISO text (compared as text: "2026-10-09" < "2026-10-10"); "" for none."""
    if value is None or value == "":
        return ""
    return value.isoformat()[:10] if isinstance(value, date) else str(value)[:10]


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _day(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value if type(value) is date else value.date()  # type: ignore[attr-defined]
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _plain(value: Decimal) -> str:
    number = value.normalize()
    return f"{number:f}" if number else "0"
