"""The approval gate without Airflow: the form's text, the decision an answer stands for, what it approves,
and when the auto_if_clean policy may approve a month alone. Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from itertools import count
from typing import Any

import pytest

from include.approval import (
    OPTION_APPROVE,
    OPTION_APPROVE_WITH_FLAGGED,
    OPTION_REJECT,
    POLICY_USER,
    Decision,
    decision_from_response,
    policy_decision,
    policy_refusals,
    record_decision,
    recorded_decisions,
    render_body,
    summarise_plan,
)
from include.sync_settings import ApprovalPolicy, SyncSettings
from include.warehouse import Warehouse

MONTH = "2026-10"
RUN = "manual__2026-11-02T08:00:00+00:00"
OTHER_RUN = "manual__2026-10-02T08:00:00+00:00"
APPROVER = "Zoë O'Brien (finance)"
_seq = count(1)


def plan_row(status: str, kind: str = "adjust_units", run_id: str = RUN, month: str = MONTH, **values: Any) -> dict:
    seq = next(_seq)
    target = values.pop("target", f"cs:C{seq}/V1")
    row = {
        "action_id": f"a{seq:05d}",
        "idempotency_key": f"{month}|{kind}|{target}|2026-10-15",
        "month": month,
        "run_id": run_id,
        "seq": seq,
        "kind": kind,
        "status": status,
        "reason": None,
        "account_id": "ACC-1",
        "subscription_ids": json.dumps([f"SUB-{seq}"]),
        "units_before": None,
        "units_after": None,
        "unit_change": None,
        "unit_cost_before": None,
        "unit_cost_after": None,
        "payload": "{}",
        "charge_ids": "[]",
        "depends_on": "[]",
        "created_at": datetime(2026, 11, 2, 8, 5),
    }
    row.update(values)
    return row


def adjustment(status: str, before: str, after: str, cost: str = "10", **values: Any) -> dict:
    return plan_row(
        status,
        units_before=Decimal(before),
        units_after=Decimal(after),
        unit_change=Decimal(after) - Decimal(before),
        unit_cost_before=Decimal(cost),
        unit_cost_after=Decimal(cost),
        **values,
    )


def quality_row(suite: str, stage: str, success: bool = True, critical: int = 0, warnings: int = 0) -> dict:
    return {
        "run_id": RUN,
        "suite": suite,
        "month": MONTH,
        "stage": stage,
        "success": success,
        "row_count": 10,
        "evaluated": 10,
        "critical_failures": critical,
        "warning_failures": warnings,
        "failures": "[]",
        "data_docs_index": f"/srv/data_docs/{MONTH}/run/index.html",
        "validated_at": datetime(2026, 11, 2, 8, 1 + len(suite) % 50),
    }


def charge_line(row: dict, currency: str, unit_cost: str) -> dict:
    """The BSS line behind a plan row's subscription: its currency and unit cost."""
    (subscription,) = json.loads(row["subscription_ids"])
    return {
        "month": row["month"],
        "charge_id": f"CHG-{subscription}",
        "account_id": row["account_id"],
        "account_name": "Société Générale",
        "subscription_id": subscription,
        "product_id": "PRD-1",
        "product_name": "Seats",
        "billing_period": "Monthly",
        "billing_cycle": "Monthly",
        "charge_type": "Recurring",
        "action": "Cycle",
        "quantity": Decimal(1),
        "subscription_quantity": Decimal(1),
        "unit_cost": Decimal(unit_cost),
        "unit_price": Decimal(unit_cost) * 2,
        "currency": currency,
        "charge_start_date": datetime(2026, 10, 1).date(),
        "charge_end_date": datetime(2026, 10, 31).date(),
        "effective_date": datetime(2026, 10, 1).date(),
        "run_id": row["run_id"],
    }


def store(warehouse: Warehouse, plan: list[dict], quality: list[dict] | None = None, lines: list | None = None) -> None:
    with warehouse.begin() as conn:
        warehouse.insert(conn, "plan_actions", plan)
        if quality:
            warehouse.insert(conn, "quality_results", quality)
        if lines:
            warehouse.insert(conn, "charge_lines", lines)


