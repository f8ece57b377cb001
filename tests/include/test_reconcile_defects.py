"""Golden tests, one scenario per defect of issue 8, each on SQLite and PostgreSQL (the `warehouse` fixture):
hand-written BSS months (and earlier months in the warehouse), an in-memory Autotask, the snapshot, the links
and the plan written out by hand."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from include.mapping import link_month, set_manual_link
from include.plan import ActionKind, ActionStatus, PlanAction, load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.sync_settings import EffectiveDatePolicy, SyncSettings
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month

MONTH = "2026-10"
SEPTEMBER = "2026-09"
SETTINGS = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
ACME = ("ACC-1", "Acme Bäckerei GmbH")
ACME_SARL = ("ACC-2", "Acme Boulangerie SARL")
M365 = ("PRD-M365", "M365-BS", "Microsoft 365 Business Standard")
D = date


def _autotask() -> tuple[FakeAutotask, int, int]:
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0])
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    return fake, company, service


def _plan(
    warehouse: Warehouse,
    fake: FakeAutotask,
    lines: list[dict],
    settings: SyncSettings = SETTINGS,
    accounts: list[dict] | None = None,
    earlier: list[dict] | None = None,
    after_link=None,
) -> list[PlanAction]:
    if earlier:
        store_month(warehouse, SEPTEMBER, earlier, accounts or [account_row(*ACME)])
    store_month(warehouse, MONTH, lines, accounts or [account_row(*ACME)])
    take_snapshot(fake, warehouse, MONTH, "run-1", settings)
    _store_company_currencies(warehouse, fake, "run-1")
    link_month(warehouse, MONTH, "run-1", settings)
    if after_link:
        after_link(warehouse)
    reconcile_month(warehouse, MONTH, "run-1", settings)
    return load_plan(warehouse, MONTH, "run-1")


def _store_company_currencies(warehouse: Warehouse, fake: FakeAutotask, run_id: str) -> None:
    """`at_companies.currency` as the snapshot stores it (company currencyID -> Currencies.name)."""
    with warehouse.begin() as conn:
        for company_id in fake.companies:
            conn.execute(
                warehouse.table("at_companies")
                .update()
                .where(
                    warehouse.table("at_companies").c.run_id == run_id,
                    warehouse.table("at_companies").c.company_id == company_id,
                )
                .values(currency=fake.company_currency(company_id))
            )


def _writes(plan: list[PlanAction]) -> list[tuple]:
    """(kind, target, date, status, unit change) of every action, numbers as plain strings."""
    return [
        (
            str(action.kind),
            action.target,
            action.effective_date,
            str(action.status),
            None if action.unit_change is None else format(action.unit_change.normalize(), "f"),
        )
        for action in plan
    ]


def _apply_loadable(fake: FakeAutotask, plan: list[PlanAction]) -> None:
    """What the loader would write once every proposed and flagged line is approved (never blocked ones)."""
    fake.apply([action for action in plan if action.loadable])


# -- defect 1: a restating line restates the total -------------------------------------------------------


@pytest.mark.parametrize("history", [True, False], ids=["warehouse-knows-september", "nothing-known-before"])
def test_renewal_on_the_15th_from_10_to_12_adds_exactly_2_on_the_15th(warehouse, history):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    cs = fake.add_contract_service(contract, service, 10)
    september = [line(SEPTEMBER, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 9, 1))] if history else None
    october = [line(MONTH, ACME, "SUB-1", M365, "Renewal", 12, 12, D(2026, 10, 15), cycle="Annual")]
    plan = _plan(warehouse, fake, october, earlier=september)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 15), "proposed", "2")]
    _apply_loadable(fake, plan)
    assert fake.units_on(cs, D(2026, 10, 14)) == 10 and fake.units_on(cs, D(2026, 10, 15)) == 12


@pytest.mark.parametrize("day", [1, 9, 28])
def test_an_unchanged_restating_line_on_any_day_proposes_nothing(warehouse, day):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 10)
    october = [line(MONTH, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, day))]
    assert _plan(warehouse, fake, october) == []


def test_a_restating_line_of_an_unknown_subscription_shares_the_contract_service_with_a_known_one(warehouse):
    # cs holds 7: SUB-1 (known from September: 5) and SUB-2 (nothing known: the other 2). SUB-1 drops to 3 on
    # the 5th; SUB-2 restates 2 on the 20th (unchanged): only the -2 of SUB-1 is a change.
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 7)
    september = [line(SEPTEMBER, ACME, "SUB-1", M365, "Cycle", 5, 5, D(2026, 9, 1))]
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 5, 5, D(2026, 10, 1)),
        line(MONTH, ACME, "SUB-1", M365, "QuantityDecrease", -2, 3, D(2026, 10, 5)),
        line(MONTH, ACME, "SUB-2", M365, "Cycle", 2, 2, D(2026, 10, 20)),
    ]

    def share_the_contract(warehouse: Warehouse) -> None:
        set_manual_link(warehouse, "contract", "SUB-2", contract, by="alice")
        link_month(warehouse, MONTH, "run-1", SETTINGS)

    plan = _plan(warehouse, fake, october, earlier=september, after_link=share_the_contract)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 5), "proposed", "-2")]


# -- defect 2 and 1: the renewal passes the contract's end -----------------------------------------------


def test_a_renewal_past_the_contract_end_extends_to_the_end_of_the_renewed_term_first(warehouse):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365 annual", "SUB-1", D(2025, 10, 15), D(2026, 10, 14))
    cs = fake.add_contract_service(contract, service, 10)
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Renewal", 12, 12, D(2026, 10, 15), cycle="Annual", charge_end=D(2027, 10, 14))
    ]
    plan = _plan(warehouse, fake, october)
    assert _writes(plan) == [
        ("extend_contract", f"contract:C{contract}", None, "proposed", None),
        ("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 15), "proposed", "2"),
    ]
    extend, adjust = plan
    assert extend.end_date_after == D(2027, 10, 14)  # not 2027-09-30
    assert extend.action_id in adjust.depends_on
    _apply_loadable(fake, plan)
    assert fake.units_on(cs, D(2026, 10, 15)) == 12


def test_a_month_to_month_contract_is_extended_to_the_month_end_minimum_contract_months_ahead(warehouse):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2025, 10, 1), D(2026, 10, 9))
    fake.add_contract_service(contract, service, 10)
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1)),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 1, 11, D(2026, 10, 12)),
    ]
    plan = _plan(warehouse, fake, october)
    extend = next(action for action in plan if action.kind is ActionKind.EXTEND_CONTRACT)
    # renewing term by term from 2026-10-10 would end 2027-09-30; the month-to-month minimum from the
    # change of 2026-10-12 is the month end 12 months ahead: the later wins
    assert extend.end_date_after == D(2027, 10, 31)


# -- defect 3: an annually billed month whose first line is a change -------------------------------------


@pytest.mark.parametrize("history", [True, False], ids=["previous-total-from-warehouse", "line-states-it"])
def test_a_first_change_line_of_an_annual_plan_is_a_change_from_the_previous_total(warehouse, history):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365 annual", "SUB-1", D(2026, 3, 1), D(2027, 2, 28))
    fake.add_contract_service(contract, service, 10)
    earlier = [line(SEPTEMBER, ACME, "SUB-1", M365, "QuantityIncrease", 2, 10, D(2026, 9, 3), cycle="Annual")]
    october = [line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 3, 13, D(2026, 10, 12), cycle="Annual")]
    plan = _plan(warehouse, fake, october, earlier=earlier if history else None)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 12), "proposed", "3")]


@pytest.mark.parametrize("history", [True, False], ids=["previous-total-from-warehouse", "line-states-it"])
def test_an_annual_first_change_over_a_units_difference_is_flagged_not_corrected_from_the_1st(warehouse, history):
    """Annual billing from 08-09: no Autotask period start in October, so the plan has no date before the
    change on the 28th. Autotask held 86 where the BSS says 85: the +14 on the 28th also corrects that
    difference, but only from the 28th; posting on the 1st would be a proration nobody asked for, so a
    person is asked, and the figures and dates are named."""
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0])
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0, period_type=5)  # billed yearly
    contract = fake.add_contract(company, "M365 annual", "SUB-6", D(2026, 8, 9), D(2027, 8, 8))
    cs = fake.add_contract_service(contract, service, 86)
    annual = {"cycle": "Annual", "period": "Annual"}
    earlier = [line(SEPTEMBER, ACME, "SUB-6", M365, "QuantityIncrease", 5, 85, D(2026, 9, 3), **annual)]
    october = [line(MONTH, ACME, "SUB-6", M365, "QuantityIncrease", 15, 100, D(2026, 10, 28), **annual)]
    plan = _plan(warehouse, fake, october, earlier=earlier if history else None)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 28), "flagged", "14")]
    assert (plan[0].units_before, plan[0].units_after) == (Decimal(86), Decimal(100))
    assert plan[0].reason == (
        "Autotask held 86 before 2026-10-28, the BSS says 85: this adjustment also corrects that difference from "
        "2026-10-28; the days before stay at 86 — correct them by hand if they were billed wrong"
    )
    assert plan[0].loadable  # a person approving the flagged line has it written as it stands
    _apply_loadable(fake, plan)
    assert fake.units_on(cs, D(2026, 10, 1)) == 86 and fake.units_on(cs, D(2026, 10, 27)) == 86
    assert fake.units_on(cs, D(2026, 10, 28)) == 100


def test_a_monthly_period_start_corrects_a_units_difference_on_the_1st_without_a_flag(warehouse):
    """Monthly billing: Autotask's period starts on the 1st, a date the plan compares, so the difference is
    corrected there and the change on the 28th is the BSS's own +15."""
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-6", D(2026, 1, 1), D(2026, 12, 31))
    cs = fake.add_contract_service(contract, service, 86)
    october = [line(MONTH, ACME, "SUB-6", M365, "QuantityIncrease", 15, 100, D(2026, 10, 28))]
    plan = _plan(warehouse, fake, october)
    target = f"cs:C{contract}/V{service}"
    assert _writes(plan) == [
        ("adjust_units", target, D(2026, 10, 1), "proposed", "-1"),
        ("adjust_units", target, D(2026, 10, 28), "proposed", "15"),
    ]
    assert all(action.reason is None for action in plan)
    _apply_loadable(fake, plan)
    assert fake.units_on(cs, D(2026, 10, 1)) == 85 and fake.units_on(cs, D(2026, 10, 28)) == 100


