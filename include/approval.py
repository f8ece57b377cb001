"""Step 5½: a person (or, for a clean and small month, the approval policy) approves the change plan.

The approval form shows a finance person what the month would change (`summarise_plan` → `render_body`,
Markdown): actions by kind and status, units and cost added and removed, the lines that need a mapping, are
flagged or blocked (with their most common reasons), the data-quality result, and where to look. Its
options are `OPTIONS`; the answer (the HITL response: chosen option, responding user, time) becomes a
`Decision` recorded by `record_decision`:

- "Approve proposed" → the run's `proposed` actions become `approved`;
- "Approve incl. flagged" → its `proposed` and `flagged` actions become `approved`;
- "Reject", or no answer within `approval_timeout_hours` (recorded as `timed_out`) → nothing changes and
  nothing loads.

`needs-mapping` and `blocked` actions are never approved here: they wait for a mapping decision or a fix.
Approved rows carry who approved them and when (`decided_by`, `decided_at`); `month_approvals` holds one
row per decision for the run report and the audit trail.

Policy `auto_if_clean` (`policy_refusals`): the month is approved without a person only when the quality
gates passed without a single warning, nothing needs a mapping or is flagged or blocked, and the units and
cost it changes stay under `auto_approve_max_units` / `auto_approve_max_monthly_cost`. Otherwise it waits
for a person exactly as under `manual`, and the form says why the policy did not approve.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from include.sync_settings import ApprovalPolicy, SyncSettings
from include.warehouse import Warehouse, utcnow

OPTION_APPROVE = "Approve proposed"
OPTION_APPROVE_WITH_FLAGGED = "Approve incl. flagged"
OPTION_REJECT = "Reject"
OPTIONS = [OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED, OPTION_REJECT]
POLICY_USER = "policy:auto_if_clean"

# Statuses as text: the plan's enum gains `blocked` in the reconciliation part; text works either way.
PROPOSED, FLAGGED, NEEDS_MAPPING, BLOCKED, APPROVED = "proposed", "flagged", "needs-mapping", "blocked", "approved"
_ADJUSTING_KINDS = ("adjust_units", "change_cost")
_TOP_REASONS = 8
_REASON_CHARS = 240


class Decision(StrEnum):
    APPROVED = "approved"
    APPROVED_WITH_FLAGGED = "approved_with_flagged"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    APPROVED_BY_POLICY = "approved_by_policy"
    DRY_RUN = "dry_run"

    @property
    def loads(self) -> bool:
        """Whether the month goes on to the load."""
        return self in (Decision.APPROVED, Decision.APPROVED_WITH_FLAGGED, Decision.APPROVED_BY_POLICY)

    @property
    def approves(self) -> tuple[str, ...]:
        """The plan statuses this decision turns into `approved` (never needs-mapping or blocked)."""
        if self is Decision.APPROVED_WITH_FLAGGED:
            return (PROPOSED, FLAGGED)
        if self in (Decision.APPROVED, Decision.APPROVED_BY_POLICY):
            return (PROPOSED,)
        return ()


@dataclass(frozen=True)
class ApprovalDecision:
    decision: Decision
    decided_by: str | None
    decided_at: datetime
    options: tuple[str, ...] = ()
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": str(self.decision),
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat(),
            "options": list(self.options),
            "note": self.note,
            "loads": self.decision.loads,
        }


@dataclass
class Changes:
    """What a set of adjustments changes in Autotask: units and cost (unit cost × units) up and down."""

    actions: int = 0
    units_added: Decimal = Decimal(0)
    units_removed: Decimal = Decimal(0)
    cost_added: Decimal = Decimal(0)
    cost_removed: Decimal = Decimal(0)

    def add(self, row: Mapping[str, Any]) -> None:
        self.actions += 1
        change = _decimal(row["unit_change"])
        if change is None and row["units_after"] is not None and row["units_before"] is not None:
            change = _decimal(row["units_after"]) - _decimal(row["units_before"])
        if change and change > 0:
            self.units_added += change
        elif change and change < 0:
            self.units_removed -= change
        cost = _cost_change(row)
        if cost > 0:
            self.cost_added += cost
        elif cost < 0:
            self.cost_removed -= cost

    @property
    def units_moved(self) -> Decimal:
        return self.units_added + self.units_removed

    @property
    def cost_moved(self) -> Decimal:
        return self.cost_added + self.cost_removed


@dataclass(frozen=True)
class HeldReason:
    """A reason that holds lines back, how many lines it holds, and one example line."""

    status: str
    reason: str
    lines: int
    example: str


@dataclass(frozen=True)
class QualityLine:
    suite: str
    stage: str
    success: bool
    critical_failures: int
    warning_failures: int
    data_docs_index: str | None


@dataclass
class ApprovalSummary:
    month: str
    run_id: str
    by_kind_status: dict[str, dict[str, int]] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    proposed: Changes = field(default_factory=Changes)
    flagged: Changes = field(default_factory=Changes)
    held_reasons: list[HeldReason] = field(default_factory=list)
    quality: list[QualityLine] = field(default_factory=list)
    report_dir: str | None = None
    review_link: str | None = None

    def count(self, status: str) -> int:
        return self.by_status.get(status, 0)

    @property
    def quality_passed_without_warnings(self) -> bool:
        return bool(self.quality) and all(
            line.success and not line.critical_failures and not line.warning_failures for line in self.quality
        )

    @property
    def data_docs_index(self) -> str | None:
        return next((line.data_docs_index for line in self.quality if line.data_docs_index), None)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def summarise_plan(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    *,
    report_dir: str | None = None,
    review_link: str | None = None,
) -> ApprovalSummary:
    """What the run's plan would change, and what holds lines back, for the approval form."""
    summary = ApprovalSummary(month=month, run_id=run_id, report_dir=report_dir, review_link=review_link)
    plan = warehouse.table("plan_actions")
    columns = [
        plan.c[name]
        for name in (
            "kind",
            "status",
            "reason",
            "account_id",
            "subscription_ids",
            "units_before",
            "units_after",
            "unit_change",
            "unit_cost_before",
            "unit_cost_after",
            "idempotency_key",
        )
    ]
    with warehouse.engine.connect() as conn:
        rows = (
            conn.execute(sa.select(*columns).where(plan.c.month == month, plan.c.run_id == run_id).order_by(plan.c.seq))
            .mappings()
            .all()
        )
    bss_costs = _bss_unit_costs(warehouse, month)
    reasons: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["unit_cost_after"] is None and row["unit_cost_before"] is None:
            # a units-only adjustment: priced at its subscription's BSS unit cost
            subscriptions = json.loads(row["subscription_ids"] or "[]")
            cost = next((bss_costs[sub] for sub in subscriptions if sub in bss_costs), None)
            row = {**row, "unit_cost_before": cost, "unit_cost_after": cost}
        kind, status = row["kind"], row["status"]
        by_kind = summary.by_kind_status.setdefault(kind, {})
        by_kind[status] = by_kind.get(status, 0) + 1
        summary.by_status[status] = summary.by_status.get(status, 0) + 1
        if kind in _ADJUSTING_KINDS and status == PROPOSED:
            summary.proposed.add(row)
        elif kind in _ADJUSTING_KINDS and status == FLAGGED:
            summary.flagged.add(row)
        if status in (FLAGGED, NEEDS_MAPPING, BLOCKED):
            # a reason joins several causes with "; ": each counts on its own
            for reason in dict.fromkeys(part.strip() for part in (row["reason"] or "no reason given").split("; ")):
                key = (status, reason)
                reasons[key] += 1
                examples.setdefault(key, _line_name(row))
    summary.held_reasons = [
        HeldReason(status=status, reason=reason, lines=lines, example=examples[(status, reason)])
        for (status, reason), lines in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    ]
    summary.quality = _quality_of(warehouse, run_id)
    return summary


