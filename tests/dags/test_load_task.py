"""The DAG's load task against the Autotask sandbox: it loads only an approved month, and when Autotask's hourly
budget runs low it defers (no worker slot held) until the hour frees, then resumes where it stopped."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.warehouse import Warehouse
from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID, autotask_connection
from tests.include.loader_support import (
    HOOK_EXTRA,
    MONTH,
    assert_each_applied_exactly_once,
    make_hook,
    plan_month,
    seeded_adjustment_ids,
)

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "bss_autotask_billing_sync"
RUN_ID = "run-1"


class _TaskInstance:
    def __init__(self, results: dict[str, object]) -> None:
        self.results = results

    def xcom_pull(self, task_ids: str) -> object:
        return self.results.get(task_ids)


@pytest.fixture(scope="module")
def load_task():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags[DAG_ID].get_task("load")


@pytest.fixture
def month_environment(autotask, tmp_path, monkeypatch) -> Warehouse:
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    warehouse.migrate()
    monkeypatch.setenv("BILLING_WAREHOUSE_URL", str(warehouse.engine.url))
    monkeypatch.setenv("AIRFLOW_CONN_AUTOTASK_DEFAULT", json.dumps(autotask_connection(autotask.url, **HOOK_EXTRA)))
    monkeypatch.setenv("BILLING_SYNC_OWNER_RESOURCE_ID", str(AUTOTASK_OWNER_RESOURCE_ID))
    monkeypatch.setenv("BILLING_SYNC_BILLING_CODE_ID", str(AUTOTASK_BILLING_CODE_ID))
    return warehouse


def context_for(decision: dict) -> dict:
    params = {"effective_date_policy": "change_date", "dry_run": False, "month": MONTH}
    return {"ti": _TaskInstance({"resolve_month": MONTH, "approve": decision}), "run_id": RUN_ID, "params": params}


APPROVED = {"decision": "approved", "loads": True, "decided_by": "finance", "note": "approved by finance"}


def sign(warehouse: Warehouse) -> None:
    """The approval as the form records it (the load writes only a signed set): the lines `plan_month` approved,
    approved again through `record_decision`, which stores their fingerprint."""
    import sqlalchemy as sa

    from include.approval import ApprovalDecision, Decision, record_decision
    from include.warehouse import utcnow

    with warehouse.begin() as conn:
        conn.execute(
            sa.text("UPDATE plan_actions SET status = 'proposed' WHERE run_id = :r AND status = 'approved'"),
            {"r": RUN_ID},
        )
    record_decision(warehouse, MONTH, RUN_ID, ApprovalDecision(Decision.APPROVED, "finance", utcnow(), ("x",), "ok"))


def test_a_set_other_than_the_signed_one_is_not_loaded(load_task, autotask, admin, month_environment, monkeypatch):
    import sqlalchemy as sa
    from airflow.sdk.exceptions import AirflowFailException

    plan_month(make_hook(autotask, monkeypatch), month_environment, RUN_ID)
    sign(month_environment)
    with month_environment.begin() as conn:  # a line approved by hand after the approval
        conn.execute(
            sa.text(
                "UPDATE plan_actions SET status = 'approved' WHERE action_id = (SELECT action_id FROM plan_actions"
                " WHERE run_id = :r AND status IN ('flagged', 'blocked', 'needs-mapping') LIMIT 1)"
            ),
            {"r": RUN_ID},
        )
    before = admin.stats()["total"]
    with pytest.raises(AirflowFailException, match="not the set finance approved"):
        load_task.execute(context_for(APPROVED))
    assert admin.write_requests() == 0 and admin.stats()["total"] == before  # not even a read


def test_a_low_budget_defers_the_load_until_the_hour_frees_and_the_resume_finishes_it(
    load_task, autotask, admin, month_environment, monkeypatch
) -> None:
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk.exceptions import TaskDeferred

    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, month_environment, RUN_ID)
    sign(month_environment)
    seeded = seeded_adjustment_ids(admin)
    used_before = int(hook.threshold_information()["currentTimeframeRequestCount"])
    admin.faults(hourly_limit=math.ceil((used_before + 10 + 25) / 0.8))  # room for ~25 of the month's writes
    started = datetime.now(UTC)

    with pytest.raises(TaskDeferred) as deferred:
        load_task.execute(context_for(APPROVED))

    trigger = deferred.value.trigger
    assert isinstance(trigger, DateTimeTrigger)
    assert started < trigger.moment <= started + timedelta(minutes=61)
    assert deferred.value.method_name == "resume_after_budget_pause"
    assert 0 < admin.write_requests() < len(approved)
    (paused,) = month_environment.query("SELECT status FROM load_runs")
    assert paused["status"] == "paused"

    # the hour frees: the resumed task goes on where the load stopped, nothing lost or repeated
    admin.faults(hourly_limit=10000)
    summary = load_task.resume_after_budget_pause(context_for(APPROVED), event=None)
    assert summary["status"] == "succeeded" and summary["failed"] == 0
    assert_each_applied_exactly_once(admin, approved, seeded)


@pytest.mark.parametrize(
    "decision",
    [
        {"decision": "rejected", "loads": False, "note": "rejected by finance"},
        {"decision": "timed_out", "loads": False, "note": "nobody answered within the approval timeout: rejected"},
        {},
    ],
)
def test_a_month_that_was_not_approved_is_skipped_without_touching_autotask(
    load_task, autotask, admin, month_environment, decision
) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="was not approved"):
        load_task.execute(context_for(decision))
    assert admin.stats()["total"] == 0


def test_a_dry_run_writes_nothing(load_task, autotask, admin, month_environment) -> None:
    result = load_task.execute(context_for({"decision": "dry_run", "loads": False}))
    assert result["dry_run"] is True and result["write_requests"] == 0
    assert admin.stats()["total"] == 0
