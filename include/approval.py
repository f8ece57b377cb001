"""Step 5½: a person (or, for a clean and small month, the approval policy) approves the change plan.

What is signed is what loads. For each answer that loads something the form shows exactly what that answer approves
(`AnswerFigures`: the lines by kind, the flagged lines a reviewer approved one by one on the review page, units and
monthly cost added and removed per currency — never added across currencies) and a fingerprint of that set of plan
lines. The form carries a fingerprint of itself (`FORM_FINGERPRINT_PARAM`); the review page refreshes the form
after every decision that changes the plan, and an answer given to a form that no longer matches the plan is
refused (`check_answer`, again under the month's lock in `record_decision`) and asked again. The recorded approval
(`month_approvals`) stores the approved set's fingerprint and figures, and the load refuses to write a set that
differs (`check_load_matches_approvals`).

The answers (`include.identifiers.OPTIONS`), each a `Decision`:
- "Approve proposed" → the run's `proposed` lines, and the `flagged` lines approved one by one on the review page;
- "Approve incl. flagged" → its `proposed` and `flagged` lines;
- "Reject", or no answer within `approval_timeout_hours` (recorded as `timed_out`) → nothing changes, nothing loads.
`needs-mapping` and `blocked` lines are never approved here. Approved rows carry who approved them and when.

Who answers (`Approvers`): the users `approvers` names, or else anyone whose role is at least `approver_role`
(Airflow's HITL `assigned_users` lists them where the auth manager can tell); with `four_eyes` nobody who took a
review decision on the run approves it. Anyone else is refused with a message that says who may.

The gate (`gate`) decides in one place: a dry run records `dry_run`; the `auto_if_clean` policy approves a month
alone only when the quality gates passed without a warning, nothing needs a mapping or is flagged or blocked, and
the units and cost it changes (per currency) stay under `auto_approve_max_units` / `auto_approve_max_monthly_cost`;
any other month waits for a person (`AskPerson`), and the form says why the policy did not approve it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from include.identifiers import FORM_FINGERPRINT_PARAM, OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED, OPTION_REJECT
from include.identifiers import OPTIONS as _OPTIONS
from include.money import ADJUSTING_KINDS as MONEY_KINDS
from include.money import (
    BUCKETS,
    PRICE_COLUMNS,
    LineMoney,
    MoneyTotals,
    PriceBook,
    line_money,
    money_bucket,
    money_text,
    units_text,
)
from include.sync_settings import APPROVER_ROLES, ApprovalPolicy, SyncSettings
from include.warehouse import Warehouse, utcnow

OPTIONS = list(_OPTIONS)
POLICY_USER = "policy:auto_if_clean"

# Statuses as text: the plan's enum gains `blocked` in the reconciliation part; text works either way.
PROPOSED, FLAGGED, NEEDS_MAPPING, BLOCKED, APPROVED = "proposed", "flagged", "needs-mapping", "blocked", "approved"
# what an approval approved, once the load has moved some of it on
_APPROVED_OR_LOADED = (APPROVED, "applied", "failed")
_TOP_REASONS = 8
_REASON_CHARS = 240
_ID_BATCH = 500
ROLE_ORDER = APPROVER_ROLES  # a role grants what the ones before it grant
UNKNOWN_CURRENCY = "?"


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
    def answer(self) -> str | None:
        """The form's answer whose set of lines this decision approves (None: it approves nothing)."""
        if self is Decision.APPROVED_WITH_FLAGGED:
            return OPTION_APPROVE_WITH_FLAGGED
        if self in (Decision.APPROVED, Decision.APPROVED_BY_POLICY):
            return OPTION_APPROVE
        return None

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
    """What a set of adjustments changes in Autotask, in one currency: units, what the customer is billed (unit price
    × units) and cost (unit cost × units) up and down, each line's figures from `include.money.line_money`."""

    actions: int = 0
    units_added: Decimal = Decimal(0)
    units_removed: Decimal = Decimal(0)
    cost_added: Decimal = Decimal(0)
    cost_removed: Decimal = Decimal(0)
    billed_added: Decimal = Decimal(0)
    billed_removed: Decimal = Decimal(0)

    def add(self, line: LineMoney) -> None:
        self.actions += 1
        self.units_added += line.units_added
        self.units_removed += line.units_removed
        self.cost_added += max(line.cost_change, Decimal(0))
        self.cost_removed += max(-line.cost_change, Decimal(0))
        self.billed_added += max(line.billed_change, Decimal(0))
        self.billed_removed += max(-line.billed_change, Decimal(0))

    @property
    def margin(self) -> Decimal:
        return (self.billed_added - self.billed_removed) - (self.cost_added - self.cost_removed)

    @property
    def units_moved(self) -> Decimal:
        return self.units_added + self.units_removed

    @property
    def cost_moved(self) -> Decimal:
        return self.cost_added + self.cost_removed


