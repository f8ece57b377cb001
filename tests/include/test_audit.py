"""The leakage audit over real HTTP: a month planned and loaded by the real pipeline into the Autotask sandbox,
posted there (Approve & Post, with leaks planted by its switches), and audited against the BSS sandbox's
issued invoices; findings stored in the warehouse (SQLite and PostgreSQL) and written as HTML, XLSX and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx
import openpyxl
import pytest

from include.audit import AuditInputError, LeakReason, audit_month, bss_line_amounts, latest_audit
from include.loader import load_plan_actions
from include.warehouse import Warehouse
from stacks.launcher import RunningServer
from stacks.local_stack import bss_connection
from tests.include.loader_support import CUSTOMERS, MONTH, SETTINGS, make_hook, plan_month

HOSTILE = {"ACC-1009": '=HYPERLINK("http://x")', "ACC-1030": "<script>alert(1)</script> Bäckerei GmbH"}


@pytest.fixture(scope="module")
def bss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from tests.servers import start_server

    names = [argument for key, name in HOSTILE.items() for argument in ("--account-name", f"{key}={name}")]
    server = start_server(
        ["sandbox.bss_server", "--customers", str(CUSTOMERS), "--subscriptions-per-customer", "3", *names],
        log_dir=tmp_path_factory.mktemp("bss-logs"),
    )
    yield server
    server.stop()


@pytest.fixture
def bss(bss_server: RunningServer, monkeypatch: pytest.MonkeyPatch):
    from connectors.bss_hook import BssHook

    httpx.post(bss_server.url + "/_admin/reset").raise_for_status()
    monkeypatch.setenv("AIRFLOW_CONN_BSS_AUDIT", json.dumps(bss_connection(bss_server.url)))
    return BssHook("bss_audit")


def _synced_and_posted(autotask, admin, warehouse: Warehouse, monkeypatch, **switches) -> tuple[object, dict]:
    hook = make_hook(autotask, monkeypatch)
    plan_month(hook, warehouse)
    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert summary.status == "succeeded" and summary.failed == 0
    posted = admin.client.post("/_admin/approve-and-post", json={"month": MONTH, **switches}).raise_for_status()
    return hook, posted.json()


def _keys(result) -> dict[tuple, str]:
    return {(row.account_id, row.product_id, row.currency): str(row.reason) for row in result.findings}


def _keys_of_contracts(warehouse: Warehouse, admin, contract_ids: set[int]) -> set[tuple[str, str]] | None:
    """(account, product) of the billing items the baseline post made on these contracts, through the links
    (None when an item's contract or service is not linked to a BSS subscription or product)."""
    items = [item for item in admin.state("BillingItems") if item["contractID"] in contract_ids]
    links = {
        (row["kind"], row["target_id"]): row["source_key"] for row in warehouse.query("SELECT * FROM mapping_links")
    }
    accounts = {
        row["subscription_id"]: row["account_id"]
        for row in warehouse.query("SELECT DISTINCT subscription_id, account_id FROM charge_lines")
    }
    keys = set()
    for item in items:
        account = accounts.get(links.get(("contract", item["contractID"])))
        product = links.get(("service", item["serviceID"]))
        if account is None or product is None:
            return None
        keys.add((account, product))
    return keys


def test_planted_leaks_are_found_each_with_its_reason_and_nothing_else_changes(
    autotask, admin, bss, warehouse: Warehouse, monkeypatch, tmp_path: Path
):
    hook, baseline_post = _synced_and_posted(autotask, admin, warehouse, monkeypatch)
    assert baseline_post["billingItems"] > 50 and baseline_post["planted"] == {
        "unbilled": [],
        "below_cost": [],
        "under_billed": [],
    }
    baseline = audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "baseline")
    baseline_keys = _keys(baseline)

    # contracts whose items the baseline found clean and whose accounts and products no other contract bills, one
    # leak each: the audit must find exactly these
    contracts_of_key: dict[tuple[str, str], set[int]] = defaultdict(set)
    keys_of_contract: dict[int, set[tuple[str, str]] | None] = {}
    for contract in {item["contractID"] for item in admin.state("BillingItems")}:
        keys_of_contract[contract] = _keys_of_contracts(warehouse, admin, {contract})
        for key in keys_of_contract[contract] or ():
            contracts_of_key[key].add(contract)
    found_before = {(account, product) for account, product, _ in baseline_keys}
    clean_contracts = sorted(
        contract
        for contract, keys in keys_of_contract.items()
        if keys and not keys & found_before and all(contracts_of_key[key] == {contract} for key in keys)
    )
    assert len(clean_contracts) >= 6
    unbilled, below_cost, under_billed = clean_contracts[0:2], clean_contracts[2:4], clean_contracts[4:6]
    planted_keys = {
        reason: set().union(*(keys_of_contract[contract] for contract in contracts))
        for reason, contracts in (
            (LeakReason.NOT_BILLED, unbilled),
            (LeakReason.BELOW_COST, below_cost),
            (LeakReason.UNDER_BILLED, under_billed),
        )
    }
    admin.client.post("/_admin/unpost", json={"month": MONTH}).raise_for_status()
    posted = admin.client.post(
        "/_admin/approve-and-post",
        json={
            "month": MONTH,
            "unbilled_contracts": unbilled,
            "below_cost_contracts": below_cost,
            "under_billed_contracts": under_billed,
        },
    ).json()
    assert posted["planted"] == {"unbilled": unbilled, "below_cost": below_cost, "under_billed": under_billed}

    audited = audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "planted")
    found = _keys(audited)
    new = {key: reason for key, reason in found.items() if baseline_keys.get(key) != reason}
    expected = {(account, product): str(reason) for reason, keys in planted_keys.items() for account, product in keys}
    assert {(account, product): reason for (account, product, _), reason in new.items()} == expected
    assert all(key in found for key in baseline_keys)  # what the baseline found is still found
    assert audited.counts[LeakReason.NOT_BILLED] >= len(planted_keys[LeakReason.NOT_BILLED])
    for row in audited.findings:
        if (row.account_id, row.product_id) in planted_keys[LeakReason.BELOW_COST]:
            assert row.billed_amount < row.bss_cost
        if (row.account_id, row.product_id) in planted_keys[LeakReason.UNDER_BILLED]:
            assert row.bss_cost <= row.billed_amount < row.bss_price

    # the figures are in the warehouse for the next month's run report, leakage per currency (never summed)
    stored = latest_audit(warehouse, MONTH)
    assert stored["audit_id"] == audited.audit_id and stored["findings"] == len(audited.findings)
    assert stored["by_reason"] == audited.counts
    assert stored["leakage"] == {currency: str(amount) for currency, amount in audited.leakage.items()}
    assert len(stored["leakage"]) >= 2
    rows = warehouse.query("SELECT * FROM billing_audit_findings WHERE audit_id = :a", {"a": audited.audit_id})
    assert len(rows) == len(audited.findings)
    assert {row["reason"] for row in rows} == set(audited.counts)


