"""A deterministic synthetic MSP customer base and its BSS charge lines.

The BSS and Autotask sandboxes both build the same `Universe` from (customers, subscriptions per
customer, seed), so a test can reason about "the truth" without either server.

Charge semantics (what a validation suite may rely on), per subscription within one month. Lines are
in the BSS's order: by charge id *number* (`CHG-2026-10-9` before `CHG-2026-10-10`; the text order
differs), which is also the order of `createdDate` (an ISO 8601 timestamp, strictly increasing) and
agrees with `effectiveDate`:
- restating lines state the total (`quantity == subscriptionQuantity`) whatever came before:
  `Cycle` (Recurring, the regular charge: on the 1st for monthly billing plans; for quarterly,
  semi-annual and annual plans only in their billing months, on the billing day = the start date's
  day, charge period to the end of the billing period), `Renewal` (Recurring, a new commitment term
  starts on the anniversary day = the start date's day, on any day of the month; it may change the
  total, 10 → 12; it replaces the Cycle line of that day; charge period to the end of the renewed
  term) and `New` (Recurring when it starts on the 1st, Prorated otherwise);
- a `New` subscription is followed by a OneTime setup-fee line (action `New`, same quantity);
- every change line (`QuantityIncrease`/`QuantityDecrease` as Prorated, `Cancellation` as Credit)
  has `subscriptionQuantity == previous total + quantity`, where the previous total is the
  subscription's previous line (this month or an earlier one); a cancellation ends at 0 and nothing
  follows it. A month's first line of a subscription can be a change line (a plan billed
  quarterly/semi-annually/annually between its billing days); on one date a change line can follow a
  restating line (a change on the 1st after the Cycle line) or another change line (two changes on
  one day); on a renewal day the renewal restates the total and no change line follows;
- a subscription in force may have no line in a month (billed less often than monthly), and a
  subscription may stop being billed without a cancellation line (`stops_billing_on`: a monthly plan
  gone from the BSS, or an annual term that lapsed without renewal);
- a subscription may move to another account at a month start (`moved_on`): from that month on its
  lines are under the new account, the month before under the old one; within a month a
  subscription's lines are all under one account, except
- a move in mid-month (`moved_on` on day 2-28, only in the showcase month and the month after it, to a
  customer whose name has accents and a legal form): the old account is billed up to the move (its Cycle on
  the 1st) and credited on the move day (a `Cancellation` to 0), the new account gets a `New` line (Prorated,
  the same units, no setup fee) on that day, issued after the credit; from the next month on the new account
  is billed. Two accounts, one subscription id, in one month;
- money is in the account's currency (EUR, GBP, USD), from that currency's own price list: the EUR catalogue
  converted, then moved per product by the list (`price_list_factor`: a GBP list rounds some prices up, a USD list
  discounts others), so one product has three prices that are not each other's conversion;
- the BSS's unit cost of some products rose on `COST_CHANGE_DAY` (`cost_changed`): every line from that day on
  carries the new cost (the Autotask seed still holds the old one);
- setup fees: a `New` subscription's OneTime line (action `New`), and a OneTime `Setup` line (an onboarding fee
  per added seat) after some quantity increases (`SETUP_ON_INCREASE_SHARE`); neither carries the seat count.
"""

from __future__ import annotations

import bisect
import calendar
import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

# Lines that restate the subscription's total (quantity == subscriptionQuantity) and lines that change it.
RESTATING_ACTIONS = ("Cycle", "New", "Renewal")
CHANGE_ACTIONS = ("QuantityIncrease", "QuantityDecrease", "Cancellation")
BILLING_CYCLE_MONTHS = {"Monthly": 1, "Annual": 12, "Biennial": 24, "Triennial": 36}
BILLING_PLANS = {
    "Monthly": ("BP-1", "Monthly billing"),
    "Quarterly": ("BP-2", "Quarterly billing"),
    "SemiAnnually": ("BP-3", "Semi-annual billing"),
    "Annually": ("BP-4", "Annual billing"),
}
# Prices in the catalogue are EUR; other currencies are converted at these fixed rates.
EXCHANGE_RATES = {"EUR": Decimal("1"), "GBP": Decimal("0.8571"), "USD": Decimal("1.0843")}
SETUP_FEE_SHARE = Decimal("0.25")
# Each currency's own price list: the converted catalogue price times one of these, per (product, currency).
_PRICE_LIST_FACTORS = (Decimal("1"), Decimal("1"), Decimal("1.05"), Decimal("0.96"), Decimal("1.10"))
# The distributor's cost of a share of the products rose by COST_RISE from this day on (a month start).
COST_CHANGE_DAY = date(2026, 10, 1)
COST_CHANGE_SHARE = 0.3
COST_RISE = Decimal("1.03")
# Of quantity increases, the share followed by a OneTime `Setup` line (an onboarding fee per added seat).
SETUP_ON_INCREASE_SHARE = 0.25
ONBOARDING_FEE_SHARE = Decimal("0.5")
_FOUR_PLACES = Decimal("0.0001")
_ONE_DAY = timedelta(days=1)
# Months between two charges of a billing plan (billingPlan.billingPeriod).
BILLING_PERIOD_MONTHS = {"Monthly": 1, "Quarterly": 3, "SemiAnnually": 6, "Annually": 12}
# When the BSS creates a day's lines: the billing run (Cycle, Renewal) just after midnight, orders and
# changes from the morning on; lines of one day are 100 ms apart in id order.
_BILLING_RUN_AT = timedelta(minutes=5)
_ORDERS_FROM = timedelta(hours=9)
_CREATED_STEP = timedelta(milliseconds=100)


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    code: str
    status: str
    phone: str
    email: str
    vat_number: str
    street: str
    city: str
    postal_code: str
    country: str
    currency: str


@dataclass(frozen=True)
class Product:
    id: str
    sku: str
    name: str
    billing_period: str
    unit_cost: Decimal
    unit_price: Decimal


