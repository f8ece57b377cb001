"""A real browser on a real local Airflow: Debian's Chromium, driven by Playwright, against the `make ui` stack
(sandboxes, api-server, scheduler, dag-processor, triggerer) started on free ports with a temporary Airflow home
and warehouse. A month is triggered and waits for approval; a person logs in, answers the approval in the UI's
Required Actions, and the run goes on to the load. Screenshots go to var/test-artifacts/browser/.

Chromium comes from Debian (`make browser`, a prerequisite of `make test`); Playwright never downloads one.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import pytest

from sandbox.airflow_stack import DAG_ID, LocalAirflow, StackSettings
from tests.servers import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]
MONTH = "2026-10"
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "browser"
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_ACCOUNT = "ACC-1045"  # a customer with a unit change in 2026-10, so a plan line carries its name
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    """The `make ui` stack on free ports, a temporary Airflow home and warehouse; every process stopped after."""
    work = tmp_path_factory.mktemp("ui-stack")
    settings = StackSettings(
        airflow_home=work / "airflow-home",
        warehouse_path=work / "warehouse.db",
        data_docs_dir=work / "data_docs",
        autotask_state_file=work / "autotask-state.json",
        log_dir=work / "logs",
        port=0,
        bss_args=["--account-name", f"{XSS_ACCOUNT}={XSS_NAME}"],
    )
    with LocalAirflow(settings) as running:
        yield running
    assert running.remaining_processes() == [], "processes of the stack still run after stop()"


@pytest.fixture(scope="module")
def pending_run(stack: LocalAirflow) -> str:
    """The month triggered through the REST API, waiting for approval (task `approve` awaiting input)."""
    with closing(stack.client()) as client:
        stack.wait_for_dag(client)
        run_id = stack.trigger_month(client, MONTH)
        stack.wait_for_task_state(client, run_id, "approve", ("awaiting_input",), timeout_s=900)
    stack.wait_until_scheduler_saw_pause(run_id, "approve")
    return run_id


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: `make browser` installs it (make test does it first)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, stack: LocalAirflow) -> Iterator[object]:
    """A logged-in page (admin), in a fresh browser context; alert() dialogs are recorded, never accepted."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(stack.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", stack.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
    yield page
    context.close()


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_approval_answered_in_required_actions_lets_the_run_load(
    stack: LocalAirflow, pending_run: str, page
) -> None:
    subject = f"Approve the Autotask changes for {MONTH}?"
    page.goto(stack.url + "/required_actions")
    page.get_by_text(subject).first.wait_for(timeout=60_000)
    assert shot(page, "01-required-actions").stat().st_size > 0

    # the pending request opens the task's approval form: the plan summary and the three options
    page.get_by_text(subject).first.click()
    approve = page.get_by_role("button", name="Approve proposed")
    approve.wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Approve incl. flagged").is_visible()
    assert page.get_by_role("button", name="Reject").is_visible()
    assert page.get_by_text(f"Billing month {MONTH}: changes for Autotask").first.is_visible()
    shot(page, "02-approval-form")
    approve.click()

    with closing(stack.client()) as client:
        states = stack.wait_for_task_state(client, pending_run, "report", ("success",), timeout_s=900)
        assert states["approve"] == "success" and states["load"] == "success" and states["verify"] == "success"
        run = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{pending_run}").json()
        hitl = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{pending_run}/taskInstances/approve/-1/hitlDetails").json()
        assert hitl["chosen_options"] == ["Approve proposed"]
        assert hitl["responded_by_user"]["name"] == "admin"
        # the load's task log is readable through the API (what the UI's Logs tab shows)
        log = client.get(
            f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(pending_run)}/taskInstances/load/logs/1",
            headers={"Accept": "application/json"},
        )
        assert log.status_code == 200
        events = " ".join(str(line.get("event", "")) for line in log.json()["content"] if isinstance(line, dict))
        assert "load" in events and MONTH in events, events[-2000:]
    assert run["state"] in ("running", "success")

    # the warehouse holds who approved and what was loaded
    with closing(sqlite3.connect(stack.settings.warehouse_path)) as conn:
        decisions = conn.execute(
            "SELECT decision, decided_by FROM month_approvals WHERE run_id = ?", (pending_run,)
        ).fetchall()
        applied = conn.execute(
            "SELECT COUNT(*) FROM plan_actions WHERE run_id = ? AND status = 'applied' AND decided_by = 'admin'",
            (pending_run,),
        ).fetchone()[0]
    assert decisions == [("approved", "admin")]
    assert applied > 0

    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quote(pending_run, safe='')}")
    page.get_by_text("report").first.wait_for(timeout=30_000)
    shot(page, "03-run-loaded")
    assert page.dialogs == []
