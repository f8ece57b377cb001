"""The quality gate: clean data passes, severities decide, Data Docs are kept per run, GX stays offline."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest

from include import quality
from include.extract import ExtractRejectedError, StaleRunError, extract_month
from include.quality import (
    DataQualityError,
    SuiteConfigurationError,
    raise_on_critical,
    validate_charges,
    validate_plan,
)
from include.warehouse import Warehouse
from sandbox.dataset import build_universe
from tests.bss_sources import ListSource

MONTH = "2026-10"
PREVIOUS_MONTH = "2026-09"
SUITES = ("bss_charges_raw", "charge_lines", "autotask_snapshot", "change_plan")


@pytest.fixture(scope="module")
def universe():
    return build_universe(customers=20, subscriptions_per_customer=3, seed=7)


def _extract(warehouse: Warehouse, universe, month: str, run_id: str, records: list[dict] | None = None) -> None:
    extract_month(
        ListSource(records if records is not None else universe.charges_for_month(month)), warehouse, month, run_id
    )


# --- charges gate ------------------------------------------------------------------------------------------


def test_a_clean_month_passes_every_charge_expectation(warehouse: Warehouse, universe) -> None:
    _extract(warehouse, universe, PREVIOUS_MONTH, "run-09")
    _extract(warehouse, universe, MONTH, "run-10")
    report = validate_charges(warehouse, MONTH, "run-10")

    assert report.failures == (), [str(failure) for failure in report.failures]
    assert raise_on_critical(report) is report
    lines = len(universe.charges_for_month(MONTH))
    counts = {suite.suite: suite.row_count for suite in report.suites}
    assert counts == {"bss_charges_raw": lines, "charge_lines": lines}
    assert all(suite.evaluated >= 20 for suite in report.suites)
    assert report.parameters["previous_month_line_count"] == len(universe.charges_for_month(PREVIOUS_MONTH))
    stored = warehouse.query("SELECT suite, success, row_count, data_docs_index FROM quality_results")
    assert sorted((row["suite"], bool(row["success"]), row["row_count"]) for row in stored) == [
        ("bss_charges_raw", True, lines),
        ("charge_lines", True, lines),
    ]
    assert stored[0]["data_docs_index"] == report.data_docs_index


def test_a_bad_line_is_held_by_name_and_charge_and_stored_and_the_month_goes_on(warehouse: Warehouse, universe) -> None:
    records = [dict(record) for record in universe.charges_for_month(MONTH)]
    victim = next(index for index, record in enumerate(records) if record["action"] == "QuantityIncrease")
    records[victim]["subscriptionQuantity"] += 4
    charge_id = records[victim]["id"]
    _extract(warehouse, universe, MONTH, "run-bad", records)

    report = validate_charges(warehouse, MONTH, "run-bad")
    assert raise_on_critical(report) is report and report.critical == []
    assert [failure.name for failure in report.holds] == ["subscription_quantity_follows_changes"]
    example = report.holds[0].examples[0]
    # the line, and the subscription's next line that follows from its wrong total: that subscription only
    subscription = records[victim]["subscription"]["id"]
    held_keys = report.holds[0].held_keys
    assert example["charge_id"] == charge_id and charge_id in held_keys
    assert {record["subscription"]["id"] for record in records if record["id"] in held_keys} == {subscription}
    assert float(example["subscription_quantity"]) == float(example["expected_subscription_quantity"]) + 4
    row = warehouse.query(
        "SELECT success, critical_failures, failures FROM quality_results WHERE suite = 'charge_lines'"
    )
    assert row[0]["critical_failures"] == 0 and not row[0]["success"]
    assert json.loads(row[0]["failures"])[0]["examples"][0]["charge_id"] == charge_id
    assert json.loads(json.dumps(report.as_dict()))["holds"][0]["name"] == "subscription_quantity_follows_changes"
    held = warehouse.query("SELECT charge_id, expectation, reason FROM quality_holds WHERE run_id = 'run-bad'")
    assert [(row["charge_id"], row["expectation"]) for row in held] == [
        (key, "subscription_quantity_follows_changes") for key in held_keys
    ]
    assert "a missing or repeated change line" in held[0]["reason"]


def test_critical_failure_raises_naming_expectation_and_charge_and_is_stored(warehouse: Warehouse, universe) -> None:
    # the same fault on most of the month's changes and cycles: the feed is broken, the month stops
    records = [dict(record) for record in universe.charges_for_month(MONTH)]
    for record in records:
        record["subscriptionQuantity"] += 4 if record["action"] != "New" else 0
    _extract(warehouse, universe, MONTH, "run-bad", records)

    report = validate_charges(warehouse, MONTH, "run-bad")
    with pytest.raises(DataQualityError) as stopped:
        raise_on_critical(report)

    message = str(stopped.value)
    failure = next(failure for failure in report.critical if failure.name == "subscription_quantity_follows_changes")
    assert "subscription_quantity_follows_changes" in message
    assert failure.examples[0]["charge_id"] in message
    assert report.data_docs_index in message
    row = warehouse.query(
        "SELECT success, critical_failures, failures FROM quality_results WHERE suite = 'charge_lines'"
    )
    assert row[0]["critical_failures"] >= 1 and not row[0]["success"]
    names = [item["name"] for item in json.loads(json.dumps(report.as_dict()))["critical"]]
    assert "subscription_quantity_follows_changes" in names


def test_row_count_band_warns_on_a_moderate_drop_and_is_absent_in_the_first_month(
    warehouse: Warehouse, universe
) -> None:
    first = validate_charges_after(warehouse, universe, PREVIOUS_MONTH, "run-09")
    assert first.parameters["row_count_critical_max"] is None and first.failures == ()

    october = universe.charges_for_month(MONTH)
    subscriptions = sorted({record["subscription"]["id"] for record in october})
    gone = set(subscriptions[: max(1, len(subscriptions) * 30 // 100)])  # whole subscriptions: still consistent
    kept = [record for record in october if record["subscription"]["id"] not in gone]
    _extract(warehouse, universe, MONTH, "run-10", kept)
    report = validate_charges(warehouse, MONTH, "run-10")
    previous = len(universe.charges_for_month(PREVIOUS_MONTH))
    assert previous * 0.5 < len(kept) < previous * 0.8
    assert report.passed
    assert [failure.name for failure in report.warnings] == ["row_count_within_usual_band"]
    assert report.warnings[0].observed == str(len(kept))


def validate_charges_after(warehouse: Warehouse, universe, month: str, run_id: str):
    _extract(warehouse, universe, month, run_id)
    return validate_charges(warehouse, month, run_id)


def test_raw_suite_names_missing_fields_and_duplicates_in_raw_records(warehouse: Warehouse, universe) -> None:
    # Records the extract would reject never reach the gate in the DAG; the raw suite still says what is wrong
    # if they do (e.g. a gate run against a rejected run's raw rows).
    records = universe.charges_for_month(MONTH)[:3]
    broken = {key: value for key, value in records[0].items() if key != "currency"}
    payloads = [broken, records[1], records[1], records[2]]
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "bss_charges_raw",
            [
                {
                    "run_id": "raw-run",
                    "seq": seq,
                    "month": MONTH,
                    "charge_id": payload["id"],
                    "payload": json.dumps(payload),
                    "reject_field": None,
                    "reject_reason": None,
                }
                for seq, payload in enumerate(payloads)
            ],
        )
    report = validate_charges(warehouse, MONTH, "raw-run")
    raw = {failure.name: failure for failure in report.critical if failure.suite == "bss_charges_raw"}
    assert set(raw) == {"raw_currency_present", "raw_charge_id_unique"}
    assert raw["raw_currency_present"].example_keys("charge_id") == [records[0]["id"]]
    assert set(raw["raw_charge_id_unique"].example_keys("charge_id")) == {records[1]["id"]}
    # No typed lines for the month at all: the typed suite stops the run too.
    assert "row_count_within_critical_band" in {failure.name for failure in report.critical}


# --- plan gate ---------------------------------------------------------------------------------------------


def _plan_row(action_id: str, kind: str, status: str = "proposed", **values: object) -> dict:
    row = {
        "action_id": action_id,
        "idempotency_key": f"{MONTH}|{kind}|{action_id}",
        "month": MONTH,
        "run_id": "plan-run",
        "seq": int(re.sub(r"\D", "", action_id) or 0),
        "kind": kind,
        "status": status,
        "payload": "{}",
        "charge_ids": "[]",
        "depends_on": "[]",
        "created_at": datetime(2026, 11, 1),
    }
    optional = (
        "contract_service_id",
        "contract_service_action_id",
        "contract_id",
        "service_id",
        "effective_date",
        "units_before",
        "units_after",
        "unit_change",
        "unit_cost_after",
    )
    row.update(dict.fromkeys(optional), **values)
    return row


def _store_snapshot_and_plan(warehouse: Warehouse, plan_rows: list[dict], unit_rows: list[dict]) -> None:
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "at_contract_services",
            [
                {"run_id": "plan-run", "contract_service_id": 501, "contract_id": 40, "service_id": 7},
                {"run_id": "plan-run", "contract_service_id": 502, "contract_id": 40, "service_id": 8},
            ],
        )
        warehouse.insert(conn, "at_contract_service_units", unit_rows)
        warehouse.insert(conn, "plan_actions", plan_rows)


def _unit(unit_id: int, contract_service_id: int, start: date, units: float) -> dict:
    return {
        "run_id": "plan-run",
        "contract_service_unit_id": unit_id,
        "contract_service_id": contract_service_id,
        "contract_id": 40,
        "service_id": 7,
        "start_date": start,
        "end_date": date(start.year, start.month, 28),
        "units": units,
    }


def test_a_consistent_plan_and_snapshot_pass(warehouse: Warehouse) -> None:
    _store_snapshot_and_plan(
        warehouse,
        [
            _plan_row(
                "a1",
                "adjust_units",
                contract_service_id=501,
                effective_date=date(2026, 10, 5),
                units_before=10,
                units_after=12,
                unit_change=2,
            ),
            _plan_row(
                "a2",
                "adjust_units",
                contract_service_id=501,
                effective_date=date(2026, 10, 9),
                units_before=12,
                units_after=11,
                unit_change=-1,
            ),
            _plan_row("a3", "create_contract_service", contract_id=40, service_id=9),
            _plan_row(
                "a4",
                "adjust_units",
                contract_service_action_id="a3",
                effective_date=date(2026, 10, 5),
                units_before=0,
                units_after=3,
                unit_change=3,
            ),
            _plan_row("a5", "adjust_units", "needs-mapping", effective_date=date(2026, 10, 6), unit_change=4),
        ],
        [
            _unit(1, 501, date(2026, 9, 1), 10),
            _unit(2, 501, date(2026, 10, 1), 10),
            _unit(3, 502, date(2026, 10, 1), 4),
        ],
    )
    report = validate_plan(warehouse, MONTH, "plan-run")
    assert report.failures == (), [str(failure) for failure in report.failures]
    assert {suite.suite: suite.row_count for suite in report.suites} == {"autotask_snapshot": 3, "change_plan": 5}


def test_plan_gate_stops_on_double_adjustment_and_unmapped_unit_change(warehouse: Warehouse) -> None:
    _store_snapshot_and_plan(
        warehouse,
        [
            _plan_row(
                "a1",
                "adjust_units",
                contract_service_id=501,
                effective_date=date(2026, 10, 5),
                units_before=10,
                units_after=12,
                unit_change=2,
            ),
            _plan_row(
                "a2",
                "change_cost",
                "approved",
                contract_service_id=501,
                effective_date=date(2026, 10, 5),
                unit_cost_after=3.5,
            ),
            _plan_row("a3", "adjust_units", contract_service_id=None, effective_date=date(2026, 10, 7), unit_change=5),
            _plan_row(
                "a4",
                "adjust_units",
                contract_service_id=502,
                effective_date=date(2026, 10, 8),
                units_before=4,
                units_after=9,
                unit_change=2,
            ),
        ],
        [
            _unit(1, 501, date(2026, 10, 1), 10),
            _unit(2, 501, date(2026, 10, 1), 11),  # a second unit row for the same period
            _unit(3, 999, date(2026, 10, 1), 2.5),  # unknown contract service, fractional units
        ],
    )
    report = validate_plan(warehouse, MONTH, "plan-run")
    critical = {failure.name: failure for failure in report.critical}
    assert set(critical) == {
        "one_adjustment_per_contract_service_and_date",
        "unit_change_has_contract_service",
        "unit_change_consistent",
        "one_unit_row_per_contract_service_period",
        "units_integral",
    }
    assert set(critical["one_adjustment_per_contract_service_and_date"].example_keys("action_id")) == {"a1", "a2"}
    assert critical["unit_change_has_contract_service"].example_keys("action_id") == ["a3"]
    assert critical["unit_change_consistent"].example_keys("action_id") == ["a4"]
    assert [failure.name for failure in report.warnings] == ["unit_contract_service_known"]
    with pytest.raises(DataQualityError, match="one_adjustment_per_contract_service_and_date"):
        raise_on_critical(report)


# --- Data Docs ---------------------------------------------------------------------------------------------


def test_data_docs_are_kept_per_month_and_run_and_show_both_gates(
    warehouse: Warehouse, universe, data_docs_dir: Path
) -> None:
    run_id = "manual__2026-11-01T00:00:00+00:00"
    _extract(warehouse, universe, MONTH, run_id)
    charges = validate_charges(warehouse, MONTH, run_id)
    plan = validate_plan(warehouse, MONTH, run_id)

    index = Path(charges.data_docs_index)
    assert index == data_docs_dir / MONTH / "manual__2026-11-01T00~3A00~3A00~2B00~3A00" / "index.html"
    assert plan.data_docs_index == charges.data_docs_index and index.is_file()
    html = index.read_text()
    pages = sorted(set(re.findall(r"validations/[^'\"\\]+\.html", html)))
    assert {page.split("/")[1] for page in pages} == set(SUITES)
    for suite in SUITES:
        assert f"expectations/{suite}.html" in html
    lines_page = (index.parent / unquote(next(page for page in pages if "/charge_lines/" in page))).read_text()
    for expectation in quality.load_suite_definition("charge_lines")["expectations"]:
        assert expectation["meta"]["name"] in lines_page, expectation["meta"]["name"]
    assert "Subscription quantity equals the previous total" in lines_page

    other = validate_charges(warehouse, MONTH, "second-run")
    assert Path(other.data_docs_index).parent.name == "second-run" and index.is_file()


# --- suites as data, GX offline and quiet -------------------------------------------------------------------


def test_every_expectation_has_a_unique_name_and_a_severity() -> None:
    for suite in SUITES:
        definition = quality.load_suite_definition(suite)
        names = [expectation["meta"]["name"] for expectation in definition["expectations"]]
        assert len(names) == len(set(names)) > 0, suite
        assert {expectation["meta"]["severity"] for expectation in definition["expectations"]} <= {
            "critical",
            "hold",
            "warning",
        }


def test_a_suite_without_a_valid_severity_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    definition = quality.load_suite_definition("change_plan")
    definition["expectations"][0]["meta"]["severity"] = "fatal"
    (tmp_path / "change_plan.json").write_text(json.dumps(definition))
    monkeypatch.setattr(quality, "SUITES_DIR", tmp_path)
    with pytest.raises(SuiteConfigurationError, match="fatal"):
        quality.load_suite_definition("change_plan")


def test_gx_runs_with_analytics_off_and_opens_no_network_connection(
    warehouse: Warehouse, universe, monkeypatch: pytest.MonkeyPatch, data_docs_dir: Path
) -> None:
    _extract(warehouse, universe, MONTH, "offline-run")
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: network connection to {address} refused")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    report = validate_charges(warehouse, MONTH, "offline-run")
    context = quality.configure_context(data_docs_dir / "probe")

    assert attempts == []
    assert report.failures == ()
    assert context.config.analytics_enabled is False
    assert quality._project_config()["analytics_enabled"] is False
    import os

    assert os.environ["GX_ANALYTICS_ENABLED"].lower() == "false"


def test_importing_gx_through_the_gate_does_not_flood_the_log() -> None:
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
        "import include.quality as q; q._gx(); print('imported')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(quality.__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout
    assert "Skipping registering function" not in done.stderr


# --- the previous total and the BSS's order of one day's lines ---------------------------------------------


def _charge(
    charge_id: str,
    action: str,
    quantity: int,
    total: int,
    day: str,
    *,
    subscription_id: str = "SUB-ANNUAL-1",
    created: str | None = None,
    charge_type: str = "Prorated",
) -> dict:
    """A charge of Zürcher Treuhand AG's annually billed plan (no Cycle line every month)."""
    month_end = {"09": "30", "10": "31"}[day[5:7]]
    record = {
        "id": charge_id,
        "account": {"id": "ACC-ZH-1", "name": "Zürcher Treuhand AG", "code": "ZTAG"},
        "subscription": {"id": subscription_id, "status": "Active"},
        "product": {"id": "PRD-M365-BP", "sku": "CFQ7TTC0LCHC:0002", "name": "Microsoft 365 Business Premium"},
        "billingPlan": {"id": "BP-Y", "name": "Annual billing", "billingPeriod": "Annually"},
        "billingCycle": "Annual",
        "chargeType": charge_type,
        "action": action,
        "quantity": quantity,
        "subscriptionQuantity": total,
        "unitCost": 18.5,
        "unitPrice": 22.0,
        "currency": "CHF",
        "chargeStartDate": day,
        "chargeEndDate": f"{day[:8]}{month_end}",
        "effectiveDate": day,
        "invoiceId": None,
    }
    if created:
        record["createdDate"] = created
    return record