# -- defect 7: a subscription that moved to another customer ---------------------------------------------


@pytest.mark.parametrize("flagged_by_mapping", [True, False], ids=["month_links-flag", "found-by-reconcile"])
def test_a_moved_subscription_zeroes_the_old_contract_service_and_gets_a_contract_of_the_new_company(
    warehouse, flagged_by_mapping
):
    fake, acme, service = _autotask()
    sarl = fake.add_company(ACME_SARL[1], key=ACME_SARL[0])
    old = fake.add_contract(acme, "M365 (SUB-9)", "SUB-9", D(2026, 1, 1), D(2026, 12, 31))
    old_cs = fake.add_contract_service(old, service, 10)
    october = [line(MONTH, ACME_SARL, "SUB-9", M365, "Cycle", 10, 10, D(2026, 10, 1))]
    detail = (
        f'contract {old} "M365 (SUB-9)" belongs to {ACME[1]} (company {acme}); account ACC-2 '
        f'"{ACME_SARL[1]}" is linked to {ACME_SARL[1]} (company {sarl})'
    )

    def flag_the_move(warehouse: Warehouse) -> None:
        if flagged_by_mapping:
            with warehouse.begin() as conn:
                table = warehouse.table("month_links")
                conn.execute(
                    table.update()
                    .where(table.c.run_id == "run-1", table.c.kind == "contract", table.c.source_key == "SUB-9")
                    .values(target_id=old, flag="other_company", detail=detail)
                )

    plan = _plan(warehouse, fake, october, accounts=[account_row(*ACME_SARL)], after_link=flag_the_move)
    assert _writes(plan) == [
        ("create_contract", "subscription:SUB-9", None, "flagged", None),
        ("create_contract_service", f"cs:S:SUB-9/V{service}", None, "flagged", None),
        ("adjust_units", f"cs:C{old}/V{service}", D(2026, 10, 1), "flagged", "-10"),
        ("adjust_units", f"cs:S:SUB-9/V{service}", D(2026, 10, 1), "flagged", "10"),
    ]
    create = plan[0]
    assert create.company_id == sarl and create.payload["contractNumber"] == "SUB-9"
    for action in plan:
        assert "moved to another customer" in action.reason
        if flagged_by_mapping:
            assert detail in action.reason
    created = fake.apply([action for action in plan if action.loadable])
    new_cs = next(new_id for kind, new_id in created.values() if kind == "create_contract_service")
    assert fake.units_on(old_cs, D(2026, 10, 1)) == 0 and fake.units_on(new_cs, D(2026, 10, 1)) == 10
    assert fake.contracts[fake.contract_services[new_cs].contract_id]["companyID"] == sarl

    # the month reconciled again once loaded: the new customer's contract (stamped with the subscription)
    # carries it; nothing is created twice, and the old contract service stays at 0
    take_snapshot(fake, warehouse, MONTH, "run-2", SETTINGS)
    _store_company_currencies(warehouse, fake, "run-2")
    link_month(warehouse, MONTH, "run-2", SETTINGS)
    if flagged_by_mapping:
        with warehouse.begin() as conn:
            table = warehouse.table("month_links")
            conn.execute(
                table.update()
                .where(table.c.run_id == "run-2", table.c.kind == "contract", table.c.source_key == "SUB-9")
                .values(target_id=old, flag="other_company", detail=detail)
            )
    reconcile_month(warehouse, MONTH, "run-2", SETTINGS)
    assert [action for action in load_plan(warehouse, MONTH, "run-2") if action.loadable] == []