CLEAN_QUALITY = [quality_row("charge_lines", "charges"), quality_row("change_plan", "plan")]


@pytest.fixture
def mixed_month(warehouse: Warehouse) -> Warehouse:
    """A month with every status, hostile names in reasons, two currencies, and an older run's rows of the same
    month."""
    plan = [
        adjustment("proposed", "10", "15", cost="12.50"),  # +5 units, +62.50 EUR
        adjustment("proposed", "8", "6", cost="3"),  # -2 units, -6.00 GBP
        plan_row("proposed", kind="create_company", target="account:ACC-9"),
        adjustment(
            "flagged",
            "20",
            "12",
            cost="7",
            reason="decrease inside a 12-month commitment; contract of Société Générale | <script>x</script>",
        ),  # -8 units, -56.00 EUR
        adjustment("flagged", "5", "4", cost="7", reason="decrease inside a 12-month commitment"),  # -1, -7.00 GBP
        adjustment("needs-mapping", "0", "3", reason='account ACC-7 "Müller & Söhne GmbH" is not linked'),
        adjustment("blocked", "1", "2", reason="the line is billed in USD, the company in GBP"),
        adjustment("proposed", "1", "9", run_id=OTHER_RUN, month=MONTH),
        adjustment("proposed", "1", "9", month="2026-09", run_id=RUN),
    ]
    currencies = ["EUR", "GBP", None, "EUR", "GBP", "EUR", "USD", "EUR", None]
    lines = [
        charge_line(row, currency, "1")
        for row, currency in zip(plan, currencies, strict=True)
        if currency and row["month"] == MONTH
    ]
    store(warehouse, plan, CLEAN_QUALITY, lines)
    return warehouse


