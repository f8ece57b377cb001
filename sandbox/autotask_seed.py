"""Seed data of the Autotask sandbox, derived from the same `Universe` the BSS sandbox serves.

The MSP's Autotask already knows most of its customers, but not cleanly: some companies carry the
"BSS Account ID" UDF, others only match by name or almost by name, a few are missing. Legal forms and
accents are identity: Autotask also holds look-alikes that are *other* companies (the same name with
another legal form, "Kowalski Bäckerei ApS" next to the customer "Kowalski Bäckerei SARL"; or the very
same name twice). Companies carry their currency (`currencyID` → `Currencies`; none = the internal
EUR); a few GBP customers' companies are EUR in Autotask. Contracts of subscriptions that moved to
another customer stay under the old customer's company; contracts of subscriptions the BSS no longer
bills still hold their units; a few contract services already have an adjustment a person typed by
hand on the day the BSS changes the units this month. Money: a contract service holds the price and cost of its
customer's currency as Autotask was last loaded (the day before the seed month: a cost the BSS raised on the month's
first day is still the old one here), and a share of them (`OLDER_PRICE_SHARE`) still bills an older, lower price
than the BSS's list. Decisions are made per BSS key with a stable
hash, so a customer keeps its fate whatever the universe size. `SeedFacts` (not an entity) records
every decision, for tests that need the truth.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import unicodedata
from datetime import date, datetime, timedelta

from sandbox.autotask_schema import (
    COMPANY_UDF_BSS_ACCOUNT_ID,
    FIRST_IDS,
    RECURRING_SERVICE_CONTRACT,
    format_date,
    format_datetime,
)
from sandbox.dataset import Account, Product, Subscription, Universe

OWNER_RESOURCE_ID = FIRST_IDS["Resources"]
API_RESOURCE_ID = OWNER_RESOURCE_ID + 1
RECURRING_BILLING_CODE_ID = FIRST_IDS["BillingCodes"]
# Material codes for contract charges (usage and one-off amounts), after the seed's older codes.
USAGE_BILLING_CODE_ID = RECURRING_BILLING_CODE_ID + 4
ONE_OFF_BILLING_CODE_ID = RECURRING_BILLING_CODE_ID + 5
PERIOD_TYPES = {"Monthly": 2, "Quarterly": 3, "SemiAnnually": 4, "Annually": 5}
# Contract services whose Autotask price is an older one than the BSS's list: the price times this factor.
OLDER_PRICE_SHARE = 0.15
OLDER_PRICE_FACTOR = 0.97
_SEEDED_AT = format_datetime(datetime(2023, 1, 2, 9, 0, 0))

# The first customers of every universe get fixed fates, so small seeds hold each case.
_FIXED_COMPANY_FATES = {
    "Contoso Ltd": ("near", "Contoso Limited"),
    "Société Générale Services": ("udf", None),
    "O'Brien & Sons Ltd": ("near", "O'Brien and Sons Ltd"),
    "Müller GmbH": ("near", "Muller GmbH"),
    "Fabrikam Inc": ("name", None),
    "Ångström Ingeniería S.L.": ("missing", None),
    "Smith & Wesson Consulting": ("udf", "Smith and Wesson Consulting Group"),  # renamed in Autotask
    "Papadopoulos & Υιοί Α.Ε.": ("name", None),
    "Kowalski Bäckerei SARL": ("missing", None),
    "Nordlicht GmbH": ("name", None),
    "Müller & Söhne GmbH": ("near", "Muller & Sohne GmbH"),
    "Hart & Hale Ltd": ("name", None),
    "Brücke Logistik GmbH": ("udf", None),
}
# Other companies Autotask holds that look like a customer: (customer, look-alike name); the look-alike
# is never that customer. The same name twice: the look-alike is created first (a lower id).
_FIXED_LOOKALIKES = {
    "Kowalski Bäckerei SARL": "Kowalski Bäckerei ApS",
    "Nordlicht GmbH": "Nordlicht AG",
    "Brücke Logistik GmbH": "Brücke Logistik AG",
    "Hart & Hale Ltd": "Hart & Hale Ltd",
}
# Other companies Autotask holds that look like a brand-new customer (one without a company here) and are other
# legal entities (`sandbox.dataset.NEW_CUSTOMER_NAMES`): added after every other company, so no id changes.
NEW_CUSTOMER_LOOKALIKES = {
    "Brennan Café Oy": ("Brennan Café Ltd", "Brennan Café LLP"),
    "Sánchez Medical Centre Ltd": ("Schäfer Medical Centre Limited",),
}
# Share of customers the seed leaves without a company (unless a moved subscription needs one).
_MISSING_SHARE = 0.10
# Shares of customers with a look-alike company of another legal form, or of the very same name.
_LOOKALIKE_SHARE = 0.04
_TWIN_SHARE = 0.01
# Share of GBP customers whose Autotask company is in EUR (the internal currency) instead.
_CURRENCY_MISMATCH_SHARE = 0.2
_FIXED_CURRENCY_MISMATCH = {"Smith & Wesson Consulting"}
# Contract services with a hand-made adjustment on a BSS change day of the month: this share of the
# month's changes, at least this many.
_HAND_ADJUSTMENT_SHARE = 0.03
_HAND_ADJUSTMENT_MIN = 3
_LEGAL_FORMS = [
    "GmbH & Co. KG",
    "Holdings Ltd",
    "Group plc",
    "Teoranta",
    "GmbH",
    "SARL",
    "S.r.l.",
    "S.p.A.",
    "B.V.",
    "N.V.",
    "S.L.",
    "S.A.",
    "SAS",
    "LLP",
    "LLC",
    "Ltd",
    "Inc",
    "Corp",
    "DAC",
    "ApS",
    "AG",
    "KG",
    "SA",
    "Α.Ε.",
    "Ε.Π.Ε.",
]
# (ISO code, description, symbol, rate to EUR, active); EUR is the internal currency.
_CURRENCIES = [
    ("EUR", "Euro", "€", 1.0, True),
    ("GBP", "Pound Sterling", "£", 0.8571, True),
    ("USD", "US Dollar", "$", 1.0843, True),
    ("CHF", "Swiss Franc", "CHF", 0.9412, False),
]
_NEAR_MISS_REPLACEMENTS = [
    (" Ltd", " Limited"),
    (" Inc", ", Inc."),
    (" & ", " and "),
    (" LLC", ", L.L.C."),
    (" GmbH", " G.m.b.H."),
    (" S.L.", " SL"),
    (" S.A.", " SA"),
    (" B.V.", " BV"),
    (" N.V.", " NV"),
    (" SARL", " S.A.R.L."),
    (" AG", " A.G."),
    (" Corp", " Corporation"),
    (" LLP", " L.L.P."),
    (" KG", " K.G."),
    (" plc", " PLC"),
]
_EXTRA_SERVICES = [
    ("Onsite Support (hourly)", 2, "95.00", "0.00", True),
    ("Managed Services – Per Device", 2, "35.00", "12.00", True),
    ("Microsoft 365 Business Standard (legacy)", 2, "10.50", "9.00", False),
]
_EXTRA_COMPANY_STEMS = ["Blue Harbor", "Redwood", "Silverline", "Granite", "Maple Leaf", "Evergreen", "Summit"]


def seed_state(universe: Universe, month: str) -> dict[str, list[dict]]:
    """Autotask records (by entity) as they stand at the start of `month` ("YYYY-MM"), plus SeedFacts."""
    first = date(int(month[:4]), int(month[5:7]), 1)
    builder = _Builder(universe, first)
    builder.build()
    return builder.state


class _Builder:
    def __init__(self, universe: Universe, first: date) -> None:
        self.universe = universe
        self.first = first
        self.state: dict[str, list[dict]] = {
            "Resources": _resources(),
            "Currencies": _currencies(),
            "BillingCodes": _billing_codes(),
            "Companies": [],
            "Contracts": [],
            "Services": [],
            "ContractServices": [],
            "ContractServiceAdjustments": [],
            "SeedFacts": [],
        }
        self.next_ids = dict(FIRST_IDS)
        self.company_of_account: dict[str, dict] = {}
        self.seeded_services: dict[str, tuple[int, dict, int]] = {}  # subscription → (id, contract, units)
        self.service_of_contract_service: dict[int, int] = {}
        self.service_of_product: dict[str, dict] = {}
        self.currency_ids = {record["name"]: record["id"] for record in self.state["Currencies"]}
        # accounts and subscriptions a shape of this month needs in Autotask: their company exists and
        # their contract is keyed (contractNumber = subscription id) with its units
        self.needs_company: set[str] = set()
        self.needs_keyed_contract: set[str] = set()
        last = _month_end(first)
        subscriptions = {subscription.id: subscription for subscription in universe.subscriptions}
        for subscription in universe.subscriptions:
            shaped = []
            if subscription.moved_on == first:
                shaped.append(subscription)
                self.needs_company.add(str(subscription.moved_to))
            stops = subscription.stops_billing_on
            if stops is not None and first <= stops <= last:
                shaped.append(subscription)
            if subscription.second_of and first <= subscription.start_date <= last:
                shaped.append(subscriptions[subscription.second_of])
            for item in shaped:
                self.needs_keyed_contract.add(item.id)
                self.needs_company.add(item.account_id)

    def _new_id(self, entity: str) -> int:
        self.next_ids[entity] += 1
        return self.next_ids[entity] - 1

    def _fact(self, **fields: object) -> None:
        self.state["SeedFacts"].append(fields)

    def build(self) -> None:
        for account in self.universe.accounts:
            self._company(account)
        self._extra_companies()
        self._new_customer_lookalikes()
        for product in self.universe.products:
            self._service(product)
        self._extra_services()
        for subscription in self.universe.subscriptions:
            self._contract(subscription)
        self._hand_made_adjustments()

    # --- companies -------------------------------------------------------------------------------------

    def _company(self, account: Account) -> None:
        fate, autotask_name = _FIXED_COMPANY_FATES.get(account.name, (None, None))
        if account.name in NEW_CUSTOMER_LOOKALIKES and account.id not in self.needs_company:
            fate = "missing"  # a brand-new customer
        if fate is None:
            draw = _fraction("company", account.id)
            fate = "missing" if draw < _MISSING_SHARE else "near" if draw < 0.20 else "name" if draw < 0.45 else "udf"
            if fate == "missing" and account.id in self.needs_company:
                fate = "udf"
        lookalike = _FIXED_LOOKALIKES.get(account.name)
        new_customer = account.name in NEW_CUSTOMER_LOOKALIKES
        if lookalike is None and account.name not in _FIXED_COMPANY_FATES and fate != "near" and not new_customer:
            draw = _fraction("lookalike", account.id)
            if draw < _TWIN_SHARE:
                lookalike = account.name
            elif draw < _LOOKALIKE_SHARE:
                lookalike = other_legal_form(account.name)
        if lookalike == account.name:
            self._lookalike(account, lookalike)  # the twin first: a lower id than the customer's own
        if fate == "missing":
            self._fact(kind="company", bssId=account.id, bssName=account.name, autotaskId=None, match="missing")
        else:
            self._own_company(account, fate, autotask_name)
        if lookalike is not None and lookalike != account.name:
            self._lookalike(account, lookalike)

    def _own_company(self, account: Account, fate: str, autotask_name: str | None) -> None:
        if autotask_name is None:
            autotask_name = near_miss(account.name) if fate == "near" else account.name
        record = _company_record(
            self._new_id("Companies"),
            autotask_name[:100],
            account.phone or "+00 000",
            account.street,
            account.city,
            account.postal_code,
        )
        currency = account.currency
        if account.currency == "GBP" and (
            account.name in _FIXED_CURRENCY_MISMATCH
            or (account.id not in self.needs_company and _fraction("currency", account.id) < _CURRENCY_MISMATCH_SHARE)
        ):
            currency = "EUR"  # the mismatch: a GBP customer's company bills in EUR in Autotask
        # a EUR company often has no currency of its own (it then bills in the internal currency)
        internal_by_default = currency == "EUR" and _fraction("currency-id", account.id) < 0.5
        record["currencyID"] = None if internal_by_default else self.currency_ids[currency]
        record["userDefinedFields"] = [
            {"name": COMPANY_UDF_BSS_ACCOUNT_ID, "value": account.id if fate == "udf" else None},
            {"name": "Billing Contact Email", "value": account.email},
        ]
        self.state["Companies"].append(record)
        self.company_of_account[account.id] = record
        self._fact(
            kind="company",
            bssId=account.id,
            bssName=account.name,
            autotaskId=record["id"],
            autotaskName=record["companyName"],
            match=fate,
            bssCurrency=account.currency,
            currency=currency,
        )

    def _lookalike(self, account: Account, name: str) -> None:
        """Another company whose name is the customer's or differs only in the legal form: not the customer."""
        record = _company_record(self._new_id("Companies"), name[:100], "+00 000 0000", None, account.city, None)
        record["currencyID"] = None
        record["userDefinedFields"] = [
            {"name": COMPANY_UDF_BSS_ACCOUNT_ID, "value": None},
            {"name": "Billing Contact Email", "value": None},
        ]
        self.state["Companies"].append(record)
        self._fact(
            kind="lookalike",
            bssId=None,
            looksLike=account.id,
            bssName=account.name,
            autotaskId=record["id"],
            autotaskName=record["companyName"],
            match="same-name" if name == account.name else "other-legal-form",
        )

    def _extra_companies(self) -> None:
        """Companies the BSS does not know (other customers, leads): noise a matcher must not pick."""
        count = max(2, len(self.universe.accounts) // 20)
        for number in range(count):
            stem = _EXTRA_COMPANY_STEMS[number % len(_EXTRA_COMPANY_STEMS)]
            serial = number // len(_EXTRA_COMPANY_STEMS)
            name = f"{stem} IT Services" + (f" {serial + 1}" if serial else "")
            record = _company_record(self._new_id("Companies"), name, "+1 555 0100", None, None, None)
            record["companyType"] = 2 if number % 3 == 2 else 1
            record["currencyID"] = None
            record["userDefinedFields"] = [
                {"name": COMPANY_UDF_BSS_ACCOUNT_ID, "value": None},
                {"name": "Billing Contact Email", "value": None},
            ]
            self.state["Companies"].append(record)

    def _new_customer_lookalikes(self) -> None:
        """Look-alikes of brand-new customers that are other legal entities (after every other company)."""
        for account in self.universe.accounts:
            for name in NEW_CUSTOMER_LOOKALIKES.get(account.name, ()):
                record = _company_record(self._new_id("Companies"), name, "+00 000 0000", None, account.city, None)
                record["currencyID"] = None
                record["userDefinedFields"] = [
                    {"name": COMPANY_UDF_BSS_ACCOUNT_ID, "value": None},
                    {"name": "Billing Contact Email", "value": None},
                ]
                self.state["Companies"].append(record)
                self._fact(
                    kind="lookalike",
                    bssId=None,
                    looksLike=account.id,
                    bssName=account.name,
                    autotaskId=record["id"],
                    autotaskName=name,
                    match="other-entity",
                )

    # --- services --------------------------------------------------------------------------------------

    def _service(self, product: Product) -> None:
        index = int(product.id.rsplit("-", 1)[1])
        count = len(self.universe.products)
        if index == count:
            self._fact(kind="service", bssId=product.id, sku=product.sku, autotaskId=None, match="missing")
            return
        fate = "inactive" if index == count - 1 else "name" if index % 6 == 1 and index > 1 else "sku"
        record = _service_record(
            self._new_id("Services"),
            product.name,
            PERIOD_TYPES[product.billing_period],
            float(product.unit_price),
            float(product.unit_cost),
            None if fate == "name" else product.sku,
            fate != "inactive",
        )
        self.state["Services"].append(record)
        self.service_of_product[product.id] = record
        self._fact(kind="service", bssId=product.id, sku=product.sku, autotaskId=record["id"], match=fate)

    def _extra_services(self) -> None:
        for name, period_type, price, cost, active in _EXTRA_SERVICES:
            self.state["Services"].append(
                _service_record(self._new_id("Services"), name, period_type, float(price), float(cost), None, active)
            )

    # --- contracts and units -----------------------------------------------------------------------------

    def _contract(self, subscription: Subscription) -> None:
        first = self.first
        in_force = subscription.start_date < first and (
            subscription.cancelled_on is None or subscription.cancelled_on >= first
        )
        company = self.company_of_account.get(subscription.account_id)
        if not in_force or company is None:
            reason = "not-in-force" if not in_force else "no-company"
            self._fact(kind="contract", bssId=subscription.id, autotaskId=None, match=reason)
            return
        draw = _fraction("contract", subscription.id)
        fate = "missing" if draw < 0.05 else "name" if draw < 0.15 else "number"
        if subscription.id in self.needs_keyed_contract:
            fate = "number"
        if fate == "missing":
            self._fact(kind="contract", bssId=subscription.id, autotaskId=None, match="missing")
            return
        account = self.universe.account(subscription.account_id)
        product = self.universe.product(subscription.product_id)
        if subscription.billing_cycle == "Monthly":
            # monthly commitments roll over; MSPs give those contracts a long end date
            end = _month_end(_add_months(first, 12))
        else:
            # the term in force the day before the month: a renewal on the 1st finds it expired
            end = subscription.term_end_on(first - timedelta(days=1))
        if fate == "number":
            name = f"{product.name} – {company['companyName']}"
        else:
            name = f"{product.name} ({subscription.id})"
        contract = {
            "id": self._new_id("Contracts"),
            "companyID": company["id"],
            "contractName": name[:100],
            "contractType": RECURRING_SERVICE_CONTRACT,
            "startDate": format_date(subscription.start_date),
            "endDate": format_date(end),
            "status": 1,
            "timeReportingRequiresStartAndStopTimes": 1,
            "contractNumber": subscription.id if fate == "number" else None,
            "contractPeriodType": PERIOD_TYPES[product.billing_period],
            "description": None,
            "isDefaultContract": False,
            "purchaseOrderNumber": None,
            "lastModifiedDateTime": _SEEDED_AT,
        }
        self.state["Contracts"].append(contract)
        self._fact(
            kind="contract",
            bssId=subscription.id,
            autotaskId=contract["id"],
            match=fate,
            companyId=company["id"],
            startDate=contract["startDate"],
            endDate=contract["endDate"],
            companyOfAccount=company["id"],
            accountId=subscription.account_id,
            accountInMonth=subscription.account_on(first),
        )
        self._contract_service(subscription, account, product, contract)

    def _contract_service(self, subscription: Subscription, account: Account, product: Product, contract: dict) -> None:
        service = self.service_of_product.get(product.id)
        bss_units = subscription.units_on(self.first)
        keyed = subscription.id in self.needs_keyed_contract
        if service is None or (not keyed and _fraction("contract-service", subscription.id) < 0.03):
            self._fact(
                kind="contractService",
                bssId=subscription.id,
                contractId=contract["id"],
                autotaskId=None,
                serviceId=service["id"] if service else None,
                bssUnits=bss_units,
                units=None,
                match="missing",
            )
            return
        # Autotask as last loaded: the figures of the day before the seed month
        unit_cost, unit_price = self.universe.prices_for(product, account.currency, self.first - timedelta(days=1))
        price_match = "equal"
        if _fraction("older-price", subscription.id) < OLDER_PRICE_SHARE:
            unit_price = round(float(unit_price) * OLDER_PRICE_FACTOR, 4)
            price_match = "older-price"
        units = bss_units
        match = "equal"
        stops = subscription.stops_billing_on
        if stops is not None and stops <= self.first:
            # the BSS no longer bills it; Autotask still holds the units it last billed
            units = subscription.units_on(stops - timedelta(days=1))
            match = "not-billed"
        elif not keyed and _fraction("units", subscription.id) < 0.10:
            delta = [-3, -2, -1, 1, 2, 5][int(_fraction("units-delta", subscription.id) * 6)]
            units = bss_units + delta if bss_units + delta >= 0 else bss_units + abs(delta)
            match = "differs"
        cs_id = self._new_id("ContractServices")
        self.state["ContractServices"].append(
            {
                "id": cs_id,
                "contractID": contract["id"],
                "serviceID": service["id"],
                "unitPrice": float(unit_price),
                "unitCost": float(unit_cost),
                "internalCurrencyUnitPrice": float(unit_price),
                "internalCurrencyAdjustedPrice": float(unit_price),
                "invoiceDescription": None,
                "internalDescription": None,
                "quoteItemID": None,
            }
        )
        # Initial units: an adjustment at the contract start, marked so it never counts as a duplicate.
        self.state["ContractServiceAdjustments"].append(
            {
                "id": self._new_id("ContractServiceAdjustments"),
                "contractID": contract["id"],
                "serviceID": service["id"],
                "contractServiceID": cs_id,
                "effectiveDate": contract["startDate"],
                "unitChange": units,
                "adjustedUnitPrice": None,
                "adjustedUnitCost": None,
                "allowRepeatService": False,
                "_initial": True,
            }
        )
        self._fact(
            kind="contractService",
            bssId=subscription.id,
            contractId=contract["id"],
            autotaskId=cs_id,
            serviceId=service["id"],
            bssUnits=bss_units,
            units=units,
            match=match,
            stopReason=subscription.stop_reason,
            currency=account.currency,
            unitPrice=float(unit_price),
            unitCost=float(unit_cost),
            priceMatch=price_match,
        )
        self.seeded_services[subscription.id] = (cs_id, contract, units)
        self.service_of_contract_service[cs_id] = service["id"]

    # --- adjustments a person made by hand --------------------------------------------------------------

    def _hand_made_adjustments(self) -> None:
        """On a day the BSS changes a subscription's units this month, Autotask already has an adjustment
        (same day; the same change, or another): a second adjustment on that day would be refused."""
        first = self.first
        last = _month_end(first)
        candidates: list[tuple[Subscription, date, int]] = []
        for subscription in self.universe.subscriptions:
            seeded = self.seeded_services.get(subscription.id)
            if seeded is None or subscription.account_on(first) != subscription.account_id:
                continue
            days = [day for day, _ in subscription.quantity_changes[1:] if first < day <= last]
            if not days:
                continue
            _, contract, _ = seeded
            contract_end = date.fromisoformat(contract["endDate"][:10])
            renewals = set(subscription.renewal_dates(last))
            ends_on = subscription.ends_on
            for day in sorted(set(days)):
                if (
                    first < day <= min(last, contract_end)
                    and day not in renewals
                    and (ends_on is None or day < ends_on)
                ):
                    change = subscription.units_on(day) - subscription.units_before(day)
                    if change:
                        candidates.append((subscription, day, change))
                    break
        if not candidates:
            return
        count = max(_HAND_ADJUSTMENT_MIN, math.ceil(_HAND_ADJUSTMENT_SHARE * len(candidates)))
        candidates.sort(key=lambda item: _fraction("hand-adjustment", item[0].id))
        for position, (subscription, day, bss_change) in enumerate(candidates[:count]):
            cs_id, contract, units = self.seeded_services[subscription.id]
            same = position % 2 == 0
            # a person typed the BSS's change, or a unit more than it
            unit_change = bss_change if same else bss_change + (1 if bss_change > 0 else -1)
            if units + unit_change < 0:
                unit_change = bss_change
            if units + unit_change < 0:
                continue
            same = unit_change == bss_change
            record_id = self._new_id("ContractServiceAdjustments")
            service_id = self.service_of_contract_service[cs_id]
            self.state["ContractServiceAdjustments"].append(
                {
                    "id": record_id,
                    "contractID": contract["id"],
                    "serviceID": service_id,
                    "contractServiceID": cs_id,
                    "effectiveDate": format_date(day),
                    "unitChange": unit_change,
                    "adjustedUnitPrice": None,
                    "adjustedUnitCost": None,
                    "allowRepeatService": False,
                }
            )
            self._fact(
                kind="handAdjustment",
                bssId=subscription.id,
                autotaskId=record_id,
                contractServiceId=cs_id,
                effectiveDate=day.isoformat(),
                unitChange=unit_change,
                bssChange=bss_change,
                match="same-units" if same else "other-units",
            )


def other_legal_form(name: str) -> str:
    """The name with another legal form ("Nordlicht GmbH" → "Nordlicht AG"): another company."""
    for form in _LEGAL_FORMS:
        if name.endswith(" " + form):
            stem = name[: -len(form) - 1]
            others = [other for other in ("AG", "ApS", "Ltd", "SARL", "B.V.", "GmbH") if other != form]
            return f"{stem} {others[int(_fraction('legal-form', name) * len(others))]}"
    return name + " Holding"


def near_miss(name: str) -> str:
    """A name a person would call the same company but an exact match would not."""
    folded = "".join(char for char in unicodedata.normalize("NFKD", name) if not unicodedata.combining(char))
    if folded != name:
        return folded
    for old, new in _NEAR_MISS_REPLACEMENTS:
        if old in name:
            return name.replace(old, new, 1)
    return name + "."


def missing_company_draw(account_id: str) -> bool:
    """Whether the seed's draw leaves this (not fixed) customer without a company in Autotask."""
    return _fraction("company", account_id) < _MISSING_SHARE


def _fraction(kind: str, key: str) -> float:
    digest = hashlib.blake2b(f"{kind}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _company_record(
    record_id: int, name: str, phone: str, street: str | None, city: str | None, postal_code: str | None
) -> dict:
    return {
        "id": record_id,
        "companyName": name,
        "companyType": 1,
        "ownerResourceID": OWNER_RESOURCE_ID,
        "phone": phone[:25],
        "companyNumber": None,
        "address1": street,
        "address2": None,
        "city": city,
        "state": None,
        "postalCode": postal_code,
        "countryID": None,
        "webAddress": None,
        "taxID": None,
        "isActive": True,
        "parentCompanyID": None,
        "createDate": _SEEDED_AT,
        "lastActivityDate": _SEEDED_AT,
    }


def _service_record(
    record_id: int, name: str, period_type: int, price: float, cost: float, sku: str | None, active: bool
) -> dict:
    return {
        "id": record_id,
        "name": name,
        "description": None,
        "invoiceDescription": name,
        "unitPrice": price,
        "unitCost": cost,
        "periodType": period_type,
        "billingCodeID": RECURRING_BILLING_CODE_ID,
        "sku": sku,
        "isActive": active,
        "vendorCompanyID": None,
        "createDate": _SEEDED_AT,
        "lastModifiedDate": _SEEDED_AT,
    }


def _currencies() -> list[dict]:
    return [
        {
            "id": FIRST_IDS["Currencies"] + offset,
            "name": code,
            "description": description,
            "displaySymbol": symbol,
            "exchangeRate": rate,
            "isInternalCurrency": code == "EUR",
            "isActive": active,
        }
        for offset, (code, description, symbol, rate, active) in enumerate(_CURRENCIES)
    ]


def _resources() -> list[dict]:
    def resource(offset: int, first: str, last: str, user: str, kind: int, active: bool = True) -> dict:
        return {
            "id": OWNER_RESOURCE_ID + offset,
            "firstName": first,
            "lastName": last,
            "userName": user,
            "email": f"{user}@demo.example",
            "isActive": active,
            "resourceType": kind,
            "title": None,
        }

    return [
        resource(0, "Olivia", "Owner", "olivia.owner", 1),
        resource(1, "API", "User", "api-user", 3),
        resource(2, "Former", "Employee", "former.employee", 1, active=False),
    ]


def _billing_codes() -> list[dict]:
    rows = [
        ("Recurring Contract Services", 4, True),
        ("Cloud Subscriptions", 4, True),
        ("Remote Support", 1, True),
        ("Legacy Hosting", 4, False),
        ("Cloud Usage", 2, True),
        ("One-off Charges", 2, True),
    ]
    return [
        {
            "id": RECURRING_BILLING_CODE_ID + offset,
            "name": name,
            "description": None,
            "isActive": active,
            "useType": use_type,
            "unitPrice": None,
            "externalNumber": None,
        }
        for offset, (name, use_type, active) in enumerate(rows)
    ]


def _month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))