def policy_refusals(summary: ApprovalSummary, settings: SyncSettings) -> list[str]:
    """Why the policy may not approve this month without a person; empty when it may."""
    if settings.approval_policy is not ApprovalPolicy.AUTO_IF_CLEAN:
        return [f"the approval policy is {settings.approval_policy}: a person approves every month"]
    refusals = []
    if not summary.quality:
        refusals.append("no data-quality result is recorded for this run")
    for line in summary.quality:
        if not line.success or line.critical_failures or line.warning_failures:
            refusals.append(
                f"data-quality suite {line.suite} has {line.critical_failures} critical and "
                f"{line.warning_failures} warning failures"
            )
    for status, label in ((NEEDS_MAPPING, "need a mapping"), (FLAGGED, "are flagged"), (BLOCKED, "are blocked")):
        if summary.count(status):
            refusals.append(f"{summary.count(status)} lines {label}")
    if summary.proposed.units_moved > Decimal(str(settings.auto_approve_max_units)):
        refusals.append(
            f"{_number(summary.proposed.units_moved)} units change, more than auto_approve_max_units "
            f"({_number(settings.auto_approve_max_units)})"
        )
    if summary.proposed.cost_moved > Decimal(str(settings.auto_approve_max_monthly_cost)):
        refusals.append(
            f"the cost changes by {_money(summary.proposed.cost_moved)}, more than auto_approve_max_monthly_cost "
            f"({_money(settings.auto_approve_max_monthly_cost)})"
        )
    return refusals