def test_the_body_tells_a_finance_person_what_the_month_changes_and_why_lines_are_held(mixed_month) -> None:
    summary = summarise_plan(
        mixed_month,
        MONTH,
        RUN,
        report_dir="/srv/data_docs/2026-10/run",
        review_link="https://airflow/billing/review",
        files_link="https://airflow/billing/files/2026-10/run",
        months_link="https://airflow/billing/months",
    )
    assert summary.by_status == {"proposed": 3, "flagged": 2, "needs-mapping": 1, "blocked": 1}
    assert summary.by_kind_status["adjust_units"]["proposed"] == 2
    assert (summary.proposed.units_added, summary.proposed.units_removed) == (Decimal(5), Decimal(2))
    assert (summary.proposed.cost_added, summary.proposed.cost_removed) == (Decimal("62.50"), Decimal(6))
    assert (summary.flagged.units_added, summary.flagged.units_removed) == (Decimal(0), Decimal(9))
    assert summary.flagged.cost_removed == Decimal(63)
    # a reason counts whole (its own "; " never cuts it into fragments)
    flagged_reasons = {reason.reason: reason.lines for reason in summary.held_reasons if reason.status == "flagged"}
    assert flagged_reasons == {
        "decrease inside a 12-month commitment; contract of Société Générale | <script>x</script>": 1,
        "decrease inside a 12-month commitment": 1,
    }

    # what each answer approves, per currency: never an amount summed across currencies
    approve, with_flagged = summary.answers[OPTION_APPROVE], summary.answers[OPTION_APPROVE_WITH_FLAGGED]
    assert approve.lines == 3 and with_flagged.lines == 5
    assert approve.by_kind == {"adjust_units": 2, "create_company": 1}
    assert set(approve.currencies) == {"EUR", "GBP"}
    assert (approve.currencies["EUR"].cost_added, approve.currencies["GBP"].cost_removed) == (Decimal("62.5"), 6)
    assert with_flagged.currencies["EUR"].cost_removed == 56 and with_flagged.currencies["GBP"].cost_removed == 13

    body = render_body(summary, SyncSettings())
    for expected in (
        # billed at the BSS unit price (2 here), cost at the plan's unit cost, margin = billed − cost
        "| Approve proposed | EUR | 1 | 5 | 0 | 10.00 | 0.00 | 62.50 | 0.00 | −52.50 |",
        "| Approve proposed | GBP | 1 | 0 | 2 | 0.00 | 4.00 | 0.00 | 6.00 | +2.00 |",
        "| Approve incl. flagged | EUR | 2 | 5 | 8 | 10.00 | 16.00 | 62.50 | 56.00 | −12.50 |",
        "| Approve incl. flagged | GBP | 2 | 0 | 3 | 0.00 | 6.00 | 0.00 | 13.00 | +7.00 |",
        # the whole run per currency: what waits for a person (flagged), what is blocked (the USD line)
        "| EUR | loads on approval: 1 | +10.00 | +62.50 | −52.50 |",
        "| EUR | waits for a person: 2 | −10.00 | −26.00 | +16.00 |",  # flagged −8 units, needs-mapping +3
        "| GBP | loads on approval: 1 | −4.00 | −6.00 | +2.00 |",
        "| GBP | waits for a person: 1 | −2.00 | −7.00 | +5.00 |",
        "| USD | blocked or excluded: 1 | +2.00 | +10.00 | −8.00 |",
        "loads these 3 lines: 2 adjust units, 1 create company",
        f"Form `{summary.form_fingerprint[:12]}`",
        "1 need a mapping, 2 are flagged, 1 are blocked",
        "Müller & Söhne GmbH",
        "billed in USD, the company in GBP",
        "charge\\_lines (charges): passed, 0 critical, 0 warnings",
        "[open the Data Docs](https://airflow/billing/files/2026-10/run/index.html)",
        "open it from [the Billing months page](https://airflow/billing/months)",
        "https://airflow/billing/review",
        OPTION_APPROVE,
        OPTION_APPROVE_WITH_FLAGGED,
        "168 hours",
    ):
        assert expected in body, expected
    # links, never a path on the server
    assert "/srv/" not in body
    # a customer's text cannot break the table or inject markup
    assert "<script>" not in body and "\\<script\\>x\\</script\\>" in body
    assert "Société Générale \\| " in body
    # the older run's and the other month's rows are not in this run's form
    assert "| adjust units | 1 | 2 | 1 | 2 |" in body


def test_an_answer_becomes_a_decision_with_the_responding_user_and_time() -> None:
    at = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
    user = {"id": "7", "name": APPROVER}
    approved = decision_from_response(
        {"chosen_options": [OPTION_APPROVE], "responded_by_user": user, "responded_at": at}
    )
    assert (approved.decision, approved.decided_by, approved.decided_at) == (
        Decision.APPROVED,
        APPROVER,
        datetime(2026, 11, 3, 9, 30),
    )
    assert approved.decision.approves == ("proposed",)
    with_flagged = decision_from_response(
        {"chosen_options": [OPTION_APPROVE_WITH_FLAGGED], "responded_by_user": user, "responded_at": at.isoformat()}
    )
    assert with_flagged.decision is Decision.APPROVED_WITH_FLAGGED
    assert with_flagged.decision.approves == ("proposed", "flagged")
    assert with_flagged.decided_at == datetime(2026, 11, 3, 9, 30)
    rejected = decision_from_response(
        {"chosen_options": [OPTION_REJECT], "responded_by_user": user, "responded_at": at}
    )
    assert rejected.decision is Decision.REJECTED and not rejected.decision.loads and rejected.decided_by == APPROVER
    # the timeout picks the default (Reject) and nobody responded
    timed_out = decision_from_response(
        {"chosen_options": [OPTION_REJECT], "responded_by_user": None, "responded_at": at}
    )
    assert timed_out.decision is Decision.TIMED_OUT and timed_out.decided_by is None and not timed_out.decision.loads
    with pytest.raises(ValueError, match="unknown approval options"):
        decision_from_response({"chosen_options": ["Approve"], "responded_by_user": user, "responded_at": at})