@dataclass
class Subscription:
    id: str
    account_id: str  # the account that bought it (the owner of its Autotask contract)
    product_id: str
    billing_cycle: str
    start_date: date
    term_end_date: date
    quantity_changes: list[tuple[date, int]]  # (day, new total), in order; one day may hold several
    cancelled_on: date | None = None
    # moved to `moved_to` on `moved_on` (a month start, or a day in mid-month: `moved_mid_month`)
    moved_on: date | None = None
    moved_to: str | None = None
    # from this day on the BSS bills nothing, without a cancellation line; stop_reason says why:
    # "vanished" (a monthly plan gone from the BSS) or "lapsed" (the term ended without renewal)
    stops_billing_on: date | None = None
    stop_reason: str | None = None
    # the earlier subscription of the same account to the same product
    second_of: str | None = None
    _change_days: list[date] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._change_days = [day for day, _ in self.quantity_changes]

    def set_changes(self, changes: list[tuple[date, int]]) -> None:
        self.quantity_changes = changes
        self._change_days = [day for day, _ in changes]

    @property
    def ends_on(self) -> date | None:
        """The first day the subscription holds nothing in the BSS (cancelled or no longer billed)."""
        ends = [day for day in (self.cancelled_on, self.stops_billing_on) if day is not None]
        return min(ends) if ends else None

    def units_on(self, day: date) -> int:
        """Total units in force at the end of `day` (0 before the start and from its end on)."""
        ends_on = self.ends_on
        if day < self.start_date or (ends_on is not None and day >= ends_on):
            return 0
        index = bisect.bisect_right(self._change_days, day) - 1
        return self.quantity_changes[index][1] if index >= 0 else 0

    def units_before(self, day: date) -> int:
        """Total units in force when `day` begins (before that day's changes)."""
        return self.units_on(day - _ONE_DAY)

    @property
    def moved_mid_month(self) -> bool:
        return self.moved_on is not None and self.moved_on.day != 1

    def account_on(self, day: date) -> str:
        """The account the subscription belongs to on `day`."""
        if self.moved_on is not None and day >= self.moved_on:
            return self.moved_to or self.account_id
        return self.account_id

    def renewal_dates(self, until: date) -> list[date]:
        """First days of the renewed commitment terms up to `until` (the start date's day of month)."""
        months = BILLING_CYCLE_MONTHS[self.billing_cycle]
        renewals: list[date] = []
        if months == 1:
            return renewals  # monthly commitments roll over silently
        ends_on = self.ends_on
        term_end = self.term_end_date
        while term_end < until:
            renewal = term_end + _ONE_DAY
            if ends_on is not None and renewal >= ends_on:
                break
            renewals.append(renewal)
            term_end = _add_months(renewal, months) - _ONE_DAY
        return renewals

    def term_end_on(self, day: date) -> date:
        """The commitment end in force on `day` (renewals move it on by one term; a lapsed or
        cancelled subscription keeps its last term end)."""
        months = BILLING_CYCLE_MONTHS[self.billing_cycle]
        ends_on = self.ends_on
        term_end = self.term_end_date
        while term_end < day:
            renewal = term_end + _ONE_DAY
            if ends_on is not None and renewal >= ends_on:
                break
            term_end = _add_months(renewal, months) - _ONE_DAY
        return term_end