@dataclass
class AnswerFigures:
    """What one answer of the form approves, exactly: the plan lines it turns `approved` (and so what loads), by kind,
    how many of them are flagged lines a reviewer approved one by one, units and monthly cost added and removed per
    currency (never added across currencies), and the fingerprint of the set (`set_fingerprint`)."""

    answer: str
    action_ids: tuple[str, ...] = ()
    by_kind: dict[str, int] = field(default_factory=dict)
    line_approved: int = 0
    currencies: dict[str, Changes] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def lines(self) -> int:
        return len(self.action_ids)

    def as_dict(self) -> dict[str, Any]:
        """The figures as recorded with the approval (`month_approvals.approved_figures`): no ids, exact amounts."""
        return {
            "answer": self.answer,
            "lines": self.lines,
            "by_kind": dict(sorted(self.by_kind.items())),
            "line_approved": self.line_approved,
            "currencies": {  # as the form shows them: units exact, money to the cent
                currency: {
                    "adjustments": changes.actions,
                    "units_added": _plain(changes.units_added),
                    "units_removed": _plain(changes.units_removed),
                    "cost_added": _cents(changes.cost_added),
                    "cost_removed": _cents(changes.cost_removed),
                    "billed_added": _cents(changes.billed_added),
                    "billed_removed": _cents(changes.billed_removed),
                    "margin": _cents(changes.margin),
                }
                for currency, changes in sorted(self.currencies.items())
            },
            "fingerprint": self.fingerprint,
        }


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
    # what each answer that loads something approves (OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED)
    answers: dict[str, AnswerFigures] = field(default_factory=dict)
    # the run's lines per currency and bucket (loads on approval, waits for a person, blocked or excluded)
    money: MoneyTotals = field(default_factory=MoneyTotals)
    held_reasons: list[HeldReason] = field(default_factory=list)
    quality: list[QualityLine] = field(default_factory=list)
    report_dir: str | None = None
    review_link: str | None = None
    # the run's files (Data Docs, report) and the months page, as links built from the configured base URL
    files_link: str | None = None
    months_link: str | None = None

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

    @property
    def form_fingerprint(self) -> str:
        """The fingerprint of the form's figures: changes whenever what an answer would approve changes."""
        return form_fingerprint(self.run_id, self.answers)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def set_fingerprint(run_id: str, action_ids: Iterable[str]) -> str:
    """The fingerprint of a set of a run's plan lines: sha256 of the run id and the sorted line ids (a line's id
    hashes its content, so the same ids are the same changes)."""
    text = run_id + "\n" + "\n".join(sorted(action_ids))
    return hashlib.sha256(text.encode()).hexdigest()


def form_fingerprint(run_id: str, answers: Mapping[str, AnswerFigures]) -> str:
    text = run_id + "\n" + "\n".join(f"{answer}={answers[answer].fingerprint}" for answer in sorted(answers))
    return hashlib.sha256(text.encode()).hexdigest()


_SUMMARY_COLUMNS = (
    "action_id",
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
    # what `include.money.line_money` prices a line with
    "effective_date",
    "company_id",
    "contract_id",
    "service_id",
    "contract_service_id",
    "contract_service_action_id",
    "payload",
)