SEPTEMBER_CYCLE = _charge("CHG-2026-09-7", "Renewal", 10, 10, "2026-09-01", charge_type="Recurring")


def _follows_changes_failure(report) -> object | None:
    return next((f for f in report.critical if f.name == "subscription_quantity_follows_changes"), None)


def test_a_first_line_that_is_an_increase_follows_the_total_of_the_earlier_month(warehouse: Warehouse) -> None:
    _extract(warehouse, None, PREVIOUS_MONTH, "run-09", [SEPTEMBER_CYCLE])
    _extract(warehouse, None, MONTH, "run-10", [_charge("CHG-2026-10-3", "QuantityIncrease", 2, 12, "2026-10-15")])
    report = validate_charges(warehouse, MONTH, "run-10")
    assert report.critical == [], [str(failure) for failure in report.critical]


def test_a_first_increase_without_an_earlier_month_stands_on_its_own_total(warehouse: Warehouse) -> None:
    # The first month in this warehouse: the previous total comes from Autotask at reconciliation.
    _extract(warehouse, None, MONTH, "run-10", [_charge("CHG-2026-10-3", "QuantityIncrease", 2, 12, "2026-10-15")])
    report = validate_charges(warehouse, MONTH, "run-10")
    assert report.critical == [], [str(failure) for failure in report.critical]


