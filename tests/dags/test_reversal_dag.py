"""The reversal DAG imports cleanly and is shaped as specified: plan -> its own approval -> record the
approver -> load -> verify -> summary, with a safe timeout (no answer is a reject)."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "bss_autotask_billing_reversal"


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_the_reversal_dag_imports_without_errors_and_only_runs_when_triggered(dag_bag) -> None:
    assert dag_bag.import_errors == {}
    dag = dag_bag.dags[DAG_ID]
    assert dag.timetable.__class__.__name__ == "NullTimetable"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert "nothing is deleted" in dag.doc_md.lower()


def test_the_flow_plans_then_asks_a_person_then_loads_and_verifies(dag_bag) -> None:
    dag = dag_bag.dags[DAG_ID]
    order = ["plan_reversal", "approve_reversal", "record_approval", "load", "verify", "report", "summarize"]
    for before, after in pairwise(order):
        assert after in dag.get_task(before).downstream_task_ids, (before, after)
    # nothing writes before the approval: the load waits for the recorded approval
    assert dag.get_task("approve_reversal").downstream_task_ids == {"record_approval"}


def test_the_approval_is_its_own_recorded_like_a_months_and_no_answer_counts_as_reject(dag_bag) -> None:
    from billing_approval import BillingApprovalOperator

    from include.approval import OPTION_REJECT, OPTIONS

    approval = dag_bag.dags[DAG_ID].get_task("approve_reversal")
    # the month's own gate: what each answer loads, who may answer, the form's fingerprint, month_approvals
    assert isinstance(approval, BillingApprovalOperator)
    assert approval.options == OPTIONS and approval.defaults == [OPTION_REJECT]
    assert approval.response_timeout == timedelta(hours=168) and approval.retries == 0
    assert "{{ params.run_id }}" in approval.subject


def test_month_and_run_id_are_required_params(dag_bag) -> None:
    from airflow.sdk.definitions.param import Param

    params = dag_bag.dags[DAG_ID].params
    month = params.get_param("month")
    assert month.resolve("2026-10") == "2026-10"
    for bad in ("2026-13", "October", ""):
        with pytest.raises(Exception, match=r"does not match|Invalid|invalid|too short"):
            Param(month.value, **month.schema).resolve(bad)
    run_id = params.get_param("run_id")
    with pytest.raises(Exception, match=r"None|Invalid|invalid|required|not of type"):
        Param(run_id.value, **run_id.schema).resolve(None)