def summarise_plan(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    *,
    report_dir: str | None = None,
    review_link: str | None = None,
    files_link: str | None = None,
    months_link: str | None = None,
) -> ApprovalSummary:
    """What the run's plan would change, what each answer approves, and what holds lines back, for the form."""
    summary = ApprovalSummary(
        month=month,
        run_id=run_id,
        report_dir=report_dir,
        review_link=review_link,
        files_link=files_link,
        months_link=months_link,
    )
    rows = _run_rows(warehouse, month, run_id)
    book = PriceBook(warehouse, month, run_id, rows)
    line_approved = _line_approved_ids(warehouse, run_id)
    reasons: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for row in rows:
        kind, status = row["kind"], row["status"]
        by_kind = summary.by_kind_status.setdefault(kind, {})
        by_kind[status] = by_kind.get(status, 0) + 1
        summary.by_status[status] = summary.by_status.get(status, 0) + 1
        money = line_money(row, book) if kind in MONEY_KINDS else None
        if money is not None:
            book.priced[row["action_id"]] = money  # worked out once: the answers reuse it
            summary.money.add(money, money_bucket(status, row["action_id"] in line_approved))
        if kind in MONEY_KINDS and status == PROPOSED:
            summary.proposed.add(money)
        elif kind in MONEY_KINDS and status == FLAGGED:
            summary.flagged.add(money)
        if status in (FLAGGED, NEEDS_MAPPING, BLOCKED):
            # a reason is counted whole: its text is a sentence (names and reasons hold "; " of their own), never
            # cut into fragments a person cannot read
            key = (status, (row["reason"] or "no reason given").strip())
            reasons[key] += 1
            if key not in examples:
                examples[key] = _line_name(row)
    summary.answers = _answers(run_id, rows, line_approved, book)
    summary.held_reasons = [
        HeldReason(status=status, reason=reason, lines=lines, example=examples[(status, reason)])
        for (status, reason), lines in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    ]
    summary.quality = _quality_of(warehouse, run_id)
    return summary


def answer_figures(warehouse: Warehouse, month: str, run_id: str) -> dict[str, AnswerFigures]:
    """What each answer would approve now (the same figures `summarise_plan` puts on the form)."""
    rows = _run_rows(warehouse, month, run_id)
    return _answers(run_id, rows, _line_approved_ids(warehouse, run_id), PriceBook(warehouse, month, run_id, rows))


def _answers(
    run_id: str,
    rows: Sequence[Mapping[str, Any]],
    line_approved: set[str],
    book: PriceBook,
) -> dict[str, AnswerFigures]:
    answers = {answer: AnswerFigures(answer) for answer in (OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED)}
    ids: dict[str, list[str]] = {answer: [] for answer in answers}
    for row in rows:
        status = row["status"]
        chosen_alone = status == FLAGGED and row["action_id"] in line_approved
        approving = [
            answer
            for answer, takes in (
                (OPTION_APPROVE, status == PROPOSED or chosen_alone),
                (OPTION_APPROVE_WITH_FLAGGED, status in (PROPOSED, FLAGGED)),
            )
            if takes
        ]
        if not approving:
            continue
        money = None
        if row["kind"] in MONEY_KINDS:
            money = book.priced.get(row["action_id"]) or line_money(row, book)
        for answer in approving:
            figures = answers[answer]
            ids[answer].append(row["action_id"])
            figures.by_kind[row["kind"]] = figures.by_kind.get(row["kind"], 0) + 1
            figures.line_approved += int(chosen_alone)
            if money is not None:
                figures.currencies.setdefault(money.currency, Changes()).add(money)
    for answer, figures in answers.items():
        figures.action_ids = tuple(sorted(ids[answer]))
        figures.fingerprint = set_fingerprint(run_id, figures.action_ids)
    return answers


def _run_rows(warehouse: Warehouse, month: str, run_id: str) -> list[dict[str, Any]]:
    """The run's plan lines (what the form sums up), read as plain rows: the form is rewritten after every decision
    on a month of 20,000 lines."""
    # the unit prices a plan sets (the price policy), when the plan has them
    columns = (*_SUMMARY_COLUMNS, *(name for name in PRICE_COLUMNS if name in warehouse.table("plan_actions").c))
    with warehouse.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {', '.join(columns)} FROM plan_actions"  # fixed column names
                " WHERE month = :month AND run_id = :run_id ORDER BY seq"
            ),
            {"month": month, "run_id": run_id},
        ).all()
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _line_approved_ids(warehouse: Warehouse, run_id: str) -> set[str]:
    rows = warehouse.query("SELECT action_id FROM review_line_approvals WHERE run_id = :run_id", {"run_id": run_id})
    return {row["action_id"] for row in rows}