def test_a_first_increase_that_contradicts_the_earlier_month_fails_critically_by_charge_id(
    warehouse: Warehouse,
) -> None:
    _extract(warehouse, None, PREVIOUS_MONTH, "run-09", [SEPTEMBER_CYCLE])
    wrong = _charge("CHG-2026-10-3", "QuantityIncrease", 2, 14, "2026-10-15")  # 10 + 2 is 12, not 14
    fine = _charge("CHG-2026-10-4", "QuantityDecrease", -1, 4, "2026-10-15", subscription_id="SUB-OTHER")
    _extract(warehouse, None, MONTH, "run-10", [wrong, fine])
    report = validate_charges(warehouse, MONTH, "run-10")
    failure = _follows_changes_failure(report)
    assert failure is not None and failure.example_keys("charge_id") == ["CHG-2026-10-3"]
    assert float(failure.examples[0]["expected_subscription_quantity"]) == 12
    with pytest.raises(DataQualityError, match="CHG-2026-10-3"):
        raise_on_critical(report)


def test_lines_of_one_day_follow_the_charge_sequence_not_the_text_of_the_ids(warehouse: Warehouse) -> None:
    _extract(warehouse, None, PREVIOUS_MONTH, "run-09", [SEPTEMBER_CYCLE])
    # CHG-9 then CHG-10 on the 15th: by the ids' text CHG-10 would come first and its total look wrong.
    day = [
        _charge("CHG-10", "QuantityIncrease", 3, 15, "2026-10-15"),
        _charge("CHG-9", "QuantityIncrease", 2, 12, "2026-10-15"),
    ]
    _extract(warehouse, None, MONTH, "run-10", day)
    report = validate_charges(warehouse, MONTH, "run-10")
    assert _follows_changes_failure(report) is None, [str(failure) for failure in report.critical]
    stored = warehouse.query("SELECT charge_id, charge_sequence FROM charge_lines WHERE month = :m", {"m": MONTH})
    assert {row["charge_id"]: row["charge_sequence"] for row in stored} == {"CHG-9": 9, "CHG-10": 10}