def policy_decision(summary: ApprovalSummary, settings: SyncSettings) -> ApprovalDecision | None:
    """The policy's approval when the month is clean and small; None when a person must decide."""
    if policy_refusals(summary, settings):
        return None
    note = (
        f"approved by policy auto_if_clean: quality passed without warnings, nothing to map, flag or block; "
        f"{_number(summary.proposed.units_moved)} units and {_money(summary.proposed.cost_moved)} changed "
        f"(limits {_number(settings.auto_approve_max_units)} units, "
        f"{_money(settings.auto_approve_max_monthly_cost)})"
    )
    return ApprovalDecision(Decision.APPROVED_BY_POLICY, POLICY_USER, _now(), (OPTION_APPROVE,), note)


def decision_from_response(response: Mapping[str, Any]) -> ApprovalDecision:
    """The decision an approval-form answer stands for (the HITL operator's result: chosen_options,
    responded_by_user, responded_at). No responding user means the timeout chose the default: timed out."""
    chosen = tuple(response.get("chosen_options") or ())
    user = response.get("responded_by_user")
    decided_at = _timestamp(response.get("responded_at"))
    if not user or response.get("timedout"):
        return ApprovalDecision(
            Decision.TIMED_OUT, None, decided_at, chosen, "nobody answered within the approval timeout: rejected"
        )
    name = str(user.get("name") or user.get("id") or "unknown user") if isinstance(user, Mapping) else str(user)
    if OPTION_REJECT in chosen or not chosen:
        return ApprovalDecision(Decision.REJECTED, name, decided_at, chosen, f"rejected by {name}")
    if OPTION_APPROVE_WITH_FLAGGED in chosen:
        return ApprovalDecision(
            Decision.APPROVED_WITH_FLAGGED, name, decided_at, chosen, f"approved by {name}, flagged lines included"
        )
    if OPTION_APPROVE in chosen:
        return ApprovalDecision(Decision.APPROVED, name, decided_at, chosen, f"approved by {name}")
    raise ValueError(f"unknown approval options {list(chosen)}; expected one of {OPTIONS}")


def record_decision(warehouse: Warehouse, month: str, run_id: str, decision: ApprovalDecision) -> int:
    """Store the decision: approve the run's rows it covers (with who and when) and add its `month_approvals`
    row, in one transaction. Returns how many plan rows became approved."""
    plan = warehouse.table("plan_actions")
    approved = 0
    with warehouse.begin() as conn:
        if decision.decision.approves:
            approved = conn.execute(
                plan.update()
                .where(
                    plan.c.month == month,
                    plan.c.run_id == run_id,
                    plan.c.status.in_(decision.decision.approves),
                )
                .values(status=APPROVED, decided_by=decision.decided_by, decided_at=decision.decided_at)
            ).rowcount
            if FLAGGED not in decision.decision.approves:
                # flagged lines a reviewer approved one by one on the review page (include/review.py) load with
                # the proposed ones; a line whose content changed since has another action_id and stays flagged
                line_approvals = warehouse.table("review_line_approvals")
                approved += conn.execute(
                    plan.update()
                    .where(
                        plan.c.month == month,
                        plan.c.run_id == run_id,
                        plan.c.status == FLAGGED,
                        plan.c.action_id.in_(
                            sa.select(line_approvals.c.action_id).where(line_approvals.c.run_id == run_id)
                        ),
                    )
                    .values(status=APPROVED, decided_by=decision.decided_by, decided_at=decision.decided_at)
                ).rowcount
        warehouse.insert(
            conn,
            "month_approvals",
            [
                {
                    "run_id": run_id,
                    "month": month,
                    "decision": str(decision.decision),
                    "decided_by": decision.decided_by,
                    "decided_at": decision.decided_at,
                    "options": json.dumps(list(decision.options)),
                    "approved_actions": approved,
                    "note": decision.note,
                }
            ],
        )
    return approved


