"""A deterministic synthetic MSP customer base and its BSS charge lines.

The BSS and Autotask sandboxes both build the same `Universe` from (customers, subscriptions per
customer, seed), so a test can reason about "the truth" without either server.

Charge semantics (what a validation suite may rely on), per subscription within one month, lines
ordered by (effectiveDate, id):
- the first line restates the total: `Cycle` (Recurring, the regular line for a subscription in
  force on the 1st), `Renewal` (Recurring, replaces `Cycle` in the month a new commitment term
  starts, always on the 1st) or `New` (Recurring when it starts on the 1st, Prorated otherwise);
  on these lines `quantity == subscriptionQuantity`;
- a `New` subscription is followed by a OneTime setup-fee line (action `New`, same quantity);
- every later change line (`QuantityIncrease`/`QuantityDecrease` as Prorated, `Cancellation` as
  Credit) has `subscriptionQuantity == previous line's subscriptionQuantity + quantity`; a
  cancellation ends at 0 and nothing follows it;
- changes happen on days 2..28, so the restating line is always first; ids are numbered in
  (effectiveDate, subscription id, sequence) order, so id order agrees with effectiveDate order.
"""

from __future__ import annotations

import bisect
import calendar
import random
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta
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
_FOUR_PLACES = Decimal("0.0001")


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
    account_id: str
    product_id: str
    billing_cycle: str
    start_date: date
    term_end_date: date
    quantity_changes: list[tuple[date, int]]
    cancelled_on: date | None = None
    _change_days: list[date] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._change_days = [day for day, _ in self.quantity_changes]

    def units_on(self, day: date) -> int:
        """Total units in force on `day` (0 before the start and from the cancellation day on)."""
        if day < self.start_date or (self.cancelled_on is not None and day >= self.cancelled_on):
            return 0
        index = bisect.bisect_right(self._change_days, day) - 1
        return self.quantity_changes[index][1] if index >= 0 else 0

    def renewal_dates(self, until: date) -> list[date]:
        """First days of the renewed commitment terms up to `until` (always the 1st of a month)."""
        months = BILLING_CYCLE_MONTHS[self.billing_cycle]
        renewals: list[date] = []
        term_end = self.term_end_date
        while term_end < until:
            renewal = term_end + timedelta(days=1)
            if self.cancelled_on is not None and renewal >= self.cancelled_on:
                break
            renewals.append(renewal)
            term_end = _month_end(_add_months(renewal, months - 1))
        return renewals

    def term_end_on(self, day: date) -> date:
        """The commitment end in force on `day` (renewals move it on by one term)."""
        months = BILLING_CYCLE_MONTHS[self.billing_cycle]
        term_end = self.term_end_date
        while term_end < day:
            term_end = _month_end(_add_months(term_end + timedelta(days=1), months - 1))
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

    def prices_for(self, product: Product, currency: str) -> tuple[Decimal, Decimal]:
        """(unit cost, unit price) of a product in a customer's currency."""
        rate = EXCHANGE_RATES[currency]
        return _money(product.unit_cost * rate), _money(product.unit_price * rate)

    def charges_for_month(self, month: str) -> list[dict]:
        """BSS charge JSON elements with chargeStartDate in `month` ("YYYY-MM"), sorted by id.

        Cached: the list and its dicts are shared, treat them as read-only.
        """
        if month not in self._month_cache:
            self._month_cache[month] = self._generate_month(month)
        return self._month_cache[month]

    def charges_between(self, start: date, end: date) -> list[dict]:
        """Charges with chargeStartDate in [start, end], sorted by id."""
        lines: list[dict] = []
        month = date(start.year, start.month, 1)
        while month <= end:
            for line in self.charges_for_month(month.strftime("%Y-%m")):
                if start.isoformat() <= line["chargeStartDate"] <= end.isoformat():
                    lines.append(line)
            month = _add_months(month, 1)
        return sorted(lines, key=lambda line: line["id"])

    def _generate_month(self, month: str) -> list[dict]:
        first = _parse_month(month)
        last = _month_end(first)
        # (effectiveDate, subscription id, sequence, fields) -> numbered once sorted
        pending: list[tuple[date, str, int, dict]] = []
        for subscription in self.subscriptions:
            if subscription.start_date > last:
                continue
            if subscription.cancelled_on is not None and subscription.cancelled_on < first:
                continue
            pending.extend(self._subscription_lines(subscription, first, last))
        pending.sort(key=lambda item: (item[0], item[1], item[2]))
        prefix = f"CHG-{month}-"
        lines = []
        for number, (_, _, _, line) in enumerate(pending, start=1):
            lines.append({"id": f"{prefix}{number:06d}", **line})
        return lines

    def _subscription_lines(
        self, subscription: Subscription, first: date, last: date
    ) -> list[tuple[date, str, int, dict]]:
        account = self._accounts_by_id[subscription.account_id]
        product = self._products_by_id[subscription.product_id]
        unit_cost, unit_price = self.prices_for(product, account.currency)
        plan_id, plan_name = BILLING_PLANS[product.billing_period]
        account_ref = {"id": account.id, "name": account.name, "code": account.code}
        product_ref = {"id": product.id, "sku": product.sku, "name": product.name}
        plan_ref = {"id": plan_id, "name": plan_name, "billingPeriod": product.billing_period}

        def line(
            charge_type: str,
            action: str,
            quantity: int,
            total: int,
            start: date,
            cost: Decimal = unit_cost,
            price: Decimal = unit_price,
        ) -> dict:
            status = "Cancelled" if action == "Cancellation" else "Active"
            return {  # key order as in the BSS documentation
                "account": account_ref,
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
                "chargeEndDate": last.isoformat(),
                "effectiveDate": start.isoformat(),
                "invoiceId": None,
            }

        out: list[tuple[date, str, int, dict]] = []
        sequence = 0

        def emit(effective: date, fields: dict) -> None:
            nonlocal sequence
            out.append((effective, subscription.id, sequence, fields))
            sequence += 1

        if subscription.start_date >= first:
            units = subscription.quantity_changes[0][1]
            start = subscription.start_date
            emit(start, line("Recurring" if start.day == 1 else "Prorated", "New", units, units, start))
            emit(
                start,
                line(
                    "OneTime",
                    "New",
                    units,
                    units,
                    start,
                    _money(unit_cost * SETUP_FEE_SHARE),
                    _money(unit_price * SETUP_FEE_SHARE),
                ),
            )
        else:
            units = subscription.units_on(first)
            # monthly commitments roll over silently; longer terms show the renewal
            renewed = subscription.billing_cycle != "Monthly" and first in subscription.renewal_dates(last)
            emit(first, line("Recurring", "Renewal" if renewed else "Cycle", units, units, first))
        total = units
        for day, new_total in subscription.quantity_changes[1:]:
            if day < first or day <= subscription.start_date:
                continue
            if day > last:
                break
            delta = new_total - total
            action = "QuantityIncrease" if delta > 0 else "QuantityDecrease"
            emit(day, line("Prorated", action, delta, new_total, day))
            total = new_total
        cancelled = subscription.cancelled_on
        if cancelled is not None and first <= cancelled <= last:
            emit(cancelled, line("Credit", "Cancellation", -total, 0, cancelled))
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


