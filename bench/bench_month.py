"""Benchmark `month`: a whole first month for 2,000 customers, from the BSS sandbox to the Autotask sandbox.

extract (BSS sandbox over HTTP) -> snapshot (Autotask sandbox over HTTP) -> link -> reconcile -> every
proposed action approved (programmatically, standing in for the `auto_if_clean` policy) -> load into the
Autotask sandbox over HTTP.

Targets (issue 9): the writes equal the needed changes (creates + adjustments + extensions the plan holds and
were approved; a contract service created by its first adjustment is not a change of its own), and the reads
of each Autotask entity stay within 1.05 x ceil(rows / 500) + 10 (rows: the records of that entity read). The
ThresholdInformation reads (the budget, no records) are reported apart as `budget_reads`.

    .venv/bin/python bench/bench_month.py [--customers 2000] [--subscriptions-per-customer 3]
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
RUN_ID = "bench-month"


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

    from connectors.bss_hook import BssHook
    from include.extract import extract_month
    from include.loader import WRITING_KINDS, load_plan_actions
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
    with tempfile.TemporaryDirectory(prefix="bench-month-") as temporary:
        directory = Path(temporary)
        shape = [str(args.customers)]
        bss = start_server(
            [
                "sandbox.bss_server",
                "--customers",
                *shape,
                "--subscriptions-per-customer",
                str(args.subscriptions_per_customer),
            ],
            log_dir=directory,
            timeout_s=180,
        )
        autotask = start_server(
            [
                "sandbox.autotask_server",
                "--seed-customers",
                *shape,
                "--seed-subscriptions-per-customer",
                str(args.subscriptions_per_customer),
            ],
            log_dir=directory,
            timeout_s=180,
        )
        try:
            os.environ["AIRFLOW_CONN_BSS_BENCH"] = json.dumps(bss_connection(bss.url))
            os.environ["AIRFLOW_CONN_AUTOTASK_BENCH"] = json.dumps(autotask_connection(autotask.url))
            admin = httpx.Client(base_url=autotask.url, timeout=120)
            warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
            warehouse.migrate()
            hook = counting_hook("autotask_bench")
            admin.post("/_admin/stats/reset").raise_for_status()

            started = time.monotonic()
            extract_month(BssHook("bss_bench"), warehouse, MONTH, f"{RUN_ID}-extract")
            take_snapshot(hook, warehouse, MONTH, RUN_ID, settings)
            link_month(warehouse, MONTH, RUN_ID, settings)
            reconcile_month(warehouse, MONTH, RUN_ID, settings)
            proposed = [action for action in load_plan(warehouse, MONTH, RUN_ID) if action.status == "proposed"]
            set_action_status(warehouse, [action.action_id for action in proposed], "approved", "policy (bench)")
            summary = load_plan_actions(hook, warehouse, MONTH, RUN_ID, settings)
            wall = time.monotonic() - started

            stats = admin.get("/_admin/stats").json()
        finally:
            autotask.stop()
            bss.stop()

    approved = [action for action in proposed if action.kind in WRITING_KINDS]
    folded = summary.folded  # contract services created by their first adjustment: no write of their own
    needed = len(approved) - folded
    kinds = Counter(str(action.kind) for action in approved)
    verdict = {}
    # the budget probe reads no records: reported on its own (budget_reads), not held to the records bound
    budget_reads = hook.reads.pop("ThresholdInformation", 0)
    for entity, reads in sorted(hook.reads.items()):
        allowed = 1.05 * math.ceil(hook.rows[entity] / 500) + 10
        verdict[entity] = {
            "reads": reads,
            "rows": hook.rows[entity],
            "allowed": round(allowed, 1),
            "ok": reads <= allowed,
        }
    writes = int(stats["writes"])
    result = {
        "benchmark": "month",
        "customers": args.customers,
        "reads": sum(hook.reads.values()),
        "budget_reads": budget_reads,
        "writes": writes,
        "needed_changes": needed,
        "wall_s": round(wall, 2),
        "rows": dict(sorted(hook.rows.items())),
        "reads_by_entity": dict(sorted(hook.reads.items())),
        "approved_by_kind": dict(sorted(kinds.items())),
        "contract_services_created_by_adjustment": folded,
        "load_status": summary.status,
        "load_failed": summary.failed,
        "requests_total": stats["total"],
        "verdict": {
            "writes_equal_needed_changes": writes == needed,
            "reads_within_bound": all(item["ok"] for item in verdict.values()),
            "by_entity": verdict,
        },
    }
    print("BENCH " + json.dumps(result))


if __name__ == "__main__":
    main()
