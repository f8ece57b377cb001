"""Step 7's record: the run report a finance person reads before invoicing, as HTML and as XLSX.

`write_run_report(warehouse, month, run_id, directory)` reads what the warehouse holds about one run of a
month and writes `report.html` and `report.xlsx` into the run's directory next to its Data Docs
(`$BILLING_DATA_DOCS_DIR/<month>/<run_id>/`, see `include.quality.data_docs_dir`):

- what the run created, changed, skipped, failed or excluded in Autotask (a dry run: what it would write),
  per customer by name, with units and unit costs before and after, the unit price loaded, the BSS and Autotask
  price and cost, and totals of units, billed, cost and margin per customer and overall, per currency (amounts in
  different currencies never add up; every figure from `include.money.line_money`, as on the review page); the
  run's lines per currency split into loads / waits for a person / blocked or excluded; the month's one-off
  charges (setup fees), shown, not posted yet;
- who approved and how (`month_approvals` when the approval gate recorded it, else `decided_by` on the plan
  rows, else "approval not recorded"); the loads of the run (`load_runs`: writes, requests, a budget pause);
  the read-back verification (`load_verifications`) with every difference; the data-quality result;
- what is left to do in Autotask before invoicing: approve and post the recurring contract services' billing
  items of the month, fix blocked lines by hand, decide open suggestions, mappings and flagged lines.

The plan rows are read as stored text (not through `PlanAction`), so a status or kind this module does not
know (a newer plan) is reported as it stands instead of failing the report. Monthly cost is the change of a
contract service's monthly cost at its full-month rate: (units after × unit cost after) − (units before ×
unit cost before); Autotask prorates mid-month changes itself when it bills.

HTML is rendered from `include/templates/` with an autoescaping Jinja2 environment (a customer named
`<script>` stays text) and is self-contained (inline CSS, no network). XLSX cells are typed (numbers, dates
with a date format); every text cell is stored as text, and text starting with `=`, `+`, `-` or `@` also
carries Excel's quote prefix, so no customer name ever becomes a formula.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from include.models import BillingMonth
from include.money import ADJUSTING_KINDS as MONEY_KINDS
from include.money import (
    BUCKETS,
    LineMoney,
    MoneyTotals,
    OneOffCharge,
    PriceBook,
    line_money,
    money_bucket,
    money_text,
    one_off_charges,
    one_off_totals,
    unit_amount_text,
    units_text,
)
from include.quality import data_docs_dir
from include.review_words import score_text
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
HTML_NAME = "report.html"
XLSX_NAME = "report.xlsx"

# Kinds that write to Autotask, by what they do there. A kind in neither set writes nothing (a line to
# review) or is unknown to this report; both are reported as they stand, never counted as written.
CREATE_KINDS = ("create_company", "create_service", "create_contract", "create_contract_service")
CHANGE_KINDS = ("extend_contract", "adjust_units", "change_cost", "change_price")
ADJUSTING_KINDS = ("adjust_units", "change_cost", "change_price")
KIND_LABELS = {
    "create_company": "Create company",
    "create_service": "Create service",
    "create_contract": "Create contract",
    "create_contract_service": "Add service to contract",
    "extend_contract": "Extend contract",
    "adjust_units": "Adjust units",
    "change_cost": "Change unit cost",
    "change_price": "Change unit price",
    "review_unbilled": "Review unbilled line",
}
# Kinds whose lines show a unit price and cost (include.money), and those that change units or money.
PRICED_KINDS = (*MONEY_KINDS, "create_contract_service")
# Statuses that wait for a person (or, blocked, for a fix by hand in Autotask).
OPEN_STATUSES = ("proposed", "flagged", "needs-mapping", "blocked")


class Outcome:
    """What happened to a plan row in this run, in the words of the report."""

    CREATED = "created"
    CHANGED = "changed"
    WOULD_WRITE = "would be written"
    ALREADY_APPLIED = "already applied"
    NOT_LOADED = "not loaded"
    WRITES_NOTHING = "writes nothing"
    FAILED = "failed"
    EXCLUDED = "excluded"
    NOT_APPROVED = "not approved"
    FLAGGED = "flagged"
    NEEDS_MAPPING = "needs mapping"
    BLOCKED = "blocked"
    UNKNOWN = "unknown status"


SKIPPED_OUTCOMES = (Outcome.ALREADY_APPLIED, Outcome.NOT_LOADED, Outcome.WRITES_NOTHING)
OPEN_OUTCOMES = (Outcome.NOT_APPROVED, Outcome.FLAGGED, Outcome.NEEDS_MAPPING, Outcome.BLOCKED, Outcome.UNKNOWN)
_OPEN_OUTCOME_OF_STATUS = {
    "proposed": Outcome.NOT_APPROVED,
    "flagged": Outcome.FLAGGED,
    "needs-mapping": Outcome.NEEDS_MAPPING,
    "blocked": Outcome.BLOCKED,
}
DECISION_LABELS = {
    "approved": "Approved: the proposed actions",
    "approved_with_flagged": "Approved: the proposed actions and the flagged ones",
    "approved_by_policy": "Approved by policy (auto_if_clean): clean quality gate, nothing flagged, under the limits",
    "rejected": "Rejected: nothing was loaded",
    "timed_out": "No answer in time: counts as rejected, nothing was loaded",
    "dry_run": "Dry run: nothing approved, nothing loaded",
}
NOT_RECORDED = "approval not recorded"
_CENT = Decimal("0.01")
_UNITS = Decimal("0.0001")


@dataclass(frozen=True)
class RunReport:
    html_path: Path
    xlsx_path: Path
    summary: dict[str, Any]


@dataclass
class Totals:
    """Units and monthly cost added and removed, in one currency."""

    currency: str
    units_added: Decimal = Decimal(0)
    units_removed: Decimal = Decimal(0)
    cost_added: Decimal = Decimal(0)
    cost_removed: Decimal = Decimal(0)
    billed_added: Decimal = Decimal(0)
    billed_removed: Decimal = Decimal(0)
    lines: int = 0

    @property
    def net_units(self) -> Decimal:
        return self.units_added - self.units_removed

    @property
    def net_cost(self) -> Decimal:
        return self.cost_added - self.cost_removed

    @property
    def net_billed(self) -> Decimal:
        return self.billed_added - self.billed_removed

    @property
    def net_margin(self) -> Decimal:
        return self.net_billed - self.net_cost

    def add(self, line: ReportLine) -> None:
        self.lines += 1
        self.units_added += line.units_added or 0
        self.units_removed += line.units_removed or 0
        self.cost_added += line.cost_added or 0
        self.cost_removed += line.cost_removed or 0
        self.billed_added += line.billed_added or 0
        self.billed_removed += line.billed_removed or 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "lines": self.lines,
            "units_added": float(self.units_added),
            "units_removed": float(self.units_removed),
            "monthly_cost_added": float(self.cost_added),
            "monthly_cost_removed": float(self.cost_removed),
            "monthly_billed_added": str(self.billed_added),
            "monthly_billed_removed": str(self.billed_removed),
            "monthly_margin": str(self.net_margin),
        }


@dataclass
class ReportLine:
    """One plan action as the report shows it: names, not only ids."""

    action_id: str
    kind: str
    status: str
    outcome: str
    reason: str
    customer: str
    account_id: str
    subscription: str
    billing_plan: str  # the BSS billing plan of the subscription (e.g. "Monthly billing")
    product: str
    sku: str
    contract: str
    contract_key: str  # groups the lines of one contract (an Autotask id or the creating action)
    effective_date: date | None
    units_before: Decimal | None
    units_after: Decimal | None
    unit_change: Decimal | None
    unit_cost_before: Decimal | None
    unit_cost_after: Decimal | None
    currency: str
    end_date_before: date | None
    end_date_after: date | None
    autotask_id: int | None
    decided_by: str
    counted: bool = False  # written by this run (or would be, in a dry run): in the totals
    units_added: Decimal | None = None
    units_removed: Decimal | None = None
    cost_added: Decimal | None = None
    cost_removed: Decimal | None = None
    billed_added: Decimal | None = None
    billed_removed: Decimal | None = None
    money: LineMoney | None = None  # include.money.line_money: prices, costs, billed / cost / margin change

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind.replace("_", " ").capitalize())

    @property
    def is_create(self) -> bool:
        return self.kind.startswith("create_")

    @property
    def cost_change(self) -> Decimal | None:
        if self.cost_added is None and self.cost_removed is None:
            return None
        return (self.cost_added or 0) - (self.cost_removed or 0)

    @property
    def billed_change(self) -> Decimal | None:
        if self.billed_added is None and self.billed_removed is None:
            return None
        return (self.billed_added or 0) - (self.billed_removed or 0)

    @property
    def margin_change(self) -> Decimal | None:
        billed, cost = self.billed_change, self.cost_change
        return None if billed is None or cost is None else billed - cost

    @property
    def unit_price(self) -> Decimal | None:
        return self.money.unit_price if self.money else None

    @property
    def below_cost(self) -> bool:
        return bool(self.money and self.money.below_cost)


@dataclass
class CustomerSection:
    name: str
    account_id: str
    lines: list[ReportLine] = field(default_factory=list)
    totals: dict[str, Totals] = field(default_factory=dict)


@dataclass
class Task:
    """One thing left to do in Autotask (or in the review) before invoicing."""

    todo: str
    customer: str = ""
    subscription: str = ""
    product: str = ""
    contract: str = ""
    effective_date: date | None = None
    status: str = ""
    detail: str = ""


@dataclass
class Approval:
    decision: str
    label: str
    decided_by: str
    decided_at: datetime | None
    note: str
    source: str  # month_approvals | plan rows | not recorded

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "decided_by": self.decided_by,
            "decided_at": _iso(self.decided_at),
            "source": self.source,
        }


@dataclass
class Content:
    """Everything the report shows, gathered once and rendered twice (HTML and XLSX)."""

    month: str
    run_id: str
    dry_run: bool
    generated_at: datetime
    lines: list[ReportLine]
    customers: list[CustomerSection]
    totals: dict[str, Totals]
    approval: Approval
    loads: list[dict[str, Any]]
    verification: list[dict[str, Any]]
    quality: list[dict[str, Any]]
    tasks: list[Task]
    open_suggestions: int
    writes_recorded: int  # ledger rows of this run: a dry run must have none
    would_write_basis: str = ""
    data_docs: str = ""
    # the run's lines per currency and bucket (loads / waits for a person / blocked or excluded)
    money: MoneyTotals = field(default_factory=MoneyTotals)
    # the month's OneTime BSS lines (setup fees): shown, not posted yet
    one_off: list[OneOffCharge] = field(default_factory=list)

    def count(self, *outcomes: str) -> int:
        return sum(1 for line in self.lines if line.outcome in outcomes)

    def lines_of(self, *outcomes: str) -> list[ReportLine]:
        return [line for line in self.lines if line.outcome in outcomes]

    @property
    def differences(self) -> list[dict[str, Any]]:
        return [check for check in self.verification if not check["matches"]]

    @property
    def headline(self) -> dict[str, int]:
        return {
            "created": self.count(Outcome.CREATED),
            "changed": self.count(Outcome.CHANGED),
            "would_write": self.count(Outcome.WOULD_WRITE),
            "skipped": self.count(*SKIPPED_OUTCOMES),
            "failed": self.count(Outcome.FAILED),
            "excluded": self.count(Outcome.EXCLUDED),
            "left_open": self.count(*OPEN_OUTCOMES),
        }

    @property
    def load_status(self) -> str:
        if self.dry_run:
            return "dry run: not loaded"
        return self.loads[-1]["status"] if self.loads else "not loaded"

    @property
    def verification_status(self) -> str:
        if not self.verification:
            return "not verified"
        return "differences found" if self.differences else "verified"

    def summary(self) -> dict[str, Any]:
        """What the DAG logs and keeps (XCom-safe, no payloads, no secrets)."""
        return {
            "month": self.month,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            **self.headline,
            "by_status": dict(sorted(Counter(line.status for line in self.lines).items())),
            "by_kind": dict(sorted(Counter(line.kind for line in self.lines).items())),
            "totals": [totals.as_dict() for totals in self.totals.values()],
            "approval": self.approval.as_dict(),
            "load_status": self.load_status,
            "writes": sum(int(load["writes"] or 0) for load in self.loads),
            "requests_used": sum(int(load["requests_used"] or 0) for load in self.loads),
            "writes_recorded": self.writes_recorded,
            "verification": {
                "status": self.verification_status,
                "checks": len(self.verification),
                "differences": len(self.differences),
            },
            "left_to_do": len(self.tasks),
            "open_suggestions": self.open_suggestions,
        }


def write_run_report(
    warehouse: Warehouse, month: str, run_id: str, directory: Path | None = None, *, dry_run: bool = False
) -> RunReport:
    """Write `report.html` and `report.xlsx` of one run into `directory` (default: the run's Data Docs
    directory) and return their paths with a summary."""
    month = BillingMonth.parse(month).key
    directory = Path(directory) if directory is not None else data_docs_dir(month, run_id)
    content = gather_report(warehouse, month, run_id, dry_run=dry_run)
    if (directory / "index.html").exists():
        content.data_docs = "index.html"
    directory.mkdir(parents=True, exist_ok=True)
    html_path = directory / HTML_NAME
    xlsx_path = directory / XLSX_NAME
    _write_atomically(html_path, lambda path: path.write_text(render_html(content), encoding="utf-8"))
    _write_atomically(xlsx_path, lambda path: render_xlsx(content).save(path))
    summary = content.summary() | {"html_path": str(html_path), "xlsx_path": str(xlsx_path)}
    log.info(
        "run report of %s (%s)%s: %s and %s — %s",
        month,
        run_id,
        " [dry run]" if dry_run else "",
        html_path,
        xlsx_path,
        {key: summary[key] for key in ("created", "changed", "would_write", "skipped", "failed", "left_open")},
    )
    return RunReport(html_path=html_path, xlsx_path=xlsx_path, summary=summary)


# -- gathering ----------------------------------------------------------------------------------------------


def gather_report(warehouse: Warehouse, month: str, run_id: str, *, dry_run: bool = False) -> Content:
    month = BillingMonth.parse(month).key
    plan_rows = warehouse.query(
        "SELECT * FROM plan_actions WHERE month = :month ORDER BY run_id, seq", {"month": month}
    )
    ledger = {
        row["action_id"]: row
        for row in warehouse.query(
            "SELECT action_id, run_id, state, autotask_id, error, attempts, response_summary FROM load_ledger "
            "WHERE month = :month",
            {"month": month},
        )
    }
    loads = warehouse.query(
        "SELECT load_id, status, started_at, finished_at, writes, requests_used, resume_at, message "
        "FROM load_runs WHERE month = :month AND run_id = :run_id ORDER BY started_at",
        {"month": month, "run_id": run_id},
    )
    for load in loads:  # SQLite gives timestamps of a text query back as text
        for key in ("started_at", "finished_at", "resume_at"):
            load[key] = _timestamp(load[key])
    names = _Names(warehouse, month, run_id, plan_rows)
    book = PriceBook(warehouse, month, run_id, plan_rows)
    approval = _approval(warehouse, month, run_id, plan_rows)
    writes_recorded = sum(1 for row in ledger.values() if row["run_id"] == run_id)

    # A dry run lists what a load would send: the approved rows not yet applied, and, when the run's own rows
    # were not approved (the dry run's approval approves nothing), its proposed rows as approving them would.
    would_write_basis = ""
    if dry_run:
        run_approved = any(row["status"] == "approved" and row["run_id"] == run_id for row in plan_rows)
        proposed = any(row["status"] == "proposed" and _writes(row["kind"]) for row in plan_rows)
        would_write_basis = "proposed" if proposed and not run_approved else "approved"
    lines = []
    money = MoneyTotals()
    for row in plan_rows:
        outcome, reason = _outcome(row, ledger.get(row["action_id"]), run_id, loads, approval, would_write_basis)
        line = names.line(row, outcome, reason, ledger.get(row["action_id"]))
        if row["kind"] in PRICED_KINDS:  # the lines with a price: what changes units or money, and a new service
            line.money = line_money(row, book)
            if row["run_id"] == run_id and row["kind"] in MONEY_KINDS:
                money.add(line.money, money_bucket(row["status"]))
        lines.append(line)
    for line in lines:
        line.counted = line.outcome in (Outcome.CREATED, Outcome.CHANGED, Outcome.WOULD_WRITE)
        if line.counted:
            _count_change(line)
    lines.sort(
        key=lambda line: (
            line.customer.casefold(),
            line.account_id,
            _kind_rank(line.kind),
            line.contract,
            line.effective_date or date.min,
            line.action_id,
        )
    )

    customers: dict[tuple[str, str], CustomerSection] = {}
    totals: dict[str, Totals] = {}
    for line in lines:
        if line.outcome in OPEN_OUTCOMES:
            continue
        section = customers.setdefault(
            (line.customer, line.account_id), CustomerSection(line.customer, line.account_id)
        )
        section.lines.append(line)
        if line.counted and line.kind in MONEY_KINDS:
            section.totals.setdefault(line.currency, Totals(line.currency)).add(line)
            totals.setdefault(line.currency, Totals(line.currency)).add(line)

    verification = _verification(warehouse, month, run_id, names)
    quality = warehouse.query(
        "SELECT suite, stage, success, row_count, critical_failures, warning_failures, failures, validated_at "
        "FROM quality_results WHERE run_id = :run_id ORDER BY validated_at, suite",
        {"run_id": run_id},
    )
    for result in quality:
        result["success"] = bool(result["success"])
        result["failed_expectations"] = _failure_names(result.pop("failures"))
    suggestions = _open_suggestions(warehouse, month)
    content = Content(
        month=month,
        run_id=run_id,
        dry_run=dry_run,
        generated_at=utcnow(),
        lines=lines,
        customers=sorted(customers.values(), key=lambda section: (section.name.casefold(), section.account_id)),
        totals=dict(sorted(totals.items())),
        approval=approval,
        loads=loads,
        verification=verification,
        quality=quality,
        tasks=[],
        open_suggestions=len(suggestions),
        writes_recorded=writes_recorded,
        would_write_basis=would_write_basis,
        money=money,
        one_off=one_off_charges(warehouse, month),
    )
    content.tasks = _tasks(content, suggestions)
    return content


def _writes(kind: str) -> bool:
    return kind in CREATE_KINDS or kind in CHANGE_KINDS


def _kind_rank(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


# A customer's lines read in apply order: what is created first, then what changes.
_KIND_ORDER = (
    "create_company",
    "create_service",
    "create_contract",
    "extend_contract",
    "create_contract_service",
    "adjust_units",
    "change_cost",
    "change_price",
)


def _outcome(
    row: Mapping[str, Any],
    ledger: Mapping[str, Any] | None,
    run_id: str,
    loads: Sequence[Mapping[str, Any]],
    approval: Approval,
    would_write_basis: str,
) -> tuple[str, str]:
    """The row's outcome in this run and why, in words."""
    status, kind, reason = row["status"], row["kind"], row["reason"] or ""
    if status == "applied":
        applied_by = ledger["run_id"] if ledger is not None else row["run_id"]
        if applied_by != run_id:
            return Outcome.ALREADY_APPLIED, f"applied by run {applied_by}: nothing sent again"
        if ledger is not None and not ledger["attempts"] and ledger["response_summary"]:
            # Autotask already held it (a record found by its key, an answer lost before a crash): not sent
            reason = "; ".join(text for text in (reason, f"found in Autotask: {ledger['response_summary']}") if text)
        return (Outcome.CREATED if kind.startswith("create_") else Outcome.CHANGED), reason
    if status == "failed":
        return Outcome.FAILED, row["error"] or (ledger or {}).get("error") or reason or "failed"
    if status == "excluded":
        return Outcome.EXCLUDED, reason or (f"excluded by {row['decided_by']}" if row["decided_by"] else "excluded")
    if status == "approved":
        if not _writes(kind):
            return Outcome.WRITES_NOTHING, reason or "approved; this kind writes nothing to Autotask"
        if would_write_basis:
            return Outcome.WOULD_WRITE, "approved; a load would write it"
        return Outcome.NOT_LOADED, _not_loaded_reason(ledger, loads, approval)
    if status == "proposed" and would_write_basis == "proposed" and _writes(kind) and row["run_id"] == run_id:
        return Outcome.WOULD_WRITE, "proposed; a load would write it once approved"
    if status in _OPEN_OUTCOME_OF_STATUS:
        if status == "proposed" and not reason:
            reason = "waits for approval" if approval.source == "not recorded" else approval.label
        return _OPEN_OUTCOME_OF_STATUS[status], reason
    return Outcome.UNKNOWN, f"status {status!r} is unknown to the report" + (f": {reason}" if reason else "")


