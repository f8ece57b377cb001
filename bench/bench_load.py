"""Benchmark: the loader writing 2,000 unit adjustments into the Autotask sandbox at 100 ms latency.

Target (issue 9): one write call per adjustment, and a wall time within 1.3 x the bound that Autotask's
limit of 3 concurrent requests per endpoint sets: n x latency / 3.

The plan is built directly (approved adjust_units actions on existing contract services, one or two dates
each, units taken from the sandbox's ContractServiceUnits), so the measurement is the load alone: the ledger
(SQLite file), the budget reads, the endpoint slots, the requests.

    .venv/bin/python bench/bench_load.py [--adjustments 2000] [--latency-ms 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

MONTH = "2026-10"
# two dates a contract service can take in October: a chain of two adjustments for some of them
DATES = (date(2026, 10, 6), date(2026, 10, 20))


def build_plan(admin, adjustments: int) -> list:
    """`adjustments` approved +1/-1 unit changes on the sandbox's contract services, as reconciliation
    would plan them (target, chain dependencies, units before and after)."""
    from include.plan import ActionKind, ActionStatus, PlanAction

    contracts = {record["id"]: record for record in admin.get("/_admin/state/Contracts").json()["items"]}
    services = admin.get("/_admin/state/ContractServices").json()["items"]
    units_rows = defaultdict(list)
    for row in admin.get("/_admin/state/ContractServiceUnits").json()["items"]:
        units_rows[row["contractServiceID"]].append(row)
    taken = defaultdict(set)
    for item in admin.get("/_admin/state/ContractServiceAdjustments").json()["items"]:
        taken[item["contractServiceID"]].add(item["effectiveDate"][:10])

    def units_on(cs_id: int, day: date) -> float | None:
        text = day.isoformat()
        for row in units_rows[cs_id]:
            if row["startDate"][:10] <= text <= row["endDate"][:10]:
                return float(row["units"])
        return None

    actions = []
    for index, cs in enumerate(services):
        if len(actions) >= adjustments:
            break
        contract = contracts[cs["contractID"]]
        days = DATES if index % 4 == 0 else DATES[:1]  # a quarter of them change twice in the month
        previous = None
        for day in days:
            text = day.isoformat()
            before = units_on(cs["id"], day)
            inside = contract["startDate"][:10] <= text <= contract["endDate"][:10]
            if before is None or not inside or text in taken[cs["id"]] or len(actions) >= adjustments:
                break
            if previous is not None:
                before = float(previous.units_after)
            change = 1 if before < 1 or index % 3 else -1
            action = PlanAction(
                kind=ActionKind.ADJUST_UNITS,
                month=MONTH,
                target=f"cs:C{cs['contractID']}/V{cs['serviceID']}",
                status=ActionStatus.PROPOSED,
                effective_date=day,
                subscription_ids=(contract.get("contractNumber") or f"SUB-{cs['id']}",),
                contract_id=cs["contractID"],
                service_id=cs["serviceID"],
                contract_service_id=cs["id"],
                units_before=Decimal(f"{before:.4f}"),
                units_after=Decimal(f"{before + change:.4f}"),
                unit_change=Decimal(f"{change:.4f}"),
                payload={
                    "contractID": cs["contractID"],
                    "serviceID": cs["serviceID"],
                    "contractServiceID": cs["id"],
                    "effectiveDate": f"{text}T00:00:00",
                    "unitChange": change,
                },
                depends_on=(previous.action_id,) if previous is not None else (),
            )
            actions.append(action)
            previous = action
    return actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adjustments", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--customers", type=int, default=1400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import os

    import httpx

    from include.loader import load_plan_actions
    from include.plan import PlanSummary, replace_plan, set_action_status
    from include.sync_settings import SyncSettings
    from include.warehouse import Warehouse
    from stacks.launcher import start_server
    from stacks.local_stack import autotask_connection

    with tempfile.TemporaryDirectory(prefix="bench-load-") as temporary:
        directory = Path(temporary)
        server = start_server(
            ["sandbox.autotask_server", "--seed-customers", str(args.customers)], log_dir=directory, timeout_s=120
        )
        try:
            admin = httpx.Client(base_url=server.url, timeout=120)
            actions = build_plan(admin, args.adjustments)
            warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
            warehouse.migrate()
            replace_plan(warehouse, MONTH, "bench-run", actions, PlanSummary("bench-run", MONTH))
            set_action_status(warehouse, [action.action_id for action in actions], "approved", "bench")
            os.environ["AIRFLOW_CONN_AUTOTASK_BENCH"] = json.dumps(autotask_connection(server.url))
            from connectors.autotask_hook import AutotaskHook

            hook = AutotaskHook("autotask_bench")
            hook.threshold_information()  # zone and session set up before the clock starts
            admin.post("/_admin/faults", json={"latency_ms": args.latency_ms}).raise_for_status()
            admin.post("/_admin/stats/reset").raise_for_status()

            started = time.monotonic()
            summary = load_plan_actions(hook, warehouse, MONTH, "bench-run", SyncSettings())
            wall = time.monotonic() - started

            stats = admin.get("/_admin/stats").json()
        finally:
            server.stop()
    write_calls = stats["requests"].get("ContractServiceAdjustments", {}).get("POST", 0)
    n = len(actions)
    bound = n * args.latency_ms / 1000 / 3
    print(
        "BENCH "
        + json.dumps(
            {
                "benchmark": "load",
                "adjustments": n,
                "write_calls": write_calls,
                "wall_s": round(wall, 2),
                "bound_s": round(bound, 2),
                "ratio": round(wall / bound, 3),
                "requests": stats["total"],
                "status": summary.status,
                "written": summary.written,
                "max_concurrency": stats["max_concurrency"].get("ContractServiceAdjustments"),
            }
        )
    )


if __name__ == "__main__":
    main()
