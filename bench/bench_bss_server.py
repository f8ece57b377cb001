"""Benchmark the BSS sandbox: its data set generated in-process, start-up with 1,000 customers and a month extract
in pages of 200.

Prints one `BENCH {...}` line per benchmark: generating a 1,000-customer month (the data set the sandbox serves;
target < 5 s, and asked again it comes from the cache), start-up time (target < 15 s), the first (cold) extract of
a month, which includes generating and serialising it (target >= 5,000 lines/s), and a warm re-extract. The client
is a plain sequential httpx loop, so the figures are the ceiling a real hook can reach against this server.
These were timed assertions in the tests once; speed is measured here, the tests check behaviour.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.dataset import build_universe
from stacks.launcher import start_server

CUSTOMERS = 1000
SUBSCRIPTIONS_PER_CUSTOMER = 20
MONTH_FILTER = "chargeStartDate ge 2026-10-01 and chargeStartDate le 2026-10-31"


def extract_month(http: httpx.Client, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Api-Version": "3.0"}
    lines = 0
    page = 1
    while True:
        response = http.get(
            "/api/charges",
            headers=headers,
            params={"$filter": MONTH_FILTER, "$orderby": "id asc", "page": page, "pageSize": 200},
        )
        response.raise_for_status()
        lines += len(response.json())
        if page >= json.loads(response.headers["X-Pagination"])["totalPages"]:
            return lines
        page += 1


def report(name: str, **figures: object) -> None:
    print("BENCH " + json.dumps({"benchmark": name, **figures}), flush=True)


def dataset() -> None:
    started = time.perf_counter()
    universe = build_universe(customers=CUSTOMERS, subscriptions_per_customer=SUBSCRIPTIONS_PER_CUSTOMER)
    lines = universe.charges_for_month("2026-10")
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    cached = universe.charges_for_month("2026-10") is lines
    again_s = time.perf_counter() - started
    report(
        "bss_dataset",
        customers=CUSTOMERS,
        subscriptions_per_customer=SUBSCRIPTIONS_PER_CUSTOMER,
        lines=len(lines),
        seconds=round(seconds, 3),
        cached=cached,
        again_seconds=round(again_s, 6),
        target={"seconds_max": 5.0},
        ok=seconds < 5.0 and cached,
    )


def main() -> None:
    dataset()
    started = time.perf_counter()
    server = start_server(
        [
            "sandbox.bss_server",
            "--customers",
            str(CUSTOMERS),
            "--subscriptions-per-customer",
            str(SUBSCRIPTIONS_PER_CUSTOMER),
        ]
    )
    startup_s = time.perf_counter() - started
    try:
        report(
            "bss_sandbox_startup",
            customers=CUSTOMERS,
            subscriptions_per_customer=SUBSCRIPTIONS_PER_CUSTOMER,
            seconds=round(startup_s, 3),
            target={"seconds_max": 15.0},
            ok=startup_s < 15.0,
        )
        with httpx.Client(base_url=server.url, timeout=60) as http:
            token = http.post(
                "/oauth/token",
                auth=("demo-client", "demo-client-secret"),
                data={
                    "grant_type": "password",
                    "username": "demo-user",
                    "password": "demo-password",
                },
            ).json()["access_token"]
            for name in ("bss_sandbox_extract_cold", "bss_sandbox_extract_warm"):
                started = time.perf_counter()
                lines = extract_month(http, token)
                seconds = time.perf_counter() - started
                rate = lines / seconds
                targets = {"lines_per_s_min": 5000} if name == "bss_sandbox_extract_cold" else {}
                report(
                    name,
                    lines=lines,
                    page_size=200,
                    seconds=round(seconds, 3),
                    lines_per_s=round(rate),
                    **({"target": targets, "ok": rate >= 5000} if targets else {}),
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