def test_the_bss_timestamp_orders_one_days_lines_before_the_sequence(warehouse: Warehouse) -> None:
    _extract(warehouse, None, PREVIOUS_MONTH, "run-09", [SEPTEMBER_CYCLE])
    # The BSS created CHG-10 before CHG-9 (its timestamp says so): CHG-10 moves 10 to 13, CHG-9 13 to 15.
    day = [
        _charge("CHG-9", "QuantityIncrease", 2, 15, "2026-10-15", created="2026-10-15T11:00:00+02:00"),
        _charge("CHG-10", "QuantityIncrease", 3, 13, "2026-10-15", created="2026-10-15T08:30:00Z"),
    ]
    _extract(warehouse, None, MONTH, "run-10", day)
    report = validate_charges(warehouse, MONTH, "run-10")
    assert _follows_changes_failure(report) is None, [str(failure) for failure in report.critical]
    stored = warehouse.query("SELECT charge_id, charged_at FROM charge_lines WHERE month = :m", {"m": MONTH})
    assert {row["charge_id"]: str(row["charged_at"])[:19] for row in stored} == {
        "CHG-9": "2026-10-15 09:00:00",
        "CHG-10": "2026-10-15 08:30:00",
    }


def test_a_retried_extract_is_validated_on_its_latest_attempts_raw_records(warehouse: Warehouse, universe) -> None:
    records = universe.charges_for_month(MONTH)
    broken = [dict(records[0], currency=None), *records[1:]]
    with pytest.raises(ExtractRejectedError):
        _extract(warehouse, universe, MONTH, "run-retried", broken)
    _extract(warehouse, universe, MONTH, "run-retried")  # the retry: same run id, next attempt
    report = validate_charges(warehouse, MONTH, "run-retried")
    assert report.critical == [], [str(failure) for failure in report.critical]
    assert {suite.suite: suite.row_count for suite in report.suites}["bss_charges_raw"] == len(records)


def test_validating_an_older_run_after_a_newer_extract_of_the_month_is_refused(warehouse: Warehouse, universe) -> None:
    _extract(warehouse, universe, MONTH, "run-older")
    _extract(warehouse, universe, MONTH, "run-newer")
    with pytest.raises(StaleRunError, match="run-newer"):
        validate_charges(warehouse, MONTH, "run-older")
    assert warehouse.scalar("SELECT COUNT(*) FROM quality_results") == 0
    assert validate_charges(warehouse, MONTH, "run-newer").passed
