"""Benchmark `extract`: one month for 1,000 customers (about 20,000 charge lines) from the BSS sandbox
(latency 0) into a SQLite warehouse. Target: ≥ 5,000 lines/s and peak RSS < 500 MB."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from stacks.launcher import start_server  # noqa: E402
from stacks.local_stack import bss_connection  # noqa: E402

CUSTOMERS = 1_000
# ≈ 20,000 lines in 2026-10 with seed 42 (quarterly, semi-annual and annual plans have no line in most months)
SUBSCRIPTIONS_PER_CUSTOMER = 31
MONTH = "2026-10"


def main() -> None:
    server = start_server(
        [
            "sandbox.bss_server",
            "--customers",
            str(CUSTOMERS),
            "--subscriptions-per-customer",
            str(SUBSCRIPTIONS_PER_CUSTOMER),
        ],
        timeout_s=120,
    )
    try:
        os.environ["AIRFLOW_CONN_BSS_DEFAULT"] = json.dumps(bss_connection(server.url))
        from connectors.bss_hook import BssHook
        from include.extract import extract_month
        from include.warehouse import Warehouse

        with tempfile.TemporaryDirectory() as tmp:
            warehouse = Warehouse(f"sqlite:///{tmp}/warehouse.db")
            warehouse.migrate()
            hook = BssHook()
            # Warm the sandbox's month cache so the figure measures the client and the warehouse.
            next(hook.iter_charges(*_bounds()), None)
            started = time.perf_counter()
            result = extract_month(hook, warehouse, MONTH, "bench")
            seconds = time.perf_counter() - started
    finally:
        server.stop()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "BENCH "
        + json.dumps(
            {
                "benchmark": "extract",
                "customers": CUSTOMERS,
                "lines": result.line_count,
                "seconds": round(seconds, 3),
                "lines_per_s": round(result.line_count / seconds),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "target": {"lines_per_s_min": 5000, "peak_rss_mb_max": 500},
            }
        )
    )


def _bounds():
    from include.models import BillingMonth

    month = BillingMonth.parse(MONTH)
    return month.first_day, month.last_day


if __name__ == "__main__":
    main()
