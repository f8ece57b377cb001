"""
# Reverse an applied billing run in Autotask

Undoes the unit changes one run of `bss_autotask_billing_sync` wrote into **Autotask PSA** for a month, by
posting the opposite adjustments. Autotask can neither delete an adjustment nor take two adjustments of one
contract service on one day, so each opposite change goes on the nearest free day (after an increase, before
a decrease): every other day gets the units of before the load back, and no day falls below them.
Nothing is deleted; companies, contracts, services and contract extensions the run created stay.

1. **plan_reversal** — the opposite adjustments as plan rows of this run (status proposed), with reasons;
2. **approve_reversal** — a person approves or rejects in the same form as a month's (what each answer loads, who may
   answer; no answer within the approval time counts as reject), recorded in `month_approvals` like a month's;
3. **record_approval** — goes on only when the reversal was approved (a rejection skips the load);
4. **load** — written once through the ledger (a second load writes nothing); a spent hourly budget pauses it
   and a retry resumes where it stopped;
5. **verify** — Autotask's units read back on every reversed day and at the month end;
6. **report** — the run report (HTML + XLSX) of the reversal run, next to the Data Docs;
7. **summarize** — what was reversed, in the task log.

Trigger it with **month** = `YYYY-MM` and **run_id** = the sync run to reverse (its Airflow run id).
Connections: `autotask_default`, `billing_warehouse`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from billing_approval import BillingApprovalOperator

from include.identifiers import APPROVAL_TASK_IDS, REVERSAL_DAG_ID  # names only: parsing stays light

_MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
_APPROVAL_TIMEOUT_HOURS = float(os.environ.get("BILLING_SYNC_APPROVAL_TIMEOUT_HOURS", "168"))


@dag(
    dag_id=REVERSAL_DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    params={
        "month": Param(None, type="string", pattern=_MONTH_PATTERN, title="Billing month", description="YYYY-MM."),
        "run_id": Param(
            None,
            type="string",
            minLength=1,
            title="Run to reverse",
            description="The run id of the bss_autotask_billing_sync run whose load is undone.",
        ),
    },
    tags=["billing", "autotask", "reversal"],
    doc_md=__doc__,
)
def bss_autotask_billing_reversal() -> None:
    @task
    def plan_reversal() -> dict[str, Any]:
        """The opposite adjustments of the run's applied adjustments, as proposed plan rows of this run."""
        from connectors.warehouse_connection import get_warehouse
        from include.plan import load_plan
        from include.reversal import ReversalError, describe_reversal
        from include.reversal import plan_reversal as plan
        from include.runs import RunConflictError, register_run
        from include.sync_settings import SyncSettings

        context = get_current_context()
        month, applied_run_id = _month_and_run(context)
        warehouse = get_warehouse()
        try:
            register_run(warehouse, context["run_id"], REVERSAL_DAG_ID, month, SyncSettings.from_env(), applied_run_id)
            summary = plan(warehouse, month, applied_run_id, context["run_id"])
        except (ReversalError, RunConflictError) as error:
            raise AirflowFailException(str(error)) from None
        rows = load_plan(warehouse, month, context["run_id"], statuses=["proposed"])
        return {**summary.as_dict(), "body": describe_reversal(rows, month, applied_run_id)}

    approve_reversal = BillingApprovalOperator(
        task_id=APPROVAL_TASK_IDS[REVERSAL_DAG_ID],
        subject="Reverse billing run {{ params.run_id }} of {{ params.month }} in Autotask?",
        response_timeout_hours=_APPROVAL_TIMEOUT_HOURS,
        retries=0,
    )

    @task
    def record_approval() -> dict[str, Any]:
        """The recorded approval (approve_reversal stored it, with who, when and the approved set, in month_approvals);
        a rejected or timed-out reversal skips the load."""
        context = get_current_context()
        decision = context["ti"].xcom_pull(task_ids=APPROVAL_TASK_IDS[REVERSAL_DAG_ID]) or {}
        if not decision.get("loads"):
            raise AirflowSkipException(f"the reversal was not approved ({decision.get('note')}): nothing is loaded.")
        return {
            "approved": decision.get("approved_actions", 0),
            "by": decision.get("decided_by"),
            "at": decision.get("decided_at"),
        }

    @task(retries=24, retry_delay=timedelta(minutes=10))  # a spent hourly budget: the retry resumes the load
    def load(approval: dict[str, Any]) -> dict[str, Any]:
        """Write the approved reversal rows into Autotask exactly once (ledger); resumes where a load stopped."""
        from connectors.autotask_hook import AutotaskHook
        from connectors.warehouse_connection import get_warehouse
        from include.approval import ApprovedSetChangedError, check_load_matches_approvals
        from include.loader import BudgetExhausted, load_plan_actions
        from include.sync_settings import SyncSettings

        context = get_current_context()
        month, _ = _month_and_run(context)
        warehouse = get_warehouse()
        try:
            check_load_matches_approvals(warehouse, month)
        except ApprovedSetChangedError as error:
            raise AirflowFailException(str(error)) from error
        try:
            summary = load_plan_actions(AutotaskHook(), warehouse, month, context["run_id"], SyncSettings.from_env())
        except BudgetExhausted as stop:
            print(str(stop))  # the plain-words reason and when it goes on, in the task log
            raise
        if summary.failed:
            failures = "; ".join(
                f"{item['target']} {item['effective_date']}: {item['reason']}" for item in summary.failures
            )
            raise AirflowFailException(f"{summary.failed} reversal adjustments failed: {failures}")
        return summary.as_dict()

    @task(retries=2, retry_delay=timedelta(minutes=1))  # only reads Autotask
    def verify(loaded: dict[str, Any]) -> dict[str, Any]:
        """Autotask's units on every reversed day and at the month end; differences fail with a list."""
        from connectors.autotask_hook import AutotaskHook
        from connectors.warehouse_connection import get_warehouse
        from include.reversal import verify_reversal

        context = get_current_context()
        month, _ = _month_and_run(context)
        result = verify_reversal(AutotaskHook(), get_warehouse(), month, context["run_id"])
        if not result.ok:
            raise AirflowFailException(result.message())
        return {"checks": len(result.checks), "contract_services": result.contract_services}

    @task
    def report(verified: dict[str, Any]) -> dict[str, Any]:
        """The reversal run's report, next to the Data Docs (`$BILLING_DATA_DOCS_DIR/<month>/<run_id>/`)."""
        from connectors.warehouse_connection import get_warehouse
        from include.quality import data_docs_dir
        from include.report import write_run_report

        context = get_current_context()
        month, _ = _month_and_run(context)
        written = write_run_report(get_warehouse(), month, context["run_id"], data_docs_dir(month, context["run_id"]))
        print(f"Run report: {written.html_path} and {written.xlsx_path}")
        return {"html": str(written.html_path), "xlsx": str(written.xlsx_path)}

    @task
    def summarize(planned: dict[str, Any], loaded: dict[str, Any], verified: dict[str, Any], reported: Any) -> str:
        """One paragraph for the run's log: what was reversed, written and verified."""
        month, applied_run_id = _month_and_run(get_current_context())
        text = (
            f"Reversed run {applied_run_id} of {month}: {planned['actions']} opposite adjustments on "
            f"{planned['contract_services']} contract services planned, {loaded['written']} written now "
            f"({loaded['already_applied'] + loaded['found_applied']} already in Autotask, {loaded['write_requests']} "
            f"write requests), {verified['checks']} dates verified. Records the run created and contract "
            f"extensions stay; nothing was deleted. Report: {reported['html']}"
        )
        print(text)
        return text

    planned = plan_reversal()
    approval = record_approval()
    loaded = load(approval)
    verified = verify(loaded)
    chain(planned, approve_reversal, approval)
    summarize(planned, loaded, verified, report(verified))


def _month_and_run(context: Any) -> tuple[str, str]:
    from include.models import BillingMonth

    params = context["params"]
    if not params.get("month") or not params.get("run_id"):
        raise AirflowFailException("give the month (YYYY-MM) and the run_id of the sync run to reverse")
    return BillingMonth.parse(params["month"]).key, str(params["run_id"])


bss_autotask_billing_reversal()
