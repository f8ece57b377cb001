"""Extract: a month from the running BSS sandbox into the warehouse, all or nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from include.extract import ExtractRejectedError, extract_month
from include.warehouse import Warehouse
from sandbox.dataset import build_universe

MONTH = "2026-10"


@pytest.fixture(scope="module")
def universe():
    return build_universe(customers=50, subscriptions_per_customer=3, seed=42)


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