def build_universe(
    customers: int = 50,
    subscriptions_per_customer: int = 3,
    seed: int = 42,
    months: tuple[str, str] = ("2026-01", "2027-12"),
) -> Universe:
    """Generate a deterministic universe: the same arguments always give the same data."""
    rng = random.Random(seed)
    window_start = _parse_month(months[0])
    window_end = _month_end(_parse_month(months[1]))
    window_months = _month_starts(window_start, window_end)
    products = _build_products(rng)
    accounts = _build_accounts(rng, customers)
    subscriptions: list[Subscription] = []
    new_count = 0
    old_count = 0
    steady_count = 0
    for account in accounts:
        chosen = rng.sample(products, min(subscriptions_per_customer, len(products)))
        while len(chosen) < subscriptions_per_customer:  # more subscriptions than products: repeat some
            chosen.append(rng.choice(products))
        for product in chosen:
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
                elif (old_count - 12) % _CANCEL_EVERY == _CANCEL_EVERY - 1:
                    cancel_index = (old_count - 12) // _CANCEL_EVERY
                    cancel_month = window_months[cancel_index % len(window_months)]
                    cancelled_on = cancel_month.replace(day=rng.randint(2, 28))
                old_count += 1
            term_months = BILLING_CYCLE_MONTHS[cycle]
            term_end = _month_end(_add_months(start, term_months) - timedelta(days=1))
            forced = None
            if start < window_start and cancelled_on is None:
                # alternate guaranteed increases and decreases over the window months so every month
                # has both, whatever the seed
                sign = 1 if steady_count % 2 == 0 else -1
                forced = (window_months[(steady_count // 2) % len(window_months)], sign)
                steady_count += 1
            changes = _quantity_changes(rng, start, window_months, cancelled_on, forced)
            number = len(subscriptions) + 1
            subscriptions.append(
                Subscription(
                    id=f"SUB-{number:06d}",
                    account_id=account.id,
                    product_id=product.id,
                    billing_cycle=cycle,
                    start_date=start,
                    term_end_date=term_end,
                    quantity_changes=changes,
                    cancelled_on=cancelled_on,
                )
            )
    return Universe(accounts=accounts, products=products, subscriptions=subscriptions, months=months)


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
    return day.replace(year=year, month=month + 1, day=min(day.day, calendar.monthrange(year, month + 1)[1]))


def _month_starts(first: date, last: date) -> list[date]:
    starts = []
    month = first
    while month <= last:
        starts.append(month)
        month = _add_months(month, 1)
    return starts