def test_the_report_is_html_xlsx_and_csv_with_hostile_names_kept_as_text(
    autotask, admin, bss, sqlite_url, monkeypatch, tmp_path: Path
):
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate()
    hook, _ = _synced_and_posted(autotask, admin, warehouse, monkeypatch, unbilled_share=1.0)
    result = audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "report")
    names = {row.account_name for row in result.findings}
    assert set(HOSTILE.values()) <= names  # every contract left unbilled: both accounts are findings

    text = (tmp_path / "report" / "billing-audit.csv").read_text(encoding="utf-8")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:9] == [
        "Account id",
        "Account name",
        "Product SKU",
        "Product name",
        "BSS cost",
        "Billed amount",
        "Difference",
        "Currency",
        "Reason",
    ]
    assert len(table) == len(result.findings) + 1
    by_account = {row[0]: row for row in table[1:]}
    assert by_account["ACC-1009"][1] == "'" + HOSTILE["ACC-1009"]  # no formula
    assert all(row[8] in {reason.value for reason in LeakReason} for row in table[1:])
    for row in table[1:]:
        assert Decimal(row[6]) == Decimal(row[5]) - Decimal(row[4])

    html = (tmp_path / "report" / "billing-audit.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    workbook = openpyxl.load_workbook(tmp_path / "report" / "billing-audit.xlsx")
    sheet = workbook["Findings"]
    cells = {row[0].value: row for row in sheet.iter_rows(min_row=2)}
    assert cells["ACC-1009"][1].value == HOSTILE["ACC-1009"] and cells["ACC-1009"][1].data_type == "s"
    assert isinstance(cells["ACC-1009"][4].value, float)


def test_a_month_with_a_draft_invoice_is_refused_and_nothing_is_stored(
    autotask, admin, bss, bss_server, sqlite_url, monkeypatch, tmp_path: Path
):
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate()
    hook, _ = _synced_and_posted(autotask, admin, warehouse, monkeypatch)
    httpx.post(f"{bss_server.url}/_admin/months/{MONTH}/open").raise_for_status()
    with pytest.raises(AuditInputError, match=r"not closed: \d+ invoice\(s\) still Draft \(INV-2026-10-000001"):
        audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "draft")
    assert warehouse.scalar("SELECT COUNT(*) FROM billing_audits") == 0
    assert not (tmp_path / "draft").exists()


