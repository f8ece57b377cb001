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


def store(warehouse: Warehouse, plan: list[dict], quality: list[dict] | None = None) -> None:
    with warehouse.begin() as conn:
        warehouse.insert(conn, "plan_actions", plan)
        if quality:
            warehouse.insert(conn, "quality_results", quality)


CLEAN_QUALITY = [quality_row("charge_lines", "charges"), quality_row("change_plan", "plan")]


@pytest.fixture
def mixed_month(warehouse: Warehouse) -> Warehouse:
    """A month with every status, hostile names in reasons, and an older run's rows of the same month."""
    store(
        warehouse,
        [
            adjustment("proposed", "10", "15", cost="12.50"),  # +5 units, +62.50
            adjustment("proposed", "8", "6", cost="3"),  # -2 units, -6.00
            plan_row("proposed", kind="create_company", target="account:ACC-9"),
            adjustment(
                "flagged",
                "20",
                "12",
                cost="7",
                reason="decrease inside a 12-month commitment; contract of Société Générale | <script>x</script>",
            ),
            adjustment("flagged", "5", "4", cost="7", reason="decrease inside a 12-month commitment"),
            adjustment("needs-mapping", "0", "3", reason='account ACC-7 "Müller & Söhne GmbH" is not linked'),
            adjustment("blocked", "1", "2", reason="the line is billed in USD, the company in GBP"),
            adjustment("proposed", "1", "9", run_id=OTHER_RUN, month=MONTH),
            adjustment("proposed", "1", "9", month="2026-09", run_id=RUN),
        ],
        CLEAN_QUALITY,
    )
    return warehouse


def test_the_body_tells_a_finance_person_what_the_month_changes_and_why_lines_are_held(mixed_month) -> None:
    summary = summarise_plan(
        mixed_month, MONTH, RUN, report_dir="/srv/data_docs/2026-10/run", review_link="https://airflow/billing/review"
    )
    assert summary.by_status == {"proposed": 3, "flagged": 2, "needs-mapping": 1, "blocked": 1}
    assert summary.by_kind_status["adjust_units"]["proposed"] == 2
    assert (summary.proposed.units_added, summary.proposed.units_removed) == (Decimal(5), Decimal(2))
    assert (summary.proposed.cost_added, summary.proposed.cost_removed) == (Decimal("62.50"), Decimal(6))
    assert (summary.flagged.units_added, summary.flagged.units_removed) == (Decimal(0), Decimal(9))
    assert summary.flagged.cost_removed == Decimal(63)
    # a reason made of several causes counts each; the most common comes first
    assert summary.held_reasons[0].reason == "decrease inside a 12-month commitment"
    assert summary.held_reasons[0].lines == 2

    body = render_body(summary, SyncSettings())
    for expected in (
        "| Proposed adjustments | 2 | 5 | 2 | 62.50 | 6.00 |",
        "| Flagged adjustments | 2 | 0 | 9 | 0.00 | 63.00 |",
        "1 need a mapping, 2 are flagged, 1 are blocked",
        "Müller & Söhne GmbH",
        "billed in USD, the company in GBP",
        "charge\\_lines (charges): passed, 0 critical, 0 warnings",
        "`/srv/data_docs/2026-10/run/index.html`",
        "https://airflow/billing/review",
        OPTION_APPROVE,
        OPTION_APPROVE_WITH_FLAGGED,
        "168 hours",
    ):
        assert expected in body, expected
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