@pytest.mark.parametrize(
    ("option", "approved_statuses"),
    [(OPTION_APPROVE, {"proposed"}), (OPTION_APPROVE_WITH_FLAGGED, {"proposed", "flagged"})],
)
def test_approval_approves_only_the_runs_proposed_and_chosen_flagged_actions(
    mixed_month, option: str, approved_statuses: set[str]
) -> None:
    before = {
        row["action_id"]: row for row in mixed_month.query("SELECT action_id, status, run_id, month FROM plan_actions")
    }
    at = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
    decision = decision_from_response(
        {"chosen_options": [option], "responded_by_user": {"id": "7", "name": APPROVER}, "responded_at": at}
    )
    approved = record_decision(mixed_month, MONTH, RUN, decision)

    rows = mixed_month.query("SELECT action_id, status, decided_by, decided_at FROM plan_actions")
    changed = {row["action_id"] for row in rows if row["status"] != before[row["action_id"]]["status"]}
    expected = {
        action_id
        for action_id, row in before.items()
        if row["status"] in approved_statuses and row["run_id"] == RUN and row["month"] == MONTH
    }
    assert changed == expected and approved == len(expected) == (5 if "flagged" in approved_statuses else 3)
    for row in rows:
        if row["action_id"] in expected:
            assert row["status"] == "approved" and row["decided_by"] == APPROVER
            assert str(row["decided_at"]).startswith("2026-11-03 09:30")
        else:
            assert row["decided_by"] is None
    # needs-mapping and blocked lines are never approved by the form
    assert {row["status"] for row in rows if row["action_id"] not in expected} <= {
        "proposed",
        "flagged",
        "needs-mapping",
        "blocked",
    }
    [recorded] = recorded_decisions(mixed_month, MONTH, RUN)
    assert recorded["decision"] == str(decision.decision) and recorded["decided_by"] == APPROVER
    assert json.loads(recorded["options"]) == [option] and recorded["approved_actions"] == approved


@pytest.mark.parametrize("responded_by", [{"id": "7", "name": APPROVER}, None])
def test_a_rejection_or_a_timeout_approves_nothing_and_is_recorded(mixed_month, responded_by) -> None:
    before = mixed_month.query("SELECT action_id, status, decided_by FROM plan_actions ORDER BY action_id")
    decision = decision_from_response(
        {"chosen_options": [OPTION_REJECT], "responded_by_user": responded_by, "responded_at": datetime.now(UTC)}
    )
    assert record_decision(mixed_month, MONTH, RUN, decision) == 0
    assert mixed_month.query("SELECT action_id, status, decided_by FROM plan_actions ORDER BY action_id") == before
    [recorded] = recorded_decisions(mixed_month, MONTH)
    assert recorded["decision"] == ("rejected" if responded_by else "timed_out")
    assert recorded["approved_actions"] == 0 and recorded["decided_by"] == (APPROVER if responded_by else None)


AUTO = SyncSettings(
    approval_policy=ApprovalPolicy.AUTO_IF_CLEAN, auto_approve_max_units=10, auto_approve_max_monthly_cost=100
)


def test_the_policy_approves_a_clean_small_month_alone_and_says_so(warehouse: Warehouse) -> None:
    store(
        warehouse,
        [adjustment("proposed", "10", "13", cost="9.99"), adjustment("proposed", "4", "2", cost="5")],
        CLEAN_QUALITY,
    )
    summary = summarise_plan(warehouse, MONTH, RUN)
    assert policy_refusals(summary, AUTO) == []
    decision = policy_decision(summary, AUTO)
    assert decision is not None and decision.decision is Decision.APPROVED_BY_POLICY
    assert decision.decided_by == POLICY_USER and "5 units" in decision.note
    assert record_decision(warehouse, MONTH, RUN, decision) == 2
    assert {row["decided_by"] for row in warehouse.query("SELECT decided_by FROM plan_actions")} == {POLICY_USER}
    assert recorded_decisions(warehouse, MONTH)[0]["decision"] == "approved_by_policy"
    # the same month under the manual policy waits for a person
    assert policy_decision(summary, SyncSettings()) is None