# -- defect 8: an adjustment Autotask will refuse --------------------------------------------------------


def test_a_bss_change_on_a_date_autotask_already_adjusted_by_hand_is_blocked_and_the_next_change_carries_it(
    warehouse,
):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    cs = fake.add_contract_service(contract, service, 10)
    fake.adjust(cs, D(2026, 10, 12), 1)  # a person added one unit by hand
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1)),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 3, 13, D(2026, 10, 12)),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 1, 14, D(2026, 10, 20)),
    ]
    plan = _plan(warehouse, fake, october)
    target = f"cs:C{contract}/V{service}"
    assert _writes(plan) == [
        ("adjust_units", target, D(2026, 10, 12), "blocked", "2"),
        ("adjust_units", target, D(2026, 10, 20), "proposed", "3"),
    ]
    blocked = plan[0]
    assert "refuses a second one" in blocked.reason and "by hand in Autotask" in blocked.reason
    assert "effective-date policy" in blocked.reason
    assert not blocked.loadable
    assert blocked.action_id not in plan[1].depends_on
    _apply_loadable(fake, plan)  # no write Autotask refuses
    assert fake.units_on(cs, D(2026, 10, 20)) == 14


def test_blocked_is_stricter_than_needs_mapping_and_flagged():
    from include.plan import stricter

    assert stricter(ActionStatus.NEEDS_MAPPING, ActionStatus.BLOCKED) is ActionStatus.BLOCKED
    assert stricter(ActionStatus.BLOCKED, ActionStatus.FLAGGED) is ActionStatus.BLOCKED