def test_a_voided_and_reissued_bss_invoice_counts_once(
    autotask, admin, bss, bss_server, sqlite_url, monkeypatch, tmp_path: Path
):
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate()
    hook, _ = _synced_and_posted(autotask, admin, warehouse, monkeypatch)
    before = audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "before")
    reissued = httpx.post(f"{bss_server.url}/_admin/invoices/INV-{MONTH}-000003/reissue", json={}).json()
    assert reissued["invoice"]["status"] == "Issued"
    after = audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "after")
    assert after.bss_lines == before.bss_lines and after.bss_invoices == before.bss_invoices
    assert _keys(after) == _keys(before)


def test_the_audit_and_the_bss_agree_on_every_invoice_total(bss, bss_server):
    """Two implementations of the BSS's amounts (the sandbox's invoice totals, the audit's per line) agree."""
    invoices = [invoice for page in bss.iter_invoices(date(2026, 10, 1)) for invoice in page]
    charges = {
        charge["id"]: charge for page in bss.iter_charges(date(2026, 10, 1), date(2026, 10, 31)) for charge in page
    }
    assert invoices and sum(len(invoice["chargeIds"]) for invoice in invoices) == len(charges)
    kinds = {charges[charge_id]["chargeType"] for invoice in invoices for charge_id in invoice["chargeIds"]}
    assert {"Recurring", "Prorated"} <= kinds
    for invoice in invoices:
        amounts = [bss_line_amounts(charges[charge_id]) for charge_id in invoice["chargeIds"]]
        assert Decimal(str(invoice["totalCost"])) == sum(cost for cost, _ in amounts)
        assert Decimal(str(invoice["totalPrice"])) == sum(price for _, price in amounts)


