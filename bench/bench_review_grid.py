"""Benchmark: the billing review grid at 20,000 plan lines, through the real HTTP endpoint.

A month is planned by the real pipeline (`bench_reconcile.py`'s preparation: the sandbox universe, an Autotask half
way through adoption, snapshot + link + reconcile) until it holds at least 20,000 plan lines, and the review
grid's lines are built as the DAG's reconcile task builds them (`include.review.build_grid`, timed); then a fresh
`airflow api-server` serves the billing_review plugin on that warehouse and a logged-in client asks for:
the first page (cold: the server process's first request after the plan, nothing in memory; then warm), a sort by
customer, a filter with its totals (flagged adjustments) and a search, and the XLSX export of the whole grid.
Times are the median of 5 requests (ms), measured on the client; the cold request is measured once.

    .venv/bin/python bench/bench_review_grid.py [--customers 1700] [--subscriptions 23]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

RUN_ID = "bench-run"  # what bench_reconcile's measure step plans
MONTH = "2026-10"  # the month bench_reconcile plans
from include.identifiers import SYNC_DAG_ID as DAG_ID  # noqa: E402

REPEATS = 5


def timed(client: object, path: str, params: dict | None = None) -> tuple[float, object]:
    started = time.perf_counter()
    response = client.get(path, params=params)  # type: ignore[attr-defined]
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response


def median_ms(client: object, path: str, params: dict | None = None) -> tuple[float, object]:
    results = [timed(client, path, params) for _ in range(REPEATS)]
    return round(statistics.median(ms for ms, _ in results), 1), results[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1700)
    parser.add_argument("--subscriptions", type=int, default=23)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import httpx

    from include.review import build_grid
    from include.runs import register_run
    from include.sync_settings import SyncSettings
    from include.warehouse import Warehouse
    from stacks.local_stack import AUTOTASK_BILLING_CODE_ID, AUTOTASK_OWNER_RESOURCE_ID
    from stacks.review_server import airflow_env, start_api_server, stop_group, token

    with tempfile.TemporaryDirectory(prefix="bench-review-") as temporary:
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
        # the run as the DAG registers it (its DAG, month and settings): the review serves registered runs only
        settings = SyncSettings(owner_resource_id=AUTOTASK_OWNER_RESOURCE_ID, billing_code_id=AUTOTASK_BILLING_CODE_ID)
        register_run(warehouse, RUN_ID, DAG_ID, MONTH, settings)
        plan_lines = warehouse.scalar("SELECT COUNT(*) FROM plan_actions WHERE run_id = :run_id", {"run_id": RUN_ID})
        build_started = time.perf_counter()
        build_grid(warehouse, RUN_ID)  # what the DAG's reconcile task does after writing the plan
        grid_build_s = time.perf_counter() - build_started
        warehouse.dispose()

        env = airflow_env(directory / "airflow", directory / "warehouse.db", directory / "data_docs")
        server = start_api_server(env, directory)
        try:
            client = httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {token(server.url, 'admin')}"}, timeout=120
            )
            lines = f"/billing/api/runs/{DAG_ID}/{quote(RUN_ID, safe='')}/lines"
            cold_ms, first = timed(client, lines, {"page_size": 50})
            first_ms, _ = median_ms(client, lines, {"page_size": 50})
            sort_ms, _ = median_ms(client, lines, {"page_size": 50, "sort": "customer", "dir": "desc"})
            filter_ms, filtered = median_ms(
                client, lines, {"page_size": 50, "status": "flagged", "kind": "adjust_units", "sort": "cost_change"}
            )
            search_ms, _ = median_ms(client, lines, {"page_size": 50, "q": "gmbh"})
            page_ms, _ = median_ms(
                client, f"/billing/run/{DAG_ID}/{quote(RUN_ID, safe='')}", {"page_size": 50, "sort": "customer"}
            )
            export_started = time.perf_counter()
            exported = client.get(f"/billing/api/runs/{DAG_ID}/{quote(RUN_ID, safe='')}/export.xlsx")
            exported.raise_for_status()
            export_ms = round((time.perf_counter() - export_started) * 1000, 1)
        finally:
            stop_group(server)
    page_requests = [cold_ms, first_ms, sort_ms, filter_ms, search_ms, page_ms]
    result = {
        "benchmark": "review_grid",
        "plan_lines": plan_lines,
        "grid_lines": first.json()["total_lines"],
        "grid_build_with_plan_s": round(grid_build_s, 2),
        "first_page_cold_ms": round(cold_ms, 1),
        "first_page_ms": first_ms,
        "sort_ms": sort_ms,
        "filter_with_totals_ms": filter_ms,
        "filter_matching": filtered.json()["matching"],
        "search_ms": search_ms,
        "html_page_ms": page_ms,
        "xlsx_export_ms": export_ms,
        "xlsx_bytes": len(exported.content),
        "pages_under_300_ms": all(ms < 300 for ms in page_requests),
        "export_under_5_s": export_ms < 5000,
    }
    print("BENCH " + json.dumps(result))


if __name__ == "__main__":
    main()
