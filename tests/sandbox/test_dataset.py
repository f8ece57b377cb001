"""The synthetic universe: deterministic, covers every kind of charge, and internally consistent."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, timedelta
from decimal import Decimal

import pytest

from sandbox.dataset import BILLING_PERIOD_MONTHS, build_universe, ids_out_of_text_order

ALL_ACTIONS = {"Cycle", "New", "Renewal", "QuantityIncrease", "QuantityDecrease", "Cancellation"}
# the seat count's actions above, and the setup fee after some increases (a OneTime line, no seat count)
FEE_ACTIONS = {"Setup"}
ALL_CHARGE_TYPES = {"Recurring", "Prorated", "OneTime", "Credit"}
RESTATING_ACTIONS = {"Cycle", "New", "Renewal"}
ONE_DAY = timedelta(days=1)
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
    "createdDate",
]


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
    assert {line["action"] for line in lines} == ALL_ACTIONS | FEE_ACTIONS
    assert {line["chargeType"] for line in lines} == ALL_CHARGE_TYPES


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 99])
def test_every_month_of_the_window_holds_every_action(seed):
    universe = build_universe(seed=seed)
    for year in (2026, 2027):
        for month in range(1, 13):
            lines = universe.charges_for_month(f"{year}-{month:02d}")
            assert {line["action"] for line in lines} - FEE_ACTIONS == ALL_ACTIONS, (seed, year, month)


def test_charge_lines_have_the_documented_shape(universe):
    line = universe.charges_for_month("2026-10")[0]
    assert list(line) == CHARGE_KEYS
    assert set(line["account"]) == {"id", "name", "code"}
    assert set(line["subscription"]) == {"id", "status"}
    assert set(line["product"]) == {"id", "sku", "name"}
    assert set(line["billingPlan"]) == {"id", "name", "billingPeriod"}
    assert line["invoiceId"] is None


def charge_number(line: dict) -> int:
    return int(line["id"].rsplit("-", 1)[1])


def test_ids_are_numbered_in_the_bss_order_and_start_and_effective_dates_lie_inside_the_month(universe):
    seen: set[str] = set()
    for month in ("2026-01", "2026-10", "2027-02", "2027-12"):
        lines = universe.charges_for_month(month)
        assert [charge_number(line) for line in lines] == list(range(1, len(lines) + 1))
        assert all(line["id"] == f"CHG-{month}-{charge_number(line)}" for line in lines)  # no zero padding
        created = [line["createdDate"] for line in lines]
        assert all(text.endswith("Z") for text in created)
        assert created == sorted(created) and len(set(created)) == len(created)
        assert all(line["createdDate"][:10] == line["effectiveDate"] for line in lines)
        assert [line["effectiveDate"] for line in lines] == sorted(line["effectiveDate"] for line in lines)
        assert not seen & {line["id"] for line in lines}
        seen |= {line["id"] for line in lines}
        for line in lines:
            assert line["chargeStartDate"][:7] == month
            assert line["chargeStartDate"] <= line["effectiveDate"] <= line["chargeEndDate"]
            if line["billingPlan"]["billingPeriod"] == "Monthly" and line["action"] != "Renewal":
                assert line["chargeEndDate"][:7] == month


def test_money_has_at_most_four_decimals_and_matches_the_account_currency(universe):
    for line in universe.charges_for_month("2026-10"):
        account = universe.account(line["account"]["id"])
        assert line["currency"] == account.currency
        for key in ("unitCost", "unitPrice"):
            value = Decimal(repr(line[key]))
            assert value == value.quantize(Decimal("0.0001"))
            assert value > 0
        assert line["unitCost"] <= line["unitPrice"]


def lines_by_subscription(lines: list[dict]) -> dict[str, list[dict]]:
    by_subscription: dict[str, list[dict]] = defaultdict(list)
    for line in sorted(lines, key=charge_number):
        by_subscription[line["subscription"]["id"]].append(line)
    return by_subscription


def test_quantity_chain_is_consistent_from_the_previous_total(universe):
    """A restating line states the total; every change moves the previous total (this month's previous line,
    or the total the subscription held before the month), in the BSS's order."""
    subscriptions = {s.id: s for s in universe.subscriptions}
    for month in ("2026-03", "2026-10", "2027-07"):
        first = date.fromisoformat(f"{month}-01")
        for subscription_id, lines in lines_by_subscription(universe.charges_for_month(month)).items():
            total = subscriptions[subscription_id].units_before(first)
            for line in lines:
                if line["chargeType"] == "OneTime":
                    continue
                if line["action"] in RESTATING_ACTIONS:
                    assert line["quantity"] == line["subscriptionQuantity"] > 0
                else:
                    assert line["quantity"] != 0
                    assert line["subscriptionQuantity"] == total + line["quantity"], line["id"]
                total = line["subscriptionQuantity"]


