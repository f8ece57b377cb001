"""The README's screenshots, from the running `make ui`, at 1440×900 (a laptop's window):

- `billing-review.png`: the Billing review tab of the run waiting for approval (the unit changes);
- `billing-review-detail.png`: a line's detail open under its row;
- `approval-form.png`: the run's approval form (Browse → Required Actions);
- `billing-months.png`: the Billing months page;
- `run-report.png`: the run report of the month `make demo` loaded.

Run `make ui` in another terminal, then `.venv/bin/python scripts/screenshot.py [--url http://127.0.0.1:PORT]`
(writes docs/images/). Drives Debian's Chromium through Playwright, as the browser tests do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "bss_autotask_billing_sync"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--passwords", type=Path, default=REPO_ROOT / ".airflow" / "billing-passwords.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images", help="the folder of the images")
    args = parser.parse_args(argv)
    password = json.loads(args.passwords.read_text())[args.user]
    with closing(httpx.Client(base_url=args.url, timeout=30)) as client:
        token = client.post("/auth/token", json={"username": args.user, "password": password}).json()["access_token"]
        runs = client.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            params={"state": ["running"], "order_by": "-run_after"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()["dag_runs"]
    if not runs:
        print("screenshot: no run waits for review; start `make ui` first", file=sys.stderr)
        return 1
    run_id, month = runs[0]["dag_run_id"], (runs[0].get("conf") or {}).get("month", "")
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        print("screenshot: Debian's chromium is missing: `make browser`", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(args.url + "/")
        page.fill("input[name=username]", args.user)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
        shoot_review(page, args.url, run_id, args.out)
        shoot_approval_form(page, args.url, month, args.out)
        shoot_months_and_report(page, args.url, args.out)
        browser.close()
    print(f"screenshots of {run_id}: {args.out}")
    return 0


def shoot_review(page, url: str, run_id: str, out: Path) -> None:
    """The grid of the unit changes in the run's tab, then a line's detail open under its row."""
    page.goto(f"{url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/billing_review")
    frame = page.frame_locator("iframe").first
    frame.locator('#review[data-ready="true"]').wait_for(timeout=60_000)
    frame.locator("#grid-body tr").first.wait_for(timeout=60_000)
    frame.locator("#filter-kind").select_option("adjust_units")  # what a reviewer reads first
    frame.locator('#review[data-loading="false"]').wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "billing-review.png"))
    frame.locator("#filter-kind").select_option("")
    frame.locator('#review[data-loading="false"]').wait_for(timeout=30_000)
    frame.locator("#filter-status").select_option("needs-mapping")
    frame.locator('#review[data-loading="false"]').wait_for(timeout=30_000)
    frame.locator("#filter-kind").select_option("create_company")
    frame.locator('#review[data-loading="false"]').wait_for(timeout=30_000)
    row = frame.locator("#grid-body tr[data-action-id]").nth(1)
    customer = row.locator("[data-testid=cell-customer]").inner_text()
    row.click()
    # the company search tells companies of one name apart
    frame.get_by_test_id("target-search-company").fill(customer.split()[0])
    frame.get_by_test_id("target-result").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "billing-review-detail.png"))


def shoot_approval_form(page, url: str, month: str, out: Path) -> None:
    page.goto(f"{url}/required_actions")
    page.get_by_text(f"Approve the Autotask changes for {month}?").first.click()
    page.get_by_role("button", name="Approve proposed").wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "approval-form.png"))


def shoot_months_and_report(page, url: str, out: Path) -> None:
    page.goto(f"{url}/billing/months")
    page.locator("tr[data-testid=month-row]").first.wait_for(timeout=30_000)
    page.screenshot(path=str(out / "billing-months.png"))
    report = page.locator("[data-testid=report-link]").first
    if report.count():
        page.goto(url + report.get_attribute("href"))
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "run-report.png"))


if __name__ == "__main__":
    sys.exit(main())