def _not_loaded_reason(ledger: Mapping[str, Any] | None, loads: Sequence[Mapping[str, Any]], approval: Approval) -> str:
    if ledger is not None and ledger["state"] != "confirmed":
        return f"its write is {ledger['state']}: the next load asks Autotask first, then sends what is missing"
    if loads:
        last = loads[-1]
        if last["status"] == "paused":
            until = f" until {_when_text(last['resume_at'])}" if last["resume_at"] else ""
            return f"the load paused{until}: {last['message'] or 'the hourly request budget ran low'}"
        return f"not written by the last load ({last['status']}): it waits for what it depends on"
    if approval.decision in ("rejected", "timed_out"):
        return approval.label
    return "approved, not loaded yet"


def _count_change(line: ReportLine) -> None:
    """Units and monthly cost this line adds or removes (adjustments only: creates carry no units)."""
    if line.kind not in MONEY_KINDS:
        return
    after = line.units_after
    before = line.units_before
    if before is None and after is not None and line.unit_change is not None:
        before = after - line.unit_change
    change = line.unit_change if line.unit_change is not None else _minus(after, before)
    if change is not None:
        line.units_added = max(change, Decimal(0))
        line.units_removed = max(-change, Decimal(0))
    if line.money is not None:  # the figures every page shows (include.money.line_money)
        line.cost_added = max(line.money.cost_change, Decimal(0))
        line.cost_removed = max(-line.money.cost_change, Decimal(0))
        line.billed_added = max(line.money.billed_change, Decimal(0))
        line.billed_removed = max(-line.money.billed_change, Decimal(0))
        return
    cost_after = line.unit_cost_after
    cost_before = line.unit_cost_before if line.unit_cost_before is not None else cost_after
    if None in (after, before, cost_after, cost_before):
        return
    delta = (after * cost_after - before * cost_before).quantize(_CENT, rounding=ROUND_HALF_UP)
    line.cost_added = max(delta, Decimal(0))
    line.cost_removed = max(-delta, Decimal(0))