# -- the gate: who decides, and whether a person must -------------------------------------------------------------


@dataclass(frozen=True)
class AskPerson:
    """The gate's answer when a person must decide: the form to show and who may answer it."""

    subject: str
    body: str
    form_fingerprint: str
    approvers: Approvers
    summary: ApprovalSummary


def gate(
    summary: ApprovalSummary, settings: SyncSettings, *, known_users: Sequence[tuple[str, str]] = ()
) -> ApprovalDecision | AskPerson:
    """The one place that decides how a month is approved: a dry run records `dry_run` and asks nobody; the
    `auto_if_clean` policy approves a clean, small month alone; every other month waits for a person, and the form
    says who may answer (`known_users`: the auth manager's users and roles, when it lists them)."""
    if settings.dry_run:
        note = "dry run: nothing approved, nothing is written to Autotask"
        return ApprovalDecision(Decision.DRY_RUN, None, _now(), (), note)
    decision = policy_decision(summary, settings)
    if decision is not None:
        return decision
    approvers = Approvers.of(settings)
    return AskPerson(
        subject=render_subject(summary),
        body=render_body(summary, settings, who_may=approvers.describe(known_users)),
        form_fingerprint=summary.form_fingerprint,
        approvers=approvers,
        summary=summary,
    )


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
    limit = Decimal(str(settings.auto_approve_max_monthly_cost))
    for currency, changes in sorted(_policy_currencies(summary).items()):
        if changes.cost_moved > limit:
            refusals.append(
                f"the cost changes by {_money(changes.cost_moved)} {currency}, more than auto_approve_max_monthly_cost "
                f"({_money(limit)} in each currency)"
            )
    return refusals


def _policy_currencies(summary: ApprovalSummary) -> dict[str, Changes]:
    figures = summary.answers.get(OPTION_APPROVE)
    return figures.currencies if figures is not None else {UNKNOWN_CURRENCY: summary.proposed}


def policy_decision(summary: ApprovalSummary, settings: SyncSettings) -> ApprovalDecision | None:
    """The policy's approval when the month is clean and small; None when a person must decide."""
    if policy_refusals(summary, settings):
        return None
    moved = ", ".join(
        f"{_money(changes.cost_moved)} {currency}" for currency, changes in sorted(_policy_currencies(summary).items())
    )
    note = (
        f"approved by policy auto_if_clean: quality passed without warnings, nothing to map, flag or block; "
        f"{_number(summary.proposed.units_moved)} units and {moved or 'no cost'} changed "
        f"(limits {_number(settings.auto_approve_max_units)} units, "
        f"{_money(settings.auto_approve_max_monthly_cost)} in each currency)"
    )
    return ApprovalDecision(Decision.APPROVED_BY_POLICY, POLICY_USER, _now(), (OPTION_APPROVE,), note)


@dataclass(frozen=True)
class Approvers:
    """Who may answer a month's approval: the users `approvers` names; else anyone whose role is at least
    `approver_role` (Airflow's simple auth manager's roles: viewer < user < op < admin). With `four_eyes`, nobody
    who took a review decision on the run approves it."""

    users: tuple[str, ...] = ()
    min_role: str = "op"
    four_eyes: bool = False

    @classmethod
    def of(cls, settings: SyncSettings) -> Approvers:
        return cls(tuple(settings.approvers), settings.approver_role, settings.four_eyes)

    def may_answer(self, user_id: str, role: str | None) -> bool:
        if self.users:
            return user_id in self.users
        return role is not None and _role_rank(role) >= _role_rank(self.min_role)

    def describe(self, known_users: Sequence[tuple[str, str]] = ()) -> str:
        """Who may, in words, for a refusal and the form: "finance or controller (BILLING_SYNC_APPROVERS)"."""
        if self.users:
            return f"{_either(self.users)} (named by BILLING_SYNC_APPROVERS)"
        roles = ROLE_ORDER[_role_rank(self.min_role) :]
        named = self.assigned(known_users) or []
        who = f": {_either(named)}" if named else ""
        return f"users with the role {_either(roles)} (BILLING_SYNC_APPROVER_ROLE={self.min_role}){who}"

    def assigned(self, known_users: Sequence[tuple[str, str]]) -> list[str] | None:
        """The user ids for the HITL form's `assigned_users` (Airflow then refuses everyone else itself): the named
        users, else the known users (id, role) with the role; None when the auth manager lists no users."""
        if self.users:
            return list(self.users)
        if not known_users:
            return None
        return [user for user, role in known_users if self.may_answer(user, role)]