@pytest.mark.parametrize(
    ("plan", "quality", "refusal"),
    [
        ([adjustment("proposed", "1", "2")], [quality_row("charge_lines", "charges", warnings=1)], "1 warning"),
        ([adjustment("proposed", "1", "2")], [quality_row("change_plan", "plan", False, critical=2)], "2 critical"),
        ([adjustment("proposed", "1", "2")], [], "no data-quality result"),
        ([adjustment("proposed", "1", "2"), adjustment("flagged", "3", "1", reason="x")], CLEAN_QUALITY, "flagged"),
        ([adjustment("needs-mapping", "0", "1", reason="unlinked")], CLEAN_QUALITY, "need a mapping"),
        ([adjustment("blocked", "0", "1", reason="currency")], CLEAN_QUALITY, "blocked"),
        ([adjustment("proposed", "0", "6"), adjustment("proposed", "9", "4")], CLEAN_QUALITY, "11 units change"),
        ([adjustment("proposed", "1", "2", cost="100.01")], CLEAN_QUALITY, "100.01"),
    ],
)
def test_the_policy_leaves_a_month_to_a_person_unless_it_is_clean_and_small(
    warehouse: Warehouse, plan: list[dict], quality: list[dict], refusal: str
) -> None:
    store(warehouse, plan, quality)
    summary = summarise_plan(warehouse, MONTH, RUN)
    refusals = policy_refusals(summary, AUTO)
    assert any(refusal in text for text in refusals), refusals
    assert policy_decision(summary, AUTO) is None
    # the form says why the policy left the month to a person
    assert "Why the policy did not approve this month" in render_body(summary, AUTO)


def test_an_empty_plan_reads_as_nothing_to_change(warehouse: Warehouse) -> None:
    store(warehouse, [], CLEAN_QUALITY)
    summary = summarise_plan(warehouse, MONTH, RUN)
    assert "Autotask already holds what the BSS billed" in render_body(summary)
    assert policy_decision(summary, AUTO) is not None


# -- what is signed is what loads ---------------------------------------------------------------------------------


def test_the_recorded_approval_stores_the_signed_set_and_its_figures(mixed_month) -> None:
    from include.approval import ApprovalDecision, answer_figures, set_fingerprint

    flagged = mixed_month.query(
        "SELECT action_id FROM plan_actions WHERE run_id = :r AND status = 'flagged'", {"r": RUN}
    )
    with mixed_month.begin() as conn:  # a reviewer approved one flagged line on the review page
        mixed_month.insert(
            conn,
            "review_line_approvals",
            [
                {
                    "run_id": RUN,
                    "action_id": flagged[0]["action_id"],
                    "month": MONTH,
                    "approved_by": "x",
                    "approved_at": datetime(2026, 11, 2),
                }
            ],
        )
    signed = answer_figures(mixed_month, MONTH, RUN)[OPTION_APPROVE]
    assert signed.lines == 4 and signed.line_approved == 1 and flagged[0]["action_id"] in signed.action_ids
    decision = ApprovalDecision(Decision.APPROVED, APPROVER, datetime(2026, 11, 3, 9), (OPTION_APPROVE,))
    assert record_decision(mixed_month, MONTH, RUN, decision) == 4
    [recorded] = recorded_decisions(mixed_month, MONTH, RUN)
    approved = mixed_month.query(
        "SELECT action_id FROM plan_actions WHERE run_id = :r AND status = 'approved'", {"r": RUN}
    )
    assert {row["action_id"] for row in approved} == set(signed.action_ids)
    assert recorded["approved_fingerprint"] == set_fingerprint(RUN, signed.action_ids) == signed.fingerprint
    figures = json.loads(recorded["approved_figures"])
    assert figures["lines"] == 4 and figures["line_approved"] == 1
    assert figures["currencies"]["EUR"]["cost_removed"] == "56.00" and "cost_added" in figures["currencies"]["GBP"]