# -- defect 9: contract services the BSS no longer bills -------------------------------------------------


def test_contract_services_the_bss_no_longer_bills_are_shown_for_review_but_write_nothing(warehouse):
    fake, company, service = _autotask()
    monthly = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(monthly, service, 5)
    annual_between = fake.add_contract(company, "M365 annual", "SUB-2", D(2026, 3, 1), D(2027, 2, 28))
    fake.add_contract_service(annual_between, service, 8)
    # the BSS term ended with September; the Autotask contract runs on (extended by hand)
    annual_past = fake.add_contract(company, "M365 annual old", "SUB-3", D(2025, 10, 1), D(2026, 12, 31))
    fake.add_contract_service(annual_past, service, 4)
    september = [
        line(SEPTEMBER, ACME, "SUB-1", M365, "Cycle", 5, 5, D(2026, 9, 1)),
        line(
            SEPTEMBER, ACME, "SUB-2", M365, "QuantityIncrease", 1, 8, D(2026, 9, 3),
            cycle="Annual", period="Annually", charge_end=D(2027, 2, 28),
        ),
        line(
            SEPTEMBER, ACME, "SUB-3", M365, "QuantityIncrease", 1, 4, D(2026, 9, 3),
            cycle="Annual", period="Annually", charge_end=D(2026, 9, 30),
        ),
    ]  # fmt: skip
    october = [line(MONTH, ACME, "SUB-4", M365, "New", 1, 1, D(2026, 10, 1))]
    plan = _plan(warehouse, fake, october, earlier=september)
    reviews = [action for action in plan if action.kind is ActionKind.REVIEW_UNBILLED]
    assert [(review.subscription_ids, str(review.status), review.units_before) for review in reviews] == [
        (("SUB-1",), "flagged", Decimal("5.0000")),
        (("SUB-3",), "flagged", Decimal("4.0000")),
    ]
    assert "no line in 2026-10" in reviews[0].reason and "billed monthly" in reviews[0].reason
    assert "past its term" in reviews[1].reason
    assert all(review.payload == {} and not review.loadable for review in reviews)