class RefusalReason(StrEnum):
    """Why an answer to the approval form is refused; nothing is recorded and the form waits for another answer."""

    NOT_AN_APPROVER = "not_an_approver"
    REVIEWED_THE_RUN = "reviewed_the_run"  # the two-person rule
    UNBOUND_ANSWER = "unbound_answer"  # an answer that does not say which form it answers
    STALE_FORM = "stale_form"  # the plan changed after the form was shown
    ALREADY_ANSWERED = "already_answered"

    @property
    def status(self) -> int:
        """The HTTP status the answer gets: 403 for who answers, 409 for what the answer refers to."""
        return 403 if self in (RefusalReason.NOT_AN_APPROVER, RefusalReason.REVIEWED_THE_RUN) else 409


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    message: str

    @property
    def status(self) -> int:
        return self.reason.status


class ApprovalRefusedError(Exception):
    """An answer `record_decision` refused (nothing recorded): the form is asked again."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def check_answer(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    *,
    user_id: str,
    role: str | None,
    chosen_options: Sequence[str],
    form_fingerprint: str | None,
    settings: SyncSettings,
    known_users: Sequence[tuple[str, str]] = (),
) -> Refusal | None:
    """Whether this user's answer may be recorded: None when it may, else why not (with who may, or what changed).
    Checked before Airflow records an answer (the review plugin's guard on the form's answer) and again under the
    month's lock when the decision is recorded."""
    approvers = Approvers.of(settings)
    if not approvers.may_answer(user_id, role):
        return Refusal(
            RefusalReason.NOT_AN_APPROVER,
            f"{user_id} may not answer the approval of {month}: {approvers.describe(known_users)} may",
        )
    approves = bool(set(chosen_options) - {OPTION_REJECT})
    if not approves:
        return None  # rejecting loads nothing: any approver may, the form's figures do not matter
    if approvers.four_eyes:
        reviewed = warehouse.query(
            "SELECT COUNT(*) AS decisions FROM review_decisions WHERE run_id = :run_id AND decided_by = :user",
            {"run_id": run_id, "user": user_id},
        )[0]["decisions"]
        if reviewed:
            others = [user for user in approvers.assigned(known_users) or () if user != user_id]
            who = f" ({_either(others)} may)" if others else ""
            return Refusal(
                RefusalReason.REVIEWED_THE_RUN,
                f"{user_id} took {reviewed} review decisions on this run: with BILLING_SYNC_FOUR_EYES=1 another "
                f"approver approves it{who}",
            )
    if not form_fingerprint:
        return Refusal(
            RefusalReason.UNBOUND_ANSWER,
            f"the answer does not say which figures it approves: send the form's {FORM_FINGERPRINT_PARAM} "
            "(the params of GET …/hitlDetails) in params_input",
        )
    current = form_fingerprint_now(warehouse, month, run_id)
    if form_fingerprint != current:
        return Refusal(
            RefusalReason.STALE_FORM,
            f"the plan of {month} changed after this form was shown (review decisions since): nothing was approved. "
            "Reload the form: it shows what approving loads now",
        )
    return None


def form_fingerprint_now(warehouse: Warehouse, month: str, run_id: str) -> str:
    return form_fingerprint(run_id, answer_figures(warehouse, month, run_id))


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


