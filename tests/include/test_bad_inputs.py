"""A catalogue of bad BSS inputs: each corrupts one thing in a good month and must stop (or warn) by name.

End to end: the BSS sandbox serves the month with the corruption (`/_admin/overrides`), the real extract
reads it through the BSS hook, and the quality gate validates what landed. A record the extract cannot
type stops the run there (`ExtractRejectedError`, naming the field); everything else reaches the gate,
where a critical expectation stops the run with `DataQualityError` naming the expectation (only what makes the
whole month untrustworthy: a collapsed month), a hold expectation holds the bad line (stored in `quality_holds`
with its reason, the month goes on: reconciliation blocks the subscription's plan lines), and a warning lets it
continue. Either way nothing may reach Autotask: the Autotask sandbox must have seen
no write when the gate is done (the loader is wired after the gate; this guards that wiring).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from include.extract import ExtractRejectedError, extract_month
from include.quality import DataQualityError, raise_on_critical, validate_charges
from include.warehouse import Warehouse

MONTH = "2026-10"
PREVIOUS_MONTH = "2026-09"
RUN_ID = "bad-input-run"
WRITE_VERBS = {"POST", "PATCH", "PUT", "DELETE"}


@pytest.fixture(scope="module")
def autotask():
    from tests.servers import start_server

    server = start_server(["sandbox.autotask_server", "--seed-customers", "20"])
    yield server
    server.stop()


def _hook():
    from connectors.bss_hook import BssHook

    return BssHook()


# --- picking and corrupting lines ---------------------------------------------------------------------------


def _first(charges: list[dict], action: str, **where: object) -> dict:
    for charge in charges:
        if charge["action"] == action and all(charge.get(key) == value for key, value in where.items()):
            return charge
    raise LookupError(f"no {action} line in the month")


def _changed(charge: dict, **changes: object) -> dict:
    corrupted = copy.deepcopy(charge)
    corrupted.update(changes)
    return corrupted


def _without(charge: dict, dotted: str) -> dict:
    corrupted = copy.deepcopy(charge)
    *parents, leaf = dotted.split(".")
    target = corrupted
    for parent in parents:
        target = target[parent]
    del target[leaf]
    return corrupted


def _day(text: str, days: int) -> str:
    return (date.fromisoformat(text) + timedelta(days=days)).isoformat()


def _replace(charge: dict) -> dict:
    return {"replace": {charge["id"]: charge}}


def _fractional_quantity(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityIncrease")
    # Keep the total consistent with the change, so only integrality is wrong.
    bad = _changed(line, quantity=line["quantity"] + 0.5, subscriptionQuantity=line["subscriptionQuantity"] + 0.5)
    return _replace(bad), line["id"]


def _negative_total(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityDecrease")
    previous_total = line["subscriptionQuantity"] - line["quantity"]
    bad = _changed(line, quantity=-(previous_total + 2), subscriptionQuantity=-2)
    return _replace(bad), line["id"]


def _total_not_following(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityIncrease")
    return _replace(_changed(line, subscriptionQuantity=line["subscriptionQuantity"] + 5)), line["id"]


def _cancellation_not_at_zero(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "Cancellation")
    # One unit left "in force" after a cancellation, consistent with the quantity: only the end state is wrong.
    return _replace(_changed(line, quantity=line["quantity"] + 1, subscriptionQuantity=1)), line["id"]


def _increase_removing_units(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityDecrease")
    return _replace(_changed(line, action="QuantityIncrease")), line["id"]


def _negative_cost(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "Cycle")
    return _replace(_changed(line, unitCost=-1.25)), line["id"]


def _cost_above_price(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "Cycle")
    return _replace(_changed(line, unitCost=round(line["unitPrice"] + 5, 2))), line["id"]


def _start_outside_month(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "Cycle")
    return _replace(_changed(line, chargeStartDate=f"{PREVIOUS_MONTH}-30")), line["id"]


def _effective_before_period(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityIncrease")
    return _replace(_changed(line, effectiveDate=_day(line["chargeStartDate"], -1))), line["id"]


def _effective_after_month(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityIncrease")
    return _replace(_changed(line, effectiveDate="2026-11-02")), line["id"]


def _period_ends_before_start(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityIncrease")
    return _replace(_changed(line, chargeEndDate=_day(line["chargeStartDate"], -1))), line["id"]


def _period_ends_after_month(charges: list[dict]) -> tuple[dict, str]:
    # a monthly-billed line: quarterly and annual charges run past the month by nature
    line = next(
        charge
        for charge in charges
        if charge["action"] == "Cycle" and charge["billingPlan"]["billingPeriod"] == "Monthly"
    )
    return _replace(_changed(line, chargeEndDate="2026-11-30")), line["id"]


def _two_currencies(charges: list[dict]) -> tuple[dict, str]:
    # a customer with more than one line this month: one of them switches currency
    lines_per_account = Counter(charge["account"]["id"] for charge in charges)
    line = next(
        charge for charge in charges if charge["action"] == "Cycle" and lines_per_account[charge["account"]["id"]] > 1
    )
    other = "USD" if line["currency"] != "USD" else "EUR"
    return _replace(_changed(line, currency=other)), line["id"]


def _subscription_moves_customer(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "QuantityIncrease")
    other = next(
        charge["account"]
        for charge in charges
        if charge["account"]["id"] != line["account"]["id"] and charge["currency"] == line["currency"]
    )
    return _replace(_changed(line, account=copy.deepcopy(other))), line["id"]


def _duplicate_id(charges: list[dict]) -> tuple[dict, str]:
    line = _first(charges, "Cycle")
    return {"add": [copy.deepcopy(line)]}, line["id"]


def _missing(dotted: str) -> Callable[[list[dict]], tuple[dict, str]]:
    def corrupt(charges: list[dict]) -> tuple[dict, str]:
        line = _first(charges, "Cycle")
        return _replace(_without(line, dotted)), line["id"]

    return corrupt


def _value(line_action: str, /, **changes: object) -> Callable[[list[dict]], tuple[dict, str]]:
    def corrupt(charges: list[dict]) -> tuple[dict, str]:
        line = _first(charges, line_action)
        bad = copy.deepcopy(line)
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            target = bad
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        return _replace(bad), line["id"]

    return corrupt


def _month_collapses(charges: list[dict]) -> tuple[dict, str]:
    # Whole subscriptions vanish (their lines stay consistent): 60% fewer lines than last month.
    subscriptions = sorted({charge["subscription"]["id"] for charge in charges})
    gone = set(subscriptions[: int(len(subscriptions) * 0.6)])
    removed = [charge["id"] for charge in charges if charge["subscription"]["id"] in gone]
    return {"remove": removed}, ""


@dataclass(frozen=True)
class BadInput:
    """One kind of bad BSS data: how to make it, where it must stop, and the name that must be given."""

    kind: str
    corrupt: Callable[[list[dict]], tuple[dict, str]]
    stops_at: str  # "extract" | "gate" (the month) | "hold" (the line; the month goes on) | "warning" (for review)
    named: str  # the rejected BSS field (extract) or the expectation (gate, warning)
    previous_month: bool = False
    also: tuple[str, ...] = field(default=())


CATALOGUE = [
    BadInput("duplicate charge id", _duplicate_id, "extract", "id"),
    BadInput("missing currency", _missing("currency"), "extract", "currency"),
    BadInput("missing subscription id", _missing("subscription.id"), "extract", "subscription.id"),
    BadInput("quantity as text", _value("Cycle", quantity="3"), "extract", "quantity"),
    BadInput(
        "unknown billing period",
        _value("Cycle", billingPlan__billingPeriod="Weekly"),
        "extract",
        "billingPlan.billingPeriod",
    ),
    BadInput("unknown billing cycle", _value("Cycle", billingCycle="Decennial"), "extract", "billingCycle"),
    BadInput("unknown action", _value("Cycle", action="Upgrade"), "extract", "action"),
    BadInput(
        "fractional quantity",
        _fractional_quantity,
        "hold",
        "quantity_integral",
        also=("subscription_quantity_integral",),
    ),
    BadInput("negative subscription quantity", _negative_total, "hold", "subscription_quantity_not_negative"),
    BadInput("total not previous plus change", _total_not_following, "hold", "subscription_quantity_follows_changes"),
    BadInput("cancellation leaves units", _cancellation_not_at_zero, "hold", "cancellation_ends_at_zero"),
    BadInput("increase that removes units", _increase_removing_units, "hold", "increase_is_positive"),
    BadInput("negative unit cost", _negative_cost, "hold", "unit_cost_not_negative"),
    BadInput("charge starts before the month", _start_outside_month, "hold", "charge_start_in_month"),
    BadInput("effective date before its period", _effective_before_period, "hold", "effective_date_not_before_period"),
    BadInput(
        "effective date after the month",
        _effective_after_month,
        "hold",
        "effective_date_in_month",
        also=("effective_date_not_after_period",),
    ),
    BadInput("period ends before it starts", _period_ends_before_start, "hold", "charge_period_ordered"),
    BadInput("two currencies for one customer", _two_currencies, "hold", "one_currency_per_customer"),
    BadInput(
        "subscription under two customers at once",
        _subscription_moves_customer,
        "hold",
        "one_customer_per_subscription",
    ),
    BadInput(
        "month collapses vs last month", _month_collapses, "gate", "row_count_within_critical_band", previous_month=True
    ),
    BadInput("unit cost above unit price", _cost_above_price, "warning", "unit_cost_not_above_price"),
    BadInput("charge period runs past the month", _period_ends_after_month, "warning", "charge_end_in_month"),
]


def _assert_no_autotask_writes(autotask) -> None:
    stats = httpx.get(autotask.url + "/_admin/stats", timeout=10).json()
    verbs = {verb.upper() for per_entity in stats["requests"].values() for verb in per_entity}
    assert stats["writes"] == 0, stats
    assert not verbs & WRITE_VERBS, stats


def test_the_catalogue_holds_fifteen_distinct_kinds_of_bad_input() -> None:
    assert len({case.kind for case in CATALOGUE}) == len(CATALOGUE) >= 15
    assert {case.stops_at for case in CATALOGUE} == {"extract", "gate", "hold", "warning"}


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.kind.replace(" ", "-") for case in CATALOGUE])
def test_bad_input_stops_or_warns_by_name_and_writes_nothing_to_autotask(
    case: BadInput, bss, autotask, warehouse: Warehouse, universe, data_docs_dir: Path
) -> None:
    httpx.post(autotask.url + "/_admin/stats/reset", timeout=10).raise_for_status()
    if case.previous_month:
        extract_month(_hook(), warehouse, PREVIOUS_MONTH, "previous-month-run")
    override, charge_id = case.corrupt(universe.charges_for_month(MONTH))
    httpx.post(bss.url + "/_admin/overrides", json={"month": MONTH, **override}, timeout=10).raise_for_status()

    if case.stops_at == "extract":
        with pytest.raises(ExtractRejectedError) as rejected:
            extract_month(_hook(), warehouse, MONTH, RUN_ID)
        assert any(reject.field == case.named and reject.charge_id == charge_id for reject in rejected.value.rejects), (
            str(rejected.value)
        )
        _assert_no_autotask_writes(autotask)
        return

    extract_month(_hook(), warehouse, MONTH, RUN_ID)
    report = validate_charges(warehouse, MONTH, RUN_ID)
    assert Path(report.data_docs_index).is_file()
    if case.stops_at == "gate":
        with pytest.raises(DataQualityError) as stopped:
            raise_on_critical(report)
        names = {failure.name for failure in stopped.value.report.critical}
        assert {case.named, *case.also} <= names, str(stopped.value)
        message = str(stopped.value)
        assert case.named in message
        if charge_id:
            named = next(failure for failure in report.critical if failure.name == case.named)
            assert charge_id in named.example_keys("charge_id"), named
            assert charge_id in message
        else:
            assert "observed" in message  # a table-level failure states what it saw instead
        stored = warehouse.query(
            "SELECT suite, success, critical_failures FROM quality_results WHERE run_id = :r", {"r": RUN_ID}
        )
        assert any(row["suite"] == "charge_lines" and row["critical_failures"] >= 1 for row in stored)
    elif case.stops_at == "hold":
        assert raise_on_critical(report) is report  # the month goes on: the line is held, not the month
        held = {failure.name: failure for failure in report.holds}
        assert {case.named, *case.also} <= set(held), [str(failure) for failure in report.failures]
        assert charge_id in held[case.named].held_keys
        # only the bad line's own subscription (or customer, for a currency) is held: a few lines of the month
        assert len(report.held_lines) <= 10, sorted(report.held_lines)
        stored = warehouse.query(
            "SELECT charge_id, expectation, reason FROM quality_holds WHERE run_id = :r", {"r": RUN_ID}
        )
        row = next(row for row in stored if row["charge_id"] == charge_id and row["expectation"] == case.named)
        assert (case.named in row["reason"] and "the month's other lines go on" in row["reason"]) or "BSS" in row[
            "reason"
        ]
    else:
        assert raise_on_critical(report) is report  # the run continues
        assert report.passed and not report.critical
        warning = next(failure for failure in report.warnings if failure.name == case.named)
        assert charge_id in warning.example_keys("charge_id")
        assert case.named in {item["name"] for item in report.as_dict()["warnings"]}
    _assert_no_autotask_writes(autotask)
