"""Extract: a month from the running BSS sandbox into the warehouse, all or nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import pickle
import re
import threading

import httpx
import pytest
import sqlalchemy as sa

from include.extract import ExtractRejectedError, StaleRunError, ensure_run_reads_own_lines, extract_month
from include.warehouse import Warehouse
from tests.bss_sources import ListSource

MONTH = "2026-10"


def _hook():
    from connectors.bss_hook import BssHook

    return BssHook()


def _month_lines(warehouse: Warehouse) -> dict[str, dict]:
    rows = warehouse.query("SELECT * FROM charge_lines WHERE month = :m", {"m": MONTH})
    return {row["charge_id"]: row for row in rows}


def test_a_month_lands_typed_with_its_raw_payloads_and_accounts(bss, warehouse: Warehouse, universe) -> None:
    expected = universe.charges_for_month(MONTH)
    result = extract_month(_hook(), warehouse, MONTH, "run-1")

    lines = _month_lines(warehouse)
    assert result.line_count == result.raw_count == len(expected) == len(lines)
    assert set(lines) == {charge["id"] for charge in expected}
    sample = expected[len(expected) // 2]
    stored = lines[sample["id"]]
    assert stored["account_name"] == sample["account"]["name"]
    assert float(stored["quantity"]) == sample["quantity"]
    assert float(stored["unit_cost"]) == pytest.approx(sample["unitCost"])
    assert str(stored["effective_date"])[:10] == sample["effectiveDate"]
    assert warehouse.scalar("SELECT COUNT(*) FROM bss_charges_raw WHERE run_id = 'run-1'") == len(expected)
    assert warehouse.scalar("SELECT COUNT(*) FROM bss_accounts") == len(universe.accounts)
    run = warehouse.query("SELECT status, line_count FROM extract_runs WHERE run_id = 'run-1'")[0]
    assert run == {"status": "succeeded", "line_count": len(expected)}
    assert set(result.actions) >= {"Cycle", "QuantityIncrease", "QuantityDecrease", "Cancellation"}


def test_rerunning_a_month_replaces_it_without_duplicates(bss, warehouse: Warehouse) -> None:
    first = extract_month(_hook(), warehouse, MONTH, "run-1")
    second = extract_month(_hook(), warehouse, MONTH, "run-2")
    assert first.line_count == second.line_count
    assert warehouse.scalar("SELECT COUNT(*) FROM charge_lines WHERE month = :m", {"m": MONTH}) == first.line_count
    assert warehouse.scalar("SELECT COUNT(DISTINCT run_id) FROM charge_lines") == 1
    assert warehouse.scalar("SELECT COUNT(*) FROM bss_accounts") == first.account_count


def test_a_bad_record_names_charge_and_field_and_keeps_the_previous_month(bss, warehouse: Warehouse, universe) -> None:
    good = extract_month(_hook(), warehouse, MONTH, "run-good")
    victim = universe.charges_for_month(MONTH)[3]
    broken = {key: value for key, value in victim.items() if key != "unitCost"}
    wrong_type = dict(universe.charges_for_month(MONTH)[7], quantity="three")
    httpx.post(
        bss.url + "/_admin/overrides",
        json={"month": MONTH, "replace": {victim["id"]: broken, wrong_type["id"]: wrong_type}},
        timeout=10,
    ).raise_for_status()

    with pytest.raises(ExtractRejectedError) as caught:
        extract_month(_hook(), warehouse, MONTH, "run-bad")
    message = str(caught.value)
    assert victim["id"] in message and "unitCost" in message
    assert wrong_type["id"] in message and "quantity" in message
    assert "nothing was loaded" in message

    lines = _month_lines(warehouse)
    assert len(lines) == good.line_count and {row["run_id"] for row in lines.values()} == {"run-good"}
    rejected = warehouse.query(
        "SELECT charge_id, reject_field FROM bss_charges_raw WHERE run_id = 'run-bad' AND reject_reason IS NOT NULL"
    )
    assert {(row["charge_id"], row["reject_field"]) for row in rejected} == {
        (victim["id"], "unitCost"),
        (wrong_type["id"], "quantity"),
    }
    assert warehouse.scalar("SELECT COUNT(*) FROM bss_charges_raw WHERE run_id = 'run-bad'") == good.raw_count
    assert warehouse.query("SELECT status FROM extract_runs WHERE run_id = 'run-bad'") == [{"status": "rejected"}]


def test_duplicate_charge_ids_are_rejected(bss, sqlite_url: str, universe) -> None:
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate()
    twin = universe.charges_for_month(MONTH)[0]
    httpx.post(bss.url + "/_admin/overrides", json={"month": MONTH, "add": [twin]}, timeout=10).raise_for_status()
    with pytest.raises(ExtractRejectedError, match=rf"{twin['id']}.*appears 2 times"):
        extract_month(_hook(), warehouse, MONTH, "run-dup")
    assert warehouse.scalar("SELECT COUNT(*) FROM charge_lines") == 0


def test_a_body_that_is_not_json_fails_the_run_and_writes_no_lines(bss, sqlite_url: str) -> None:
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate()
    httpx.post(
        bss.url + "/_admin/overrides", json={"month": MONTH, "raw_body": "<html>Gateway error</html>"}, timeout=10
    ).raise_for_status()
    with pytest.raises(Exception, match="not JSON") as caught:
        extract_month(_hook(), warehouse, MONTH, "run-html")
    assert "/api/charges" in str(caught.value)
    assert warehouse.scalar("SELECT COUNT(*) FROM charge_lines") == 0
    run = warehouse.query("SELECT status, message FROM extract_runs WHERE run_id = 'run-html'")[0]
    assert run["status"] == "failed" and "not JSON" in run["message"]


def test_a_bad_month_is_refused_before_any_call(bss, sqlite_url: str) -> None:
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate()
    with pytest.raises(ValueError, match="YYYY-MM"):
        extract_month(_hook(), warehouse, "2026-13", "run-x")


# --- every attempt ends in a final status; one month, one complete set of lines --------------------------


def _unreachable_bss() -> None:
    raise httpx.ConnectError("BSS unreachable")


def test_a_retried_extract_keeps_each_attempt_and_its_raw_records(warehouse: Warehouse, universe) -> None:
    records = universe.charges_for_month(MONTH)
    with pytest.raises(httpx.ConnectError):
        extract_month(ListSource(records, _unreachable_bss), warehouse, MONTH, "run-retried")
    broken = [dict(records[0], quantity="three"), *records[1:]]
    with pytest.raises(ExtractRejectedError):
        extract_month(ListSource(broken), warehouse, MONTH, "run-retried")
    result = extract_month(ListSource(records), warehouse, MONTH, "run-retried")

    assert result.attempt == 3
    attempts = warehouse.query(
        "SELECT attempt, status, message FROM extract_runs WHERE run_id = 'run-retried' ORDER BY attempt"
    )
    assert [(row["attempt"], row["status"]) for row in attempts] == [(1, "failed"), (2, "rejected"), (3, "succeeded")]
    assert "BSS unreachable" in attempts[0]["message"] and records[0]["id"] in attempts[1]["message"]
    raw = warehouse.query(
        "SELECT attempt, COUNT(*) AS n, COUNT(reject_reason) AS rejected FROM bss_charges_raw"
        " WHERE run_id = 'run-retried' GROUP BY attempt ORDER BY attempt"
    )
    assert [(row["attempt"], row["n"], row["rejected"]) for row in raw] == [
        (2, len(records), 1),
        (3, len(records), 0),
    ]


def test_an_overlong_account_name_is_rejected_by_charge_and_field(warehouse: Warehouse, universe) -> None:
    records = [dict(record) for record in universe.charges_for_month(MONTH)]
    victim = records[5]["id"]
    records[5]["account"] = dict(records[5]["account"], name="Société Générale de Boulangerie SARL " * 9)  # 333
    with pytest.raises(ExtractRejectedError) as caught:
        extract_month(ListSource(records), warehouse, MONTH, "run-long")
    assert [(reject.charge_id, reject.field) for reject in caught.value.rejects] == [(victim, "account.name")]
    assert "333 characters" in str(caught.value) and "255" in str(caught.value)
    assert warehouse.query("SELECT status FROM extract_runs WHERE run_id = 'run-long'") == [{"status": "rejected"}]
    assert warehouse.scalar("SELECT COUNT(*) FROM charge_lines") == 0


def test_a_warehouse_error_while_writing_ends_the_attempt_failed_and_keeps_the_month(
    warehouse: Warehouse, universe
) -> None:
    records = universe.charges_for_month(MONTH)
    accounts = list({record["account"]["id"]: dict(record["account"]) for record in records}.values())
    extract_month(ListSource(records, accounts=accounts), warehouse, MONTH, "run-good")
    warehouse.table("bss_accounts")  # known to this handle: the extract writes to it without looking again
    with warehouse.begin() as conn:
        conn.execute(sa.text("DROP TABLE bss_accounts"))

    with pytest.raises(sa.exc.DBAPIError):
        extract_month(ListSource(records, accounts=accounts), warehouse, MONTH, "run-broken")
    run = warehouse.query("SELECT status, message FROM extract_runs WHERE run_id = 'run-broken'")
    assert run[0]["status"] == "failed" and "bss_accounts" in run[0]["message"]
    assert warehouse.scalar("SELECT COUNT(DISTINCT run_id) FROM charge_lines") == 1
    assert warehouse.scalar("SELECT MIN(run_id) FROM charge_lines") == "run-good"


def test_two_concurrent_extracts_of_a_month_both_finish_and_leave_one_complete_set(
    warehouse: Warehouse, universe
) -> None:
    records = universe.charges_for_month(MONTH)
    both_fetched = threading.Barrier(2, timeout=30)
    outcomes: dict[str, object] = {}

    def extract(run_id: str) -> None:
        try:
            outcomes[run_id] = extract_month(ListSource(records, both_fetched.wait), warehouse, MONTH, run_id)
        except Exception as error:  # reported below with the run it belongs to
            outcomes[run_id] = error

    threads = [threading.Thread(target=extract, args=(run_id,)) for run_id in ("run-a", "run-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert all(not isinstance(outcome, Exception) for outcome in outcomes.values()), outcomes
    statuses = warehouse.query("SELECT run_id, status FROM extract_runs ORDER BY run_id")
    assert statuses == [{"run_id": "run-a", "status": "succeeded"}, {"run_id": "run-b", "status": "succeeded"}]
    holders = warehouse.query(
        "SELECT run_id, COUNT(*) AS n FROM charge_lines WHERE month = :m GROUP BY run_id", {"m": MONTH}
    )
    assert len(holders) == 1 and holders[0]["n"] == len(records)


# --- each run reads its own inputs ---------------------------------------------------------------------------


def test_a_run_whose_month_was_extracted_again_by_a_newer_run_is_stopped(warehouse: Warehouse, universe) -> None:
    records = universe.charges_for_month(MONTH)
    extract_month(ListSource(records), warehouse, MONTH, "scheduled__2026-11-01")
    extract_month(ListSource(records), warehouse, MONTH, "manual__2026-11-03")

    with pytest.raises(StaleRunError) as stopped:
        ensure_run_reads_own_lines(warehouse, MONTH, "scheduled__2026-11-01")
    message = str(stopped.value)
    assert "'manual__2026-11-03'" in message and "scheduled__2026-11-01" in message
    assert "re-run it from its extract task" in message and "review the newer run" in message
    assert re.search(r"extracted at \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", message)
    assert list(stopped.value.holders) == ["manual__2026-11-03"]
    assert str(pickle.loads(pickle.dumps(stopped.value))) == message
    ensure_run_reads_own_lines(warehouse, MONTH, "manual__2026-11-03")  # the newer run reads its own lines
    ensure_run_reads_own_lines(warehouse, MONTH, "lines-stored-by-hand")  # never extracted: nothing to check
