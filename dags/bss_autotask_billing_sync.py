"""
# BSS → Autotask monthly billing sync

Moves one billing month of recurring charges from the **interworks.cloud BSS** into **Autotask PSA**.

1. **extract** — the month's charges and accounts from the BSS API into the staging warehouse
   (all or nothing: a record that cannot be typed stops the run and is listed by charge id and field);
2. **validate_charges** — Great Expectations suites on the raw and typed lines; critical failures stop here;
3. **snapshot_autotask → link_records → reconcile** — the Autotask state the month needs, links from each BSS
   line to a company, contract and service (remembered for next month), and the change plan;
4. **validate_plan** — the plan's own suites (never two adjustments on one date, no unit change unmapped).

Trigger it with **month** = `YYYY-MM`; scheduled runs take the month of the run date (shifted by
`BILLING_MONTH_OFFSET` months, default 0). Re-running a month is always safe; a later step of an older run
stops (saying what to do) once a newer run has extracted the same month again: each run reads its own inputs.
Reads retry (extract, snapshot_autotask); checks and rejected data fail at once.
Connections: `bss_default`, `autotask_default`, `billing_warehouse` (see the README).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

_MONTH_OFFSET = int(os.environ.get("BILLING_MONTH_OFFSET", "0"))
_MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


@dag(
    dag_id="bss_autotask_billing_sync",
    schedule="@monthly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=_MONTH_PATTERN,
            title="Billing month",
            description="YYYY-MM. Leave empty for the month of the run date.",
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
    },
    tags=["billing", "bss", "autotask"],
    doc_md=__doc__,
)
def bss_autotask_billing_sync() -> None:
    @task
    def resolve_month() -> str:
        """The billing month of this run: the `month` param, else the run date's month plus the offset."""
        from include.models import BillingMonth

        context = get_current_context()
        requested = context["params"].get("month")
        if requested:
            return BillingMonth.parse(requested).key
        run_date = context.get("logical_date") or context["dag_run"].run_after
        return BillingMonth.of(run_date.date()).shifted(_MONTH_OFFSET).key

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
        """The Autotask state the month needs, read with batched queries and stored for this run."""
        from connectors.autotask_hook import AutotaskHook
        from connectors.warehouse_connection import get_warehouse
        from include.snapshot import take_snapshot

        return take_snapshot(AutotaskHook(), get_warehouse(), month, extracted["run_id"], _settings()).as_dict()

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

        warehouse = _warehouse_holding_runs_own_lines(month, links["run_id"])
        return reconcile_month(warehouse, month, links["run_id"], _settings()).as_dict()

    @task(retries=0)
    def validate_plan(month: str, plan: dict[str, Any]) -> dict[str, Any]:
        """The snapshot's and the plan's own suites: never two adjustments on one date, none unmapped."""
        from connectors.warehouse_connection import get_warehouse
        from include.quality import raise_on_critical
        from include.quality import validate_plan as run_plan_suites

        report = run_plan_suites(get_warehouse(), month, plan["run_id"])
        return raise_on_critical(report).as_dict()

    month = resolve_month()
    extracted = extract(month)
    charges_checked = validate_charges(month, extracted)
    snapshot = snapshot_autotask(month, extracted)
    links = link_records(month, snapshot)
    plan = reconcile(month, links)
    plan_checked = validate_plan(month, plan)
    chain(charges_checked, snapshot)
    chain(plan, plan_checked)


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


def _settings():
    """Sync settings: `BILLING_SYNC_*` environment defaults, overridden by this run's params."""
    from dataclasses import replace

    from include.sync_settings import EffectiveDatePolicy, SyncSettings

    policy = EffectiveDatePolicy(get_current_context()["params"]["effective_date_policy"])
    return replace(SyncSettings.from_env(), effective_date_policy=policy)


bss_autotask_billing_sync()