def test_charges_agree_with_the_subscription_history(universe):
    month_start, month_end = date(2026, 10, 1), date(2026, 10, 31)
    lines = universe.charges_for_month("2026-10")
    subscriptions = {s.id: s for s in universe.subscriptions}
    for subscription_id, subscription_lines in lines_by_subscription(lines).items():
        subscription = subscriptions[subscription_id]
        last_of_day = {line["effectiveDate"]: line for line in subscription_lines if line["chargeType"] != "OneTime"}
        for day, line in last_of_day.items():
            assert line["subscriptionQuantity"] == subscription.units_on(date.fromisoformat(day))
        for line in subscription_lines:
            if subscription.moved_mid_month and month_start < subscription.moved_on <= month_end:
                # a move in mid-month: the old account up to its credit on the move day, the new one from its New
                moved_on = subscription.moved_on.isoformat()
                new = line["effectiveDate"] > moved_on or (
                    line["effectiveDate"] == moved_on and line["action"] == "New"
                )
                owner = subscription.moved_to if new else subscription.account_id
                assert line["account"]["id"] == owner
                continue
            assert line["account"]["id"] == subscription.account_on(month_start)
            if line["action"] == "Cycle":
                assert line["quantity"] == subscription.units_before(date.fromisoformat(line["effectiveDate"]))
                assert subscription.start_date < month_start
    restated = {line["subscription"]["id"] for line in lines if line["action"] in RESTATING_ACTIONS}
    monthly_in_force = {
        s.id
        for s in universe.subscriptions
        if universe.product(s.product_id).billing_period == "Monthly"
        and (s.units_before(month_start) > 0 or month_start <= s.start_date <= month_end)
        and (s.stops_billing_on is None or s.stops_billing_on > month_start)
    }
    assert monthly_in_force <= restated
    billed_rarely = {
        line["subscription"]["id"]
        for line in lines
        if line["action"] == "Cycle" and line["billingPlan"]["billingPeriod"] != "Monthly"
    }
    for subscription_id in billed_rarely:
        subscription = subscriptions[subscription_id]
        months = BILLING_PERIOD_MONTHS[universe.product(subscription.product_id).billing_period]
        elapsed = (2026 - subscription.start_date.year) * 12 + 10 - subscription.start_date.month
        assert elapsed % months == 0  # only in its billing months


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
    last_of_day = dict(subscription.quantity_changes)  # several changes on one day: the last one counts
    for day, total in last_of_day.items():
        assert subscription.units_on(day) == total


def test_renewals_happen_on_the_anniversary_and_run_to_the_renewed_term_end(universe):
    renewals = [
        line for line in universe.charges_between(date(2026, 1, 1), date(2027, 12, 31)) if line["action"] == "Renewal"
    ]
    assert renewals
    subscriptions = {s.id: s for s in universe.subscriptions}
    for line in renewals:
        subscription = subscriptions[line["subscription"]["id"]]
        assert subscription.billing_cycle in {"Annual", "Biennial", "Triennial"}
        effective = date.fromisoformat(line["effectiveDate"])
        assert effective.day == subscription.start_date.day
        assert effective in subscription.renewal_dates(date(2027, 12, 31))
        assert line["chargeEndDate"] == subscription.term_end_on(effective).isoformat() > line["effectiveDate"]
    assert any(date.fromisoformat(line["effectiveDate"]).day != 1 for line in renewals)


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


def test_a_large_month_is_generated_once_and_cached(thousand_customers):
    # How fast it is generated is `make bench` (bench/bench_bss_server.py, `bss_dataset`), not a test.
    lines = thousand_customers.charges_for_month("2026-10")
    assert len(lines) > 10_000
    assert thousand_customers.charges_for_month("2026-10") is lines
    assert len({line["id"] for line in lines}) == len(lines)