def _minus(first: Decimal | None, second: Decimal | None) -> Decimal | None:
    return None if first is None or second is None else first - second


class _Names:
    """Names for the ids on plan rows: customers, subscriptions, products and SKUs, contracts, services.

    BSS names come from the month's charge lines and accounts; Autotask names from the month's snapshots
    (the run's own snapshot wins); records not yet in Autotask from the plan rows that create them."""

    def __init__(
        self,
        warehouse: Warehouse,
        month: str,
        run_id: str,
        plan_rows: Sequence[Mapping[str, Any]],
        accounts: Collection[str] | None = None,
    ) -> None:
        """`accounts`: only these customers' lines are named (a review decision's re-planned lines): the month's
        charge lines of those accounts and the snapshot's contracts the rows name are read, not the whole month."""
        self.accounts: dict[str, str] = {}
        self.account_currency: dict[str, str] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.products: dict[str, tuple[str, str]] = {}
        only_accounts, only_contracts, scope_params = "", "", {}
        if accounts is not None:
            from include.plan import sql_in

            condition, account_params = sql_in("account_id", accounts, "acc")
            contract_ids = {int(row["contract_id"]) for row in plan_rows if row["contract_id"] is not None}
            contracts, contract_params = sql_in("t.contract_id", contract_ids, "con")
            only_accounts, only_contracts = f" AND {condition}", f" AND {contracts}"
            scope_params = {**account_params, **contract_params}
        for row in warehouse.query(
            f"SELECT account_id, name FROM bss_accounts WHERE 1 = 1{only_accounts}", scope_params
        ):
            self.accounts[row["account_id"]] = row["name"]
        lines = warehouse.query(
            "SELECT account_id, account_name, subscription_id, product_id, product_name, product_sku, unit_cost, "
            f"currency, billing_plan_name, effective_date FROM charge_lines WHERE month = :month{only_accounts} "
            "ORDER BY effective_date, charge_id",
            {"month": month, **scope_params},
        )
        for line in lines:
            self.accounts[line["account_id"]] = line["account_name"]
            self.account_currency.setdefault(line["account_id"], line["currency"])
            self.products[line["product_id"]] = (line["product_name"], line["product_sku"] or "")
            known = self.subscriptions.setdefault(
                line["subscription_id"],
                {"account_id": line["account_id"], "product_id": line["product_id"], "costs": []},
            )
            known["currency"] = line["currency"]
            known["billing_plan"] = line["billing_plan_name"] or known.get("billing_plan") or ""
            known["costs"].append((_day(line["effective_date"]), _decimal(line["unit_cost"])))

        def snapshot(table: str, key: str, columns: str, only: str = "") -> dict[int, dict[str, Any]]:
            rows = warehouse.query(
                f"SELECT t.run_id, t.{key}, {columns}, s.taken_at FROM {table} t "  # table and columns: fixed names
                f"JOIN at_snapshots s ON s.run_id = t.run_id WHERE s.month = :month{only}",
                {"month": month, **scope_params},
            )
            rows.sort(key=lambda row: (row["run_id"] == run_id, row["taken_at"]))
            return {int(row[key]): row for row in rows}

        self.contracts = snapshot(
            "at_contracts", "contract_id", "t.contract_name, t.contract_number, t.company_id", only_contracts
        )
        only_companies = ""
        if accounts is not None:  # the companies the rows and their contracts name
            named = {int(row["company_id"]) for row in plan_rows if row["company_id"] is not None}
            named |= {int(row["company_id"]) for row in self.contracts.values() if row["company_id"] is not None}
            companies, company_params = sql_in("t.company_id", named, "co")
            only_companies = f" AND {companies}"
            scope_params = {**scope_params, **company_params}
        self.companies = snapshot("at_companies", "company_id", "t.company_name, t.currency", only_companies)
        self.services = snapshot("at_services", "service_id", "t.service_name, t.sku, t.unit_cost")
        self.contract_services = snapshot(
            "at_contract_services", "contract_service_id", "t.contract_id, t.service_id, t.unit_cost", only_contracts
        )
        self.cost_of_pair = {
            (int(row["contract_id"]), int(row["service_id"])): row["unit_cost"]
            for row in self.contract_services.values()
        }
        self.plan = {row["action_id"]: row for row in plan_rows}
        self.payloads = {row["action_id"]: _json_object(row["payload"]) for row in plan_rows}

    def line(self, row: Mapping[str, Any], outcome: str, reason: str, ledger: Mapping[str, Any] | None) -> ReportLine:
        payload = self.payloads[row["action_id"]]
        subscriptions = _json_list(row["subscription_ids"])
        account_id = row["account_id"] or next(
            (self.subscriptions[sub]["account_id"] for sub in subscriptions if sub in self.subscriptions), ""
        )
        contract_id = _int(row["contract_id"])
        service_id = _int(row["service_id"])
        unit_cost_before = _decimal(row["unit_cost_before"])
        unit_cost_after = _decimal(row["unit_cost_after"])
        if unit_cost_after is None and row["kind"] in ADJUSTING_KINDS:
            unit_cost_after = self._unit_cost(row, subscriptions, contract_id, service_id)
            unit_cost_before = unit_cost_before if unit_cost_before is not None else unit_cost_after
        elif unit_cost_after is None and row["kind"] == "create_contract_service":
            unit_cost_after = _decimal(payload.get("unitCost"))
        autotask_id = _int(row["applied_entity_id"])
        if autotask_id is None and ledger is not None:
            autotask_id = _int(ledger["autotask_id"])
        return ReportLine(
            action_id=row["action_id"],
            kind=row["kind"],
            status=row["status"],
            outcome=outcome,
            reason=reason,
            customer=self._customer(row, account_id, contract_id, payload),
            account_id=account_id or "",
            subscription=", ".join(subscriptions),
            billing_plan=", ".join(
                dict.fromkeys(
                    self.subscriptions[sub]["billing_plan"]
                    for sub in subscriptions
                    if self.subscriptions.get(sub, {}).get("billing_plan")
                )
            ),
            product=self._product(row, service_id, payload),
            sku=self._sku(row, service_id, payload),
            contract=self._contract(row, contract_id, payload),
            # the lines of a new contract share the id of the action creating it
            contract_key=str(
                contract_id
                or (row["action_id"] if row["kind"] == "create_contract" else row["contract_action_id"])
                or ""
            ),
            effective_date=_day(row["effective_date"]),
            units_before=_decimal(row["units_before"]),
            units_after=_decimal(row["units_after"]),
            unit_change=_decimal(row["unit_change"]),
            unit_cost_before=unit_cost_before,
            unit_cost_after=unit_cost_after,
            currency=self._currency(account_id, subscriptions, row),
            end_date_before=_day(row["end_date_before"]),
            end_date_after=_day(row["end_date_after"]),
            autotask_id=autotask_id,
            decided_by=row["decided_by"] or "",
        )

    def customer_of_subscriptions(self, subscriptions: Iterable[str]) -> tuple[str, str]:
        for sub in subscriptions:
            known = self.subscriptions.get(sub)
            if known:
                return self.accounts.get(known["account_id"], known["account_id"]), known["account_id"]
        return "", ""

    def product_of_subscriptions(self, subscriptions: Iterable[str]) -> str:
        for sub in subscriptions:
            known = self.subscriptions.get(sub)
            if known and known["product_id"] in self.products:
                return self.products[known["product_id"]][0]
        return ""

    def contract_name(self, contract_id: int | None) -> str:
        record = self.contracts.get(contract_id) if contract_id is not None else None
        if record is None:
            return "" if contract_id is None else f"contract {contract_id}"
        return _with_key(record["contract_name"], record["contract_number"])

    def service_name(self, service_id: int | None) -> str:
        record = self.services.get(service_id) if service_id is not None else None
        if record is None:
            return "" if service_id is None else f"service {service_id}"
        return record["service_name"]

    def _customer(self, row: Mapping[str, Any], account_id: str, contract_id: int | None, payload: dict) -> str:
        if account_id and account_id in self.accounts:
            return self.accounts[account_id]
        if row["kind"] == "create_company" and payload.get("companyName"):
            return str(payload["companyName"])
        company_id = _int(row["company_id"])
        if company_id is None and contract_id in self.contracts:
            company_id = _int(self.contracts[contract_id]["company_id"])
        if company_id in self.companies:
            return self.companies[company_id]["company_name"]
        creating = self.payloads.get(row["company_action_id"] or "", {})
        if creating.get("companyName"):
            return str(creating["companyName"])
        if row["kind"] == "create_service":
            return "Service catalogue (all customers)"
        return account_id or (f"company {company_id}" if company_id is not None else "customer unknown")

    def _product(self, row: Mapping[str, Any], service_id: int | None, payload: dict) -> str:
        if row["product_id"] and row["product_id"] in self.products:
            return self.products[row["product_id"]][0]
        if row["kind"] == "create_service" and payload.get("name"):
            return str(payload["name"])
        if service_id in self.services:
            return self.services[service_id]["service_name"]
        creating = self.payloads.get(row["service_action_id"] or "", {})
        return str(creating.get("name") or row["product_id"] or (f"service {service_id}" if service_id else ""))

    def _sku(self, row: Mapping[str, Any], service_id: int | None, payload: dict) -> str:
        if row["product_id"] and row["product_id"] in self.products and self.products[row["product_id"]][1]:
            return self.products[row["product_id"]][1]
        if row["kind"] == "create_service" and payload.get("sku"):
            return str(payload["sku"])
        if service_id in self.services and self.services[service_id]["sku"]:
            return self.services[service_id]["sku"]
        return str(self.payloads.get(row["service_action_id"] or "", {}).get("sku") or "")

    def _contract(self, row: Mapping[str, Any], contract_id: int | None, payload: dict) -> str:
        if row["kind"] == "create_contract":
            return _with_key(payload.get("contractName") or "", payload.get("contractNumber")) + " (new)"
        if contract_id is not None:
            return self.contract_name(contract_id)
        creating = self.payloads.get(row["contract_action_id"] or "", {})
        if creating:
            return _with_key(creating.get("contractName") or "", creating.get("contractNumber")) + " (new)"
        return ""

    def _unit_cost(
        self, row: Mapping[str, Any], subscriptions: Sequence[str], contract_id: int | None, service_id: int | None
    ) -> Decimal | None:
        """The unit cost an adjustment is priced at: the contract service's, else the one the plan gives a new
        contract service, else the BSS line's of that date."""
        cs_id = _int(row["contract_service_id"])
        if cs_id in self.contract_services and self.contract_services[cs_id]["unit_cost"] is not None:
            return _decimal(self.contract_services[cs_id]["unit_cost"])
        if contract_id is not None and service_id is not None and (contract_id, service_id) in self.cost_of_pair:
            cost = self.cost_of_pair[(contract_id, service_id)]
            if cost is not None:
                return _decimal(cost)
        creating = self.payloads.get(row["contract_service_action_id"] or "", {})
        if creating.get("unitCost") is not None:
            return _decimal(creating["unitCost"])
        day = _day(row["effective_date"]) or date.max
        for sub in subscriptions:
            costs = [cost for when, cost in self.subscriptions.get(sub, {}).get("costs", []) if when and when <= day]
            if costs:
                return costs[-1]
        return None

    def _currency(self, account_id: str, subscriptions: Sequence[str], row: Mapping[str, Any]) -> str:
        for sub in subscriptions:
            if self.subscriptions.get(sub, {}).get("currency"):
                return self.subscriptions[sub]["currency"]
        if account_id in self.account_currency:
            return self.account_currency[account_id]
        company_id = _int(row["company_id"])
        if company_id in self.companies and self.companies[company_id]["currency"]:
            return self.companies[company_id]["currency"]
        return ""


