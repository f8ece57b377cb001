"""The sandboxes produce the money shapes of real months, each seen over HTTP: customers in EUR, GBP and USD with
their own price lists, products shared across currencies, costs the BSS raised on the month's first day (Autotask
still holding the old cost), Autotask prices that differ from the BSS's, and setup fees (OneTime `New` and `Setup`)
on subscriptions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from sandbox.dataset import COST_CHANGE_DAY, COST_RISE, EXCHANGE_RATES, build_universe, cost_changed
from tests.sandbox.test_autotask_server import HEADERS, SECRET
from tests.sandbox.test_bss_server import CLIENT, USER, api_headers
from tests.servers import RunningServer, start_server

MONTH = "2026-10"
CUSTOMERS = 60


@pytest.fixture(scope="module")
def bss() -> Iterator[RunningServer]:
    running = start_server(["sandbox.bss_server", "--customers", str(CUSTOMERS), "--subscriptions-per-customer", "3"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def autotask() -> Iterator[RunningServer]:
    running = start_server(
        [
            "sandbox.autotask_server",
            "--secret",
            SECRET,
            "--seed",
            "42",
            "--seed-month",
            MONTH,
            "--seed-customers",
            str(CUSTOMERS),
            "--seed-subscriptions-per-customer",
            "3",
        ]
    )
    yield running
    running.stop()


def _charges(server: RunningServer, first: str, last: str) -> list[dict]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        token = http.post("/oauth/token", auth=CLIENT, data=USER).raise_for_status().json()["access_token"]
        lines, page = [], 1
        while True:
            answer = http.get(
                "/api/charges",
                headers=api_headers(token),
                params={
                    "$filter": f"chargeStartDate ge {first} and chargeStartDate le {last}",
                    "page": page,
                    "pageSize": 200,
                },
            ).raise_for_status()
            lines += answer.json()
            if not answer.json() or len(answer.json()) < 200:
                return lines
            page += 1


@pytest.fixture(scope="module")
def october(bss: RunningServer) -> list[dict]:
    return _charges(bss, "2026-10-01", "2026-10-31")


@pytest.fixture(scope="module")
def september(bss: RunningServer) -> list[dict]:
    return _charges(bss, "2026-09-01", "2026-09-30")


def _recurring(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["chargeType"] in ("Recurring", "Prorated")]


def test_three_currencies_share_products_at_prices_from_their_own_lists(october):
    by_product: dict[str, dict[str, set[Decimal]]] = defaultdict(lambda: defaultdict(set))
    for line in _recurring(october):
        by_product[line["product"]["id"]][line["currency"]].add(Decimal(str(line["unitPrice"])))
    assert {currency for prices in by_product.values() for currency in prices} == {"EUR", "GBP", "USD"}
    shared = {product: prices for product, prices in by_product.items() if len(prices) >= 2}
    assert shared, "no product is billed in two currencies"
    # a list price that is not the EUR price converted: each currency's own price list
    own_list = [
        (product, currency)
        for product, prices in shared.items()
        if "EUR" in prices
        for currency in prices.keys() - {"EUR"}
        if all(
            abs(price - (eur * EXCHANGE_RATES[currency]).quantize(Decimal("0.0001"))) > Decimal("0.0001")
            for eur in prices["EUR"]
            for price in prices[currency]
        )
    ]
    assert own_list, shared
    # one price per product and currency in the month: nothing mixes currencies within an account
    for line in october:
        assert line["currency"] in ("EUR", "GBP", "USD")


def test_the_bss_raised_some_costs_on_the_months_first_day(september, october):
    universe = build_universe(CUSTOMERS, 3, 42)
    raised = {product.id for product in universe.products if cost_changed(product)}
    assert raised and len(raised) < len(universe.products)
    before = {(line["subscription"]["id"]): Decimal(str(line["unitCost"])) for line in _recurring(september)}
    after = {
        (line["subscription"]["id"], line["product"]["id"]): Decimal(str(line["unitCost"]))
        for line in _recurring(october)
    }
    compared = [(key, before[key[0]], cost) for key, cost in after.items() if key[0] in before]
    rose = [item for item in compared if item[0][1] in raised]
    kept = [item for item in compared if item[0][1] not in raised]
    assert rose and kept
    assert all(abs(cost - (old * COST_RISE).quantize(Decimal("0.0001"))) <= Decimal("0.0002") for _, old, cost in rose)
    assert all(cost == old for _, old, cost in kept)
    assert COST_CHANGE_DAY.isoformat().startswith(MONTH)


def test_setup_fees_come_as_onetime_new_and_setup_lines_beside_the_seat_lines(october):
    setup = [line for line in october if line["chargeType"] == "OneTime" and line["action"] == "Setup"]
    new_fees = [line for line in october if line["chargeType"] == "OneTime" and line["action"] == "New"]
    assert setup and new_fees
    increases = {
        (line["subscription"]["id"], line["effectiveDate"]) for line in october if line["action"] == "QuantityIncrease"
    }
    recurring_price = {line["subscription"]["id"]: Decimal(str(line["unitPrice"])) for line in _recurring(october)}
    for fee in setup:
        # an onboarding fee for the seats an increase added that day, cheaper than a seat's monthly price
        assert (fee["subscription"]["id"], fee["effectiveDate"]) in increases
        assert Decimal(str(fee["unitPrice"])) < recurring_price[fee["subscription"]["id"]]


def test_autotask_holds_the_old_cost_and_sometimes_an_older_price(autotask, october):
    admin = httpx.Client(base_url=autotask.url, timeout=60)
    facts = [
        fact
        for fact in admin.get("/_admin/seed-facts").raise_for_status().json()["items"]
        if fact["kind"] == "contractService" and fact["autotaskId"]
    ]
    assert {fact["currency"] for fact in facts} == {"EUR", "GBP", "USD"}
    older = [fact for fact in facts if fact["priceMatch"] == "older-price"]
    assert older and len(older) < len(facts)
    bss_price = {line["subscription"]["id"]: Decimal(str(line["unitPrice"])) for line in _recurring(october)}
    bss_cost = {line["subscription"]["id"]: Decimal(str(line["unitCost"])) for line in _recurring(october)}
    # what the Autotask API answers: the contract services' prices and the units rows' cost
    api = httpx.Client(headers=HEADERS, timeout=30)
    base = autotask.url + "/ATServicesRest/V1.0"
    ids = [fact["autotaskId"] for fact in facts]
    records = (
        api.post(f"{base}/ContractServices/query", json={"filter": [{"op": "in", "field": "id", "value": ids[:500]}]})
        .raise_for_status()
        .json()["items"]
    )
    price_of = {record["id"]: Decimal(str(record["unitPrice"])) for record in records}
    differing = [fact for fact in older if fact["bssId"] in bss_price and fact["autotaskId"] in price_of]
    assert differing
    for fact in differing:
        assert price_of[fact["autotaskId"]] < bss_price[fact["bssId"]]
    universe = build_universe(CUSTOMERS, 3, 42)
    product_of = {subscription.id: subscription.product_id for subscription in universe.subscriptions}
    old_cost = [
        fact
        for fact in facts
        if fact["bssId"] in bss_cost and cost_changed(universe.product(product_of[fact["bssId"]]))
    ]
    assert old_cost
    for fact in old_cost:
        assert Decimal(str(fact["unitCost"])) < bss_cost[fact["bssId"]]
