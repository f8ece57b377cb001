"""The approval task both billing DAGs share (`billing_approval.BillingApprovalOperator`), driven without Airflow's
scheduler: the answer Airflow hands the task (`execute_complete`) is recorded only when `include.approval` accepts it,
and otherwise asked again with nothing written. The reversal DAG's approval is recorded like a month's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.approval import form_fingerprint_now, recorded_decisions
from include.identifiers import FORM_FINGERPRINT_PARAM, OPTION_APPROVE, OPTION_REJECT, REVERSAL_DAG_ID, SYNC_DAG_ID
from include.runs import register_run
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse
from tests.include.test_approval import CLEAN_QUALITY, MONTH, RUN, adjustment, plan_row, store

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


class _TaskInstance:
    def __init__(self, results: dict[str, object]) -> None:
        self.results = results

    def xcom_pull(self, task_ids: str) -> object:
        return self.results.get(task_ids)


@pytest.fixture
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    warehouse.migrate()
    monkeypatch.setenv("BILLING_WAREHOUSE_URL", str(warehouse.engine.url))
    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER", "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    )
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,finance:op,clerk:user")
    store(
        warehouse,
        [
            adjustment("proposed", "10", "15", cost="12.50"),
            plan_row("proposed", kind="create_company", target="account:ACC-9"),
            adjustment("flagged", "5", "4", cost="7", reason="decrease inside a 12-month commitment"),
        ],
        CLEAN_QUALITY,
    )
    return warehouse


def answer(user: str, option: str, fingerprint: str | None) -> dict:
    return {
        "chosen_options": [option],
        "params_input": {FORM_FINGERPRINT_PARAM: fingerprint} if fingerprint else {},
        "responded_at": datetime(2026, 11, 3, 9, tzinfo=UTC),
        "responded_by_user": {"id": user, "name": user},
    }


def test_an_approvers_answer_to_the_current_form_is_recorded_with_its_set(dag_bag, planned: Warehouse) -> None:
    register_run(planned, RUN, SYNC_DAG_ID, MONTH, SyncSettings())
    task = dag_bag.dags[SYNC_DAG_ID].get_task("approve")
    context = {"ti": _TaskInstance({"resolve_month": MONTH}), "run_id": RUN, "params": {}}
    result = task.execute_complete(
        context, answer("finance", OPTION_APPROVE, form_fingerprint_now(planned, MONTH, RUN))
    )
    assert result["decision"] == "approved" and result["approved_actions"] == 2
    [recorded] = recorded_decisions(planned, MONTH, RUN)
    assert recorded["decided_by"] == "finance" and json.loads(recorded["approved_figures"])["lines"] == 2


@pytest.mark.parametrize(
    ("user", "option", "stale", "why"),
    [
        ("clerk", OPTION_APPROVE, False, "clerk may not answer"),
        ("clerk", OPTION_REJECT, False, "clerk may not answer"),
        ("finance", OPTION_APPROVE, True, "changed after this form was shown"),
        ("finance", OPTION_APPROVE, None, "does not say which figures"),
    ],
)
def test_a_refused_answer_writes_nothing_and_asks_again(
    dag_bag, planned: Warehouse, monkeypatch: pytest.MonkeyPatch, user: str, option: str, stale, why: str
) -> None:
    from billing_approval import BillingApprovalOperator

    register_run(planned, RUN, SYNC_DAG_ID, MONTH, SyncSettings(four_eyes=True))
    asked: list[str] = []
    monkeypatch.setattr(BillingApprovalOperator, "_ask_again", lambda self, context, reason: asked.append(reason))
    task = dag_bag.dags[SYNC_DAG_ID].get_task("approve")
    fingerprint = None if stale is None else ("0" * 64 if stale else form_fingerprint_now(planned, MONTH, RUN))
    before = planned.query("SELECT action_id, status FROM plan_actions ORDER BY action_id")
    task.execute_complete(
        {"ti": _TaskInstance({"resolve_month": MONTH}), "run_id": RUN, "params": {}}, answer(user, option, fingerprint)
    )
    assert len(asked) == 1 and why in asked[0]
    assert planned.query("SELECT action_id, status FROM plan_actions ORDER BY action_id") == before
    assert recorded_decisions(planned, MONTH, RUN) == []


def test_the_reversals_approval_is_recorded_like_a_months(dag_bag, planned: Warehouse) -> None:
    reversal = "manual__2026-11-20T08:00:00+00:00"
    with planned.begin() as conn:  # the reversal's rows are the run's own proposed lines
        conn.exec_driver_sql("UPDATE plan_actions SET run_id = ? WHERE run_id = ?", (reversal, RUN))
    register_run(planned, reversal, REVERSAL_DAG_ID, MONTH, SyncSettings(), RUN)
    task = dag_bag.dags[REVERSAL_DAG_ID].get_task("approve_reversal")
    context = {"ti": _TaskInstance({}), "run_id": reversal, "params": {"month": MONTH, "run_id": RUN}}
    fingerprint = form_fingerprint_now(planned, MONTH, reversal)
    result = task.execute_complete(context, answer("admin", OPTION_APPROVE, fingerprint))
    assert result["decision"] == "approved" and result["loads"]
    [recorded] = recorded_decisions(planned, MONTH, reversal)
    assert recorded["decided_by"] == "admin" and recorded["approved_fingerprint"]