def recorded_decisions(warehouse: Warehouse, month: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """The month's recorded decisions (optionally one run's), oldest first."""
    table = warehouse.table("month_approvals")
    query = sa.select(table).where(table.c.month == month)
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    with warehouse.engine.connect() as conn:
        return [dict(row) for row in conn.execute(query.order_by(table.c.decided_at)).mappings()]


# -- the approval form --------------------------------------------------------------------------------------


def render_subject(summary: ApprovalSummary) -> str:
    return f"Approve the Autotask changes for {summary.month}?"


def render_body(summary: ApprovalSummary, settings: SyncSettings | None = None) -> str:
    """The approval form's text (Markdown) for a finance person. Every value from the data is escaped."""
    settings = settings or SyncSettings()
    held = {status: summary.count(status) for status in (FLAGGED, NEEDS_MAPPING, BLOCKED)}
    lines = [
        f"## Billing month {summary.month}: changes for Autotask",
        "",
        f"Run {_code(summary.run_id)}. Nothing has been written to Autotask yet.",
        "",
        "**Your options**",
        f"- **{OPTION_APPROVE}**: loads the {summary.count(PROPOSED)} proposed actions.",
        f"- **{OPTION_APPROVE_WITH_FLAGGED}**: also loads the {held[FLAGGED]} flagged actions (read their reasons "
        "below first).",
        f"- **{OPTION_REJECT}**: loads nothing. Without an answer within {_number(settings.approval_timeout_hours)} "
        "hours the month counts as rejected.",
        "",
        f"Never loaded from here: {held[NEEDS_MAPPING]} actions that need a mapping and {held[BLOCKED]} blocked "
        "actions.",
        "",
        "### What changes",
        "",
        "| | actions | units added | units removed | cost added | cost removed |",
        "|---|---:|---:|---:|---:|---:|",
        _changes_row("Proposed adjustments", summary.proposed),
        _changes_row("Flagged adjustments", summary.flagged),
        "",
        "Cost is the BSS unit cost × units per billing period, in each customer's currency.",
        "",
        "### Actions by kind and status",
        "",
    ]
    statuses = sorted({status for counts in summary.by_kind_status.values() for status in counts})
    if statuses:
        lines.append("| kind | " + " | ".join(statuses) + " |")
        lines.append("|---|" + "---:|" * len(statuses))
        for kind, counts in sorted(summary.by_kind_status.items()):
            lines.append(
                f"| {_md(kind.replace('_', ' '))} | " + " | ".join(str(counts.get(s, 0)) for s in statuses) + " |"
            )
    else:
        lines.append("The plan is empty: Autotask already holds what the BSS billed.")
    lines += ["", "### Lines held back", ""]
    lines.append(
        f"{held[NEEDS_MAPPING]} need a mapping, {held[FLAGGED]} are flagged, {held[BLOCKED]} are blocked."
        + (" Most common reasons:" if summary.held_reasons else "")
    )
    if summary.held_reasons:
        lines += ["", "| status | lines | reason | e.g. |", "|---|---:|---|---|"]
        for reason in summary.held_reasons[:_TOP_REASONS]:
            reason_text, example = _md(_short(reason.reason)), _md(_short(reason.example, 80))
            lines.append(f"| {reason.status} | {reason.lines} | {reason_text} | {example} |")
        more = len(summary.held_reasons) - _TOP_REASONS
        if more > 0:
            lines.append(f"\n… and {more} more reasons (see the run report).")
    lines += ["", "### Data quality", ""]
    if summary.quality:
        for line in summary.quality:
            verdict = "passed" if line.success and not line.critical_failures else "FAILED"
            lines.append(
                f"- {_md(line.suite)} ({_md(line.stage)}): {verdict}, {line.critical_failures} critical, "
                f"{line.warning_failures} warnings"
            )
    else:
        lines.append("- no data-quality result recorded for this run")
    refusals = policy_refusals(summary, settings)
    if settings.approval_policy is ApprovalPolicy.AUTO_IF_CLEAN and refusals:
        lines += ["", "### Why the policy did not approve this month", ""]
        lines += [f"- {_md(refusal)}" for refusal in refusals]
    lines += ["", "### Where to look", ""]
    lines.append(f"- Data-quality report (Data Docs): {_code(summary.data_docs_index or 'not written')}")
    lines.append(f"- Run report (after the load): {_code(summary.report_dir or 'not written yet')}")
    lines.append(
        f"- Review page (grid, mapping decisions, exports): [open the billing review]({summary.review_link})"
        if summary.review_link
        else "- Review page: not available yet (use the warehouse table plan_actions)"
    )
    return "\n".join(lines)


# -- helpers --------------------------------------------------------------------------------------------------


def _quality_of(warehouse: Warehouse, run_id: str) -> list[QualityLine]:
    table = warehouse.table("quality_results")
    with warehouse.engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.run_id == run_id).order_by(table.c.validated_at)).mappings()
        return [
            QualityLine(
                suite=row["suite"],
                stage=row["stage"],
                success=bool(row["success"]),
                critical_failures=int(row["critical_failures"] or 0),
                warning_failures=int(row["warning_failures"] or 0),
                data_docs_index=row["data_docs_index"],
            )
            for row in rows
        ]