@dataclass
class Universe:
    accounts: list[Account]
    products: list[Product]
    subscriptions: list[Subscription]
    months: tuple[str, str] = ("2026-01", "2027-12")
    _accounts_by_id: dict[str, Account] = field(default_factory=dict, init=False, repr=False)
    _products_by_id: dict[str, Product] = field(default_factory=dict, init=False, repr=False)
    _month_cache: dict[str, list[dict]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._accounts_by_id = {account.id: account for account in self.accounts}
        self._products_by_id = {product.id: product for product in self.products}

    def account(self, id: str) -> Account:
        return self._accounts_by_id[id]

    def product(self, id: str) -> Product:
        return self._products_by_id[id]

    def prices_for(self, product: Product, currency: str, on: date | None = None) -> tuple[Decimal, Decimal]:
        """(unit cost, unit price) of a product in a customer's currency on `on` (None: the latest figures): the
        price from that currency's own list, the cost after its rise when the product's cost changed by then."""
        rate = EXCHANGE_RATES[currency]
        cost = product.unit_cost * rate
        if cost_changed(product) and (on is None or on >= COST_CHANGE_DAY):
            cost = cost * COST_RISE
        return _money(cost), _money(product.unit_price * rate * price_list_factor(product, currency))

    def charges_for_month(self, month: str) -> list[dict]:
        """BSS charge JSON elements with chargeStartDate in `month` ("YYYY-MM"), in the BSS's order
        (charge id number, which `createdDate` follows).

        Cached: the list and its dicts are shared, treat them as read-only.
        """
        if month not in self._month_cache:
            self._month_cache[month] = self._generate_month(month)
        return self._month_cache[month]

    def charges_between(self, start: date, end: date) -> list[dict]:
        """Charges with chargeStartDate in [start, end], in the BSS's order (month by month)."""
        lines: list[dict] = []
        month = date(start.year, start.month, 1)
        low, high = start.isoformat(), end.isoformat()
        while month <= end:
            for line in self.charges_for_month(month.strftime("%Y-%m")):
                if low <= line["chargeStartDate"] <= high:
                    lines.append(line)
            month = _add_months(month, 1)
        return lines

    def _generate_month(self, month: str) -> list[dict]:
        first = _parse_month(month)
        last = _month_end(first)
        # (effectiveDate, phase, subscription id, sequence, fields) -> numbered once sorted
        pending: list[tuple[date, int, str, int, dict]] = []
        for subscription in self.subscriptions:
            if subscription.start_date > last:
                continue
            ends_on = subscription.ends_on
            if ends_on is not None and ends_on < first:
                continue
            if subscription.stops_billing_on is not None and subscription.stops_billing_on <= first:
                continue
            pending.extend(self._subscription_lines(subscription, first, last))
        pending.sort(key=lambda item: item[:4])
        prefix = f"CHG-{month}-"
        lines = []
        created = datetime.min
        for number, (effective, phase, _, _, line) in enumerate(pending, start=1):
            day = datetime(effective.year, effective.month, effective.day)
            created = max(day + (_BILLING_RUN_AT if phase == 0 else _ORDERS_FROM), created + _CREATED_STEP)
            lines.append(
                {"id": f"{prefix}{number}", **line, "createdDate": created.isoformat(timespec="milliseconds") + "Z"}
            )
        return lines

    def _subscription_lines(
        self, subscription: Subscription, first: date, last: date
    ) -> list[tuple[date, int, str, int, dict]]:
        account = self._accounts_by_id[subscription.account_on(first)]
        moved_on = subscription.moved_on if subscription.moved_mid_month else None
        moved_here = moved_on is not None and first < moved_on <= last
        new_account = self._accounts_by_id[str(subscription.moved_to)] if moved_here else account
        product = self._products_by_id[subscription.product_id]
        unit_cost, unit_price = self.prices_for(product, account.currency, first)
        plan_id, plan_name = BILLING_PLANS[product.billing_period]
        period_months = BILLING_PERIOD_MONTHS[product.billing_period]
        account_ref = {"id": account.id, "name": account.name, "code": account.code}
        new_account_ref = {"id": new_account.id, "name": new_account.name, "code": new_account.code}
        product_ref = {"id": product.id, "sku": product.sku, "name": product.name}
        plan_ref = {"id": plan_id, "name": plan_name, "billingPeriod": product.billing_period}
        start_day = subscription.start_date
        ends_on = subscription.ends_on

        def period_end(day: date) -> date:
            """The end of the billing period `day` lies in (a monthly plan bills calendar months)."""
            if period_months == 1:
                return last
            elapsed = _months_between(start_day, day) - (day.day < start_day.day)
            return _add_months(start_day, (elapsed // period_months + 1) * period_months) - _ONE_DAY

        def line(
            charge_type: str,
            action: str,
            quantity: int,
            total: int,
            start: date,
            end: date,
            cost: Decimal = unit_cost,
            price: Decimal = unit_price,
            billed_to: dict | None = None,
        ) -> dict:
            status = "Cancelled" if action == "Cancellation" else "Active"
            if billed_to is None:  # in the month of a move in mid-month: the new account from the move day on
                billed_to = new_account_ref if moved_here and moved_on is not None and start > moved_on else account_ref
            return {  # key order as in the BSS documentation
                "account": billed_to,
                "subscription": {"id": subscription.id, "status": status},
                "product": product_ref,
                "billingPlan": plan_ref,
                "billingCycle": subscription.billing_cycle,
                "chargeType": charge_type,
                "action": action,
                "quantity": quantity,
                "subscriptionQuantity": total,
                "unitCost": float(cost),
                "unitPrice": float(price),
                "currency": account.currency,
                "chargeStartDate": start.isoformat(),
                "chargeEndDate": end.isoformat(),
                "effectiveDate": start.isoformat(),
                "invoiceId": None,
            }

        out: list[tuple[date, int, str, int, dict]] = []

        def emit(effective: date, phase: int, fields: dict) -> None:
            out.append((effective, phase, subscription.id, len(out), fields))

        if first <= start_day <= last:
            units = subscription.quantity_changes[0][1]
            end = period_end(start_day)
            emit(
                start_day,
                1,
                line("Recurring" if start_day.day == 1 else "Prorated", "New", units, units, start_day, end),
            )
            emit(
                start_day,
                1,
                line(
                    "OneTime",
                    "New",
                    units,
                    units,
                    start_day,
                    end,
                    _money(unit_cost * SETUP_FEE_SHARE),
                    _money(unit_price * SETUP_FEE_SHARE),
                ),
            )
        # restating lines of the billing run: the regular charge and the renewals
        renewals = [day for day in subscription.renewal_dates(last) if day >= first]
        restating: dict[date, str] = {}
        if period_months == 1:
            if start_day < first:
                restating[first] = "Cycle"
        else:
            elapsed = _months_between(start_day, first)
            if elapsed > 0 and elapsed % period_months == 0:
                billing_day = _add_months(start_day, elapsed)
                if ends_on is None or billing_day < ends_on:
                    restating[billing_day] = "Cycle"
        for renewal in renewals:
            restating[renewal] = "Renewal"
        for day in sorted(restating):
            if restating[day] == "Renewal":  # the renewal states the total of the new term
                total = subscription.units_on(day)
                emit(day, 0, line("Recurring", "Renewal", total, total, day, subscription.term_end_on(day)))
            else:
                total = subscription.units_before(day)
                emit(day, 0, line("Recurring", "Cycle", total, total, day, period_end(day)))
        changes = subscription.quantity_changes
        same_day = 0
        for index in range(1, len(changes)):
            day, new_total = changes[index]
            if day < first or day <= start_day or (day in restating and restating[day] == "Renewal"):
                continue
            if day > last or (ends_on is not None and day >= ends_on):
                break
            same_day = same_day + 1 if changes[index - 1][0] == day else 1
            delta = new_total - changes[index - 1][1]
            action = "QuantityIncrease" if delta > 0 else "QuantityDecrease"
            emit(day, same_day, line("Prorated", action, delta, new_total, day, period_end(day)))
            onboarding = _fraction("onboarding-fee", f"{subscription.id}:{day.isoformat()}")
            if delta > 0 and onboarding < SETUP_ON_INCREASE_SHARE:
                # an onboarding fee per added seat: a OneTime Setup line right after the increase
                emit(
                    day,
                    same_day,
                    line(
                        "OneTime",
                        "Setup",
                        delta,
                        new_total,
                        day,
                        day,
                        _money(unit_cost * ONBOARDING_FEE_SHARE),
                        _money(unit_price * ONBOARDING_FEE_SHARE),
                    ),
                )
        cancelled = subscription.cancelled_on
        if cancelled is not None and first <= cancelled <= last:
            total = subscription.units_before(cancelled)
            emit(cancelled, 1, line("Credit", "Cancellation", -total, 0, cancelled, period_end(cancelled)))
        if moved_here and moved_on is not None:
            # the move: the old account credited to 0, then the new one billed the same units from that day
            total = subscription.units_on(moved_on)
            end = period_end(moved_on)
            emit(moved_on, 1, line("Credit", "Cancellation", -total, 0, moved_on, end, billed_to=account_ref))
            emit(moved_on, 2, line("Prorated", "New", total, total, moved_on, end, billed_to=new_account_ref))
        return out


# --- generation -------------------------------------------------------------------------------------

_FIXED_CUSTOMERS = [
    # (name, country) — the first customers, so small universes still hold the awkward names
    ("Contoso Ltd", "GB"),
    ("Société Générale Services", "FR"),
    ("O'Brien & Sons Ltd", "IE"),
    ("Müller GmbH", "DE"),
    ("Fabrikam Inc", "US"),
    ("Ångström Ingeniería S.L.", "ES"),
    ("Smith & Wesson Consulting", "GB"),
    ("Papadopoulos & Υιοί Α.Ε.", "GR"),
    # legal forms and accents are identity: Autotask holds look-alikes of these (see autotask_seed)
    ("Kowalski Bäckerei SARL", "FR"),
    ("Nordlicht GmbH", "DE"),
    ("Müller & Söhne GmbH", "DE"),
    ("Hart & Hale Ltd", "GB"),
    ("Brücke Logistik GmbH", "DE"),
]
# Brand-new customers (no company in Autotask yet) whose only look-alikes there are other legal entities: the
# Autotask seed adds those look-alikes (`sandbox.autotask_seed.NEW_CUSTOMER_LOOKALIKES`). They take the names of the
# first generated customers the seed leaves without a company, so no other record changes.
NEW_CUSTOMER_NAMES = [
    "Brennan Café Oy",  # Autotask: "Brennan Café Ltd", "Brennan Café LLP" (another legal form)
    "Sánchez Medical Centre Ltd",  # Autotask: "Schäfer Medical Centre Limited" (another distinctive word)
]
_NAME_STEMS = [
    "Adatum",
    "Northwind",
    "Tailspin",
    "Wingtip",
    "Litware",
    "Proseware",
    "Fourth Coffee",
    "Alpine Ski",
    "Blue Yonder",
    "Coho Vineyard",
    "Lucerne",
    "Margie's Travel",
    "Trey Research",
    "Woodgrove",
    "Humongous",
    "Wide World",
    "Graphic Design",
    "Bellows",
    "Café Lumière",
    "Brücke",
    "Château Rouge",
    "Señor Frío",
    "Østergaard",
    "Kövesi",
    "Žitná",
    "Dubois & Fils",
    "Hart & Hale",
    "D'Angelo",
    "O'Neill",
    "McAllister",
    "Van der Berg",
    "Łukasz & Partners",
    "Nordlicht",
    "Sœur Marie",
    "Zürich Alpen",
    "Björk",
    "García",
    "Fernández & Hijos",
    "Rossi",
    "Bianchi",
    "Kowalski",
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Oceanic",
    "Cyberdyne",
    "Soylent",
]
_NAME_SUFFIXES = {
    "GB": ["Ltd", "Holdings Ltd", "LLP", "Group plc"],
    "IE": ["Ltd", "Teoranta", "DAC"],
    "US": ["Inc", "LLC", "Corp"],
    "DE": ["GmbH", "AG", "GmbH & Co. KG"],
    "AT": ["GmbH", "KG"],
    "FR": ["SARL", "SA", "SAS"],
    "ES": ["S.L.", "S.A."],
    "IT": ["S.r.l.", "S.p.A."],
    "NL": ["B.V.", "N.V."],
    "GR": ["Α.Ε.", "Ε.Π.Ε."],
}
_COUNTRY_WEIGHTS = [
    ("DE", 16),
    ("FR", 12),
    ("NL", 10),
    ("IE", 8),
    ("AT", 6),
    ("ES", 8),
    ("IT", 8),
    ("GR", 8),
    ("GB", 14),
    ("US", 10),
]
_CURRENCY = {"GB": "GBP", "US": "USD"}
_CITIES = {
    "GB": [("London", "EC1A 1BB"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4DY")],
    "IE": [("Dublin", "D02 X285"), ("Cork", "T12 W8N2")],
    "US": [("New York", "10001"), ("Austin", "73301"), ("Seattle", "98101")],
    "DE": [("München", "80331"), ("Köln", "50667"), ("Berlin", "10115")],
    "AT": [("Wien", "1010"), ("Graz", "8010")],
    "FR": [("Paris", "75008"), ("Lyon", "69002"), ("Besançon", "25000")],
    "ES": [("Madrid", "28013"), ("A Coruña", "15001")],
    "IT": [("Milano", "20121"), ("Forlì", "47121")],
    "NL": [("Amsterdam", "1012 JS"), ("Den Haag", "2511 BT")],
    "GR": [("Αθήνα", "105 57"), ("Thessaloniki", "546 24")],
}
_STREETS = [
    "Main Street",
    "Hauptstraße",
    "Rue de l'Église",
    "Calle Mayor",
    "Via Roma",
    "Keizersgracht",
    "High Street",
    "Οδός Ερμού",
    "Market Square",
    "Bahnhofstraße",
    "Avenue des Champs-Élysées",
]
_PHONE_PREFIX = {
    "GB": "+44 20",
    "IE": "+353 1",
    "US": "+1 212",
    "DE": "+49 89",
    "AT": "+43 1",
    "FR": "+33 1",
    "ES": "+34 91",
    "IT": "+39 02",
    "NL": "+31 20",
    "GR": "+30 21",
}

# (name, sku or None for a generated one, billing period, EUR unit price)
_CATALOGUE = [
    ("Microsoft 365 Business Basic", "CFQ7TTC0LH18:0001", "Monthly", "5.60"),
    ("Microsoft 365 Business Standard", "CFQ7TTC0LDPB:0001", "Monthly", "11.70"),
    ("Microsoft 365 Business Premium", "CFQ7TTC0LCHC:0002", "Monthly", "20.60"),
    ("Microsoft 365 E3", "CFQ7TTC0LFLX:0001", "Monthly", "36.00"),
    ("Microsoft 365 E5", "CFQ7TTC0LFLZ:0001", "Annually", "57.00"),
    ("Exchange Online (Plan 1)", "CFQ7TTC0LH16:0001", "Monthly", "4.00"),
    ("Microsoft Teams Essentials", "CFQ7TTC0RQ8C:0001", "Monthly", "3.70"),
    ("Microsoft Defender for Business", "CFQ7TTC0LCHR:0001", "Monthly", "3.00"),
    ("Microsoft Intune Plan 1", "CFQ7TTC0LCHX:0001", "Quarterly", "7.50"),
    ("Power BI Pro", "CFQ7TTC0L3PB:0001", "Monthly", "13.10"),
    ("Visio Plan 2", "CFQ7TTC0HD32:0001", "Annually", "13.10"),
    ("Project Plan 3", "CFQ7TTC0HDB0:0001", "SemiAnnually", "28.10"),
    ("Windows 365 Business 2vCPU/8GB/128GB", None, "Monthly", "38.90"),
    ("Azure Virtual Desktop Support", None, "Monthly", "9.9900"),
    ("Acronis Cyber Protect Cloud – Workstation", None, "Monthly", "4.3125"),
    ("Acronis Cyber Protect Cloud – Server", None, "Monthly", "18.2750"),
    ("Veeam Backup for Microsoft 365", None, "Annually", "2.4500"),
    ("Bitdefender GravityZone Business Security", None, "Quarterly", "2.8333"),
    ("Dropbox Business Advanced", None, "Annually", "18.0000"),
    ("Google Workspace Business Starter", None, "Monthly", "6.80"),
    ("Google Workspace Business Standard", None, "Monthly", "13.60"),
    ("Keeper Business Password Manager", None, "Annually", "3.7500"),
    ("Managed Firewall & Monitoring", None, "Monthly", "45.0000"),
    ("Microsoft 365 Copilot", "CFQ7TTC0MM8R:0001", "Annually", "28.10"),
]
_CYCLE_WEIGHTS = [("Monthly", 35), ("Annual", 55), ("Biennial", 5), ("Triennial", 5)]
_START_UNITS = [1, 1, 2, 3, 5, 5, 8, 10, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100]
# Monthly chance that a subscription in force changes its quantity.
_INCREASE_CHANCE = 0.08
_DECREASE_CHANCE = 0.05
# Share of subscriptions that start inside the window (the rest were bought before it).
_NEW_SHARE = 0.3
# Every Nth subscription bought before the window is cancelled inside it.
_CANCEL_EVERY = 3


# The shapes real BSS months take (issue 8), as a share of a month's subscriptions; the showcase month
# (the demo month) holds at least SHOWCASE_MIN of each month-bound shape, so a person trying the product
# sees them.
SHOWCASE_MONTH = "2026-10"
SHOWCASE_MIN = 2
_MOVE_SHARE = 0.002  # moved to another account at a month start
_VANISH_SHARE = 0.0015  # a monthly plan gone from the BSS without a cancellation line
_LAPSE_SHARE = 0.0015  # an annual term ended without renewal
_SAME_DAY_SHARE = 0.004  # two changes on one day
_FIRST_DAY_CHANGE_SHARE = 0.003  # a change on the 1st, after the Cycle line of that day
_RENEWAL_CHANGE_SHARE = 0.3  # of renewals: the renewed term has another total
_SECOND_SUBSCRIPTION_SHARE = 0.1
# Universes up to this many subscriptions make sure their showcase month holds ids out of text order;
# larger months hold them anyway (and generating the month to check would slow the sandbox's start).
_SHOWCASE_TEXT_ORDER_UP_TO = 3000  # of subscriptions bought in the window: a second one to a product held


def build_universe(
    customers: int = 50,
    subscriptions_per_customer: int = 3,
    seed: int = 42,
    months: tuple[str, str] = ("2026-01", "2027-12"),
    showcase_month: str = SHOWCASE_MONTH,
) -> Universe:
    """Generate a deterministic universe: the same arguments always give the same data."""
    rng = random.Random(seed)
    window_start = _parse_month(months[0])
    window_end = _month_end(_parse_month(months[1]))
    window_months = _month_starts(window_start, window_end)
    products = _build_products(rng)
    accounts = _build_accounts(rng, customers)
    subscriptions: list[Subscription] = []
    # what the shapes must not disturb: the annual subscriptions that renew every month, and the
    # month of each guaranteed increase or decrease
    renewal_anchors: set[str] = set()
    forced_months: dict[str, tuple[date, int]] = {}
    new_count = 0
    old_count = 0
    steady_count = 0
    for account in accounts:
        chosen = rng.sample(products, min(subscriptions_per_customer, len(products)))
        while len(chosen) < subscriptions_per_customer:  # more subscriptions than products: repeat some
            chosen.append(rng.choice(products))
        for product in chosen:
            number = len(subscriptions) + 1
            subscription_id = f"SUB-{number:06d}"
            cycle = _weighted(rng, _CYCLE_WEIGHTS)
            cancelled_on = None
            if rng.random() < _NEW_SHARE:
                # round-robin over the window so every month has new subscriptions
                month_start = window_months[new_count % len(window_months)]
                new_count += 1
                start = month_start.replace(day=1 if rng.random() < 0.2 else rng.randint(2, 28))
            else:
                # bought in the three years before the window, spread over the calendar months so
                # every month has renewals
                start = _add_months(window_start, -36 + old_count % 36).replace(day=rng.randint(1, 28))
                if old_count < 12:
                    # one annual subscription bought in each calendar month and kept: renewals every month
                    cycle = "Annual"
                    renewal_anchors.add(subscription_id)
                elif (old_count - 12) % _CANCEL_EVERY == _CANCEL_EVERY - 1:
                    cancel_index = (old_count - 12) // _CANCEL_EVERY
                    cancel_month = window_months[cancel_index % len(window_months)]
                    cancelled_on = cancel_month.replace(day=rng.randint(2, 28))
                old_count += 1
            # a commitment runs from the start date to the day before its anniversary
            term_end = _add_months(start, BILLING_CYCLE_MONTHS[cycle]) - _ONE_DAY
            forced = None
            if start < window_start and cancelled_on is None:
                # alternate guaranteed increases and decreases over the window months so every month
                # has both, whatever the seed
                sign = 1 if steady_count % 2 == 0 else -1
                forced = (window_months[(steady_count // 2) % len(window_months)], sign)
                forced_months[subscription_id] = forced
                steady_count += 1
            changes = _quantity_changes(rng, start, window_months, cancelled_on, forced)
            subscriptions.append(
                Subscription(
                    id=subscription_id,
                    account_id=account.id,
                    product_id=product.id,
                    billing_cycle=cycle,
                    start_date=start,
                    term_end_date=term_end,
                    quantity_changes=changes,
                    cancelled_on=cancelled_on,
                )
            )
    showcase = _parse_month(showcase_month) if months[0] <= showcase_month <= months[1] else None
    shapes = _Shapes(accounts, products, subscriptions, window_months, showcase, renewal_anchors, forced_months)
    shapes.apply()
    accounts = _named_new_customers(accounts, subscriptions)
    universe = Universe(accounts=accounts, products=products, subscriptions=subscriptions, months=months)
    shapes.show_ids_out_of_text_order(universe)
    return universe


class _Shapes:
    """Gives a few subscriptions of every month the shapes real BSS months take (issue 8).

    Each shape draws subscriptions in its own fixed random order, month by month, at the shares above; a
    subscription takes at most one of the month-bound shapes (moved, vanished, lapsed, a change on the
    1st, two changes on one day, a second subscription or the first one it joins).
    """

    def __init__(
        self,
        accounts: list[Account],
        products: list[Product],
        subscriptions: list[Subscription],
        window_months: list[date],
        showcase: date | None,
        renewal_anchors: set[str],
        forced_months: dict[str, tuple[date, int]],
    ) -> None:
        self.accounts = accounts
        self.products = {product.id: product for product in products}
        self.subscriptions = subscriptions
        self.window_months = window_months
        self.window_start = window_months[0]
        self.window_end = _month_end(window_months[-1])
        self.showcase = showcase
        self.anchors = renewal_anchors
        self.forced_months = forced_months
        self.forced_left = Counter(forced_months.values())  # guaranteed changes per (month, sign)
        self.taken: set[str] = set()
        self.accounts_by_currency: dict[str, list[Account]] = {}
        for account in accounts:
            self.accounts_by_currency.setdefault(account.currency, []).append(account)
        self.account_index = {account.id: index for index, account in enumerate(accounts)}
        # the fixed customers keep their subscriptions, so each shows its own oddity (names, currency) every month
        self.fixed_accounts = {account.id for account in accounts[: len(_FIXED_CUSTOMERS)]}
        self.currency_position = {
            account.id: position
            for same_currency in self.accounts_by_currency.values()
            for position, account in enumerate(same_currency)
        }

    def apply(self) -> None:
        monthly = [subscription for subscription in self.subscriptions if self._billing_months(subscription) == 1]
        annual_terms_billed_rarely = [
            subscription
            for subscription in self.subscriptions
            if subscription.billing_cycle == "Annual" and self._billing_months(subscription) != 1
        ]
        self._second_subscriptions()
        self._pick("move", _MOVE_SHARE, monthly, self._can_move, self._move)
        self._pick("vanish", _VANISH_SHARE, monthly, self._can_vanish, self._vanish)
        self._renew_in_the_showcase(annual_terms_billed_rarely)
        self._pick(
            "lapse",
            _LAPSE_SHARE,
            annual_terms_billed_rarely,
            self._can_lapse,
            self._lapse,
            lambda subscription: {renewal.replace(day=1) for renewal in subscription.renewal_dates(self.window_end)},
        )
        self._renewal_changes()
        self._pick(
            "first-day-change",
            _FIRST_DAY_CHANGE_SHARE,
            monthly,
            self._can_change_on_the_first,
            self._change_on_the_first,
        )
        self._pick(
            "same-day",
            _SAME_DAY_SHARE,
            self.subscriptions,
            self._same_day_change,
            self._add_same_day_change,
            lambda subscription: {day.replace(day=1) for day, _ in subscription.quantity_changes[1:]},
        )
        self._moves_in_mid_month(monthly)

    # --- moved to another customer in mid-month -------------------------------------------------------

    def _moves_in_mid_month(self, monthly: list[Subscription]) -> None:
        """SHOWCASE_MIN subscriptions of the showcase month and of the month after it move to another customer
        in mid-month (the last shape drawn: the other shapes keep their subscriptions). The new customer is one
        of the fixed customers in the old one's currency whose name has accents and a legal form."""
        if self.showcase is None:
            return
        order = _shuffled(monthly, "mid-month-move")
        for month in (self.showcase, _add_months(self.showcase, 1)):
            if month > self.window_end:
                continue
            wanted = SHOWCASE_MIN
            for subscription in order:
                if wanted <= 0:
                    break
                if subscription.id in self.taken:
                    continue
                target = self._can_move_in_mid_month(subscription, month)
                if target:
                    day = month.replace(day=2 + int(_fraction("mid-month-move-day", subscription.id) * 27))
                    subscription.moved_on = day
                    subscription.moved_to = target
                    self.taken.add(subscription.id)
                    wanted -= 1

    def _can_move_in_mid_month(self, subscription: Subscription, month: date) -> str | None:
        if not self._old_and_steady(subscription, month):
            return None
        last = _month_end(month)
        if any(month <= day <= last for day, _ in subscription.quantity_changes[1:]):
            return None  # no change of units in the move's month: the move is the month's only event
        if any(month <= day <= last for day in subscription.renewal_dates(last)):
            return None
        owner = self.accounts[self.account_index[subscription.account_id]]
        targets = [
            account
            for account in self.accounts_by_currency[owner.currency]
            if account.id in self.fixed_accounts and account.id != owner.id and not account.name.isascii()
        ]
        if not targets:
            return None
        return targets[int(_fraction("mid-month-move-to", subscription.id) * len(targets))].id

    # --- choosing -------------------------------------------------------------------------------------

    def _quota(self, kind: str, share: float, month: date) -> int:
        expected = share * len(self.subscriptions)
        count = int(expected) + (_fraction(f"{kind}-quota", month.isoformat()) < expected - int(expected))
        return max(count, SHOWCASE_MIN) if month == self.showcase else count

    def _pick(
        self,
        kind: str,
        share: float,
        candidates: list[Subscription],
        eligible: Callable[[Subscription, date], object],
        change: Callable[[Subscription, date, object], None],
        months_of: Callable[[Subscription], set[date]] | None = None,
    ) -> None:
        """Month by month, the candidates first in `kind`'s order that are eligible get the shape;
        `months_of` (the months a candidate can take it in) spares looking at the others."""
        order = _shuffled(candidates, kind)
        by_month: dict[date, list[Subscription]] = {}
        if months_of is not None:
            for subscription in order:
                for month in months_of(subscription):
                    by_month.setdefault(month, []).append(subscription)
        for month in self.window_months[1:]:  # the first month of the window has no month before it
            wanted = self._quota(kind, share, month)
            for subscription in order if months_of is None else by_month.get(month, []):
                if wanted <= 0:
                    break
                if subscription.id in self.taken:
                    continue
                found = eligible(subscription, month)
                if found:
                    change(subscription, month, found)
                    self.taken.add(subscription.id)
                    wanted -= 1

    def _old_and_steady(self, subscription: Subscription, month: date) -> bool:
        """Bought before the month before, never cancelled, and no other shape yet. A shape that ends the
        subscription's lines before its guaranteed change may only take it where enough other guaranteed
        changes of that month and sign remain (every month keeps its increase and decrease)."""
        if not (
            subscription.start_date < _add_months(month, -1)
            and subscription.cancelled_on is None
            and subscription.stops_billing_on is None
            and subscription.moved_on is None
            and subscription.id not in self.anchors
            and subscription.account_id not in self.fixed_accounts
        ):
            return False
        forced = self.forced_months.get(subscription.id)
        return forced is None or forced[0] < month or month == self.showcase or self.forced_left[forced] > 3

    def _billing_months(self, subscription: Subscription) -> int:
        return BILLING_PERIOD_MONTHS[self.products[subscription.product_id].billing_period]

    # --- moved to another customer --------------------------------------------------------------------

    def _can_move(self, subscription: Subscription, month: date) -> object:
        if not self._old_and_steady(subscription, month):
            return None
        if subscription.start_date.day == 1 and month in subscription.renewal_dates(month):
            return None  # a renewal on the move day: keep the shapes apart
        owner = self.accounts[self.account_index[subscription.account_id]]
        same_currency = self.accounts_by_currency[owner.currency]
        if len(same_currency) < 2:
            return None
        # the next account (in id order) billed in the same currency
        position = self.currency_position[owner.id]
        return same_currency[(position + 1) % len(same_currency)].id

    def _move(self, subscription: Subscription, month: date, new_account: object) -> None:
        subscription.moved_on = month
        subscription.moved_to = str(new_account)

    # --- no longer billed -----------------------------------------------------------------------------

    def _can_vanish(self, subscription: Subscription, month: date) -> object:
        return self._old_and_steady(subscription, month)

    def _vanish(self, subscription: Subscription, month: date, _: object) -> None:
        self._stop(subscription, month, "vanished")

    def _can_lapse(self, subscription: Subscription, month: date) -> object:
        if subscription.start_date.month != month.month:
            return None  # an annual term renews in the month it started
        if not self._old_and_steady(subscription, month):
            return None
        renewals = [day for day in subscription.renewal_dates(_month_end(month)) if day >= month]
        return renewals[0] if renewals else None

    def _renew_in_the_showcase(self, candidates: list[Subscription]) -> None:
        """Few annual plans renew in any one month of a small universe: when fewer than SHOWCASE_MIN could
        lapse in the showcase month, the next ones (in a fixed random order) were bought in its calendar
        month of an earlier year."""
        if self.showcase is None:
            return
        showcase = self.showcase
        able = [item for item in candidates if self._can_lapse(item, showcase)]
        for subscription in _shuffled(candidates, "lapse-anniversary"):
            if len(able) >= SHOWCASE_MIN:
                return
            start = subscription.start_date
            moved = start.replace(year=start.year - (start.month < showcase.month), month=showcase.month)
            if subscription in able or not self._old_and_steady(subscription, showcase) or moved >= self.window_start:
                continue
            if len(subscription.quantity_changes) > 1 and subscription.quantity_changes[1][0] < self.window_start:
                continue
            subscription.start_date = moved
            subscription.term_end_date = _add_months(moved, BILLING_CYCLE_MONTHS[subscription.billing_cycle]) - _ONE_DAY
            subscription.set_changes([(moved, subscription.quantity_changes[0][1]), *subscription.quantity_changes[1:]])
            if self._can_lapse(subscription, showcase):
                able.append(subscription)

    def _lapse(self, subscription: Subscription, month: date, renewal: object) -> None:
        assert isinstance(renewal, date)
        self._stop(subscription, renewal, "lapsed")

    def _stop(self, subscription: Subscription, day: date, reason: str) -> None:
        forced = self.forced_months.get(subscription.id)
        if forced is not None and forced[0] >= day.replace(day=1):
            self.forced_left[forced] -= 1
        subscription.set_changes([change for change in subscription.quantity_changes if change[0] < day])
        subscription.stops_billing_on = day
        subscription.stop_reason = reason

    # --- renewals that change the total ----------------------------------------------------------------

    def _renewal_changes(self) -> None:
        renewals = [
            (subscription, renewal)
            for subscription in self.subscriptions
            if subscription.billing_cycle != "Monthly"
            for renewal in subscription.renewal_dates(self.window_end)
            if renewal >= self.window_start
        ]
        showcase = _shuffled([item for item in renewals if item[1].replace(day=1) == self.showcase], "renewal-units")
        picked = {(subscription.id, renewal) for subscription, renewal in showcase[:SHOWCASE_MIN]}
        draws = random.Random("renewal-units")
        for subscription, renewal in renewals:
            changes, step = draws.random() < _RENEWAL_CHANGE_SHARE, draws.choice([2, 1, 3, -1])
            if changes or (subscription.id, renewal) in picked:
                _shift_units(subscription, renewal, step)

    # --- several lines on one day ----------------------------------------------------------------------

    def _can_change_on_the_first(self, subscription: Subscription, month: date) -> object:
        if not subscription.start_date < month:
            return None
        if subscription.ends_on is not None and subscription.ends_on <= _month_end(month):
            return None
        if subscription.moved_on == month or (
            subscription.start_date.day == 1 and month in subscription.renewal_dates(month)
        ):
            return None
        return month not in subscription._change_days

    def _change_on_the_first(self, subscription: Subscription, month: date, _: object) -> None:
        _shift_units(subscription, month, [1, 2, 3, 5][int(_fraction("first-day-step", subscription.id) * 4)])

    def _same_day_change(self, subscription: Subscription, month: date) -> object:
        """The index of a lone change in `month` that a second change on its day can follow."""
        last = _month_end(month)
        renewals = set(subscription.renewal_dates(last))
        changes = subscription.quantity_changes
        for index in range(1, len(changes)):
            day = changes[index][0]
            if day < month or day <= subscription.start_date:
                continue
            if day > last:
                break
            lone = changes[index - 1][0] != day and (index + 1 == len(changes) or changes[index + 1][0] != day)
            ends_on = subscription.ends_on
            if lone and day not in renewals and day != month and (ends_on is None or day < ends_on):
                return index
        return None

    def _add_same_day_change(self, subscription: Subscription, month: date, found: object) -> None:
        """The change becomes two: past the new total first, then back to it (a correction that day)."""
        assert isinstance(found, int)
        changes = list(subscription.quantity_changes)
        day, total = changes[found]
        overshoot = max(total, changes[found - 1][1]) + 1
        changes.insert(found, (day, overshoot))
        subscription.set_changes(changes)

    def show_ids_out_of_text_order(self, universe: Universe) -> None:
        """Large months hold same-day lines of a subscription whose ids sort differently as text than by
        number (CHG-…-9 before CHG-…-10); a small showcase month may not. Then one subscription whose Cycle
        line's number sorts after (as text) the number a change on the 1st would get is given that change."""
        if self.showcase is None or len(self.subscriptions) > _SHOWCASE_TEXT_ORDER_UP_TO:
            return
        month = self.showcase.strftime("%Y-%m")
        if ids_out_of_text_order(universe.charges_for_month(month)):
            return
        day_one = [line for line in universe.charges_for_month(month) if line["effectiveDate"] == f"{month}-01"]
        billing_run = [line["subscription"]["id"] for line in day_one if line["action"] in ("Cycle", "Renewal")]
        orders = sorted(line["subscription"]["id"] for line in day_one if line["action"] not in ("Cycle", "Renewal"))
        subscriptions = {subscription.id: subscription for subscription in self.subscriptions}
        for number, subscription_id in enumerate(billing_run, start=1):
            subscription = subscriptions[subscription_id]
            # the change comes after the billing run and the orders of the 1st of subscriptions before it
            change_number = len(billing_run) + bisect.bisect_left(orders, subscription_id) + 1
            if str(change_number) >= str(number) or subscription_id in self.taken:
                continue
            if self._can_change_on_the_first(subscription, self.showcase):
                self._change_on_the_first(subscription, self.showcase, None)
                self.taken.add(subscription_id)
                universe._month_cache.clear()
                return

    # --- a second subscription to a product the account holds ------------------------------------------

    def _second_subscriptions(self) -> None:
        by_account: dict[str, list[Subscription]] = {}
        for subscription in self.subscriptions:
            by_account.setdefault(subscription.account_id, []).append(subscription)
        showcase_picks = 0
        draws = random.Random("second-pick")
        for subscription in _shuffled(self.subscriptions, "second"):
            chance = draws.random()
            start = subscription.start_date
            if start < self.window_start or subscription.id in self.taken or subscription.ends_on is not None:
                continue
            in_showcase = self.showcase is not None and start.replace(day=1) == self.showcase
            if not (in_showcase and showcase_picks < SHOWCASE_MIN + 1) and (chance >= _SECOND_SUBSCRIPTION_SHARE):
                continue
            first = next(
                (
                    other
                    for other in by_account[subscription.account_id]
                    if other.id not in self.taken
                    and other.start_date < start.replace(day=1)
                    and other.ends_on is None
                    and other.moved_on is None
                    and other.product_id != subscription.product_id
                ),
                None,
            )
            if first is None:
                continue
            subscription.product_id = first.product_id
            subscription.second_of = first.id
            self.taken.update((subscription.id, first.id))
            showcase_picks += in_showcase


def ids_out_of_text_order(lines: list[dict]) -> list[list[str]]:
    """Groups of one subscription's lines on one date whose ids sort differently as text than by number."""
    groups: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        groups.setdefault((line["subscription"]["id"], line["effectiveDate"]), []).append(line["id"])
    return [ids for ids in groups.values() if len(ids) > 1 and sorted(ids) != ids]


def _shift_units(subscription: Subscription, day: date, step: int) -> None:
    """Change the total by `step` on `day` (after that day's changes) and keep every later change's step."""
    changes = subscription.quantity_changes
    position = bisect.bisect_right(subscription._change_days, day)
    if step < 0 and min(total for _, total in changes[position - 1 :]) + step < 1:
        step = -step  # a total never drops below one unit
    before = changes[position - 1][1]
    shifted = changes[:position] + [(day, before + step)] + [(when, total + step) for when, total in changes[position:]]
    subscription.set_changes(shifted)


def _shuffled(items: list, kind: str) -> list:
    """`items` in a fixed random order per `kind` (each shape draws its subscriptions in its own order)."""
    order = list(items)
    random.Random(kind).shuffle(order)
    return order


def price_list_factor(product: Product, currency: str) -> Decimal:
    """How a currency's own price list moves a product's converted catalogue price (EUR is the catalogue)."""
    if currency == "EUR":
        return Decimal("1")
    return _PRICE_LIST_FACTORS[int(_fraction(f"price-list-{currency}", product.id) * len(_PRICE_LIST_FACTORS))]


def cost_changed(product: Product) -> bool:
    """Whether the product's BSS unit cost rose on COST_CHANGE_DAY."""
    return _fraction("cost-change", product.id) < COST_CHANGE_SHARE


def _fraction(kind: str, key: str) -> float:
    """A stable number in [0, 1) per (kind, key): the same choice whatever the universe size."""
    digest = hashlib.blake2b(f"{kind}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _build_products(rng: random.Random) -> list[Product]:
    products = []
    for index, (name, sku, period, price) in enumerate(_CATALOGUE, start=1):
        if sku is None:
            sku = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(12)) + ":0001"
        unit_price = Decimal(price)
        margin = Decimal(rng.randint(72, 88)) / 100
        products.append(
            Product(
                id=f"PRD-{index}",
                sku=sku,
                name=name,
                billing_period=period,
                unit_cost=_money(unit_price * margin),
                unit_price=unit_price,
            )
        )
    return products


def _build_accounts(rng: random.Random, customers: int) -> list[Account]:
    accounts: list[Account] = []
    used_names: set[str] = set()
    used_codes: set[str] = set()
    for index in range(customers):
        if index < len(_FIXED_CUSTOMERS):
            name, country = _FIXED_CUSTOMERS[index]
        else:
            country = _weighted(rng, _COUNTRY_WEIGHTS)
            name = f"{rng.choice(_NAME_STEMS)} {rng.choice(_NAME_SUFFIXES[country])}"
            if name in used_names:
                city_name = rng.choice(_CITIES[country])[0]
                name = f"{name.rsplit(' ', 1)[0]} {city_name} {name.rsplit(' ', 1)[1]}"
            serial = 2
            base = name
            while name in used_names:
                name = f"{base} ({serial})"
                serial += 1
        used_names.add(name)
        code = _unique_code(name, used_codes)
        city, postal_code = rng.choice(_CITIES[country])
        domain = (_ascii_slug(name.split(" ")[0]).lower() or "customer") + f"{index + 1}.example"
        accounts.append(
            Account(
                id=f"ACC-{1001 + index}",
                name=name,
                code=code,
                status="Active",
                phone=f"{_PHONE_PREFIX[country]} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
                email=f"billing@{domain}",
                vat_number=_vat_number(rng, country),
                street=f"{rng.randint(1, 250)} {rng.choice(_STREETS)}",
                city=city,
                postal_code=postal_code,
                country=country,
                currency=_CURRENCY.get(country, "EUR"),
            )
        )
    return accounts


def _named_new_customers(accounts: list[Account], subscriptions: list[Subscription]) -> list[Account]:
    """Two generated customers no subscription shape needs a company for (in any month), renamed
    `NEW_CUSTOMER_NAMES` — the Autotask seed gives them no company — preferably ones it leaves without a company
    anyway. Names only: no random draw changes, so every other record of the universe stays as it was."""
    from sandbox.autotask_seed import missing_company_draw  # the seed imports this module

    shaped = {
        account
        for subscription in subscriptions
        if subscription.moved_to or subscription.stops_billing_on or subscription.second_of
        for account in (subscription.account_id, subscription.moved_to)
    }
    candidates = [account.id for account in accounts[len(_FIXED_CUSTOMERS) :] if account.id not in shaped]
    # those the seed leaves without a company anyway first (their fate changes nothing), then the others
    candidates.sort(key=lambda account_id: not missing_company_draw(account_id))
    chosen = dict(zip(candidates, NEW_CUSTOMER_NAMES, strict=False))
    return [replace(account, name=chosen[account.id]) if account.id in chosen else account for account in accounts]


def _quantity_changes(
    rng: random.Random,
    start: date,
    window_months: list[date],
    cancelled_on: date | None,
    forced: tuple[date, int] | None = None,
) -> list[tuple[date, int]]:
    """The (day, new total) history from the start; `forced` = (month, sign) guarantees one change."""
    forced_month, forced_sign = forced if forced else (None, 0)
    units = rng.choice(_START_UNITS)
    if forced_sign < 0:
        units = max(units, 2)  # room for the guaranteed decrease
    changes = [(start, units)]
    start_month = start.replace(day=1)
    # history before the window does not matter to anyone; only generate changes inside it
    for month in window_months:
        if month < start_month:
            continue
        if cancelled_on is not None and month > cancelled_on:
            break
        if month == forced_month:
            signs = [forced_sign]
        else:
            # one draw decides: at most one random change a month
            draw = rng.random()
            if draw < _INCREASE_CHANCE:
                signs = [1]
            elif draw < _INCREASE_CHANCE + _DECREASE_CHANCE and forced_sign >= 0:
                signs = [-1]  # subscriptions with a guaranteed decrease keep their units for it
            else:
                continue
        for sign in signs:
            low = max(2, changes[-1][0].day + 1 if changes[-1][0] >= month else 2)
            if low > 28:
                continue
            day = month.replace(day=rng.randint(low, 28 if month != forced_month else min(28, low + 10)))
            if day <= start or (cancelled_on is not None and day >= cancelled_on):
                continue
            if sign > 0:
                step = rng.randint(1, max(1, units // 5) + 2)
            else:
                if units <= 1:
                    continue
                step = -rng.randint(1, max(1, units // 4))
            units += step
            changes.append((day, units))
    return changes


def _vat_number(rng: random.Random, country: str) -> str:
    digits = "".join(str(rng.randint(0, 9)) for _ in range(9))
    if country == "US":
        return ""  # no VAT in the US
    if country == "GR":
        return f"EL{digits}"
    if country == "FR":
        return f"FR{rng.randint(10, 99)}{digits}"
    if country == "IE":
        return f"IE{digits[:7]}{rng.choice('ABCDEFGHW')}"
    return f"{country}{digits}"


def _unique_code(name: str, used: set[str]) -> str:
    base = _ascii_slug(name).upper()[:10] or "CUSTOMER"
    code = base
    serial = 2
    while code in used:
        code = f"{base[:8]}{serial:02d}"
        serial += 1
    used.add(code)
    return code


def _ascii_slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]", "", ascii_text)


def _weighted(rng: random.Random, options: list[tuple[str, int]]) -> str:
    return rng.choices([value for value, _ in options], weights=[weight for _, weight in options])[0]


def _money(value: Decimal) -> Decimal:
    return value.quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)


def _parse_month(month: str) -> date:
    year, number = month.split("-")
    return date(int(year), int(number), 1)


def _month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    if day.day <= 28:  # every month has the day (start dates are 1..28): no month length needed
        return date(year, month + 1, day.day)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _month_starts(first: date, last: date) -> list[date]:
    starts = []
    month = first
    while month <= last:
        starts.append(month)
        month = _add_months(month, 1)
    return starts


def _months_between(first: date, later: date) -> int:
    return (later.year - first.year) * 12 + later.month - first.month
