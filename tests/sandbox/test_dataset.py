"""The synthetic universe: deterministic, covers every kind of charge, and internally consistent."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import date
from decimal import Decimal

import pytest

from sandbox.dataset import build_universe

ALL_ACTIONS = {"Cycle", "New", "Renewal", "QuantityIncrease", "QuantityDecrease", "Cancellation"}
ALL_CHARGE_TYPES = {"Recurring", "Prorated", "OneTime", "Credit"}
RESTATING_ACTIONS = {"Cycle", "New", "Renewal"}
CHARGE_KEYS = [
    "id",
    "account",
    "subscription",
    "product",
    "billingPlan",
    "billingCycle",
    "chargeType",
    "action",
    "quantity",
    "subscriptionQuantity",
    "unitCost",
    "unitPrice",
    "currency",
    "chargeStartDate",
    "chargeEndDate",
    "effectiveDate",
    "invoiceId",
]


@pytest.fixture(scope="module")
def universe():
    return build_universe()


def test_same_seed_gives_identical_data_and_another_seed_differs():
    first, second = build_universe(seed=7), build_universe(seed=7)
    assert first.accounts == second.accounts
    assert first.products == second.products
    assert first.subscriptions == second.subscriptions
    assert first.charges_for_month("2026-10") == second.charges_for_month("2026-10")
    other = build_universe(seed=8)
    assert other.charges_for_month("2026-10") != first.charges_for_month("2026-10")


def test_default_size_has_fifty_accounts_and_three_subscriptions_each(universe):
    assert len(universe.accounts) == 50
    assert len(universe.subscriptions) == 150
    assert Counter(sub.account_id for sub in universe.subscriptions) == {a.id: 3 for a in universe.accounts}
    assert universe.accounts[0].id == "ACC-1001"
    assert universe.subscriptions[41].id == "SUB-000042"


def test_typical_month_holds_every_action_and_charge_type(universe):
    lines = universe.charges_for_month("2026-10")
    assert {line["action"] for line in lines} == ALL_ACTIONS
    assert {line["chargeType"] for line in lines} == ALL_CHARGE_TYPES


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 99])
def test_every_month_of_the_window_holds_every_action(seed):
    universe = build_universe(seed=seed)
    for year in (2026, 2027):
        for month in range(1, 13):
            lines = universe.charges_for_month(f"{year}-{month:02d}")
            assert {line["action"] for line in lines} == ALL_ACTIONS, (seed, year, month)


def test_charge_lines_have_the_documented_shape(universe):
    line = universe.charges_for_month("2026-10")[0]
    assert list(line) == CHARGE_KEYS
    assert set(line["account"]) == {"id", "name", "code"}
    assert set(line["subscription"]) == {"id", "status"}
    assert set(line["product"]) == {"id", "sku", "name"}
    assert set(line["billingPlan"]) == {"id", "name", "billingPeriod"}
    assert line["invoiceId"] is None


def test_ids_are_unique_sorted_and_dates_lie_inside_the_month(universe):
    seen: set[str] = set()
    for month in ("2026-01", "2026-10", "2027-02", "2027-12"):
        lines = universe.charges_for_month(month)
        ids = [line["id"] for line in lines]
        assert ids == sorted(ids)
        assert all(charge_id.startswith(f"CHG-{month}-") for charge_id in ids)
        assert not seen & set(ids)
        seen |= set(ids)
        for line in lines:
            assert line["chargeStartDate"][:7] == month
            assert line["chargeEndDate"][:7] == month
            assert line["chargeStartDate"] <= line["effectiveDate"] <= line["chargeEndDate"]


def test_money_has_at_most_four_decimals_and_matches_the_account_currency(universe):
    for line in universe.charges_for_month("2026-10"):
        account = universe.account(line["account"]["id"])
        assert line["currency"] == account.currency
        for key in ("unitCost", "unitPrice"):
            value = Decimal(repr(line[key]))
            assert value == value.quantize(Decimal("0.0001"))
            assert value > 0
        assert line["unitCost"] <= line["unitPrice"]


def test_quantity_chain_is_consistent_within_each_subscription_and_month(universe):
    for month in ("2026-03", "2026-10", "2027-07"):
        by_subscription: dict[str, list[dict]] = defaultdict(list)
        for line in universe.charges_for_month(month):
            by_subscription[line["subscription"]["id"]].append(line)
        for lines in by_subscription.values():
            lines.sort(key=lambda line: (line["effectiveDate"], line["id"]))
            assert lines[0]["action"] in RESTATING_ACTIONS
            total = None
            for line in lines:
                if line["action"] in RESTATING_ACTIONS:
                    assert line["quantity"] == line["subscriptionQuantity"] > 0
                    assert total is None or total == line["subscriptionQuantity"]
                else:
                    assert line["subscriptionQuantity"] == total + line["quantity"]
                total = line["subscriptionQuantity"]


def test_charges_agree_with_the_subscription_history(universe):
    month_start, month_end = date(2026, 10, 1), date(2026, 10, 31)
    lines = universe.charges_for_month("2026-10")
    for line in lines:
        subscription = next(s for s in universe.subscriptions if s.id == line["subscription"]["id"])
        effective = date.fromisoformat(line["effectiveDate"])
        assert line["subscriptionQuantity"] == subscription.units_on(effective)
        if line["action"] == "Cycle":
            assert line["quantity"] == subscription.units_on(month_start)
            assert subscription.start_date < month_start
    cycled = {line["subscription"]["id"] for line in lines if line["action"] in RESTATING_ACTIONS}
    in_force = {
        s.id for s in universe.subscriptions if s.units_on(month_start) > 0 or month_start <= s.start_date <= month_end
    }
    assert cycled == in_force


def test_changes_and_cancellations_carry_signed_quantities(universe):
    lines = universe.charges_for_month("2026-10")
    for line in lines:
        if line["action"] == "QuantityIncrease":
            assert line["chargeType"] == "Prorated" and line["quantity"] > 0
        elif line["action"] == "QuantityDecrease":
            assert line["chargeType"] == "Prorated" and line["quantity"] < 0
            assert line["subscriptionQuantity"] >= 1
        elif line["action"] == "Cancellation":
            assert line["chargeType"] == "Credit" and line["quantity"] < 0
            assert line["subscriptionQuantity"] == 0
            assert line["subscription"]["status"] == "Cancelled"


def test_a_cancelled_subscription_has_no_charges_afterwards(universe):
    cancelled = [s for s in universe.subscriptions if s.cancelled_on is not None]
    assert cancelled
    subscription = cancelled[0]
    assert subscription.units_on(subscription.cancelled_on) == 0
    later = universe.charges_between(subscription.cancelled_on, date(2027, 12, 31))
    after = [line for line in later if line["subscription"]["id"] == subscription.id]
    assert [line["action"] for line in after] == ["Cancellation"]


def test_units_on_is_zero_before_the_start_and_follows_the_changes(universe):
    subscription = max(universe.subscriptions, key=lambda s: len(s.quantity_changes))
    assert len(subscription.quantity_changes) > 2
    assert subscription.units_on(date(2000, 1, 1)) == 0
    for day, total in subscription.quantity_changes:
        assert subscription.units_on(day) == total


def test_renewals_happen_on_the_first_day_after_the_term_end(universe):
    renewals = [
        line for line in universe.charges_between(date(2026, 1, 1), date(2027, 12, 31)) if line["action"] == "Renewal"
    ]
    assert renewals
    for line in renewals:
        subscription = next(s for s in universe.subscriptions if s.id == line["subscription"]["id"])
        assert subscription.billing_cycle in {"Annual", "Biennial", "Triennial"}
        effective = date.fromisoformat(line["effectiveDate"])
        assert effective.day == 1
        assert effective in subscription.renewal_dates(date(2027, 12, 31))
        assert subscription.term_end_on(effective) > effective


def test_customer_base_is_realistic(universe):
    names = {account.name for account in universe.accounts}
    assert {"Société Générale Services", "O'Brien & Sons Ltd", "Müller GmbH", "Contoso Ltd"} <= names
    assert len(names) == len(universe.accounts)
    assert len({account.code for account in universe.accounts}) == len(universe.accounts)
    assert {"GBP", "USD", "EUR"} <= {account.currency for account in universe.accounts}
    assert all(account.phone.startswith("+") for account in universe.accounts)
    cycles = Counter(subscription.billing_cycle for subscription in universe.subscriptions)
    assert set(cycles) == {"Monthly", "Annual", "Biennial", "Triennial"}
    assert {product.billing_period for product in universe.products} == {
        "Monthly",
        "Quarterly",
        "SemiAnnually",
        "Annually",
    }


def test_charges_between_selects_by_charge_start_date(universe):
    lines = universe.charges_between(date(2026, 10, 10), date(2026, 11, 5))
    assert lines
    assert all("2026-10-10" <= line["chargeStartDate"] <= "2026-11-05" for line in lines)
    expected = [
        line
        for line in universe.charges_for_month("2026-10") + universe.charges_for_month("2026-11")
        if "2026-10-10" <= line["chargeStartDate"] <= "2026-11-05"
    ]
    assert lines == expected


def test_large_universe_month_is_generated_quickly_and_cached():
    started = time.perf_counter()
    universe = build_universe(customers=1000, subscriptions_per_customer=20)
    lines = universe.charges_for_month("2026-10")
    elapsed = time.perf_counter() - started
    assert len(lines) > 15_000
    assert elapsed < 5.0
    assert universe.charges_for_month("2026-10") is lines
    assert len({line["id"] for line in lines}) == len(lines)