def _approval(warehouse: Warehouse, month: str, run_id: str, plan_rows: Sequence[Mapping[str, Any]]) -> Approval:
    """The run's approval: the approval gate's record, else who decided the plan rows, else not recorded."""
    if sa.inspect(warehouse.engine).has_table("month_approvals"):
        rows = warehouse.query("SELECT * FROM month_approvals WHERE run_id = :run_id", {"run_id": run_id})
        rows = [row for row in rows if row.get("month") in (None, month)]
        if rows:
            row = max(rows, key=lambda item: _sortable(item.get("decided_at")))
            decision = str(row.get("decision") or "")
            options = _json_list(row.get("options")) if str(row.get("options") or "").startswith("[") else []
            note = "; ".join(
                text
                for text in (
                    str(row.get("note") or ""),
                    f"options chosen: {', '.join(options)}" if options else "",
                    f"{row['approved_actions']} actions approved" if row.get("approved_actions") else "",
                )
                if text
            )
            return Approval(
                decision=decision,
                label=DECISION_LABELS.get(decision, decision or NOT_RECORDED),
                decided_by=str(row.get("decided_by") or ""),
                decided_at=_timestamp(row.get("decided_at")),
                note=note,
                source="month_approvals",
            )
    decided = [row for row in plan_rows if row["decided_by"] and row["status"] in ("approved", "applied", "failed")]
    own = [row for row in decided if row["run_id"] == run_id]  # an earlier run's approval is not this run's
    if own:
        people = sorted({row["decided_by"] for row in own})
        latest = max((_timestamp(row["decided_at"]) for row in own), key=_sortable)
        return Approval(
            decision="approved",
            label=f"Approved ({len(own)} actions, from the plan rows)",
            decided_by=", ".join(people),
            decided_at=latest,
            note="",
            source="plan rows",
        )
    return Approval(decision="", label=NOT_RECORDED, decided_by="", decided_at=None, note="", source="not recorded")


