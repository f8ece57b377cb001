"""Benchmark: review decisions on a 20,000-line month, through the real HTTP endpoint, and the server meanwhile.

A month is planned by the real pipeline (`bench_reconcile.py`'s preparation: the sandbox universe, an Autotask half
way through adoption, snapshot + link + reconcile) until it holds at least 20,000 plan lines; the run is registered
and its review grid stored as the DAG's reconcile task does. A fresh `airflow api-server` serves the billing_review
plugin on that warehouse, and a logged-in client takes 10 decisions of each kind, one after another: exclude a line,
include it again, approve a flagged line, take that back, confirm a company suggestion, reject one, link an account
to another company, create a company for an account. Each is timed on the client (the whole request: checks, the
re-plan of the decided customer's lines, the audit, the new totals). Meanwhile a second client calls an unrelated
endpoint (`GET /api/v2/version`) every 25 ms: its latency while a decision is in flight shows whether decisions block
the server (they run in a process of their own, never on the event loop nor in the api-server's interpreter).

Targets: every decision < 1 s; the unrelated call < 50 ms while decisions run.

    .venv/bin/python bench/bench_review_decision.py [--customers 1700] [--subscriptions 23]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

RUN_ID = "bench-run"  # what bench_reconcile's measure step plans
MONTH = "2026-10"
PER_KIND = 10
DECISION_TARGET_MS = 1000
UNRELATED_TARGET_MS = 50


class Unrelated(threading.Thread):
    """Calls `GET /api/v2/version` every 25 ms and keeps each call's latency and whether a decision was in flight."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        import httpx

        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.deciding = threading.Event()
        self.stopping = threading.Event()
        self.during: list[float] = []
        self.idle: list[float] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            in_flight = self.deciding.is_set()
            started = time.perf_counter()
            self.client.get("/api/v2/version").raise_for_status()
            elapsed = (time.perf_counter() - started) * 1000
            (self.during if in_flight and self.deciding.is_set() else self.idle).append(elapsed)
            time.sleep(0.025)