def record_decision(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    decision: ApprovalDecision,
    *,
    answered_form: str | None = None,
) -> int:
    """Store the decision in one transaction, holding the month (review decisions queue behind it, and a review
    decision taken first makes a stale form's answer fail here): approve exactly the set of lines its answer
    approves now, with who and when, and add its `month_approvals` row with that set's fingerprint and figures.
    With `answered_form` (the fingerprint of the form a person answered), that form must still match the plan,
    else `ApprovalRefusedError` and nothing is written. Returns how many plan rows became approved."""
    plan = warehouse.table("plan_actions")
    with warehouse.begin() as conn:
        warehouse.lock_month(conn, month)
        joined = warehouse.within(conn)
        answered = joined.query(
            "SELECT decision, decided_by FROM month_approvals WHERE run_id = :run_id", {"run_id": run_id}
        )
        if answered:
            raise ApprovalRefusedError(
                Refusal(
                    RefusalReason.ALREADY_ANSWERED,
                    f"the approval of run {run_id} was answered already ({answered[0]['decision']} by "
                    f"{answered[0]['decided_by'] or 'the timeout'})",
                )
            )
        answers = answer_figures(joined, month, run_id)
        current_form = form_fingerprint(run_id, answers)
        if answered_form is not None and answered_form != current_form:
            raise ApprovalRefusedError(
                Refusal(
                    RefusalReason.STALE_FORM,
                    f"the plan of {month} changed after the form was shown: the answer of {decision.decided_by} was "
                    "not recorded; the form asks again with what approving loads now",
                )
            )
        figures = answers.get(decision.decision.answer or "")
        approved = 0
        if figures is not None:
            for batch in _batched(figures.action_ids, _ID_BATCH):
                approved += conn.execute(
                    plan.update()
                    .where(
                        plan.c.run_id == run_id,
                        plan.c.month == month,
                        plan.c.action_id.in_(batch),
                        plan.c.status.in_((PROPOSED, FLAGGED)),
                    )
                    .values(status=APPROVED, decided_by=decision.decided_by, decided_at=decision.decided_at)
                ).rowcount
            if approved != figures.lines:  # the lock holds the month: only a broken invariant gets here
                raise RuntimeError(f"approved {approved} lines of run {run_id}, expected {figures.lines}")
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
                    "approved_fingerprint": figures.fingerprint if figures is not None else None,
                    "approved_figures": json.dumps(figures.as_dict(), sort_keys=True) if figures is not None else None,
                    "form_fingerprint": current_form,
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


class ApprovedSetChangedError(Exception):
    """The plan lines a load would write are not the set an approval signed: nothing is loaded."""


def check_load_matches_approvals(warehouse: Warehouse, month: str) -> int:
    """Refuse a load whose set differs from what was signed: every run of the month with approved lines must have a
    recorded approval whose fingerprint is the fingerprint of its approved (or since loaded) lines. Returns how many
    approved lines wait to load; raises `ApprovedSetChangedError` naming the run and the difference."""
    rows = warehouse.query(
        "SELECT run_id, action_id, status FROM plan_actions WHERE month = :month AND status IN ('approved', 'applied',"
        " 'failed')",
        {"month": month},
    )
    by_run: dict[str, list[str]] = {}
    waiting = 0
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row["action_id"])
        waiting += row["status"] == APPROVED
    pending_runs = {row["run_id"] for row in rows if row["status"] == APPROVED}
    # approved lines of a run that a later run's plan took over before they were sent (`include.plan.replace_plan`)
    # were signed by it too: they count in its set, and never load under it
    for row in warehouse.query(
        "SELECT run_id, action_id FROM superseded_plan_actions WHERE month = :month AND status = 'approved'",
        {"month": month},
    ):
        if row["run_id"] in pending_runs:
            by_run[row["run_id"]].append(row["action_id"])
    for run_id in sorted(pending_runs):
        approvals = [row for row in recorded_decisions(warehouse, month, run_id) if Decision(row["decision"]).loads]
        if not approvals:
            raise ApprovedSetChangedError(
                f"run {run_id} of {month} has approved lines but no recorded approval: nothing is loaded "
                "(lines set to approved by hand are never written; approve the month in the form)"
            )
        signed = approvals[-1]
        if signed["approved_fingerprint"] is None:
            continue  # approved before approvals recorded their set
        now = set_fingerprint(run_id, by_run[run_id])
        if now != signed["approved_fingerprint"]:
            figures = json.loads(signed["approved_figures"] or "{}")
            raise ApprovedSetChangedError(
                f"the approved lines of run {run_id} ({month}) are not the set {signed['decided_by']} approved at "
                f"{signed['decided_at']}: {len(by_run[run_id])} lines now, {figures.get('lines', '?')} signed "
                f"(fingerprint {now[:12]} ≠ {str(signed['approved_fingerprint'])[:12]}): nothing is loaded"
            )
    return waiting