def _verification(warehouse: Warehouse, month: str, run_id: str, names: _Names) -> list[dict[str, Any]]:
    rows = warehouse.query(
        "SELECT contract_id, service_id, check_date, check_kind, subscription_ids, expected_units, found_units, "
        "matches FROM load_verifications WHERE run_id = :run_id AND month = :month "
        "ORDER BY matches, contract_id, service_id, check_date, check_kind",
        {"run_id": run_id, "month": month},
    )
    checks = []
    for row in rows:
        subscriptions = _json_list(row["subscription_ids"])
        customer, account_id = names.customer_of_subscriptions(subscriptions)
        contract_id, service_id = _int(row["contract_id"]), _int(row["service_id"])
        if not customer and contract_id in names.contracts:
            company = names.companies.get(_int(names.contracts[contract_id]["company_id"]))
            customer = company["company_name"] if company else ""
        checks.append(
            {
                "customer": customer or "customer unknown",
                "account_id": account_id,
                "subscription": ", ".join(subscriptions),
                "contract": names.contract_name(contract_id),
                "service": names.service_name(service_id) or names.product_of_subscriptions(subscriptions),
                "check_date": _day(row["check_date"]),
                "check_kind": str(row["check_kind"]).replace("_", " "),
                "expected": _decimal(row["expected_units"]),
                "found": _decimal(row["found_units"]),
                "matches": bool(row["matches"]),
            }
        )
    return checks