def test_make_audit_runs_against_the_environments_connections_and_prints_the_csv_last(
    autotask, admin, bss, bss_server, tmp_path: Path, monkeypatch
):
    import subprocess

    from tests.include.loader_support import HOOK_EXTRA
    from tests.servers import REPO_ROOT

    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    warehouse = Warehouse(url)
    warehouse.migrate()
    _synced_and_posted(autotask, admin, warehouse, monkeypatch, unbilled_contracts=[])
    from stacks.local_stack import autotask_connection

    env = {
        "AIRFLOW_CONN_BSS_DEFAULT": json.dumps(bss_connection(bss_server.url)),
        "AIRFLOW_CONN_AUTOTASK_DEFAULT": json.dumps(autotask_connection(autotask.url, **HOOK_EXTRA)),
        "AIRFLOW_CONN_BILLING_WAREHOUSE": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": url}}),
        "BILLING_DATA_DOCS_DIR": str(tmp_path / "docs"),
    }

    def make_audit(month: str) -> subprocess.CompletedProcess:
        import os

        return subprocess.run(
            ["make", "--no-print-directory", "audit", f"MONTH={month}"],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = make_audit(MONTH)
    assert done.returncode == 0, done.stderr[-3000:]
    csv_path = Path(done.stdout.strip().splitlines()[-1])
    assert csv_path == tmp_path / "docs" / MONTH / "audit" / "billing-audit.csv" and csv_path.is_file()
    stored = latest_audit(warehouse, MONTH)
    assert stored["triggered_by"] == "make audit"
    assert len(csv_path.read_text(encoding="utf-8").splitlines()) == stored["findings"] + 1

    httpx.post(f"{bss_server.url}/_admin/months/{MONTH}/open").raise_for_status()
    refused = make_audit(MONTH)
    # make answers 2 for any failing recipe; the script's own codes are 1 (cannot audit) and 64 (a bad month)
    assert refused.returncode != 0 and f"make audit: {MONTH} cannot be audited" in refused.stderr
    assert "not closed" in refused.stderr and "Error 1" in refused.stderr
    bad = make_audit("2026-13")
    assert bad.returncode != 0 and "month must look like YYYY-MM" in bad.stderr and "Error 64" in bad.stderr


def test_a_contract_made_by_hand_after_the_snapshot_is_audited_too(
    autotask, admin, bss, warehouse: Warehouse, monkeypatch, tmp_path: Path
):
    """A person adds a contract with a one-off charge in Autotask after the month's snapshot (an onsite visit): Approve
    & Post bills it, and the audit must see it (billed with no BSS line), not silently skip the contract."""
    hook = make_hook(autotask, monkeypatch)
    plan_month(hook, warehouse)
    assert load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS).failed == 0
    account, company = next(
        (row["source_key"], int(row["target_id"]))
        for row in warehouse.query("SELECT * FROM mapping_links WHERE kind = 'company' ORDER BY source_key")
    )
    contract = hook.create(
        "Contracts",
        {
            "companyID": company,
            "contractName": "Onsite support (made by hand)",
            "contractType": 7,
            "startDate": f"{MONTH}-01",
            "endDate": f"{MONTH}-28",
            "status": 1,
            "timeReportingRequiresStartAndStopTimes": 1,
        },
    )
    hook.create_child(
        "Contracts",
        contract,
        "Charges",
        {
            "name": "Onsite visit",
            "datePurchased": f"{MONTH}-15",
            "chargeType": 1,
            "unitQuantity": 2,
            "unitCost": 40.0,
            "unitPrice": 95.0,
            "billingCodeID": 29682805,  # the seed's material code
            "isBillableToCompany": True,
        },
    )
    assert contract not in {
        int(row["contract_id"]) for row in warehouse.query("SELECT contract_id FROM at_contracts")
    }  # not in the snapshot
    admin.client.post("/_admin/approve-and-post", json={"month": MONTH}).raise_for_status()
    assert any(item["contractID"] == contract for item in admin.state("BillingItems"))

    audited = audit_month(bss, hook, warehouse, MONTH, report_dir=tmp_path / "audit")
    by_hand = [row for row in audited.findings if row.reason == LeakReason.NOT_IN_BSS and row.company_id == company]
    assert len(by_hand) == 1 and by_hand[0].account_id == account
    assert by_hand[0].billed_amount == Decimal("190.00") and by_hand[0].billed_items == 1
    assert audited.reads["Contracts"] >= 1
