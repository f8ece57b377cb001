"""
# BSS → Autotask monthly billing sync

Moves one billing month of recurring charges from the **interworks.cloud BSS** into **Autotask PSA**.

0. **wait_for_close** — waits, without a worker slot, until the BSS month is closed (every invoice issued);
   past `close_deadline_day` it alerts; trigger with `wait_for_close=false` to start anyway;
1. **extract** — the month's charges and accounts from the BSS API into the staging warehouse
   (all or nothing: a record that cannot be typed stops the run and is listed by charge id and field);
2. **validate_charges** — Great Expectations suites on the raw and typed lines; critical failures stop here;
3. **snapshot_autotask → link_records → reconcile** — earlier loads' writes of unknown outcome settled by reading
   Autotask (a crashed load's: never sent twice), the Autotask state the month needs, links from each BSS
   line to a company, contract and service (remembered for next month), and the change plan;
4. **validate_plan** — the plan's own suites (never two adjustments on one date, no unit change unmapped);
5. **approve** — a person approves in the Airflow UI (Browse → Required Actions) or with `make approve`:
   "Approve proposed", "Approve incl. flagged" or "Reject"; no answer within `approval_timeout_hours`
   (default 7 days) counts as reject. Policy `auto_if_clean` approves a clean, small month alone;
6. **load_share → load** — the approved actions into Autotask exactly once (a ledger; resumes where it stopped):
   in shares side by side (each some customers' records, `BILLING_LOAD_SHARES`, 3 on Celery workers), then the
   whole month takes what the shares left; when the hourly API budget runs low it pauses without holding a
   worker slot and goes on when the hour frees;
7. **verify → report** — Autotask's units read back and compared; the run report (HTML, XLSX) next to the
   Data Docs. A rejected (or timed-out) month skips load and verify and its report says so.

**Dry run** (`dry_run` param or `BILLING_SYNC_DRY_RUN=1`): everything up to the approval, then the report of
what would be written; nothing is written to Autotask.

Trigger it with **month** = `YYYY-MM`; left empty (and for scheduled runs) the run bills the last closed month:
the run date's month shifted by `BILLING_MONTH_OFFSET` months (default -1, the month that just ended). A triggered
run's id starts with its month (`2026-11__manual__…`, named by the billing plugin's trigger form).
Re-running a month is always safe; a later step of an older run stops (saying what to do) once a newer run has
extracted the same month again: each run reads its own inputs.
Reads retry (extract, snapshot_autotask); checks and rejected data fail at once.
Connections: `bss_default`, `autotask_default`, `billing_warehouse` (see the README).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, timedelta
from typing import Any

import pendulum
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, Param, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from billing_approval import BillingApprovalOperator

from include.identifiers import APPROVAL_TASK_IDS, SYNC_DAG_ID  # names only: parsing stays light
from include.month_input import default_month, month_field_description  # light: include.models only

log = logging.getLogger(__name__)
_MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
# The approval's timeout is fixed when the DAG is parsed.
_APPROVAL_TIMEOUT_HOURS = float(os.environ.get("BILLING_SYNC_APPROVAL_TIMEOUT_HOURS", "168"))
# The load runs in shares side by side (one task each, on any worker), then as a whole month that takes what
# the shares left. The Celery deployment sets 3 (deploy/airflow.env); unset (`airflow dags test`, which runs tasks
# one after another) one share loads the whole month. Shares split Autotask's 3 concurrent requests per endpoint.
_LOAD_SHARES = max(1, int(os.environ.get("BILLING_LOAD_SHARES", "1")))
_AUTOTASK_CONCURRENT_PER_ENDPOINT = 3
_DRY_RUN_DEFAULT = os.environ.get("BILLING_SYNC_DRY_RUN", "0").strip().lower() in {"1", "true", "yes", "on"}


@dag(
    dag_id=SYNC_DAG_ID,
    schedule="@monthly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    on_failure_callback=lambda context: _notify("run_failed", context),
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=_MONTH_PATTERN,
            title="Billing month",
            description=month_field_description(),
        ),
        "effective_date_policy": Param(
            os.environ.get("BILLING_SYNC_EFFECTIVE_DATE_POLICY", "change_date"),
            enum=["change_date", "period_start", "next_period_start"],
            title="Effective-date policy",
            description=(
                "When unit changes take effect in Autotask: the BSS change date, the start of its billing period, "
                "or the next period start (avoids Autotask's undeletable prorations)."
            ),
        ),
        "wait_for_close": Param(
            True,
            type="boolean",
            title="Wait for the BSS month to close",
            description="Wait until every BSS invoice of the month is issued. Off: start now (half a month's usage).",
        ),
        "dry_run": Param(
            _DRY_RUN_DEFAULT,
            type=["boolean", "null"],  # optional: the form marks a field required unless it may be null
            title="Dry run",
            description="Everything up to the approval, then the report of what would be written. No writes.",
        ),
    },
    tags=["billing", "bss", "autotask"],
    doc_md=__doc__,
)
def bss_autotask_billing_sync() -> None:
    @task
    def resolve_month() -> str:
        """The billing month of this run: the `month` param, else the last closed month of the run date
        (`include.month_input.default_month`: the run date's month shifted by `BILLING_MONTH_OFFSET`, default -1)."""
        from include.models import BillingMonth

        context = get_current_context()
        requested = context["params"].get("month")
        if requested:
            return BillingMonth.parse(requested).key
        run_date = context.get("logical_date") or context["dag_run"].run_after
        return default_month(run_date).key

    @task
    def extract(month: str) -> dict[str, Any]:
        """BSS charges and accounts of the month into the warehouse (typed lines replaced atomically)."""
        from connectors.bss_hook import BssHook
        from connectors.warehouse_connection import get_warehouse
        from include.extract import ExtractRejectedError, extract_month

        run_id = get_current_context()["run_id"]
        try:
            return extract_month(BssHook(), get_warehouse(), month, run_id).as_dict()
        except ExtractRejectedError as error:
            # Bad data stays bad on a retry: fail now, with the list of records and fields.
            raise AirflowFailException(str(error)) from error

    @task(retries=0)
    def validate_charges(month: str, extracted: dict[str, Any]) -> dict[str, Any]:
        """Great Expectations suites on the raw and typed charges; critical failures stop the run."""
        from connectors.warehouse_connection import get_warehouse
        from include.quality import raise_on_critical
        from include.quality import validate_charges as run_charge_suites

        report = run_charge_suites(get_warehouse(), month, extracted["run_id"])
        return raise_on_critical(report).as_dict()

    @task  # only reads Autotask: a burst of 5xx that outlasts the hook's own attempts is retried here
    def snapshot_autotask(month: str, extracted: dict[str, Any]) -> dict[str, Any]:
        """Earlier loads' writes of unknown outcome settled by reading Autotask (a crashed load's), then the Autotask
        state the month needs, read with batched queries and stored for this run."""
        from connectors.autotask_hook import AutotaskHook
        from connectors.warehouse_connection import get_warehouse
        from include.loader import settle_unknown_writes
        from include.snapshot import take_snapshot

        hook, warehouse, settings = AutotaskHook(), get_warehouse(), _settings()
        if not settings.dry_run:
            settle_unknown_writes(hook, warehouse, month, extracted["run_id"], settings)
        return take_snapshot(hook, warehouse, month, extracted["run_id"], settings).as_dict()

    @task
    def link_records(month: str, snapshot: dict[str, Any]) -> dict[str, Any]:
        """Link every BSS account, subscription and product to Autotask (remembered, by key, by name)."""
        from include.mapping import link_month

        warehouse = _warehouse_holding_runs_own_lines(month, snapshot["run_id"])
        return link_month(warehouse, month, snapshot["run_id"], _settings()).as_dict()

    @task
    def reconcile(month: str, links: dict[str, Any]) -> dict[str, Any]:
        """BSS units at each effective date against Autotask's contract service units: the change plan."""
        from include.reconcile import reconcile_month
        from include.review import build_grid
        from include.runs import RunConflictError, register_run

        warehouse = _warehouse_holding_runs_own_lines(month, links["run_id"])
        settings = _settings()
        try:  # the run's DAG and settings: its review serves it under this DAG and re-plans with these settings
            register_run(warehouse, links["run_id"], SYNC_DAG_ID, month, settings)
        except RunConflictError as error:
            raise AirflowFailException(str(error)) from error
        plan = reconcile_month(warehouse, month, links["run_id"], settings).as_dict()
        build_grid(warehouse, links["run_id"])  # the review page's lines, names gathered once here
        return plan

    @task(retries=0)
    def validate_plan(month: str, plan: dict[str, Any]) -> dict[str, Any]:
        """The snapshot's and the plan's own suites: never two adjustments on one date, none unmapped."""
        from connectors.warehouse_connection import get_warehouse
        from include.quality import raise_on_critical
        from include.quality import validate_plan as run_plan_suites

        report = run_plan_suites(get_warehouse(), month, plan["run_id"])
        return raise_on_critical(report).as_dict()

    @task(retries=1)
    def verify(month: str, loaded: dict[str, Any]) -> dict[str, Any]:
        """Read Autotask's units back for every adjusted contract service; differences fail with a list."""
        from connectors.autotask_hook import AutotaskHook
        from include.verify import verify_load

        run_id = get_current_context()["run_id"]
        if loaded.get("dry_run"):
            log.info("Dry run of %s: nothing was written, nothing to verify.", month)
            return {"month": month, "run_id": run_id, "dry_run": True, "checks": 0, "differences": 0}
        result = verify_load(AutotaskHook(), _warehouse_holding_runs_own_lines(month, run_id), month, run_id)
        if not result.ok:
            _alert("verify_differences", month, result.message())
            raise AirflowFailException(result.message())
        log.info(result.message())
        return {"month": month, "run_id": run_id, "dry_run": False, "checks": len(result.checks), "differences": 0}

    @task(retries=1, trigger_rule="none_failed")
    def report(month: str) -> dict[str, Any]:
        """The run report (HTML + XLSX) next to the Data Docs: also for a rejected month and a dry run."""
        from connectors.warehouse_connection import get_warehouse
        from include.quality import data_docs_dir
        from include.report import write_run_report

        context = get_current_context()
        run_id = context["run_id"]
        decision = context["ti"].xcom_pull(task_ids=APPROVAL_TASK_IDS[SYNC_DAG_ID]) or {}
        dry_run = decision.get("decision") == "dry_run"
        written = write_run_report(get_warehouse(), month, run_id, data_docs_dir(month, run_id), dry_run=dry_run)
        note = _run_note(month, decision, written.html_path)
        # Airflow 3 gives a task no way to set its run's note: `make run` sets it through the REST API.
        log.info("Run report: %s and %s", written.html_path, written.xlsx_path)
        log.info("Run note: %s", note)
        return {"html_path": str(written.html_path), "xlsx_path": str(written.xlsx_path), "note": note}

    month = resolve_month()
    from include.month_close import WaitForMonthCloseOperator  # light: Airflow's own bases only

    month_closed = WaitForMonthCloseOperator(task_id="wait_for_close", month=month)
    extracted = extract(month)
    chain(month_closed, extracted)
    charges_checked = validate_charges(month, extracted)
    snapshot = snapshot_autotask(month, extracted)
    links = link_records(month, snapshot)
    plan = reconcile(month, links)
    plan_checked = validate_plan(month, plan)
    approval = BillingApprovalOperator(
        task_id=APPROVAL_TASK_IDS[SYNC_DAG_ID],
        month_task_id="resolve_month",
        response_timeout_hours=_APPROVAL_TIMEOUT_HOURS,
        notifiers=[_approval_notifier()],
        retries=0,
    )
    # a retry of the load is safe: the ledger asks Autotask about every write of unknown outcome first
    load_shares = LoadShareOperator.partial(
        task_id="load_share", shares=_LOAD_SHARES, retry_delay=timedelta(seconds=10), retry_exponential_backoff=False
    ).expand(share=list(range(_LOAD_SHARES)))
    loaded = LoadApprovedPlanOperator(task_id="load")
    verified = verify(month, loaded.output)
    chain(charges_checked, snapshot)
    chain(plan, plan_checked, approval, load_shares, loaded)
    chain(verified, report(month))


def _alert(event: str, month: str, summary: str, **details: Any) -> None:
    """One alert on the configured channels (include/alerts.py); a channel's failure never fails the task."""
    from include.alerts import AlertEvent, alert

    try:
        alert(AlertEvent(event), month, summary, details={"run": get_current_context()["run_id"], **details})
    except Exception:
        log.exception("could not send the %s alert", event)


def _notify(event: str, context: Any) -> None:
    """A callback's alert (a failed run): Airflow's notifier of include/alerts.py for the run in the context."""
    from include.alerts import BillingAlertNotifier

    BillingAlertNotifier(event)(context)


def _warehouse_holding_runs_own_lines(month: str, run_id: str):
    """The warehouse, once it is sure the month still holds this run's own charge lines.

    Re-running an older run's step after a newer run extracted the month again would mix the two runs'
    inputs and replace the newer run's rows: that fails at once, without retries, saying what to do.
    """
    from connectors.warehouse_connection import get_warehouse
    from include.extract import StaleRunError, ensure_run_reads_own_lines

    warehouse = get_warehouse()
    try:
        ensure_run_reads_own_lines(warehouse, month, run_id)
    except StaleRunError as error:
        raise AirflowFailException(str(error)) from error
    return warehouse


def _settings(params: dict[str, Any] | None = None):
    """Sync settings: `BILLING_SYNC_*` environment defaults, overridden by this run's params."""
    from dataclasses import replace

    from include.sync_settings import EffectiveDatePolicy, SyncSettings

    params = get_current_context()["params"] if params is None else params
    policy = EffectiveDatePolicy(params["effective_date_policy"])
    return replace(SyncSettings.from_env(), effective_date_policy=policy, dry_run=bool(params.get("dry_run")))


def _run_note(month: str, decision: dict[str, Any], report_path: Any) -> str:
    what = {
        "approved": f"approved by {decision.get('decided_by')}, loaded and verified",
        "approved_with_flagged": f"approved incl. flagged by {decision.get('decided_by')}, loaded and verified",
        "approved_by_policy": "approved by policy auto_if_clean, loaded and verified",
        "rejected": f"REJECTED by {decision.get('decided_by')}: nothing loaded",
        "timed_out": "no answer within the approval timeout: rejected, nothing loaded",
        "dry_run": "dry run: nothing written; the report shows what would be written",
    }.get(str(decision.get("decision")), "approval not recorded")
    return f"{month}: {what}. Report: {report_path}"


def _approval_notifier() -> Any:
    """The alert that a month waits for approval, with its review link (include/alerts.py, a light import)."""
    from include.alerts import AlertEvent, BillingAlertNotifier

    return BillingAlertNotifier(AlertEvent.APPROVAL_WAITING)


def _month_to_load(context: Any) -> tuple[str, str, bool]:
    """The run's month, its run id and whether the approval made it a dry run. A month that was not approved
    (rejected, timed out) skips the task: a rejection is a decision, not a fault. An approved month loads only the
    set of lines its approval signed (`include.approval.check_load_matches_approvals`): any other set fails the
    task before anything is written."""
    from include.approval import ApprovedSetChangedError, check_load_matches_approvals

    month, run_id = context["ti"].xcom_pull(task_ids="resolve_month"), context["run_id"]
    decision = context["ti"].xcom_pull(task_ids=APPROVAL_TASK_IDS[SYNC_DAG_ID]) or {}
    if decision.get("decision") == "dry_run":
        return month, run_id, True
    if not decision.get("loads"):
        raise AirflowSkipException(f"{month} was not approved ({decision.get('note')}): nothing is loaded.")
    try:
        check_load_matches_approvals(_warehouse_holding_runs_own_lines(month, run_id), month)
    except ApprovedSetChangedError as error:
        raise AirflowFailException(str(error)) from error
    return month, run_id, False


def _fail_on_failed_writes(summary: Any, month: str) -> None:
    """Writes Autotask refused fail the task, naming the first 20."""
    if summary.failed:
        failures = "\n- ".join(str(failure) for failure in summary.failures[:20])
        raise AirflowFailException(f"{summary.failed} writes of {month} failed:\n- {failures}")


class LoadApprovedPlanOperator(BaseOperator):
    """Load the approved actions into Autotask (`include.loader.load_plan_actions`).

    A rejected or timed-out month skips the load (and so verify): a rejection is a decision, not a fault,
    so the run ends without an alert and its report says nothing was loaded. A dry run writes nothing.
    When Autotask's hourly budget runs low the task defers until the hour frees (no worker slot held) and
    runs the load again, which resumes where it stopped (the ledger knows what was sent).
    """

    def execute(self, context: Any) -> dict[str, Any]:
        from connectors.autotask_hook import AutotaskHook
        from include.loader import BudgetExhausted, load_plan_actions

        month, run_id, dry_run = _month_to_load(context)
        if dry_run:
            log.info("Dry run of %s: nothing is written to Autotask.", month)
            return {"month": month, "run_id": run_id, "dry_run": True, "write_requests": 0}
        warehouse = _warehouse_holding_runs_own_lines(month, run_id)
        try:
            summary = load_plan_actions(AutotaskHook(), warehouse, month, run_id, _settings(context["params"]))
        except BudgetExhausted as stop:
            log.warning(str(stop))
            resume_at = stop.resume_at if stop.resume_at.tzinfo else stop.resume_at.replace(tzinfo=UTC)
            _alert_long_pause(month, resume_at)
            self.defer(trigger=DateTimeTrigger(moment=resume_at), method_name="resume_after_budget_pause")
        _fail_on_failed_writes(summary, month)
        if summary.waiting:
            log.warning(
                "%d approved actions of %s wait for actions that are not approved or not applied",
                summary.waiting,
                month,
            )
        log.info("Loaded %s: %s", month, summary.as_dict())
        return {**summary.as_dict(), "dry_run": False}

    def resume_after_budget_pause(self, context: Any, event: Any = None) -> dict[str, Any]:
        log.info("Autotask's hourly budget has freed: going on with the load")
        return self.execute(context)


def _alert_long_pause(month: str, resume_at: Any) -> None:
    """A budget pause longer than `budget_pause_alert_minutes` alerts (a person may want to free the budget)."""
    from datetime import datetime

    from include.sync_settings import SyncSettings

    pause = resume_at - datetime.now(UTC)
    if pause > timedelta(minutes=SyncSettings.from_env().budget_pause_alert_minutes):
        summary = f"The load of {month} waits {pause.total_seconds() / 60:.0f} min for Autotask's hourly budget."
        _alert("budget_pause", month, summary, resume_at=resume_at.isoformat())


class LoadShareOperator(BaseOperator):
    """One share of the month's load (`include.loader.share_of`: the actions of some customers), so the load's
    work spreads over the workers and a lost worker loses only its share: the retry, on any worker, resumes
    through the ledger. What a share cannot write (a new catalogue service, an action waiting for another
    share) the whole-month `load` after the shares writes. A rejected month skips the shares (and the load)."""

    def __init__(self, *, share: int, shares: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.share = share
        self.shares = shares

    def execute(self, context: Any) -> dict[str, Any]:
        from connectors.autotask_hook import AutotaskHook
        from include.loader import BudgetExhausted, LoadSettings, load_plan_actions

        month, run_id, dry_run = _month_to_load(context)
        if dry_run:
            return {"month": month, "share": self.share, "dry_run": True, "write_requests": 0}
        settings = _settings(context["params"])
        # shares on several workers together keep within Autotask's concurrent requests per endpoint
        workers = LoadSettings.workers if self.shares == 1 else max(1, _AUTOTASK_CONCURRENT_PER_ENDPOINT // self.shares)
        load_settings = LoadSettings(
            budget_reserve_share=settings.budget_reserve_share, workers=workers, share=self.share, shares=self.shares
        )
        warehouse = _warehouse_holding_runs_own_lines(month, run_id)
        try:
            summary = load_plan_actions(AutotaskHook(), warehouse, month, run_id, settings, load_settings)
        except BudgetExhausted as stop:
            # the whole-month load after the shares pauses on the budget without holding a worker
            log.warning("%s; the whole-month load goes on when the budget allows", stop)
            return {"month": month, "share": self.share, "paused": True}
        log.info("Share %d of %d of %s: %s", self.share + 1, self.shares, month, summary.as_dict())
        _fail_on_failed_writes(summary, month)
        return {**summary.as_dict(), "share": self.share, "dry_run": False}


bss_autotask_billing_sync()
