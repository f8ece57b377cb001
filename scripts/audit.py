"""`make audit MONTH=YYYY-MM`: the leakage audit of a posted month against the connections in the environment
(`AIRFLOW_CONN_BSS_DEFAULT`, `AIRFLOW_CONN_AUTOTASK_DEFAULT`, `AIRFLOW_CONN_BILLING_WAREHOUSE`, `BILLING_SYNC_*`),
the same code the `bss_autotask_billing_audit` DAG's task runs. Prints a summary; the last line is the CSV's path.
Exit codes: 0 audited (leaks or not), 1 the month cannot be audited (not closed, bad data), 64 a bad month."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "plugins"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def main(argv: list[str] | None = None) -> int:
    from include.models import BillingMonth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", required=True, help="YYYY-MM")
    args = parser.parse_args(argv)
    try:
        month = BillingMonth.parse(args.month).key
    except ValueError as error:
        print(f"make audit: {error}", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from connectors.autotask_hook import AutotaskHook
    from connectors.bss_hook import BssHook
    from connectors.warehouse_connection import get_warehouse
    from include.audit import AuditInputError, audit_and_alert
    from include.sync_settings import SyncSettings

    try:
        audited = audit_and_alert(
            BssHook(), AutotaskHook(), get_warehouse(), month, SyncSettings.from_env(), "make audit"
        )
    except AuditInputError as error:
        print(f"make audit: {month} cannot be audited: {error}", file=sys.stderr)
        return 1
    result = audited.as_dict()
    print(f"Audit {result['audit_id']} of {month}: {result['findings']} findings {result['by_reason']}")
    print(f"BSS: {result['bss_invoices']} issued invoices, {result['bss_lines']} lines")
    print(f"Autotask: {result['billing_items']} billing items")
    if result["leakage"]:
        print("Not billed: " + ", ".join(f"{currency} {amount}" for currency, amount in result["leakage"].items()))
    print(f"Report: {Path(result['report_dir']) / 'billing-audit.html'}")
    print(result["csv_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