# -- defect 10: cost decided once per contract service and date ------------------------------------------


def test_subscriptions_that_disagree_on_cost_get_no_cost_change_and_a_flag_naming_the_costs(warehouse):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    cs = fake.add_contract_service(contract, service, 4, unit_cost=11.0)
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 2, 2, D(2026, 10, 1), unit_cost="12.0000"),
        line(MONTH, ACME, "SUB-2", M365, "Cycle", 2, 2, D(2026, 10, 1), unit_cost="10.0000"),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 1, 3, D(2026, 10, 8), unit_cost="12.0000"),
        line(MONTH, ACME, "SUB-2", M365, "QuantityIncrease", 1, 3, D(2026, 10, 16), unit_cost="10.0000"),
    ]

    def share(warehouse: Warehouse) -> None:
        set_manual_link(warehouse, "contract", "SUB-2", contract, by="alice")
        link_month(warehouse, MONTH, "run-1", SETTINGS)

    plan = _plan(warehouse, fake, october, after_link=share)
    assert _writes(plan) == [
        ("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 8), "flagged", "1"),
        ("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 16), "flagged", "1"),
    ]
    assert all(action.unit_cost_after is None and "adjustedUnitCost" not in action.payload for action in plan)
    assert "SUB-1 at 12.0000, SUB-2 at 10.0000" in plan[0].reason
    _apply_loadable(fake, plan)
    assert fake.cost_on(cs, D(2026, 10, 31)) == 11.0  # never flipped


def test_subscriptions_that_agree_on_cost_change_it_once(warehouse):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 4, unit_cost=11.0)
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 2, 2, D(2026, 10, 1), unit_cost="9.5000"),
        line(MONTH, ACME, "SUB-2", M365, "Cycle", 2, 2, D(2026, 10, 1), unit_cost="9.5000"),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 1, 3, D(2026, 10, 8), unit_cost="9.5000"),
    ]

    def share(warehouse: Warehouse) -> None:
        set_manual_link(warehouse, "contract", "SUB-2", contract, by="alice")
        link_month(warehouse, MONTH, "run-1", SETTINGS)

    plan = _plan(warehouse, fake, october, after_link=share)
    assert [(str(a.kind), a.effective_date, a.unit_cost_after) for a in plan] == [
        ("change_cost", D(2026, 10, 1), Decimal("9.5000")),
        ("adjust_units", D(2026, 10, 8), None),
    ]