def _open_suggestions(warehouse: Warehouse, month: str) -> list[dict[str, Any]]:
    return warehouse.query(
        "SELECT kind, source_key, source_name, target_id, target_name, score, reason FROM mapping_suggestions "
        "WHERE status = 'open' AND month = :month ORDER BY kind, source_key, score DESC",
        {"month": month},
    )


def _tasks(content: Content, suggestions: Sequence[Mapping[str, Any]]) -> list[Task]:
    """What is left to do before invoicing, in the order a person does it."""
    tasks: list[Task] = []
    month = content.month
    prefix = "After the load: " if content.dry_run else ""
    contracts: dict[str, ReportLine] = {}
    for line in content.lines:
        if line.counted and (line.kind in CHANGE_KINDS or line.kind == "create_contract"):
            contracts.setdefault(line.contract_key or line.contract, line)
    for line in sorted(contracts.values(), key=lambda item: (item.customer.casefold(), item.contract)):
        tasks.append(
            Task(
                todo=f"{prefix}Approve and post the recurring contract services' billing items for {month}",
                customer=line.customer,
                subscription=line.subscription,
                contract=line.contract,
                detail="Autotask: Contracts > Approve and Post > Recurring Contract Services",
            )
        )
    todo_of = {
        Outcome.BLOCKED: "Fix by hand in Autotask (the sync never writes this line)",
        Outcome.NEEDS_MAPPING: "Link the customer, subscription or product (or approve creating it)",
        Outcome.FLAGGED: "Review the flagged line: approve it with the flagged ones, or exclude it",
        Outcome.FAILED: "Fix the cause of the failed write, then load again",
        Outcome.NOT_LOADED: "Load again: the sync resumes where it stopped",
        Outcome.NOT_APPROVED: "Not approved: approve in a new run, or leave it out",
        Outcome.UNKNOWN: "Check this line: its status is unknown to the report",
    }
    for outcome, todo in todo_of.items():
        for line in content.lines_of(outcome):
            by_hand = outcome in OPEN_OUTCOMES and not _writes(line.kind) and line.kind in KIND_LABELS
            tasks.append(
                Task(
                    # a line the sync never writes (e.g. review_unbilled) is a person's check, not an approval
                    todo="Check by hand in Autotask (the sync writes nothing for this line)" if by_hand else todo,
                    customer=line.customer,
                    subscription=line.subscription,
                    product=_with_key(line.product, line.sku),
                    contract=line.contract,
                    effective_date=line.effective_date,
                    status=line.status,
                    detail=f"{line.kind_label}: {line.reason}" if line.reason else line.kind_label,
                )
            )
    for suggestion in suggestions:
        tasks.append(
            Task(
                todo=f"Decide the open suggestion ({suggestion['kind']})",
                customer=str(suggestion["source_name"] or suggestion["source_key"]),
                status="open",
                detail=(
                    f"{suggestion['source_name'] or suggestion['source_key']} → "
                    f"{suggestion['target_name'] or suggestion['target_id']} (score {score_text(suggestion['score'])})"
                    + (f": {suggestion['reason']}" if suggestion.get("reason") else "")
                ),
            )
        )
    for check in content.differences:
        tasks.append(
            Task(
                todo="Check the units in Autotask: they differ from the plan",
                customer=check["customer"],
                subscription=check["subscription"],
                product=check["service"],
                contract=check["contract"],
                effective_date=check["check_date"],
                status="difference",
                detail=f"expected {_units_text(check['expected'])}, Autotask holds "
                + ("no units row" if check["found"] is None else _units_text(check["found"])),
            )
        )
    return tasks


# -- HTML -------------------------------------------------------------------------------------------------


def render_html(content: Content) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every value is text: a customer named <script> is shown, never run
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        units=_units_text,
        signed=_signed_text,
        money=_money_text,
        signed_money=_signed_money_text,
        unit_cost=_unit_cost_text,
        day=_day_text,
        when=_when_text,
    )
    template = environment.get_template("run_report.html.j2")
    return template.render(
        report=content,
        outcome=Outcome,
        headline=content.headline,
        skipped=content.lines_of(*SKIPPED_OUTCOMES),
        failed=content.lines_of(Outcome.FAILED),
        excluded=content.lines_of(Outcome.EXCLUDED),
        would_write=content.lines_of(Outcome.WOULD_WRITE),
        left_open=content.lines_of(*OPEN_OUTCOMES),
        task_groups=_grouped(content.tasks),
        buckets=BUCKETS,
        one_off_totals=one_off_totals(content.one_off),
    )


