"""The snapshot and the whole map/reconcile chain against the real Autotask sandbox through the real hook."""

from __future__ import annotations

import json

import pytest

from include.extract import extract_month
from include.mapping import link_month
from include.plan import load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from sandbox.autotask_seed import seed_state
from sandbox.bss_server import UniverseSource
from sandbox.dataset import build_universe
from stacks.local_stack import autotask_connection
from tests.servers import start_server

MONTH = "2026-10"
CUSTOMERS = 20


@pytest.fixture(scope="module")
def autotask_hook(tmp_path_factory):
    server = start_server(
        ["sandbox.autotask_server", "--seed-customers", str(CUSTOMERS)], log_dir=tmp_path_factory.mktemp("logs")
    )
    patcher = pytest.MonkeyPatch()
    patcher.setenv("AIRFLOW_CONN_AUTOTASK_DEFAULT", json.dumps(autotask_connection(server.url)))
    from connectors.autotask_hook import AutotaskHook

    try:
        yield AutotaskHook()
    finally:
        patcher.undo()
        server.stop()


def test_snapshot_from_the_sandbox_holds_keyed_companies_contracts_and_units(autotask_hook, tmp_path):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    summary = take_snapshot(autotask_hook, warehouse, MONTH, "sandbox-run")
    assert summary.companies > 0 and summary.contracts > 0 and summary.contract_service_units > 0
    # batched reads: a handful of reader calls, not one per record
    assert summary.reader_calls <= 10
    keyed = warehouse.query(
        "SELECT external_key FROM at_companies WHERE run_id = 'sandbox-run' AND external_key IS NOT NULL"
    )
    assert keyed and all(row["external_key"].startswith("ACC-") for row in keyed)
    types = {row["contract_type"] for row in warehouse.query("SELECT contract_type FROM at_contracts")}
    assert types == {7}
    orphans = warehouse.scalar(
        "SELECT COUNT(*) FROM at_contract_service_units u WHERE NOT EXISTS (SELECT 1 FROM at_contract_services s"
        " WHERE s.run_id = u.run_id AND s.contract_service_id = u.contract_service_id)"
    )
    assert orphans == 0

    # The month the BSS sandbox would serve for the same universe, through the real extract.
    extract_month(UniverseSource(build_universe(CUSTOMERS, 3, 42)), warehouse, MONTH, "extract")
    settings = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
    mapping = link_month(warehouse, MONTH, "sandbox-run", settings)
    assert mapping.count("company", "key") > 0
    plan_summary = reconcile_month(warehouse, MONTH, "sandbox-run", settings)
    plan = load_plan(warehouse, MONTH, "sandbox-run")
    assert plan_summary.actions == len(plan)
    assert plan_summary.contract_services >= plan_summary.contract_services_in_sync > 0
    slots = [action.idempotency_key for action in plan]
    assert len(slots) == len(set(slots))


def test_snapshot_stores_each_company_currency_and_the_mismatching_companies_are_found(autotask_hook, tmp_path):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    summary = take_snapshot(autotask_hook, warehouse, MONTH, "currency-run")
    assert summary.reader_calls <= 10  # the currencies are one more batched read, not one per company
    stored = {
        row["company_id"]: row["currency"]
        for row in warehouse.query("SELECT company_id, currency FROM at_companies WHERE run_id = 'currency-run'")
    }
    currencies = {c["id"]: c["name"] for c in autotask_hook.query("Currencies", None, ["id", "name"])}
    for company in autotask_hook.query("Companies", None, ["id", "currencyID"]):
        expected = currencies[company["currencyID"]] if company.get("currencyID") is not None else "EUR"
        assert stored[company["id"]] == expected
    assert {"EUR", "GBP", "USD"} <= set(stored.values())

    # the BSS bills these accounts in GBP, Autotask's company bills in EUR: reconciliation must not write them
    extract_month(UniverseSource(build_universe(CUSTOMERS, 3, 42)), warehouse, MONTH, "currency-extract")
    seed = build_universe(CUSTOMERS, 3, 42)
    facts = [f for f in seed_state(seed, MONTH)["SeedFacts"] if f["kind"] == "company" and f["autotaskId"]]
    mismatching = warehouse.query(
        "SELECT DISTINCT l.account_id, c.company_id, c.currency AS company_currency, l.currency AS line_currency"
        " FROM charge_lines l JOIN at_companies c ON c.run_id = 'currency-run'"
        " AND c.external_key = l.account_id WHERE l.month = :month AND l.currency <> c.currency",
        {"month": MONTH},
    )
    expected_mismatches = {
        (f["bssId"], f["autotaskId"]) for f in facts if f["match"] == "udf" and f["currency"] != f["bssCurrency"]
    }
    assert expected_mismatches
    assert {(row["account_id"], row["company_id"]) for row in mismatching} == expected_mismatches
    assert {(row["company_currency"], row["line_currency"]) for row in mismatching} == {("EUR", "GBP")}