# -- defect 11: currency ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("company_currency", "status"),
    [("EUR", "blocked"), (None, "proposed"), ("GBP", "proposed")],
    ids=["other-currency", "currency-unknown", "same-currency"],
)
def test_a_line_in_another_currency_than_the_company_is_blocked(warehouse, company_currency, status):
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0], currency="EUR" if company_currency != "GBP" else "GBP")
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 10)
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1), currency="GBP", unit_cost="8.0000"),
        line(MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 2, 12, D(2026, 10, 9), currency="GBP", unit_cost="8.0000"),
    ]

    def forget_currency(warehouse: Warehouse) -> None:
        if company_currency is None:
            with warehouse.begin() as conn:
                conn.execute(warehouse.table("at_companies").update().values(currency=None))

    plan = _plan(warehouse, fake, october, after_link=forget_currency)
    assert {str(action.status) for action in plan} == {status}
    if status == "blocked":
        assert all("GBP" in action.reason and "EUR" in action.reason for action in plan)
        assert not [action for action in plan if action.loadable]


def test_a_company_to_be_created_has_no_currency_to_differ_from(warehouse):
    fake = FakeAutotask()
    fake.add_service(M365[2], M365[1], 10.0, 12.0)
    october = [line(MONTH, ACME, "SUB-1", M365, "New", 3, 3, D(2026, 10, 1), currency="CHF")]
    plan = _plan(warehouse, fake, october)
    assert {str(action.status) for action in plan} == {"proposed"}


# -- defect 12: same-day order ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charged_at", "sequence", "expected"),
    [
        (None, None, "2"),  # numeric tail of the id: CHG-9 (+3 -> 13), then CHG-10 (-1 -> 12)
        (None, (9, 10), "2"),
        ((datetime(2026, 10, 8, 16), datetime(2026, 10, 8, 9)), None, "3"),  # the BSS says CHG-10 came first
    ],
    ids=["id-tail", "sequence", "bss-timestamp"],
)
def test_same_day_lines_follow_the_bss_order_not_the_text_of_charge_ids(warehouse, charged_at, sequence, expected):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 10)
    october = [
        line(MONTH, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 10, 1), charge_id="CHG-2026-10-1"),
        line(
            MONTH, ACME, "SUB-1", M365, "QuantityIncrease", 3, 13, D(2026, 10, 8), charge_id="CHG-2026-10-9",
            charged_at=charged_at and charged_at[0], charge_sequence=sequence and sequence[0],
        ),
        line(
            MONTH, ACME, "SUB-1", M365, "QuantityDecrease", -1, 12, D(2026, 10, 8), charge_id="CHG-2026-10-10",
            charged_at=charged_at and charged_at[1], charge_sequence=sequence and sequence[1],
        ),
    ]  # fmt: skip
    plan = _plan(warehouse, fake, october)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 8), "proposed", expected)]


# -- defect 16: plan reasons -----------------------------------------------------------------------------


def test_one_suggestion_is_named_in_the_singular(warehouse):
    fake = FakeAutotask()
    fake.add_company("Acme Bakerei GmbH")  # a near miss (a typo): one suggestion
    fake.add_service(M365[2], M365[1], 10.0, 12.0)
    plan = _plan(warehouse, fake, [line(MONTH, ACME, "SUB-1", M365, "New", 1, 1, D(2026, 10, 1))])
    company = next(action for action in plan if action.kind is ActionKind.CREATE_COMPANY)
    assert str(company.status) == "needs-mapping"
    assert "1 suggested company waits for a person" in company.reason


def test_the_effective_date_policy_applies_to_restating_lines(warehouse):
    fake, company, service = _autotask()
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 10)
    september = [line(SEPTEMBER, ACME, "SUB-1", M365, "Cycle", 10, 10, D(2026, 9, 1))]
    october = [line(MONTH, ACME, "SUB-1", M365, "Renewal", 12, 12, D(2026, 10, 15), cycle="Annual")]
    settings = SyncSettings(
        owner_resource_id=1, billing_code_id=2, effective_date_policy=EffectiveDatePolicy.NEXT_PERIOD_START
    )
    plan = _plan(warehouse, fake, october, settings=settings, earlier=september)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 11, 1), "proposed", "2")]


