"""Benchmark: snapshot -> link -> reconcile for a month of 5,000 customers / ~100,000 BSS lines.

The data is prepared in a child process (the synthetic universe alone takes ~300 MB), so the peak RSS
reported is that of the measured steps: a fresh process that loads the warehouse file and an in-memory
Autotask (no API latency; frozen out of the garbage collector's scans, as a real run has no such heap), then
runs `take_snapshot`, `link_month` and `reconcile_month`. Wall and CPU seconds are reported per step: on a
shared machine, compare the CPU seconds.

    .venv/bin/python bench/bench_reconcile.py [--customers 5000] [--subscriptions 23]
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

MONTH = "2026-10"


def prepare(directory: Path, customers: int, subscriptions: int, seed: int) -> None:
    from include.extract import extract_month
    from include.warehouse import Warehouse
    from sandbox.bss_server import UniverseSource
    from sandbox.dataset import build_universe
    from tests.include.fake_autotask import FakeAutotask

    universe = build_universe(customers, subscriptions, seed)
    warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
    warehouse.migrate()
    extracted = extract_month(UniverseSource(universe), warehouse, MONTH, "bench-extract")

    # Autotask as an MSP half-way through adoption: most records keyed, some only by name, some near misses,
    # some missing; units as of the end of the previous month, with a little drift in cost.
    fake = FakeAutotask()
    month_start = date(2026, 10, 1)
    before = month_start - timedelta(days=1)
    company_of: dict[str, int] = {}
    for index, account in enumerate(universe.accounts):
        bucket = index % 20
        if bucket < 16:
            company_of[account.id] = fake.add_company(account.name, key=account.id)
        elif bucket < 18:
            company_of[account.id] = fake.add_company(account.name)
        elif bucket == 18:
            fake.add_company(account.name + " Services")
    service_of: dict[str, int] = {}
    for product in universe.products[:-2]:
        period_type = {"Monthly": 2, "Quarterly": 3, "SemiAnnually": 4, "Annually": 5}[product.billing_period]
        service_of[product.id] = fake.add_service(
            product.name, product.sku, float(product.unit_cost), float(product.unit_price), period_type
        )
    for number, subscription in enumerate(universe.subscriptions):
        company = company_of.get(subscription.account_id)
        service = service_of.get(subscription.product_id)
        if company is None or service is None or subscription.start_date >= month_start or number % 25 == 0:
            continue
        if subscription.cancelled_on is not None and subscription.cancelled_on < month_start:
            continue
        # month-to-month contracts are kept a year ahead (as reconciliation creates them); longer terms
        # end with their commitment, so October's renewals need an extension
        end = subscription.term_end_on(before) if subscription.billing_cycle != "Monthly" else date(2026, 12, 31)
        contract = fake.add_contract(
            company, f"Subscription {subscription.id}", subscription.id, subscription.start_date, end
        )
        account = universe.account(subscription.account_id)
        cost = float(universe.prices_for(universe.product(subscription.product_id), account.currency)[0])
        fake.add_contract_service(
            contract, service, subscription.units_on(before), unit_cost=cost + (0.5 if number % 50 == 1 else 0.0)
        )
    with (directory / "autotask.pickle").open("wb") as handle:
        pickle.dump(fake, handle, protocol=pickle.HIGHEST_PROTOCOL)
    print(
        json.dumps(
            {
                "lines": extracted.line_count,
                "accounts": extracted.account_count,
                "subscriptions": len(universe.subscriptions),
            }
        )
    )


def measure(directory: Path) -> dict:
    from include.mapping import link_month
    from include.reconcile import reconcile_month
    from include.snapshot import take_snapshot
    from include.sync_settings import SyncSettings
    from include.warehouse import Warehouse

    with (directory / "autotask.pickle").open("rb") as handle:
        fake = pickle.load(handle)
    # The in-memory Autotask stands in for the API: a real run holds no such heap. Its millions of objects are
    # kept out of the garbage collector's full scans, which otherwise cost about 1.4 s CPU over the three steps.
    gc.collect()
    gc.freeze()
    warehouse = Warehouse(f"sqlite:///{directory / 'warehouse.db'}")
    settings = SyncSettings(owner_resource_id=29682885, billing_code_id=29682801)
    lines = warehouse.scalar("SELECT COUNT(*) FROM charge_lines WHERE month = :month", {"month": MONTH})
    # wall and CPU time of each step: on a shared machine the CPU seconds are the figures to compare
    started, cpu_started = time.monotonic(), time.process_time()
    snapshot = take_snapshot(fake, warehouse, MONTH, "bench-run", settings)
    after_snapshot, cpu_after_snapshot = time.monotonic(), time.process_time()
    mapping = link_month(warehouse, MONTH, "bench-run", settings)
    after_link, cpu_after_link = time.monotonic(), time.process_time()
    plan = reconcile_month(warehouse, MONTH, "bench-run", settings)
    finished, cpu_finished = time.monotonic(), time.process_time()
    return {
        "benchmark": "reconcile",
        "lines": lines,
        "seconds": round(finished - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "snapshot_seconds": round(after_snapshot - started, 2),
        "link_seconds": round(after_link - after_snapshot, 2),
        "reconcile_seconds": round(finished - after_link, 2),
        "cpu_seconds": round(cpu_finished - cpu_started, 2),
        "snapshot_cpu_seconds": round(cpu_after_snapshot - cpu_started, 2),
        "link_cpu_seconds": round(cpu_after_link - cpu_after_snapshot, 2),
        "reconcile_cpu_seconds": round(cpu_finished - cpu_after_link, 2),
        "contract_services": plan.contract_services,
        "actions": plan.actions,
        "by_status": plan.by_status,
        "snapshot_rows": snapshot.contract_service_units,
        "open_suggestions": mapping.open_suggestions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--subscriptions", type=int, default=23)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.customers, args.subscriptions, args.seed)
        return
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as temporary:
        directory = Path(temporary)
        script = str(Path(__file__).resolve())
        common = [
            "--customers",
            str(args.customers),
            "--subscriptions",
            str(args.subscriptions),
            "--seed",
            str(args.seed),
        ]
        subprocess.run([sys.executable, script, *common, "--prepare", temporary], check=True, stdout=subprocess.DEVNULL)
        result = subprocess.run(
            [sys.executable, script, "--measure", temporary], check=True, capture_output=True, text=True
        )
        print("BENCH " + result.stdout.strip().splitlines()[-1])
        del directory


if __name__ == "__main__":
    main()