def _bss_unit_costs(warehouse: Warehouse, month: str) -> dict[str, Any]:
    """The BSS unit cost of each subscription billed in the month (its latest line's)."""
    rows = warehouse.query(
        "SELECT subscription_id, unit_cost FROM charge_lines WHERE month = :month"
        " ORDER BY effective_date, charged_at, charge_sequence, charge_id",
        {"month": month},
    )
    return {row["subscription_id"]: row["unit_cost"] for row in rows}


def _cost_change(row: Mapping[str, Any]) -> Decimal:
    before_units, after_units = _decimal(row["units_before"]), _decimal(row["units_after"])
    before_cost, after_cost = _decimal(row["unit_cost_before"]), _decimal(row["unit_cost_after"])
    before_cost = before_cost if before_cost is not None else after_cost
    after_cost = after_cost if after_cost is not None else before_cost
    if before_cost is None:
        return Decimal(0)
    if after_units is None and before_units is not None and row["unit_change"] is not None:
        after_units = before_units + _decimal(row["unit_change"])
    if before_units is None and after_units is not None and row["unit_change"] is not None:
        before_units = after_units - _decimal(row["unit_change"])
    return (after_units or Decimal(0)) * after_cost - (before_units or Decimal(0)) * before_cost


def _line_name(row: Mapping[str, Any]) -> str:
    subscriptions = json.loads(row["subscription_ids"] or "[]")
    target = str(row["idempotency_key"]).split("|")[2] if row["idempotency_key"] else ""
    parts = [", ".join(subscriptions[:2]) or target, f"account {row['account_id']}" if row["account_id"] else ""]
    return " / ".join(part for part in parts if part)


def _changes_row(label: str, changes: Changes) -> str:
    return (
        f"| {label} | {changes.actions} | {_number(changes.units_added)} | {_number(changes.units_removed)} | "
        f"{_money(changes.cost_added)} | {_money(changes.cost_removed)} |"
    )


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|~])")


def _md(text: Any) -> str:
    """Plain text for Markdown: special characters escaped, line breaks flattened (a table row stays one row)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _code(text: Any) -> str:
    """A path or id as a code span: shown as is (escapes do not work inside one; a backtick cannot end it)."""
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`"


def _short(text: str, limit: int = _REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _number(value: Any) -> str:
    number = Decimal(str(value)).normalize()
    return f"{number:f}" if number != number.to_integral_value() else f"{int(number):,}"


def _money(value: Any) -> str:
    return f"{Decimal(str(value)):,.2f}"


def _timestamp(value: Any) -> datetime:
    """A naive UTC datetime (how the warehouse stores times) from the response's datetime or ISO text."""
    if value is None:
        return _now()
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _now() -> datetime:
    return utcnow()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


__all__: Sequence[str] = (
    "OPTIONS",
    "ApprovalDecision",
    "ApprovalSummary",
    "Decision",
    "decision_from_response",
    "policy_decision",
    "policy_refusals",
    "record_decision",
    "recorded_decisions",
    "render_body",
    "render_subject",
    "summarise_plan",
)