def test_an_answer_to_a_form_the_plan_no_longer_matches_is_refused_and_nothing_is_written(mixed_month) -> None:
    from include.approval import ApprovalDecision, ApprovalRefusedError, RefusalReason, form_fingerprint_now

    shown = form_fingerprint_now(mixed_month, MONTH, RUN)
    before = mixed_month.query("SELECT action_id, status FROM plan_actions ORDER BY action_id")
    with mixed_month.begin() as conn:  # a review decision after the form was shown: a proposed line excluded
        conn.execute(
            __import__("sqlalchemy").text("UPDATE plan_actions SET status = 'excluded' WHERE action_id = :a"),
            {"a": next(row["action_id"] for row in before if row["status"] == "proposed")},
        )
    changed = mixed_month.query("SELECT action_id, status FROM plan_actions ORDER BY action_id")
    decision = ApprovalDecision(Decision.APPROVED, APPROVER, datetime(2026, 11, 3, 9), (OPTION_APPROVE,))
    with pytest.raises(ApprovalRefusedError) as refused:
        record_decision(mixed_month, MONTH, RUN, decision, answered_form=shown)
    assert refused.value.refusal.reason is RefusalReason.STALE_FORM and refused.value.refusal.status == 409
    assert mixed_month.query("SELECT action_id, status FROM plan_actions ORDER BY action_id") == changed
    assert recorded_decisions(mixed_month, MONTH, RUN) == []
    # the form as it is now is accepted; a second answer is refused
    assert (
        record_decision(mixed_month, MONTH, RUN, decision, answered_form=form_fingerprint_now(mixed_month, MONTH, RUN))
        == 2
    )
    with pytest.raises(ApprovalRefusedError, match="answered already"):
        record_decision(mixed_month, MONTH, RUN, decision)


def test_who_may_answer_is_named_by_the_settings_and_anyone_else_is_told_who_may(mixed_month) -> None:
    from include.approval import Approvers, RefusalReason, check_answer, form_fingerprint_now

    known = [("admin", "admin"), ("finance", "op"), ("clerk", "user"), ("viewer", "viewer")]
    by_role = Approvers.of(SyncSettings())
    assert [user for user, role in known if by_role.may_answer(user, role)] == ["admin", "finance"]
    assert by_role.assigned(known) == ["admin", "finance"] and by_role.assigned([]) is None
    named = Approvers.of(SyncSettings.from_env({"BILLING_SYNC_APPROVERS": "finance, ctrl"}))
    assert named.may_answer("finance", None) and not named.may_answer("admin", "admin")
    assert named.assigned(known) == ["finance", "ctrl"]

    form = form_fingerprint_now(mixed_month, MONTH, RUN)

    def check(user: str, role: str | None, settings: SyncSettings, option: str = OPTION_APPROVE, fingerprint=form):
        return check_answer(
            mixed_month,
            MONTH,
            RUN,
            user_id=user,
            role=role,
            chosen_options=[option],
            form_fingerprint=fingerprint,
            settings=settings,
            known_users=known,
        )

    refused = check("clerk", "user", SyncSettings())
    assert refused.reason is RefusalReason.NOT_AN_APPROVER and refused.status == 403
    assert refused.message == (
        "clerk may not answer the approval of 2026-10: users with the role op or admin "
        "(BILLING_SYNC_APPROVER_ROLE=op): admin or finance may"
    )
    assert check("clerk", "user", SyncSettings(), OPTION_REJECT).reason is RefusalReason.NOT_AN_APPROVER
    assert "finance or ctrl (named by BILLING_SYNC_APPROVERS)" in check("admin", "admin", named_settings()).message
    assert check("finance", "op", SyncSettings()) is None
    assert check("finance", "op", SyncSettings(), fingerprint=None).reason is RefusalReason.UNBOUND_ANSWER
    assert check("finance", "op", SyncSettings(), fingerprint="0" * 64).reason is RefusalReason.STALE_FORM
    assert check("finance", "op", SyncSettings(), OPTION_REJECT, fingerprint=None) is None  # a rejection loads nothing