# -- the approval form --------------------------------------------------------------------------------------


def render_subject(summary: ApprovalSummary) -> str:
    return f"Approve the Autotask changes for {summary.month}?"


def render_body(summary: ApprovalSummary, settings: SyncSettings | None = None, who_may: str | None = None) -> str:
    """The approval form's text (Markdown) for a finance person. Every value from the data is escaped. `who_may`:
    who may answer, in words (`Approvers.describe`)."""
    settings = settings or SyncSettings()
    held = {status: summary.count(status) for status in (FLAGGED, NEEDS_MAPPING, BLOCKED)}
    proposed = summary.answers.get(OPTION_APPROVE) or AnswerFigures(OPTION_APPROVE)
    with_flagged = summary.answers.get(OPTION_APPROVE_WITH_FLAGGED) or AnswerFigures(OPTION_APPROVE_WITH_FLAGGED)
    one_by_one = (
        f", {proposed.line_approved} of them flagged lines approved one by one on the review page"
        if proposed.line_approved
        else ""
    )
    lines = [
        f"## Billing month {summary.month}: changes for Autotask",
        "",
        f"Run {_code(summary.run_id)}. Nothing has been written to Autotask yet.",
        "",
        "**Your options**",
        *_loading_options(proposed, with_flagged, held[FLAGGED], one_by_one),
        f"- **{OPTION_REJECT}**: loads nothing. Without an answer within {_number(settings.approval_timeout_hours)} "
        "hours the month counts as rejected.",
        "",
        f"Never loaded from here: {held[NEEDS_MAPPING]} lines that need a mapping and {held[BLOCKED]} blocked lines.",
        "",
        "### What each answer loads",
        "",
        *form_figures(summary),
        "",
        "Billed is what the customer is billed (unit price × units), cost what you pay (BSS unit cost × units), margin "
        "billed − cost: the monthly change per billing period, per currency (amounts in different currencies are "
        "never added together).",
        "",
        "### The month per currency",
        "",
        *form_buckets(summary),
        "",
        f"Form {_code(summary.form_fingerprint[:12])}: your answer approves exactly the lines above. A review decision "
        "taken after this form was shown changes them; the form is then refreshed, and an answer to the old one is "
        "refused.",
        *([f"Who may answer: {_md(who_may)}."] if who_may else []),
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
            # a suite that failed without a critical failure let the month through: held lines (blocked, see
            # above) or warnings
            verdict = (
                "FAILED"
                if line.critical_failures
                else "passed"
                if line.success
                else "passed, with held lines or warnings"
            )
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
    lines += _where_to_look(summary)
    lines.append(
        f"- Review page (grid, mapping decisions, exports): [open the billing review]({summary.review_link})"
        if summary.review_link
        else "- Review page: not available yet (use the warehouse table plan_actions)"
    )
    return "\n".join(lines)


def _loading_options(proposed: AnswerFigures, with_flagged: AnswerFigures, flagged: int, one_by_one: str) -> list[str]:
    """What the two approving answers load, in words; an answer that loads no line says so (a re-run of a month
    Autotask already holds offers nothing to load, and approving it closes the month without a write)."""
    if proposed.lines:
        approve = f"- **{OPTION_APPROVE}**: loads these {proposed.lines} lines{one_by_one}: {_kinds(proposed)}."
    else:
        approve = (
            f"- **{OPTION_APPROVE}**: nothing to load: no line is proposed (Autotask already holds what the BSS "
            "billed, or every line is held back below). Approving closes the month without writing to Autotask."
        )
    if with_flagged.lines and flagged:
        flagged_text = (
            f"- **{OPTION_APPROVE_WITH_FLAGGED}**: loads these {with_flagged.lines} lines, all {flagged} flagged "
            f"lines included (read their reasons below first): {_kinds(with_flagged)}."
        )
    elif with_flagged.lines:
        flagged_text = f"- **{OPTION_APPROVE_WITH_FLAGGED}**: no line is flagged: the same as {OPTION_APPROVE}."
    else:
        flagged_text = f"- **{OPTION_APPROVE_WITH_FLAGGED}**: nothing to load either: no line is proposed or flagged."
    return [approve, flagged_text]


def _where_to_look(summary: ApprovalSummary) -> list[str]:
    """Links a person can open (built from the configured base URL), never a path on the server."""
    if summary.files_link is None:  # no address known: say where the files are without a server path
        return [
            "- Data-quality report (Data Docs) and run report: on the Billing months page of the Airflow UI "
            "(Browse → Billing months)"
        ]
    docs = f"[open the Data Docs]({summary.files_link}/index.html)" if summary.data_docs_index else "not written yet"
    months = f"[the Billing months page]({summary.months_link})" if summary.months_link else "the Billing months page"
    return [
        f"- Data-quality report (Data Docs): {docs}",
        f"- Run report: written when the run ends (also for a rejection); open it from {months}",
    ]


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


def _role_rank(role: str | None) -> int:
    text = (role or "").strip().lower()
    return ROLE_ORDER.index(text) if text in ROLE_ORDER else -1


def _either(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1] if items else "nobody"


def _batched(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _line_name(row: Mapping[str, Any]) -> str:
    subscriptions = json.loads(row["subscription_ids"] or "[]")
    target = str(row["idempotency_key"]).split("|")[2] if row["idempotency_key"] else ""
    parts = [", ".join(subscriptions[:2]) or target, f"account {row['account_id']}" if row["account_id"] else ""]
    return " / ".join(part for part in parts if part)


def form_figures(summary: ApprovalSummary) -> list[str]:
    """The form's table of figures (Markdown rows): per answer that loads something and per currency, the adjustments,
    units and monthly cost it adds and removes. The one place the form's money comes from."""
    rows = [
        "| answer | currency | adjustments | units added | units removed | billed added | billed removed "
        "| cost added | cost removed | margin |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for answer in (OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED):
        figures = summary.answers.get(answer) or AnswerFigures(answer)
        if not figures.currencies:
            rows.append(f"| {answer} | – | 0 | 0 | 0 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |")
        for currency, changes in sorted(figures.currencies.items()):
            rows.append(
                f"| {answer} | {_md(currency)} | {changes.actions} | {units_text(changes.units_added)} | "
                f"{units_text(changes.units_removed)} | {money_text(changes.billed_added)} | "
                f"{money_text(changes.billed_removed)} | {money_text(changes.cost_added)} | "
                f"{money_text(changes.cost_removed)} | {money_text(changes.margin, signed=True)} |"
            )
    return rows


def form_buckets(summary: ApprovalSummary) -> list[str]:
    """The form's table of the whole run per currency (Markdown rows): billed, cost and margin of what loads on
    approval ("Approve proposed"), what waits for a person and what is blocked or excluded — the same figures, from
    the same lines, as the review page's totals."""
    rows = [
        "| currency | part of the month: lines | billed | cost | margin |",
        "|---|---|---:|---:|---:|",
    ]
    if not summary.money.by_currency:
        rows.append("| – | – | 0.00 | 0.00 | 0.00 |")
    for currency in summary.money.currencies():
        for bucket, label in BUCKETS.items():
            money = summary.money.by_currency[currency].get(bucket)
            if money is None:
                continue
            rows.append(
                f"| {_md(currency)} | {label}: {money.lines} | {money_text(money.billed, signed=True)} | "
                f"{money_text(money.cost, signed=True)} | {money_text(money.margin, signed=True)} |"
            )
    return rows


def _kinds(figures: AnswerFigures) -> str:
    if not figures.by_kind:
        return "nothing"
    return ", ".join(
        f"{count} {_md(kind.replace('_', ' '))}"
        for kind, count in sorted(figures.by_kind.items(), key=lambda item: (-item[1], item[0]))
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


def _plain(value: Decimal) -> str:
    return f"{value.normalize():f}" if value else "0"


def _cents(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _money(value: Any) -> str:
    return money_text(value)


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
