"""Benchmark `audit`: the leakage audit of a posted month of 2,000 customers (issue 19).

The month is synced by the real pipeline (extract -> snapshot -> link -> reconcile -> every proposed action
approved -> load into the Autotask sandbox over HTTP), posted by the sandbox's Approve & Post, then audited
(`include.audit.audit_month`: the BSS sandbox's invoices and charges, Autotask's BillingItems by contract, the
ContractCharges and Invoices they name). Only the audit is measured.

Target: the requests of each Autotask entity the audit reads stay within 1.05 x its lower bound, the lower bound
being max(ceil(ids / 500), ceil(rows / 500)) (ids: the values of its `in` batches; rows: the records read).

    .venv/bin/python bench/bench_audit.py [--customers 2000] [--subscriptions-per-customer 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

MONTH = "2026-10"
RUN_ID = "bench-audit"


def counting_hook(conn_id: str):
    """The Autotask hook, counting what it reads: requests that are not writes, and records, per entity."""
    from connectors.autotask_hook import AutotaskHook

    class CountingHook(AutotaskHook):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.reads: Counter = Counter()
            self.rows: Counter = Counter()

        def _request(self, verb, entity, path, *, body=None, write=False, paced=True, endpoints=None):
            if not write:
                with self._count_lock:
                    self.reads[entity] += 1
            return super()._request(verb, entity, path, body=body, write=write, paced=paced, endpoints=endpoints)

        def iter_query(self, entity, filters=None, include_fields=None, max_records=None):
            for page in super().iter_query(entity, filters, include_fields, max_records):
                with self._count_lock:
                    self.rows[entity] += len(page)
                yield page

    return CountingHook(conn_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--subscriptions-per-customer", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import httpx

    from connectors.autotask_hook import AutotaskHook
    from connectors.bss_hook import BssHook
    from include.audit import audit_month
    from include.extract import extract_month
    from include.loader import load_plan_actions
    from include.mapping import link_month
    from include.plan import load_plan, set_action_status
    from include.reconcile import reconcile_month
    from include.snapshot import take_snapshot
    from include.sync_settings import SyncSettings
    from include.warehouse import Warehouse
    from stacks.launcher import start_server
    from stacks.local_stack import (
        AUTOTASK_BILLING_CODE_ID,
        AUTOTASK_OWNER_RESOURCE_ID,
        autotask_connection,
        bss_connection,
    )

    settings = SyncSettings(owner_resource_id=AUTOTASK_OWNER_RESOURCE_ID, billing_code_id=AUTOTASK_BILLING_CODE_ID)
    shape = ["--customers", str(args.customers), "--subscriptions-per-customer", str(args.subscriptions_per_customer)]
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as temporary:
        directory = Path(temporary)
        bss = start_server(["sandbox.bss_server", *shape], log_dir=directory, timeout_s=180)
        autotask = start_server(
            [
                "sandbox.autotask_server",
                "--seed-customers",
                str(args.customers),
                "--seed-subscriptions-per-customer",
                str(args.subscriptions_per_customer),
            ],
            log_dir=directory,
            timeout_s=180,
        )
        try:
            os.environ["AIRFLOW_CONN_BSS_BENCH"] = json.dumps(bss_connection(bss.url))
            os.environ["AIRFLOW_CONN_AUTOTASK_BENCH"] = json.dumps(autotask_connection(autotask.url))
            admin = httpx.Client(base_url=autotask.url, timeout=300)
            warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
            warehouse.migrate()
            loader_hook = AutotaskHook("autotask_bench")
            extract_month(BssHook("bss_bench"), warehouse, MONTH, f"{RUN_ID}-extract")
            take_snapshot(loader_hook, warehouse, MONTH, RUN_ID, settings)
            link_month(warehouse, MONTH, RUN_ID, settings)
            reconcile_month(warehouse, MONTH, RUN_ID, settings)
            proposed = [action for action in load_plan(warehouse, MONTH, RUN_ID) if action.status == "proposed"]
            set_action_status(warehouse, [action.action_id for action in proposed], "approved", "policy (bench)")
            load_plan_actions(loader_hook, warehouse, MONTH, RUN_ID, settings)
            posted = admin.post("/_admin/approve-and-post", json={"month": MONTH}).raise_for_status().json()

            hook = counting_hook("autotask_bench")
            started = time.monotonic()
            result = audit_month(BssHook("bss_bench"), hook, warehouse, MONTH, report_dir=directory / "audit")
            wall = time.monotonic() - started
        finally:
            autotask.stop()
            bss.stop()

    hook.reads.pop("ThresholdInformation", 0)
    verdict = {}
    for entity, reads in sorted(hook.reads.items()):
        ids = result.reads.get(entity, 0)
        bound = max(math.ceil(ids / 500), math.ceil(hook.rows[entity] / 500), 1)
        verdict[entity] = {
            "reads": reads,
            "ids": ids,
            "rows": hook.rows[entity],
            "lower_bound": bound,
            "allowed": round(1.05 * bound, 2),
            "ok": reads <= 1.05 * bound,
        }
    output = {
        "benchmark": "audit",
        "customers": args.customers,
        "billing_items_posted": posted["billingItems"],
        "bss_lines": result.bss_lines,
        "findings": len(result.findings),
        "wall_s": round(wall, 2),
        "verdict": {"reads_within_bound": all(item["ok"] for item in verdict.values()), "by_entity": verdict},
    }
    print("BENCH " + json.dumps(output))


if __name__ == "__main__":
    main()