# --- the shapes real BSS months take (issue 8) -----------------------------------------------------------


def shapes_of_month(universe, month: str) -> dict[str, list]:
    """Each shape's occurrences in a month, found from the lines (and the truth where lines cannot say)."""
    first = date.fromisoformat(f"{month}-01")
    lines = universe.charges_for_month(month)
    by_subscription = lines_by_subscription(lines)
    subscriptions = {s.id: s for s in universe.subscriptions}
    previous_month = lines_by_subscription(
        universe.charges_for_month(f"{first.year - (first.month == 1)}-{(first.month - 2) % 12 + 1:02d}")
    )
    shapes: dict[str, list] = defaultdict(list)
    for subscription_id, subscription_lines in by_subscription.items():
        subscription = subscriptions[subscription_id]
        for line in subscription_lines:
            if line["action"] == "Renewal":
                if not line["effectiveDate"].endswith("-01"):
                    shapes["renewal_not_on_the_1st"].append(line["id"])
                before = subscription.units_before(date.fromisoformat(line["effectiveDate"]))
                if line["subscriptionQuantity"] != before:
                    shapes["renewal_changes_the_total"].append(line["id"])
        if subscription_lines[0]["action"] not in RESTATING_ACTIONS:
            shapes["first_line_is_a_change"].append(subscription_id)
        days = Counter(line["effectiveDate"] for line in subscription_lines if line["chargeType"] != "OneTime")
        if any(count > 1 for count in days.values()):
            shapes["several_lines_on_one_day"].append(subscription_id)
        if subscription.moved_on == first:
            shapes["moved"].append(subscription_id)
            assert subscription_lines[0]["action"] in RESTATING_ACTIONS
            assert {line["account"]["id"] for line in subscription_lines} == {subscription.moved_to}
            assert {line["account"]["id"] for line in previous_month[subscription_id]} == {subscription.account_id}
        if subscription.second_of and subscription.start_date >= first:
            earlier = subscriptions[subscription.second_of]
            assert (earlier.account_id, earlier.product_id) == (subscription.account_id, subscription.product_id)
            assert earlier.units_on(subscription.start_date) > 0
            shapes["second_subscription"].append(subscription_id)
    for subscription in universe.subscriptions:
        stops = subscription.stops_billing_on
        if stops is not None and stops.strftime("%Y-%m") == month:
            assert subscription.id not in by_subscription or stops > first
            assert all(
                line["action"] != "Cancellation" for line in by_subscription.get(subscription.id, [])
            )  # no cancellation line: the BSS just stops
            shapes[subscription.stop_reason or "?"].append(subscription.id)
    shapes["ids_out_of_text_order"] = ids_out_of_text_order(lines)
    rarely = [line for line in lines if line["billingPlan"]["billingPeriod"] != "Monthly"]
    shapes["billed_rarely_without_a_line"] = [
        s.id
        for s in universe.subscriptions
        if universe.product(s.product_id).billing_period != "Monthly"
        and s.units_before(first) > 0
        and s.id not in by_subscription
        and s.stops_billing_on is None
    ]
    assert rarely
    return shapes


SHAPES = [
    "renewal_not_on_the_1st",
    "renewal_changes_the_total",
    "first_line_is_a_change",
    "several_lines_on_one_day",
    "moved",
    "second_subscription",
    "vanished",
    "lapsed",
    "ids_out_of_text_order",
    "billed_rarely_without_a_line",
]


def test_the_demo_month_shows_a_few_of_every_shape(universe):
    shapes = shapes_of_month(universe, "2026-10")
    assert {name: len(shapes[name]) > 0 for name in SHAPES} == dict.fromkeys(SHAPES, True)
    for name in ("moved", "vanished", "second_subscription"):
        assert len(shapes[name]) >= 2, name
    # most of the month stays ordinary
    for name in ("moved", "vanished", "lapsed", "second_subscription", "several_lines_on_one_day"):
        assert len(shapes[name]) <= 0.05 * len(universe.subscriptions), name


@pytest.fixture(scope="module")
def large_universe():
    return build_universe(customers=400, subscriptions_per_customer=10, seed=5)


