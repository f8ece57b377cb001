"""Benchmark: every data-quality suite (raw, typed lines, snapshot, plan) on a month of 100,000 charge lines.

Run: `.venv/bin/python bench/bench_validate.py` (SQLite in a temporary directory; set BENCH_WAREHOUSE_URL to
use another warehouse, e.g. an empty PostgreSQL database). Prints one `BENCH {...}` line. `seconds` is the
time of both gates (validate_charges + validate_plan, Data Docs included); the one-off GX import is reported
apart (`gx_import_seconds`) because a DAG task pays it once per process.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from include import quality
from include.extract import extract_month
from include.warehouse import Warehouse
from sandbox.dataset import build_universe

MONTH = "2026-10"
RUN_ID = "bench-validate"
TARGET_LINES = 100_000


class ListSource:
    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]:
        for offset in range(0, len(self.records), 200):
            yield self.records[offset : offset + 200]

    def list_accounts(self) -> Iterator[list[dict]]:
        yield []


def month_of(lines: int) -> list[dict]:
    """`lines` consistent charge records: a sandbox month copied with fresh charge, subscription, account ids."""
    base = build_universe(customers=400, subscriptions_per_customer=3, seed=42).charges_for_month(MONTH)
    records: list[dict] = []
    copy_number = 0
    while len(records) < lines:
        for record in base:
            clone = copy.deepcopy(record)
            clone["id"] = f"{record['id']}-{copy_number:03d}"
            clone["subscription"]["id"] = f"{record['subscription']['id']}-{copy_number:03d}"
            clone["account"]["id"] = f"{record['account']['id']}-{copy_number:03d}"
            records.append(clone)
        copy_number += 1
    # Whole subscriptions only, so the cut keeps every subscription's lines consistent.
    kept, subscriptions = [], set()
    for record in sorted(records, key=lambda item: item["subscription"]["id"]):
        if len(kept) >= lines and record["subscription"]["id"] not in subscriptions:
            continue
        subscriptions.add(record["subscription"]["id"])
        kept.append(record)
    return sorted(kept, key=lambda item: item["id"])


def store_snapshot_and_plan(warehouse: Warehouse, records: list[dict]) -> tuple[int, int]:
    """A snapshot unit row per subscription and an adjustment per quantity change (shapes of 0002/0003)."""
    subscriptions = sorted({record["subscription"]["id"] for record in records})
    number = {subscription: index for index, subscription in enumerate(subscriptions, start=1)}
    units = [
        {
            "run_id": RUN_ID,
            "contract_service_unit_id": index,
            "contract_service_id": index,
            "contract_id": index,
            "service_id": 1,
            "start_date": date(2026, 10, 1),
            "end_date": date(2026, 10, 31),
            "units": 10,
            "price": 2.0,
            "cost": 1.0,
            "approve_and_post_date": None,
        }
        for index in number.values()
    ]
    services = [
        {
            "run_id": RUN_ID,
            "contract_service_id": index,
            "contract_id": index,
            "service_id": 1,
            "unit_price": 2.0,
            "unit_cost": 1.0,
        }
        for index in number.values()
    ]
    changes = [record for record in records if record["action"] in ("QuantityIncrease", "QuantityDecrease")]
    actions = []
    for seq, record in enumerate(changes):
        after = record["subscriptionQuantity"]
        actions.append(
            {
                "action_id": f"A{seq:08d}",
                "idempotency_key": f"{MONTH}|adjust|{record['id']}",
                "month": MONTH,
                "run_id": RUN_ID,
                "seq": seq,
                "kind": "adjust_units",
                "status": "proposed",
                "reason": None,
                "contract_service_id": number[record["subscription"]["id"]],
                "effective_date": date.fromisoformat(record["effectiveDate"]),
                "units_before": after - record["quantity"],
                "units_after": after,
                "unit_change": record["quantity"],
                "unit_cost_after": None,
                "payload": "{}",
                "charge_ids": json.dumps([record["id"]]),
                "depends_on": "[]",
                "created_at": datetime(2026, 11, 1),
            }
        )
    with warehouse.begin() as conn:
        warehouse.insert(conn, "at_contract_services", services)
        warehouse.insert(conn, "at_contract_service_units", units)
        warehouse.insert(conn, "plan_actions", actions)
    return len(units), len(actions)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as scratch:
        os.environ["BILLING_DATA_DOCS_DIR"] = str(Path(scratch) / "data_docs")
        url = os.environ.get("BENCH_WAREHOUSE_URL") or f"sqlite:///{scratch}/warehouse.db"
        warehouse = Warehouse(url)
        warehouse.migrate()
        records = month_of(TARGET_LINES)
        extract_month(ListSource(records), warehouse, MONTH, RUN_ID)
        unit_rows, plan_rows = store_snapshot_and_plan(warehouse, records)

        started = time.perf_counter()
        quality._gx()
        gx_import = time.perf_counter() - started

        started = time.perf_counter()
        charges = quality.validate_charges(warehouse, MONTH, RUN_ID)
        charges_seconds = time.perf_counter() - started
        started = time.perf_counter()
        plan = quality.validate_plan(warehouse, MONTH, RUN_ID)
        plan_seconds = time.perf_counter() - started
        warehouse.dispose()

    failures = [str(failure) for failure in (*charges.failures, *plan.failures)]
    print(
        "BENCH "
        + json.dumps(
            {
                "benchmark": "validate",
                "lines": len(records),
                "seconds": round(charges_seconds + plan_seconds, 2),
                "charges_seconds": round(charges_seconds, 2),
                "plan_seconds": round(plan_seconds, 2),
                "gx_import_seconds": round(gx_import, 2),
                "snapshot_rows": unit_rows,
                "plan_rows": plan_rows,
                "expectations": sum(suite.evaluated for suite in (*charges.suites, *plan.suites)),
                "failures": len(failures),
                "dialect": warehouse.dialect,
            }
        )
    )
    if failures:
        print("\n".join(failures[:10]), file=sys.stderr)


if __name__ == "__main__":
    main()