def named_settings() -> SyncSettings:
    return SyncSettings.from_env({"BILLING_SYNC_APPROVERS": "finance,ctrl"})


def test_the_two_person_rule_keeps_a_reviewer_from_approving_the_run_they_reviewed(mixed_month) -> None:
    from include.approval import RefusalReason, check_answer, form_fingerprint_now

    with mixed_month.begin() as conn:
        mixed_month.insert(
            conn,
            "review_decisions",
            [
                {
                    "decision_id": "d1",
                    "run_id": RUN,
                    "month": MONTH,
                    "decision": "exclude",
                    "action_id": "a1",
                    "kind": None,
                    "source_key": None,
                    "target_id": None,
                    "before_state": "{}",
                    "after_state": "{}",
                    "decided_by": "admin",
                    "decided_at": datetime(2026, 11, 2),
                    "note": None,
                }
            ],
        )
    known = [("admin", "admin"), ("finance", "op")]
    four_eyes = SyncSettings(four_eyes=True)
    form = form_fingerprint_now(mixed_month, MONTH, RUN)
    kwargs = {"chosen_options": [OPTION_APPROVE], "form_fingerprint": form, "known_users": known}
    refused = check_answer(mixed_month, MONTH, RUN, user_id="admin", role="admin", settings=four_eyes, **kwargs)
    assert refused.reason is RefusalReason.REVIEWED_THE_RUN and "finance may" in refused.message
    assert check_answer(mixed_month, MONTH, RUN, user_id="finance", role="op", settings=four_eyes, **kwargs) is None
    # without the rule, the reviewer may approve
    assert (
        check_answer(mixed_month, MONTH, RUN, user_id="admin", role="admin", settings=SyncSettings(), **kwargs) is None
    )


def test_the_load_refuses_a_set_other_than_the_signed_one(mixed_month) -> None:
    import sqlalchemy as sa

    from include.approval import ApprovalDecision, ApprovedSetChangedError, check_load_matches_approvals

    # lines set to approved by hand, without an approval
    with mixed_month.begin() as conn:
        conn.execute(
            sa.text("UPDATE plan_actions SET status = 'approved' WHERE run_id = :r AND status = 'blocked'"), {"r": RUN}
        )
    with pytest.raises(ApprovedSetChangedError, match="no recorded approval"):
        check_load_matches_approvals(mixed_month, MONTH)
    with mixed_month.begin() as conn:
        conn.execute(
            sa.text("UPDATE plan_actions SET status = 'blocked' WHERE run_id = :r AND status = 'approved'"), {"r": RUN}
        )
    decision = ApprovalDecision(Decision.APPROVED, APPROVER, datetime(2026, 11, 3, 9), (OPTION_APPROVE,))
    record_decision(mixed_month, MONTH, RUN, decision)
    assert check_load_matches_approvals(mixed_month, MONTH) == 3  # the signed lines wait: 2 adjustments, 1 create
    # a line approved after the approval (by hand) changes the set: nothing is loaded
    with mixed_month.begin() as conn:
        conn.execute(
            sa.text("UPDATE plan_actions SET status = 'approved' WHERE run_id = :r AND status = 'flagged'"), {"r": RUN}
        )
    with pytest.raises(
        ApprovedSetChangedError, match=r"not the set Zoë O'Brien \(finance\) approved .*: 5 lines now, 3"
    ):
        check_load_matches_approvals(mixed_month, MONTH)


def test_the_gate_decides_in_one_place(mixed_month) -> None:
    from include.approval import ApprovalDecision, AskPerson, gate

    summary = summarise_plan(mixed_month, MONTH, RUN)
    asked = gate(summary, SyncSettings(), known_users=[("finance", "op"), ("clerk", "user")])
    assert isinstance(asked, AskPerson) and asked.form_fingerprint == summary.form_fingerprint
    assert "Who may answer: users with the role op or admin" in asked.body and "finance" in asked.body
    dry = gate(summary, SyncSettings(dry_run=True))
    assert isinstance(dry, ApprovalDecision) and dry.decision is Decision.DRY_RUN and not dry.decision.loads