@pytest.mark.parametrize("month", ["2026-05", "2027-04"])
def test_a_generated_month_holds_every_shape_at_a_small_share(large_universe, month):
    shapes = shapes_of_month(large_universe, month)
    present = [name for name in SHAPES if name != "ids_out_of_text_order"]  # by chance, not in every month
    assert {name: len(shapes[name]) > 0 for name in present} == dict.fromkeys(present, True)
    subscriptions = len(large_universe.subscriptions)
    for name in ("moved", "vanished", "lapsed", "second_subscription", "several_lines_on_one_day"):
        assert len(shapes[name]) <= 0.03 * subscriptions, (name, len(shapes[name]))
    # an annually billed subscription between its yearly charges stays the normal case
    assert len(shapes["billed_rarely_without_a_line"]) > 10 * len(shapes["lapsed"])


def test_a_large_month_holds_same_day_ids_whose_text_order_differs(thousand_customers):
    lines = thousand_customers.charges_for_month("2026-10")
    assert ids_out_of_text_order(lines)


@pytest.mark.parametrize("seed", [1, 42])
def test_every_month_bills_a_subscription_under_one_account(seed):
    universe = build_universe(seed=seed)
    moved = [s for s in universe.subscriptions if s.moved_on is not None]
    assert moved
    for year in (2026, 2027):
        for month in range(1, 13):
            accounts: dict[str, set[str]] = defaultdict(set)
            for line in universe.charges_for_month(f"{year}-{month:02d}"):
                accounts[line["subscription"]["id"]].add(line["account"]["id"])
                assert line["currency"] == universe.account(line["account"]["id"]).currency
            # except the moves in mid-month: the old account and the new one, that month only
            moved_here = {
                s.id: {s.account_id, s.moved_to}
                for s in moved
                if s.moved_mid_month and (s.moved_on.year, s.moved_on.month) == (year, month)
            }
            assert {key: found for key, found in accounts.items() if len(found) > 1} == moved_here, (year, month)


def test_a_subscription_no_longer_billed_has_no_line_from_its_stop_on(universe):
    stopped = [s for s in universe.subscriptions if s.stops_billing_on is not None]
    assert {s.stop_reason for s in stopped} == {"vanished", "lapsed"}
    for subscription in stopped:
        later = universe.charges_between(subscription.stops_billing_on, date(2027, 12, 31))
        assert not [line for line in later if line["subscription"]["id"] == subscription.id]
        assert subscription.units_on(subscription.stops_billing_on) == 0
        if subscription.stop_reason == "lapsed":
            assert subscription.stops_billing_on == subscription.term_end_on(subscription.stops_billing_on) + ONE_DAY


def test_the_showcase_month_and_the_next_hold_a_move_in_mid_month_to_a_customer_with_accents(universe):
    """A cancellation credit on the old account, a New line of the same units on the new one (whose name has
    accents and a legal form), on one day in mid-month, the credit issued first; the next month bills the new one."""
    for month in ("2026-10", "2026-11"):
        moved = [s for s in universe.subscriptions if s.moved_mid_month and s.moved_on.strftime("%Y-%m") == month]
        assert len(moved) >= 2, month
        lines = lines_by_subscription(universe.charges_for_month(month))
        for subscription in moved:
            on_the_day = [
                line for line in lines[subscription.id] if line["effectiveDate"] == subscription.moved_on.isoformat()
            ]
            credit, new = on_the_day
            units = subscription.units_on(subscription.moved_on)
            assert (credit["account"]["id"], credit["action"], credit["quantity"], credit["subscriptionQuantity"]) == (
                subscription.account_id,
                "Cancellation",
                -units,
                0,
            )
            assert (new["account"]["id"], new["action"], new["quantity"], new["subscriptionQuantity"]) == (
                subscription.moved_to,
                "New",
                units,
                units,
            )
            assert credit["createdDate"] < new["createdDate"]
            name = universe.account(subscription.moved_to).name
            assert not name.isascii() and name.split()[-1] in {"GmbH", "SARL", "S.L.", "Α.Ε."}
            following = universe.charges_for_month(
                f"{subscription.moved_on.year}-{subscription.moved_on.month + 1:02d}"
            )
            assert {line["account"]["id"] for line in following if line["subscription"]["id"] == subscription.id} <= {
                subscription.moved_to
            }