def pick_requests(warehouse: object) -> dict[str, list[dict]]:
    """Ten decisions of each kind, each on its own line or customer (so none undoes another)."""
    from include.review import grid_rows

    rows = grid_rows(warehouse, RUN_ID)  # type: ignore[arg-type]
    dependents = {
        row["action_id"]: row["depends_on"]
        for row in warehouse.query("SELECT action_id, depends_on FROM plan_actions WHERE run_id = :r", {"r": RUN_ID})  # type: ignore[attr-defined]
    }
    needed = {need for text in dependents.values() for need in json.loads(text)}
    # adjustments nothing else needs: excluding one takes only itself
    alone = [
        row
        for row in rows
        if row["status"] == "proposed" and row["kind"] == "adjust_units" and row["action_id"] not in needed
    ][:PER_KIND]
    flagged = [row for row in rows if row["status"] == "flagged"][:PER_KIND]
    suggestions = warehouse.query(  # type: ignore[attr-defined]
        "SELECT s.source_key, s.target_id FROM mapping_suggestions s JOIN month_links m ON m.kind = s.kind"
        " AND m.source_key = s.source_key AND m.run_id = :r WHERE s.status = 'open' AND s.kind = 'company'"
        " ORDER BY s.source_key, s.score DESC",
        {"r": RUN_ID},
    )
    first_of: dict[str, int] = {}
    for row in suggestions:
        first_of.setdefault(row["source_key"], int(row["target_id"]))
    suggested = sorted(first_of.items())
    linked = warehouse.query(  # type: ignore[attr-defined]
        "SELECT m.source_key, m.target_id FROM month_links m WHERE m.run_id = :r AND m.kind = 'company'"
        " AND m.target_id IS NOT NULL AND m.flag IS NULL ORDER BY m.source_key",
        {"r": RUN_ID},
    )
    companies = [
        row["company_id"]
        for row in warehouse.query(  # type: ignore[attr-defined]
            "SELECT company_id FROM at_companies WHERE run_id = :r AND is_active = 1 ORDER BY company_id",
            {"r": RUN_ID},
        )
    ]
    company = {"kind": "company"}
    return {
        "exclude": [{"decision": "exclude", "action_id": row["action_id"]} for row in alone],
        "include": [{"decision": "include", "action_id": row["action_id"]} for row in alone],
        "approve_line": [{"decision": "approve_line", "action_id": row["action_id"]} for row in flagged],
        "unapprove_line": [{"decision": "unapprove_line", "action_id": row["action_id"]} for row in flagged],
        "confirm_suggestion": [
            {"decision": "confirm_suggestion", **company, "source_key": key, "target_id": target}
            for key, target in suggested[:PER_KIND]
        ],
        "reject_suggestion": [
            {"decision": "reject_suggestion", **company, "source_key": key, "target_id": target}
            for key, target in suggested[PER_KIND : 2 * PER_KIND]
        ],
        "create": [
            {"decision": "create", **company, "source_key": key} for key, _ in suggested[2 * PER_KIND : 3 * PER_KIND]
        ],
        "link": [
            {
                "decision": "link",
                **company,
                "source_key": row["source_key"],
                "target_id": next(other for other in companies if other != row["target_id"]),
            }
            for row in linked[:PER_KIND]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1700)
    parser.add_argument("--subscriptions", type=int, default=23)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import httpx

    from include.identifiers import SYNC_DAG_ID
    from include.review import build_grid
    from include.runs import register_run
    from include.sync_settings import SyncSettings
    from include.warehouse import Warehouse
    from stacks.review_server import airflow_env, start_api_server, stop_group, token

    with tempfile.TemporaryDirectory(prefix="bench-decision-") as temporary:
        directory = Path(temporary)
        reconcile = str(REPO_ROOT / "bench" / "bench_reconcile.py")
        common = [
            "--customers",
            str(args.customers),
            "--subscriptions",
            str(args.subscriptions),
            "--seed",
            str(args.seed),
        ]
        subprocess.run(
            [sys.executable, reconcile, *common, "--prepare", temporary], check=True, stdout=subprocess.DEVNULL
        )
        subprocess.run([sys.executable, reconcile, "--measure", temporary], check=True, capture_output=True)
        warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
        warehouse.migrate()
        # the run as the DAG's reconcile task leaves it: registered with its settings, its grid stored
        register_run(
            warehouse, RUN_ID, SYNC_DAG_ID, MONTH, SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
        )
        build_grid(warehouse, RUN_ID)
        plan_lines = warehouse.scalar("SELECT COUNT(*) FROM plan_actions WHERE run_id = :r", {"r": RUN_ID})
        requests = pick_requests(warehouse)
        warehouse.dispose()

        env = airflow_env(directory / "airflow", directory / "warehouse.db", directory / "data_docs")
        server = start_api_server(env, directory)
        unrelated = None
        try:
            bearer = token(server.url, "admin")
            client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {bearer}"}, timeout=120)
            csrf = client.get("/billing/api/csrf").json()["token"]
            url = f"/billing/api/runs/{SYNC_DAG_ID}/{quote(RUN_ID, safe='')}/decisions"
            # a reviewer opens the review page first (it starts the process decisions run in), then decides
            client.get(f"/billing/run/{SYNC_DAG_ID}/{quote(RUN_ID, safe='')}").raise_for_status()
            time.sleep(10)
            unrelated = Unrelated(server.url, bearer)
            unrelated.start()
            time.sleep(1)  # the unrelated call's latency with nothing else going on
            timings: dict[str, list[float]] = {}
            server_cpu: dict[str, list[float]] = {}  # CPU time of each decision in the decision process
            for kind in (
                "exclude",
                "include",
                "approve_line",
                "unapprove_line",
                "confirm_suggestion",
                "reject_suggestion",
                "link",
                "create",
            ):
                for body in requests[kind]:
                    unrelated.deciding.set()
                    started = time.perf_counter()
                    answer = client.post(url, json=body, headers={"X-Billing-CSRF": csrf})
                    elapsed = (time.perf_counter() - started) * 1000
                    unrelated.deciding.clear()
                    if answer.status_code != 200:
                        raise SystemExit(f"{kind} {body}: {answer.status_code} {answer.text[:500]}")
                    timings.setdefault(kind, []).append(elapsed)
                    server_cpu.setdefault(kind, []).append(answer.json()["took"]["cpu_seconds"] * 1000)
                    time.sleep(0.2)
            unrelated.stopping.set()
            unrelated.join(timeout=10)
        finally:
            stop_group(server)
        # the approval form a decision rewrites when a form waits (after the decision's answer, in the decision
        # process): what the whole month's figures cost to compute
        from billing_approval.gate import approval_form

        warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
        settings = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
        form_ms = []
        for _ in range(3):
            started = time.perf_counter()
            approval_form(warehouse, MONTH, RUN_ID, SYNC_DAG_ID, settings, [("admin", "admin")])
            form_ms.append((time.perf_counter() - started) * 1000)
        warehouse.dispose()
    everything = [ms for values in timings.values() for ms in values]
    result = {
        "benchmark": "review_decision",
        "plan_lines": plan_lines,
        "decisions_per_kind": PER_KIND,
        **{
            f"{kind}_ms": {
                "median": round(statistics.median(values), 1),
                "max": round(max(values), 1),
                "server_cpu_median": round(statistics.median(server_cpu[kind]), 1),
            }
            for kind, values in timings.items()
        },
        "load_average": round(os.getloadavg()[0], 2),
        "decision_max_ms": round(max(everything), 1),
        "unrelated_call_during_decisions_ms": {
            "calls": len(unrelated.during),
            "median": round(statistics.median(unrelated.during), 1),
            "p95": round(sorted(unrelated.during)[int(0.95 * (len(unrelated.during) - 1))], 1),
            "max": round(max(unrelated.during), 1),
        },
        "unrelated_call_idle_ms": {"median": round(statistics.median(unrelated.idle), 1)},
        "form_refresh_after_a_decision_ms": round(statistics.median(form_ms), 1),
        "decisions_under_1_s": max(everything) < DECISION_TARGET_MS,
        "unrelated_call_under_50_ms": max(unrelated.during) < UNRELATED_TARGET_MS,
    }
    print("BENCH " + json.dumps(result))


if __name__ == "__main__":
    main()
