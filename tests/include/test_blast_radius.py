"""One line never stops a month: a data problem in some lines holds those lines, and only a problem that makes the
whole month untrustworthy stops it (the README's table of checks). Real extract (from records), real GX gate."""

from __future__ import annotations

import copy
import json

import pytest

from include.extract import extract_month
from include.quality import SUITES_DIR, DataQualityError, Severity, raise_on_critical, validate_charges
from include.warehouse import Warehouse
from sandbox.dataset import build_universe
from tests.bss_sources import ListSource

MONTH = "2026-10"


@pytest.fixture(scope="module")
def october() -> list[dict]:
    return build_universe(customers=20, subscriptions_per_customer=3, seed=7).charges_for_month(MONTH)


def _validate(warehouse: Warehouse, records: list[dict]):
    extract_month(ListSource(records), warehouse, MONTH, "run-1")
    return validate_charges(warehouse, MONTH, "run-1")


def test_the_wrong_month_stops_the_month(warehouse: Warehouse, october, data_docs_dir) -> None:
    # the BSS answered with September's lines for October: every date is a month early
    shifted = copy.deepcopy(october)
    for record in shifted:
        for field in ("chargeStartDate", "chargeEndDate", "effectiveDate"):
            record[field] = "2026-09-" + record[field][8:10].replace("31", "30")
    report = _validate(warehouse, shifted)
    with pytest.raises(DataQualityError) as stopped:
        raise_on_critical(report)
    assert {"effective_date_in_month", "charge_start_in_month"} <= {failure.name for failure in report.critical}
    assert "nothing was sent to Autotask" in str(stopped.value)


def test_a_fault_on_most_lines_stops_the_month_and_on_a_few_holds_them(
    warehouse: Warehouse, october, data_docs_dir
) -> None:
    cycles = [record for record in october if record["action"] == "Cycle"]
    few = copy.deepcopy(october)
    for record in few:
        if record["id"] in {cycles[0]["id"], cycles[1]["id"]}:
            record["unitCost"] = -1.0
    report = _validate(warehouse, few)
    assert report.passed
    (held,) = [failure for failure in report.holds if failure.name == "unit_cost_not_negative"]
    assert set(held.held_keys) == {cycles[0]["id"], cycles[1]["id"]}
    assert held.severity is Severity.HOLD and "run the month again" in held.hold_reason

    many = copy.deepcopy(october)
    for record in many[: len(many) // 3]:  # a third of the month: the feed is broken, not some lines
        record["unitCost"] = -1.0
    report = validate_charges_again(warehouse, many)
    assert "unit_cost_not_negative" in {failure.name for failure in report.critical}
    with pytest.raises(DataQualityError, match="unit_cost_not_negative"):
        raise_on_critical(report)


def validate_charges_again(warehouse: Warehouse, records: list[dict]):
    extract_month(ListSource(records), warehouse, MONTH, "run-2")
    return validate_charges(warehouse, MONTH, "run-2")


def test_every_critical_check_is_one_that_makes_the_month_untrustworthy() -> None:
    """The README's table: the checks that stop a month, each for a reason that concerns the whole month."""
    stops = {
        (suite.stem, expectation["meta"]["name"])
        for suite in SUITES_DIR.glob("*.json")
        for expectation in json.loads(suite.read_text())["expectations"]
        if expectation["meta"]["severity"] == "critical"
    }
    charge_lines = {name for suite, name in stops if suite == "charge_lines"}
    assert charge_lines == {"row_count_within_critical_band", "charge_id_unique"}
