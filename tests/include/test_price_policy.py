"""What a customer pays: the price policy (keep / bss / markup), a customer's own policy, price and cost changes
as plan actions with their figures and currency, a raise and a sale below cost flagged with both figures, and new
contract services priced in the customer's currency, never at the catalogue Service's price."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from include.plan import ActionKind, ActionStatus, PlanAction
from include.prices import PricePolicy, PriceRule, price_policy_overrides, set_price_policy_override
from include.sync_settings import SyncSettings
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line
from tests.include.test_reconcile_defects import ACME, M365, MONTH, SETTINGS, _apply_loadable, _plan

D = date
BSS = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801, price_policy="bss")
FOUR = Decimal("0.0001")


def _existing(units: int = 10, cost: float = 10.0, price: float = 12.0, currency: str = "EUR"):
    """Acme in Autotask (billing in `currency`) with a contract service of M365 at `price` / `cost`; the catalogue
    Service is priced 99 / 80 in the internal currency, a figure no customer pays."""
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0], **({} if currency == "EUR" else {"currency": currency}))
    service = fake.add_service(M365[2], M365[1], 80.0, 99.0)
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    cs = fake.add_contract_service(contract, service, units, unit_cost=cost, unit_price=price)
    return fake, contract, service, cs


def _cycle(cost: str = "10.0000", price: str = "12.0000", currency: str = "EUR") -> list[dict]:
    return [
        line(
            MONTH,
            ACME,
            "SUB-1",
            M365,
            "Cycle",
            10,
            10,
            D(2026, 10, 1),
            unit_cost=cost,
            unit_price=price,
            currency=currency,
        )
    ]


def _only(plan: list[PlanAction]) -> PlanAction:
    assert len(plan) == 1, plan
    return plan[0]


def test_the_policy_is_parsed_strictly_and_prices_from_the_bss_figures():
    assert PricePolicy.parse("keep") == PricePolicy() and str(PricePolicy.parse(" BSS ")) == "bss"
    markup = PricePolicy.parse("markup:15")
    assert markup.rule is PriceRule.MARKUP and str(markup) == "markup:15"
    assert markup.price(Decimal("99"), Decimal("10.4321")) == Decimal("11.9969")  # 10.4321 × 1.15, 4 places
    assert PricePolicy.parse("bss").price(12.3456, 10) == Decimal("12.3456")
    for wrong in ("cheap", "markup:", "markup:-5", "markup:abc", "markup:nan"):
        with pytest.raises(ValueError, match="keep, bss or markup"):
            PricePolicy.parse(wrong)
    with pytest.raises(ValueError, match="keep, bss or markup"):
        SyncSettings.from_env({"BILLING_SYNC_PRICE_POLICY": "cost-plus"})
    assert SyncSettings.from_env({"BILLING_SYNC_PRICE_POLICY": "markup:20"}).default_price_policy == PricePolicy(
        PriceRule.MARKUP, Decimal("20")
    )


def test_keep_leaves_an_existing_price_and_changes_only_the_cost_the_bss_changed(warehouse):
    fake, _, _, cs = _existing(price=11.0)
    action = _only(_plan(warehouse, fake, _cycle(cost="10.5000", price="12.0000")))
    assert action.kind is ActionKind.CHANGE_COST and action.status is ActionStatus.PROPOSED
    assert (action.unit_cost_before, action.unit_cost_after) == (Decimal("10.0000"), Decimal("10.5000"))
    assert action.unit_price_before is None and action.unit_price_after is None and action.currency == "EUR"
    assert "adjustedUnitPrice" not in action.payload and action.payload["adjustedUnitCost"] == Decimal("10.5000")
    _apply_loadable(fake, [action])
    assert fake.price_on(cs, D(2026, 10, 1)) == 11.0 and fake.cost_on(cs, D(2026, 10, 1)) == 10.5


def test_bss_turns_a_price_difference_into_a_flagged_raise_with_the_old_and_new_figure(warehouse):
    fake, _, _, cs = _existing(price=11.0)
    action = _only(_plan(warehouse, fake, _cycle(), settings=BSS))
    assert action.kind is ActionKind.CHANGE_PRICE and action.effective_date == D(2026, 10, 1)
    assert action.unit_change == 0 and action.payload["adjustedUnitPrice"] == Decimal("12.0000")
    assert (action.unit_price_before, action.unit_price_after, action.currency) == (
        Decimal("11.0000"),
        Decimal("12.0000"),
        "EUR",
    )
    assert action.status is ActionStatus.FLAGGED
    assert "raises the unit price the customer pays from 11.0000 to 12.0000 EUR" in action.reason
    _apply_loadable(fake, [action])
    assert fake.price_on(cs, D(2026, 10, 1)) == 12.0 and fake.price_on(cs, D(2026, 9, 30)) == 11.0


def test_bss_lowers_a_price_without_a_flag_and_a_price_in_step_changes_nothing(warehouse):
    fake, *_ = _existing(price=13.0)
    lowered = _only(_plan(warehouse, fake, _cycle(), settings=BSS))
    assert lowered.kind is ActionKind.CHANGE_PRICE and lowered.status is ActionStatus.PROPOSED
    assert (lowered.unit_price_before, lowered.unit_price_after) == (Decimal("13.0000"), Decimal("12.0000"))
    fake_same, *_ = _existing(price=12.0)
    assert _plan(warehouse, fake_same, _cycle(), settings=BSS) == []


def test_a_price_change_and_a_unit_change_on_one_date_are_one_adjustment(warehouse):
    fake, *_ = _existing(price=11.0)
    october = [
        *_cycle(),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 2, 12, D(2026, 10, 14)),
    ]
    plan = _plan(warehouse, fake, october, settings=BSS)
    assert [(a.kind, a.effective_date, a.unit_change, a.unit_price_after) for a in plan] == [
        (ActionKind.CHANGE_PRICE, D(2026, 10, 1), Decimal("0.0000"), Decimal("12.0000")),
        (ActionKind.ADJUST_UNITS, D(2026, 10, 14), Decimal("2.0000"), None),
    ]
    assert plan[0].idempotency_key.split("|")[1] == plan[1].idempotency_key.split("|")[1] == "adjust"


@pytest.mark.parametrize(("markup", "expected"), [("markup:20", None), ("markup:50", Decimal("15.0000"))])
def test_markup_prices_at_the_bss_unit_cost_plus_the_markup(warehouse, markup, expected):
    fake, *_ = _existing(price=12.0)
    settings = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801, price_policy=markup)
    plan = _plan(warehouse, fake, _cycle(), settings=settings)
    if expected is None:
        assert plan == []  # 10 × 1.20 = 12: already what Autotask holds
    else:
        assert _only(plan).unit_price_after == expected and _only(plan).unit_price_before == Decimal("12.0000")


def test_a_price_below_cost_is_flagged_sold_below_cost_with_both_figures(warehouse):
    fake, *_ = _existing(price=12.0)
    action = _only(_plan(warehouse, fake, _cycle(cost="10.0000", price="9.5000"), settings=BSS))
    assert action.status is ActionStatus.FLAGGED
    assert "sold below cost: unit price 9.5000 EUR is below unit cost 10.0000 EUR" in action.reason
    # a cost rising above the price Autotask keeps is flagged too
    fake_keep, *_ = _existing(price=12.0)
    risen = _only(_plan(warehouse, fake_keep, _cycle(cost="12.5000", price="15.0000")))
    assert risen.kind is ActionKind.CHANGE_COST and "sold below cost: unit price 12.0000 EUR" in risen.reason


def test_a_customers_own_policy_overrides_the_setting_and_can_be_taken_back(warehouse):
    fake, *_ = _existing(price=11.0)
    assert _plan(warehouse, fake, _cycle()) == []  # keep
    assert set_price_policy_override(warehouse, ACME[0], "bss", by="alice") == PricePolicy(PriceRule.BSS)
    assert price_policy_overrides(warehouse) == {ACME[0]: PricePolicy(PriceRule.BSS)}
    repriced = _only(_plan(warehouse, fake, _cycle()))
    assert repriced.kind is ActionKind.CHANGE_PRICE and repriced.unit_price_after == Decimal("12.0000")
    with pytest.raises(ValueError, match="keep, bss or markup"):
        set_price_policy_override(warehouse, ACME[0], "whatever", by="alice")
    assert price_policy_overrides(warehouse) == {ACME[0]: PricePolicy(PriceRule.BSS)}  # a refusal stores nothing
    set_price_policy_override(warehouse, ACME[0], None, by="bob")
    assert price_policy_overrides(warehouse) == {}
    assert _plan(warehouse, fake, _cycle()) == []
    events = warehouse.query("SELECT policy, set_by FROM price_policy_override_events ORDER BY set_at, set_by", {})
    assert [(row["policy"], row["set_by"]) for row in events] == [("bss", "alice"), (None, "bob")]


@pytest.mark.parametrize(("currency", "price", "cost"), [("GBP", "10.2852", "8.5710"), ("USD", "13.0116", "10.8430")])
def test_a_new_contract_service_carries_the_bss_money_in_the_customers_currency(warehouse, currency, price, cost):
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0], currency=currency)
    fake.add_service(M365[2], M365[1], 80.0, 99.0)  # the catalogue's internal-currency price: nobody pays it
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    october = [
        line(
            MONTH, ACME, "SUB-1", M365, "New", 4, 4, D(2026, 10, 1), unit_cost=cost, unit_price=price, currency=currency
        ),
        line(
            MONTH,
            ACME,
            "SUB-1",
            M365,
            "Setup",
            4,
            4,
            D(2026, 10, 1),
            unit_cost="1.0000",
            unit_price="2.0000",
            charge_type="OneTime",
            currency=currency,
        ),
    ]
    plan = _plan(warehouse, fake, october, accounts=[account_row(*ACME)])
    created = next(action for action in plan if action.kind is ActionKind.CREATE_CONTRACT_SERVICE)
    # the stored payload is JSON: its numbers come back as floats
    assert Decimal(str(created.payload["unitPrice"])) == Decimal(price)
    assert Decimal(str(created.payload["unitCost"])) == Decimal(cost)
    assert (created.unit_price_after, created.unit_cost_after, created.currency) == (
        Decimal(price),
        Decimal(cost),
        currency,
    )
    _apply_loadable(fake, plan)
    (cs_id,) = [cs.id for cs in fake.contract_services.values() if cs.contract_id == contract]
    assert fake.price_on(cs_id, D(2026, 10, 31)) == float(price) and fake.cost_on(cs_id, D(2026, 10, 31)) == float(cost)


def test_a_markup_customers_new_contract_service_is_priced_from_the_cost(warehouse):
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0])
    fake.add_service(M365[2], M365[1], 80.0, 99.0)
    fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    settings = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801, price_policy="markup:10")
    october = [line(MONTH, ACME, "SUB-1", M365, "New", 4, 4, D(2026, 10, 1), unit_cost="10.0000", unit_price="30.0000")]
    created = next(
        action
        for action in _plan(warehouse, fake, october, settings=settings)
        if action.kind is ActionKind.CREATE_CONTRACT_SERVICE
    )
    assert created.payload["unitPrice"] == Decimal("11.0000") and created.payload["unitCost"] == Decimal("10.0000")
    assert SETTINGS.default_price_policy == PricePolicy()


def test_a_reversal_puts_back_the_price_of_before_the_load():
    """A price change 11 -> 12 on the 1st alone (no units) is undone on the 2nd with the price of before."""
    from include.reversal import _Original, _reverse_chain

    applied = PlanAction(
        kind=ActionKind.CHANGE_PRICE,
        month=MONTH,
        target="cs:C7/V3",
        status=ActionStatus.APPLIED,
        effective_date=D(2026, 10, 1),
        units_before=Decimal(10),
        units_after=Decimal(10),
        unit_change=Decimal(0),
        unit_price_before=Decimal("11.0000"),
        unit_price_after=Decimal("12.0000"),
        currency="GBP",
    )
    (reversal,) = _reverse_chain(MONTH, "run-1", [_Original(applied, 7, 3, 70)], "Not undone: nothing.")
    assert reversal.kind is ActionKind.CHANGE_PRICE and reversal.effective_date == D(2026, 10, 2)
    assert reversal.payload["adjustedUnitPrice"] == 11 and "adjustedUnitCost" not in reversal.payload
    assert (reversal.unit_price_before, reversal.unit_price_after, reversal.currency) == (
        Decimal("12.0000"),
        Decimal("11.0000"),
        "GBP",
    )
    assert "unit price goes back to 11" in reversal.reason


def test_a_new_catalogue_service_is_priced_in_the_internal_currency_not_a_foreign_customers(warehouse):
    """Copilot is new to Autotask; a USD customer's subscription sorts first, an EUR customer's second: the Service is
    priced from the EUR line (the tenant's internal currency), and each contract service carries its own money."""
    copilot = ("PRD-COP", "COP-1", "Microsoft 365 Copilot")
    dollars = ("ACC-7", "Tailspin Inc")
    fake = FakeAutotask()
    us = fake.add_company(dollars[1], key=dollars[0], currency="USD")
    eu = fake.add_company(ACME[1], key=ACME[0])
    fake.add_contract(us, "Copilot", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract(eu, "Copilot", "SUB-2", D(2026, 1, 1), D(2026, 12, 31))
    october = [
        line(
            MONTH,
            dollars,
            "SUB-1",
            copilot,
            "New",
            3,
            3,
            D(2026, 10, 1),
            unit_cost="25.0000",
            unit_price="30.4688",
            currency="USD",
        ),
        line(
            MONTH,
            ACME,
            "SUB-2",
            copilot,
            "New",
            2,
            2,
            D(2026, 10, 1),
            unit_cost="23.0000",
            unit_price="28.1000",
            currency="EUR",
        ),
    ]
    plan = _plan(warehouse, fake, october, accounts=[account_row(*ACME), account_row(*dollars)])
    (service,) = [action for action in plan if action.kind is ActionKind.CREATE_SERVICE]
    assert Decimal(str(service.payload["unitPrice"])) == Decimal("28.1")
    assert Decimal(str(service.payload["unitCost"])) == Decimal("23")
    prices = {
        action.currency: Decimal(str(action.payload["unitPrice"]))
        for action in plan
        if action.kind is ActionKind.CREATE_CONTRACT_SERVICE
    }
    assert prices == {"USD": Decimal("30.4688"), "EUR": Decimal("28.1")}