def test_a_new_contract_service_on_an_inactive_service_is_blocked_not_flagged(warehouse):
    # Autotask refuses to add an inactive service to a contract: approving it could only fail
    fake = FakeAutotask()
    company = fake.add_company(ACME[1], key=ACME[0])
    inactive = fake.add_service(M365[2], M365[1], 10.0, 12.0, active=False)
    october = [line(MONTH, ACME, "SUB-1", M365, "New", 3, 3, D(2026, 10, 5))]
    plan = _plan(warehouse, fake, october)
    assert _writes(plan) == [
        ("create_contract", "subscription:SUB-1", None, "proposed", None),
        ("create_contract_service", f"cs:S:SUB-1/V{inactive}", None, "blocked", None),
        ("adjust_units", f"cs:S:SUB-1/V{inactive}", D(2026, 10, 5), "blocked", "3"),
    ]
    assert "activate it in Autotask" in plan[1].reason
    assert plan[0].company_id == company


def test_a_moved_subscription_never_creates_anything_on_the_old_customers_contract(warehouse):
    fake, acme, service = _autotask()
    sarl = fake.add_company(ACME_SARL[1], key=ACME_SARL[0])
    other_service = fake.add_service("Exchange Online (Plan 1)", "EXO-P1", 4.0, 5.0)
    old = fake.add_contract(acme, "M365 (SUB-9)", "SUB-9", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(old, other_service, 3)  # the old contract bills another service only
    october = [line(MONTH, ACME_SARL, "SUB-9", M365, "Cycle", 10, 10, D(2026, 10, 1))]
    plan = _plan(warehouse, fake, october, accounts=[account_row(*ACME_SARL)])
    assert _writes(plan) == [
        ("create_contract", "subscription:SUB-9", None, "flagged", None),
        ("create_contract_service", f"cs:S:SUB-9/V{service}", None, "flagged", None),
        ("adjust_units", f"cs:S:SUB-9/V{service}", D(2026, 10, 1), "flagged", "10"),
    ]
    assert plan[0].company_id == sarl


# -- an account nobody linked yet, whose subscription's contract is keyed ---------------------------------


def test_a_keyed_contract_of_an_unlinked_account_waits_until_a_person_confirms_its_company(warehouse):
    # Autotask knows "Acme Bäckerei G.m.b.H." (no key): not the exact name of the BSS account, so the account
    # stays unlinked; its subscription's contract is keyed (contractNumber SUB-1) under that company. Nothing
    # is written on that contract until a person confirms the company for the account (it is suggested).
    fake = FakeAutotask()
    company = fake.add_company("Acme Bäckerei G.m.b.H.")
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    contract = fake.add_contract(company, "M365", "SUB-1", D(2026, 1, 1), D(2026, 12, 31))
    fake.add_contract_service(contract, service, 10)
    october = [line(MONTH, ACME, "SUB-1", M365, "Cycle", 12, 12, D(2026, 10, 1))]
    plan = _plan(warehouse, fake, october)
    assert _writes(plan) == [("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 1), "needs-mapping", "2")]
    assert f"contract {contract} belongs to company {company}" in plan[0].reason
    suggested = warehouse.query("SELECT target_id FROM mapping_suggestions WHERE kind = 'company' AND status = 'open'")
    assert [row["target_id"] for row in suggested] == [company]

    # once the person links the account, the same change is proposed
    set_manual_link(warehouse, "company", ACME[0], company, by="finance@msp.example")
    take_snapshot(fake, warehouse, MONTH, "run-2", SETTINGS)
    link_month(warehouse, MONTH, "run-2", SETTINGS)
    reconcile_month(warehouse, MONTH, "run-2", SETTINGS)
    assert _writes(load_plan(warehouse, MONTH, "run-2")) == [
        ("adjust_units", f"cs:C{contract}/V{service}", D(2026, 10, 1), "proposed", "2")
    ]
