"""The snapshot and the whole map/reconcile chain against the real Autotask sandbox through the real hook."""

from __future__ import annotations

import json

import pytest

from include.mapping import link_month
from include.plan import load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from sandbox.dataset import build_universe
from tests.include.line_factory import store_month
from tests.servers import start_server

MONTH = "2026-10"
CUSTOMERS = 20


@pytest.fixture(scope="module")
def autotask_hook(tmp_path_factory):
    server = start_server(
        ["sandbox.autotask_server", "--seed-customers", str(CUSTOMERS)], log_dir=tmp_path_factory.mktemp("logs")
    )
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": server.port,
        "schema": "http",
        "login": "api-user@demo.example",
        "password": "demo-secret",
        "extra": {"integration_code": "DEMOINTEGRATION"},
    }
    patcher = pytest.MonkeyPatch()
    patcher.setenv("AIRFLOW_CONN_AUTOTASK_DEFAULT", json.dumps(connection))
    from connectors.autotask_hook import AutotaskHook

    try:
        yield AutotaskHook()
    finally:
        patcher.undo()
        server.stop()


def _bss_month() -> tuple[list[dict], list[dict]]:
    """The month the BSS sandbox would serve for the same universe, as charge_lines rows."""
    from datetime import date
    from decimal import Decimal

    from include.warehouse import utcnow

    universe = build_universe(CUSTOMERS, 3, 42)
    lines = [
        {
            "month": MONTH,
            "charge_id": c["id"],
            "account_id": c["account"]["id"],
            "account_name": c["account"]["name"],
            "account_code": c["account"]["code"],
            "subscription_id": c["subscription"]["id"],
            "subscription_status": c["subscription"]["status"],
            "product_id": c["product"]["id"],
            "product_sku": c["product"]["sku"],
            "product_name": c["product"]["name"],
            "billing_plan_id": None,
            "billing_plan_name": None,
            "billing_period": c["billingPlan"]["billingPeriod"],
            "billing_cycle": c["billingCycle"],
            "charge_type": c["chargeType"],
            "action": c["action"],
            "quantity": Decimal(str(c["quantity"])),
            "subscription_quantity": Decimal(str(c["subscriptionQuantity"])),
            "unit_cost": Decimal(str(c["unitCost"])),
            "unit_price": Decimal(str(c["unitPrice"])),
            "currency": c["currency"],
            "charge_start_date": date.fromisoformat(c["chargeStartDate"]),
            "charge_end_date": date.fromisoformat(c["chargeEndDate"]),
            "effective_date": date.fromisoformat(c["effectiveDate"]),
            "invoice_id": None,
            "run_id": "extract",
        }
        for c in universe.charges_for_month(MONTH)
    ]
    accounts = [
        {
            "account_id": a.id,
            "name": a.name,
            "code": a.code,
            "status": a.status,
            "phone": a.phone,
            "email": a.email,
            "vat_number": a.vat_number,
            "street": a.street,
            "city": a.city,
            "postal_code": a.postal_code,
            "country": a.country,
            "run_id": "extract",
            "fetched_at": utcnow(),
        }
        for a in universe.accounts
    ]
    return lines, accounts


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

    lines, accounts = _bss_month()
    store_month(warehouse, MONTH, lines, accounts)
    settings = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
    mapping = link_month(warehouse, MONTH, "sandbox-run", settings)
    assert mapping.count("company", "key") > 0
    plan_summary = reconcile_month(warehouse, MONTH, "sandbox-run", settings)
    plan = load_plan(warehouse, MONTH, "sandbox-run")
    assert plan_summary.actions == len(plan)
    assert plan_summary.contract_services >= plan_summary.contract_services_in_sync > 0
    slots = [action.idempotency_key for action in plan]
    assert len(slots) == len(set(slots))