def _grouped(tasks: Sequence[Task]) -> list[tuple[str, list[Task]]]:
    """Tasks under their to-do, in the order the to-dos first appear."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.todo, []).append(task)
    return list(groups.items())


def _units_text(value: Decimal | None) -> str:
    """Units with thousands separators, whole units without ".0", never "−0" (`include.money.units_text`)."""
    if value is None:
        return ""
    return units_text(value.quantize(_UNITS))


def _signed_text(value: Decimal | None) -> str:
    if value is None:
        return ""
    return units_text(value.quantize(_UNITS), signed=True)


def _money_text(value: Decimal | None, currency: str = "") -> str:
    """Money to 2 decimals with thousands separators, never "−0.00" (`include.money.money_text`)."""
    if value is None:
        return ""
    return f"{money_text(value)} {currency}".strip()


def _signed_money_text(value: Decimal | None, currency: str = "") -> str:
    if value is None:
        return ""
    return f"{money_text(value, signed=True)} {currency}".strip()


def _unit_cost_text(value: Decimal | None, currency: str = "") -> str:
    """A unit cost or price as the BSS gives it (up to 4 places, at least 2): 9.1333 stays 9.1333, 5 reads 5.00."""
    if value is None:
        return ""
    return f"{unit_amount_text(value)} {currency}".strip()


def _day_text(value: date | None) -> str:
    return value.isoformat() if value else ""


def _when_text(value: Any) -> str:
    stamp = _naive_utc(_timestamp(value))
    return f"{stamp:%Y-%m-%d %H:%M} UTC" if stamp else ""


# -- XLSX -------------------------------------------------------------------------------------------------

_DATE_FORMAT = "yyyy-mm-dd"
_TIME_FORMAT = "yyyy-mm-dd hh:mm"
_UNITS_FORMAT = "#,##0.####"
_MONEY_FORMAT = "#,##0.00"
_UNIT_COST_FORMAT = "#,##0.00##"
# Text Excel would read as a formula (OWASP CSV injection: also tab and carriage return).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

_LINE_COLUMNS: tuple[tuple[str, Callable[[ReportLine], Any], str | None], ...] = (
    ("Customer", lambda line: line.customer, None),
    ("Account ID", lambda line: line.account_id, None),
    ("Outcome", lambda line: line.outcome, None),
    ("Action", lambda line: line.kind_label, None),
    ("Subscription", lambda line: line.subscription, None),
    ("Billing plan", lambda line: line.billing_plan, None),
    ("Product", lambda line: line.product, None),
    ("SKU", lambda line: line.sku, None),
    ("Contract", lambda line: line.contract, None),
    ("Effective date", lambda line: line.effective_date, _DATE_FORMAT),
    ("Units before", lambda line: line.units_before, _UNITS_FORMAT),
    ("Units after", lambda line: line.units_after, _UNITS_FORMAT),
    ("Unit change", lambda line: line.unit_change, _UNITS_FORMAT),
    ("Unit cost before", lambda line: line.unit_cost_before, _UNIT_COST_FORMAT),
    ("Unit cost after", lambda line: line.unit_cost_after, _UNIT_COST_FORMAT),
    ("Unit price", lambda line: line.unit_price, _UNIT_COST_FORMAT),
    ("BSS unit price", lambda line: line.money.bss_unit_price if line.money else None, _UNIT_COST_FORMAT),
    ("BSS unit cost", lambda line: line.money.bss_unit_cost if line.money else None, _UNIT_COST_FORMAT),
    ("Autotask unit price", lambda line: line.money.autotask_unit_price if line.money else None, _UNIT_COST_FORMAT),
    ("Autotask unit cost", lambda line: line.money.autotask_unit_cost if line.money else None, _UNIT_COST_FORMAT),
    ("Currency", lambda line: line.currency, None),
    ("Units added", lambda line: line.units_added, _UNITS_FORMAT),
    ("Units removed", lambda line: line.units_removed, _UNITS_FORMAT),
    ("Monthly cost added", lambda line: line.cost_added, _MONEY_FORMAT),
    ("Monthly cost removed", lambda line: line.cost_removed, _MONEY_FORMAT),
    ("Monthly billed added", lambda line: line.billed_added, _MONEY_FORMAT),
    ("Monthly billed removed", lambda line: line.billed_removed, _MONEY_FORMAT),
    ("Monthly margin change", lambda line: line.margin_change if line.counted else None, _MONEY_FORMAT),
    ("End date before", lambda line: line.end_date_before, _DATE_FORMAT),
    ("End date after", lambda line: line.end_date_after, _DATE_FORMAT),
    ("Status", lambda line: line.status, None),
    ("Reason", lambda line: line.reason, None),
    ("Decided by", lambda line: line.decided_by, None),
    ("Autotask ID", lambda line: line.autotask_id, "0"),
    ("Plan action", lambda line: line.action_id, None),
)
SUMMED_COLUMNS = (
    "Units added",
    "Units removed",
    "Monthly cost added",
    "Monthly cost removed",
    "Monthly billed added",
    "Monthly billed removed",
    "Monthly margin change",
)
# columns in the line's currency: their cells get a number format naming it (`_currency_format`)
_CURRENCY_COLUMNS = {
    "Unit cost before": _UNIT_COST_FORMAT,
    "Unit cost after": _UNIT_COST_FORMAT,
    "Unit price": _UNIT_COST_FORMAT,
    "BSS unit price": _UNIT_COST_FORMAT,
    "BSS unit cost": _UNIT_COST_FORMAT,
    "Autotask unit price": _UNIT_COST_FORMAT,
    "Autotask unit cost": _UNIT_COST_FORMAT,
    "Monthly cost added": _MONEY_FORMAT,
    "Monthly cost removed": _MONEY_FORMAT,
    "Monthly billed added": _MONEY_FORMAT,
    "Monthly billed removed": _MONEY_FORMAT,
    "Monthly margin change": _MONEY_FORMAT,
}


def _currency_format(pattern: str, currency: str) -> str:
    """A number format in a currency (`#,##0.00 "EUR"`); negative with a minus, zero without a sign."""
    label = "".join(char for char in currency if char.isalnum())
    suffix = f' "{label}"' if label else ""
    return f"{pattern}{suffix};-{pattern}{suffix};{pattern}{suffix}"


def render_xlsx(content: Content) -> Any:
    from openpyxl import Workbook

    workbook = Workbook()
    workbook.remove(workbook.active)
    _summary_sheet(workbook, content)
    shown = [line for line in content.lines if line.outcome not in OPEN_OUTCOMES]
    _lines_sheet(workbook, "Changes", [line for line in shown if not line.is_create])
    _lines_sheet(workbook, "Creates", [line for line in shown if line.is_create])
    _sheet(
        workbook,
        "Left to do",
        [
            ("To do", None),
            ("Customer", None),
            ("Subscription", None),
            ("Product / SKU", None),
            ("Contract", None),
            ("Effective date", _DATE_FORMAT),
            ("Status", None),
            ("Detail", None),
        ],
        [
            [
                task.todo,
                task.customer,
                task.subscription,
                task.product,
                task.contract,
                task.effective_date,
                task.status,
                task.detail,
            ]
            for task in content.tasks
        ],
        totals=[["Total", len(content.tasks)]],
    )
    _sheet(
        workbook,
        "One-off charges",
        [
            ("Customer", None),
            ("Account ID", None),
            ("Subscription", None),
            ("Product", None),
            ("SKU", None),
            ("Date", _DATE_FORMAT),
            ("Quantity", _UNITS_FORMAT),
            ("Unit price", _UNIT_COST_FORMAT),
            ("Amount", _MONEY_FORMAT),
            ("Currency", None),
            ("State", None),
            ("Charge id", None),
        ],
        [
            [
                charge.customer,
                charge.account_id,
                charge.subscription_id,
                charge.product,
                charge.sku,
                charge.effective_date,
                charge.quantity,
                charge.unit_price,
                charge.amount,
                charge.currency,
                charge.state,
                charge.charge_id,
            ]
            for charge in content.one_off
        ],
        totals=[
            [f"Total {currency}", None, None, None, None, None, None, None, Decimal(figures["amount"]), currency]
            for currency, figures in one_off_totals(content.one_off).items()
        ],
    )
    _sheet(
        workbook,
        "Verification",
        [
            ("Customer", None),
            ("Account ID", None),
            ("Subscription", None),
            ("Contract", None),
            ("Service", None),
            ("Date", _DATE_FORMAT),
            ("Check", None),
            ("Expected units", _UNITS_FORMAT),
            ("Found units", _UNITS_FORMAT),
            ("Matches", None),
        ],
        [
            [
                check["customer"],
                check["account_id"],
                check["subscription"],
                check["contract"],
                check["service"],
                check["check_date"],
                check["check_kind"],
                check["expected"],
                check["found"],
                "yes" if check["matches"] else "NO",
            ]
            for check in content.verification
        ],
        totals=[
            ["Checks", len(content.verification)],
            ["Differences", len(content.differences)],
        ],
    )
    return workbook


def _summary_sheet(workbook: Any, content: Content) -> None:
    approval = content.approval
    rows: list[list[Any]] = [
        ["Month", content.month, None],
        ["Run", content.run_id, None],
        ["Dry run", "yes: nothing was written to Autotask" if content.dry_run else "no", None],
        ["Approval", approval.label, None],
        ["Approved by", approval.decided_by or NOT_RECORDED, None],
        ["Decided at", _naive_utc(approval.decided_at), None],
        ["Load", content.load_status, None],
        ["Writes sent", sum(int(load["writes"] or 0) for load in content.loads), None],
        ["Requests used", sum(int(load["requests_used"] or 0) for load in content.loads), None],
        ["Verification", content.verification_status, None],
        ["Dates checked", len(content.verification), None],
        ["Differences", len(content.differences), None],
    ]
    rows += [[f"Actions {name.replace('_', ' ')}", count, None] for name, count in content.headline.items()]
    rows += [["Left to do", len(content.tasks), None]]
    for totals in content.totals.values():
        currency = totals.currency or "currency unknown"
        rows += [
            ["Units added", totals.units_added, currency],
            ["Units removed", totals.units_removed, currency],
            ["Monthly cost added", totals.cost_added, currency],
            ["Monthly cost removed", totals.cost_removed, currency],
            ["Monthly cost net", totals.net_cost, currency],
            ["Monthly billed added", totals.billed_added, currency],
            ["Monthly billed removed", totals.billed_removed, currency],
            ["Monthly billed net", totals.net_billed, currency],
            ["Monthly margin net", totals.net_margin, currency],
        ]
    for currency in content.money.currencies():
        for bucket, label in BUCKETS.items():
            figures = content.money.by_currency[currency].get(bucket)
            if figures is not None:
                rows += [
                    [f"The month, {label}: billed", figures.billed, currency],
                    [f"The month, {label}: cost", figures.cost, currency],
                    [f"The month, {label}: margin", figures.margin, currency],
                ]
    for currency, figures in one_off_totals(content.one_off).items():
        rows.append([f"One-off charges, not posted yet ({figures['charges']})", Decimal(figures["amount"]), currency])
    for load in content.loads:
        rows.append([f"Load {load['load_id'][:8]}", f"{load['status']}: {load['message'] or ''}".strip(": "), None])
    sheet = _sheet(workbook, "Summary", [("Item", None), ("Value", None), ("Currency", None)], rows, totals=[])
    for row in sheet.iter_rows(min_row=2, min_col=2, max_col=2):
        for cell in row:
            if isinstance(cell.value, datetime):
                cell.number_format = _TIME_FORMAT
            elif isinstance(cell.value, Decimal):
                currency = str(sheet.cell(row=cell.row, column=3).value or "")
                cell.number_format = _currency_format(_MONEY_FORMAT, "" if " " in currency else currency)


def _lines_sheet(workbook: Any, title: str, lines: Sequence[ReportLine]) -> None:
    columns = [(name, number_format) for name, _, number_format in _LINE_COLUMNS]
    rows = [[value(line) for _, value, _ in _LINE_COLUMNS] for line in lines]
    names = [name for name, _, _ in _LINE_COLUMNS]
    # one totals row per currency: amounts in different currencies never add up; only the lines this run
    # wrote (or would write) carry values in the summed columns, so each total is the sum of its column
    totals = []
    for currency in sorted({line.currency for line in lines if line.counted}):
        total: list[Any] = [None] * len(names)
        total[0] = f"Total {currency or '(currency unknown)'}"
        total[names.index("Currency")] = currency
        of_currency = [line for line in lines if line.counted and line.currency == currency]
        for name in SUMMED_COLUMNS:
            getter = dict((column, value) for column, value, _ in _LINE_COLUMNS)[name]
            total[names.index(name)] = sum((getter(line) or Decimal(0) for line in of_currency), Decimal(0))
        totals.append(total)
    sheet = _sheet(workbook, title, columns, rows, totals=totals)
    # money and unit prices in the currency of their row (a totals row's currency is in its Currency cell)
    currency_column = names.index("Currency") + 1
    for row in sheet.iter_rows(min_row=2):
        currency = str(row[currency_column - 1].value or "")
        for name, pattern in _CURRENCY_COLUMNS.items():
            cell = row[names.index(name)]
            if isinstance(cell.value, (int, float, Decimal)):
                cell.number_format = _currency_format(pattern, currency)


def _sheet(
    workbook: Any,
    title: str,
    columns: Sequence[tuple[str, str | None]],
    rows: Sequence[Sequence[Any]],
    *,
    totals: Sequence[Sequence[Any]],
) -> Any:
    """One section: a header row, typed data rows under a frozen header and an autofilter, then totals rows
    (outside the filter, so filtering never hides them)."""
    from openpyxl.styles import Font, PatternFill
    from openpyxl.utils import get_column_letter

    sheet = workbook.create_sheet(title)
    bold = Font(bold=True)
    for index, (name, _) in enumerate(columns, start=1):
        cell = sheet.cell(row=1, column=index)
        _put(cell, name)
        cell.font = bold
        cell.fill = PatternFill("solid", fgColor="DDE4EE")
    for row_index, values in enumerate(rows, start=2):
        for index, value in enumerate(values, start=1):
            _put(sheet.cell(row=row_index, column=index), value, columns[index - 1][1])
    last = len(rows) + 1
    sheet.freeze_panes = "B2"
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{max(last, 2)}"
    for offset, values in enumerate(totals, start=1):
        for index, value in enumerate(values, start=1):
            cell = sheet.cell(row=last + offset, column=index)
            _put(cell, value, columns[index - 1][1] if index <= len(columns) else None)
            cell.font = bold
    for index, (name, _) in enumerate(columns, start=1):
        longest = max([len(name), *(len(str(values[index - 1] or "")) for values in rows[:500])])
        sheet.column_dimensions[get_column_letter(index)].width = min(max(longest + 2, 10), 60)
    return sheet


def _put(cell: Any, value: Any, number_format: str | None = None) -> None:
    """A typed cell: numbers as numbers, dates as dates; text always as text, never a formula."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if value is None:
        return
    if isinstance(value, datetime):
        cell.value = _naive_utc(value)
        cell.number_format = number_format or _TIME_FORMAT
    elif isinstance(value, date):
        cell.value = value
        cell.number_format = number_format or _DATE_FORMAT
    elif isinstance(value, bool):
        cell.value = "yes" if value else "no"
    elif isinstance(value, (int, float, Decimal)):
        cell.value = value
        if number_format:
            cell.number_format = number_format
    else:
        text = ILLEGAL_CHARACTERS_RE.sub("", str(value))
        cell.value = text
        cell.data_type = "s"  # never a formula nor an error code, whatever the text looks like
        if text.startswith(FORMULA_START):
            cell.quotePrefix = True  # and stays text when someone edits the cell in Excel


# -- small helpers --------------------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write next to the target and rename: a reader never sees half a report."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the report is read by people and a web server
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number.quantize(_UNITS) if number.is_finite() else None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _day(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _sortable(value: Any) -> datetime:
    stamp = _timestamp(value)
    return _naive_utc(stamp) if stamp is not None else datetime.min


def _iso(value: Any) -> str | None:
    stamp = _timestamp(value)
    return None if stamp is None else _naive_utc(stamp).isoformat(timespec="seconds")


def _json_object(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _json_list(text: Any) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except (TypeError, ValueError):
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


def _failure_names(text: Any) -> list[str]:
    try:
        failures = json.loads(text or "[]")
    except (TypeError, ValueError):
        return []
    names = []
    for failure in failures if isinstance(failures, list) else []:
        if isinstance(failure, dict):
            label = failure.get("description") or failure.get("name") or failure.get("expectation") or ""
            severity = failure.get("severity")
            names.append(f"{label} ({severity})" if severity else str(label))
    return names


def _with_key(name: str, key: Any) -> str:
    if key and str(key) not in (name or ""):
        return f"{name} ({key})" if name else str(key)
    return name or ""
