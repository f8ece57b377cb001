"""
# Billing audit: leakage after invoicing

For a month Autotask has posted (Approve & Post done, BillingItems exist) and the BSS has closed, compares per
account, product and currency what the BSS billed the MSP (its issued invoices' lines: quantity × unit cost, seat
lines prorated by the days of their charge period) with what Autotask billed the customers (`extendedPrice`):
**not billed**, **billed below cost**, **under-billed**, **billed but not in the BSS**, **billed in another
currency**. The report (HTML, XLSX, CSV) is written to `$BILLING_DATA_DOCS_DIR/<month>/audit/` and linked from the
review plugin's months page; the figures go to the warehouse (`billing_audits`, `billing_audit_findings`) for the
next month's run report. Leakage above `audit_alert_threshold` in any currency alerts.

Scheduled on `audit_posting_day` (default the 15th) for the month before; trigger it with **month** = `YYYY-MM`
for any posted month, or run `make audit MONTH=YYYY-MM`. Connections: `bss_default`, `autotask_default`,
`billing_warehouse`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, chain, dag, get_current_context, task

log = logging.getLogger(__name__)
_MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


def _schedule() -> str:
    """The day of the month the audit runs on (`audit_posting_day`, a light settings import)."""
    from include.sync_settings import SyncSettings

    return f"0 6 {SyncSettings.from_env().audit_posting_day} * *"


@dag(
    dag_id="bss_autotask_billing_audit",
    schedule=_schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=_MONTH_PATTERN,
            title="Billing month",
            description="YYYY-MM of a posted month. Leave empty for the month before the run date.",
        ),
    },
    tags=["billing", "audit", "bss", "autotask"],
    doc_md=__doc__,
)
def bss_autotask_billing_audit() -> None:
    @task
    def resolve_month() -> str:
        """The `month` param, else the month before the run date (posted by the audit's posting day)."""
        from include.models import BillingMonth

        context = get_current_context()
        requested = context["params"].get("month")
        if requested:
            return BillingMonth.parse(requested).key
        run_date = context.get("logical_date") or context["dag_run"].run_after
        return BillingMonth.of(run_date.date()).previous().key

    @task
    def audit(month: str) -> dict[str, Any]:
        """BSS invoices against Autotask's BillingItems; the report and the figures; an alert above the threshold."""
        from connectors.autotask_hook import AutotaskHook
        from connectors.bss_hook import BssHook
        from connectors.warehouse_connection import get_warehouse
        from include.audit import audit_and_alert
        from include.sync_settings import SyncSettings

        run_id = get_current_context()["run_id"]
        result = audit_and_alert(BssHook(), AutotaskHook(), get_warehouse(), month, SyncSettings.from_env(), run_id)
        return result.as_dict()

    chain(audit(resolve_month()))


bss_autotask_billing_audit()
