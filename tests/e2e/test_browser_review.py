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

from stacks.airflow_stack import DAG_ID, LocalAirflow, StackSettings
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


def review_url(stack: LocalAirflow, run_id: str, query: str = "") -> str:
    return f"{stack.url}/billing/run/{DAG_ID}/{quote(run_id, safe='')}" + (f"?{query}" if query else "")


def grid_settled(page) -> None:
    page.wait_for_selector('#review[data-ready="true"]:not([data-loading="true"])', timeout=30_000)


def rows(page):
    return page.locator("#grid-body tr[data-testid=grid-row]")


def number(text: str) -> float:
    """A figure as the page writes it (thousands separators, "−" for minus) as a number."""
    return float(text.replace(",", "").replace("−", "-"))


def totals(page) -> dict[str, str]:
    return {
        key: page.get_by_test_id(f"totals-{key}").inner_text()
        for key in ("lines", "counted", "units-added", "units-removed", "cost")
    }


def decide(page, test_id: str, decision: str) -> None:
    """Click a decision button of the line panel and wait until the grid shows the re-planned month."""
    from playwright.sync_api import expect

    page.evaluate("document.getElementById('review').removeAttribute('data-last-decision')")
    page.get_by_test_id(test_id).first.click()
    page.wait_for_selector(f'#review[data-last-decision="{decision}"]', timeout=30_000)
    grid_settled(page)
    expect(page.get_by_test_id("detail-message")).to_contain_text(f"Saved: {decision}.", timeout=30_000)
    expect(page.get_by_test_id("message")).not_to_have_class("message error")


def api_lines(stack: LocalAirflow, run_id: str, **params: str) -> dict:
    with closing(stack.client()) as client:
        answer = client.get(f"/billing/api/runs/{DAG_ID}/{quote(run_id, safe='')}/lines", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_review_page_sorts_filters_searches_decides_and_exports(
    stack: LocalAirflow, pending_run: str, page
) -> None:
    import openpyxl
    from playwright.sync_api import expect

    # reachable as the run's tab in the Airflow UI (external view) ...
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quote(pending_run, safe='')}")
    page.get_by_text("Billing review").first.wait_for(timeout=60_000)
    # ... and as the page itself
    page.goto(review_url(stack, pending_run))
    grid_settled(page)
    assert page.get_by_test_id("run-state").inner_text().startswith("Waiting for approval")
    page_size = page.locator("#review").get_attribute("data-page-size")
    everything = api_lines(stack, pending_run, page_size=page_size)
    assert rows(page).count() == min(everything["matching"], int(page_size)) > 0
    shot(page, "10-review-page")

    # sort: by customer (the order the server sorts by), then # descending
    page.get_by_test_id("sort-customer").click()
    grid_settled(page)
    by_customer = api_lines(stack, pending_run, sort="customer", dir="asc", page_size=page_size)
    shown = rows(page).evaluate_all("rows => rows.map(row => row.dataset.actionId)")
    assert shown == [line["action_id"] for line in by_customer["lines"]]
    page.get_by_test_id("sort-seq").click()
    grid_settled(page)
    page.get_by_test_id("sort-seq").click()
    grid_settled(page)
    seqs = [int(text) for text in rows(page).locator("td:first-child").all_inner_texts()]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs) > 1
    assert "dir=desc" in page.url

    # filter by status: every row flagged, the totals count exactly the flagged lines
    flagged = everything["counts"]["status"]["flagged"]
    page.get_by_test_id("filter-status").select_option("flagged")
    grid_settled(page)
    assert set(rows(page).evaluate_all("rows => rows.map(row => row.dataset.status)")) == {"flagged"}
    assert int(page.get_by_test_id("totals-lines").inner_text()) == flagged
    assert f"{flagged} of {everything['total_lines']} lines" in page.get_by_test_id("page-info").inner_text()
    shot(page, "11-review-flagged")
    page.get_by_test_id("filter-status").select_option("")
    grid_settled(page)

    # search: the probe customer's lines; its name is text, never markup
    page.get_by_test_id("search").fill(XSS_ACCOUNT)
    page.get_by_test_id("apply-filters").click()
    grid_settled(page)
    assert rows(page).count() > 0
    customers = rows(page).locator("[data-testid=cell-customer]")
    assert set(customers.all_inner_texts()) == {XSS_NAME}
    assert set(customers.evaluate_all("cells => cells.map(cell => cell.title)")) == {f"{XSS_NAME} · {XSS_ACCOUNT}"}
    assert page.locator("#grid img").count() == 0 and page.locator("img[src=x]").count() == 0
    shot(page, "12-review-search-xss")
    page.get_by_test_id("search").fill("")
    page.get_by_test_id("apply-filters").click()
    grid_settled(page)

    # confirm a suggestion: a line whose mapping waits on a suggestion
    suggested = api_lines(stack, pending_run, mapping="suggestion")
    assert suggested["matching"] > 0, "the month offers no mapping suggestion to confirm"
    page.get_by_test_id("filter-mapping").select_option("suggestion")
    grid_settled(page)
    line_id = rows(page).first.get_attribute("data-action-id")
    rows(page).first.click()
    page.get_by_test_id("confirm-suggestion").first.wait_for(timeout=30_000)
    decide(page, "confirm-suggestion", "confirm_suggestion")
    assert page.get_by_test_id("decision-row").count() == 1
    after = api_lines(stack, pending_run, mapping="suggestion")
    assert after["matching"] < suggested["matching"]
    assert line_id not in {line["action_id"] for line in after["lines"]}
    shot(page, "13-review-suggestion-confirmed")
    page.get_by_test_id("filter-mapping").select_option("")
    grid_settled(page)

    # exclude a proposed unit change: it leaves the counted totals
    page.get_by_test_id("filter-status").select_option("proposed")
    grid_settled(page)
    before = totals(page)
    proposed_changes = api_lines(stack, pending_run, status="proposed", kind="adjust_units", page_size="500")
    candidates = [line for line in proposed_changes["lines"] if (line["unit_change"] or 0) > 0]
    assert candidates, "no proposed unit increase to exclude"
    excluded, units = candidates[0]["action_id"], candidates[0]["unit_change"]
    page.locator(f"#grid-body tr[data-action-id='{excluded}']").click()
    page.get_by_test_id("decide-exclude").wait_for(timeout=30_000)
    proposed_lines = {
        line["action_id"]: line for line in api_lines(stack, pending_run, status="proposed", page_size="500")["lines"]
    }
    decide(page, "decide-exclude", "exclude")
    # the proposed lines that depend on it (the later changes of its contract service) went with it, audited
    with closing(stack.client()) as client:
        audit = client.get(f"/billing/api/runs/{DAG_ID}/{quote(pending_run, safe='')}/decisions").json()["decisions"]
    went = [entry["action_id"] for entry in audit if entry["after"].get("excluded_with") == excluded]
    assert set(went) <= set(proposed_lines)
    if went:
        expect(page.get_by_test_id("detail-message")).to_contain_text(f"Line excluded, with {len(went)} ")
    after_totals = totals(page)
    assert int(after_totals["lines"]) == int(before["lines"]) - 1 - len(went)
    added = units + sum(max(proposed_lines[line]["unit_change"] or 0, 0) for line in went)
    assert number(after_totals["units-added"]) == pytest.approx(number(before["units-added"]) - added)
    # billed, cost and margin per currency and part of the month: each row in one currency
    money_rows = page.locator("#totals-money-body tr[data-testid=money-row]")
    assert money_rows.count() >= 3 and all(
        text.split()[0] in ("EUR", "GBP", "USD") for text in money_rows.all_inner_texts()
    )
    assert after_totals["units-removed"] == before["units-removed"]
    assert after_totals["cost"] != before["cost"]
    shown = rows(page).evaluate_all("rows => rows.map(row => row.dataset.actionId)")
    assert not {excluded, *went} & set(shown)
    assert page.get_by_test_id("decision-row").count() == 2 + len(went)
    shot(page, "14-review-line-excluded")

    # export the filtered grid as XLSX and read it back
    with page.expect_download() as download_info:
        page.get_by_test_id("export-xlsx").click()
    xlsx = ARTIFACTS / "review-proposed.xlsx"
    download_info.value.save_as(xlsx)
    sheet = openpyxl.load_workbook(xlsx).worksheets[0]
    header = [cell.value for cell in sheet[1]]
    assert "Customer" in header and "Status" in header, header
    status_column = header.index("Status")
    data = [row for row in sheet.iter_rows(min_row=2, values_only=True) if row[status_column] in ("proposed",)]
    assert len(data) == int(after_totals["lines"])
    assert sheet.freeze_panes is not None
    numbers = [value for row in data for value in row if isinstance(value, int | float)]
    assert numbers, "the export has no typed numbers"

    # the probe customer in the export: its name as a text cell, not a formula
    page.get_by_test_id("filter-status").select_option("")
    grid_settled(page)
    page.get_by_test_id("search").fill(XSS_ACCOUNT)
    page.get_by_test_id("apply-filters").click()
    grid_settled(page)
    with page.expect_download() as download_info:
        page.get_by_test_id("export-xlsx").click()
    probe = ARTIFACTS / "review-probe.xlsx"
    download_info.value.save_as(probe)
    cells = [cell for row in openpyxl.load_workbook(probe).worksheets[0].iter_rows(min_row=2) for cell in row]
    assert any(cell.value == XSS_NAME and cell.data_type == "s" for cell in cells)
    assert page.dialogs == []


def status_counts(page) -> dict[str, int]:
    """The status filter's counts as the page shows them (`needs-mapping (24)`)."""
    texts = page.get_by_test_id("filter-status").locator("option[value]:not([value=''])").all_inner_texts()
    return {text.rsplit(" (", 1)[0]: int(text.rsplit(" (", 1)[1].rstrip(")")) for text in texts}


def test_a_wrong_month_in_the_trigger_form_is_explained_in_words(stack: LocalAirflow, page) -> None:
    """Airflow's own Trigger dialog: a month written otherwise is refused with a sentence (not a JSON-schema dump),
    and the month field says what an empty month bills; no run is created."""
    from playwright.sync_api import expect

    with closing(stack.client()) as client:
        stack.wait_for_dag(client)
        runs_before = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["total_entries"]
    page.goto(f"{stack.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    month = page.locator("#element_month")
    month.wait_for(timeout=30_000)
    expect(page.get_by_text("Leave empty for the last closed month").first).to_be_visible()
    month.fill("Nov 2026")
    page.get_by_role("dialog").get_by_role("button", name="Trigger").last.click()
    message = page.get_by_text('Billing month: "Nov 2026" is not a month the sync understands')
    expect(message.first).to_be_visible(timeout=30_000)
    dialog = page.get_by_role("dialog").inner_text()
    assert "Did you mean 2026-11?" in dialog and "Failed validating" not in dialog and "\\d{4}" not in dialog
    shot(page, "07-trigger-form-wrong-month")
    with closing(stack.client()) as client:
        assert client.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["total_entries"] == runs_before
    assert page.dialogs == []


def review_frame(page):
    """The review page inside the run's "Billing review" tab of the Airflow UI (an iframe)."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "/billing/run/" in frame.url:
                frame.wait_for_selector('#review[data-ready="true"]', timeout=30_000)
                return frame
        page.wait_for_timeout(250)
    raise AssertionError(f"no review frame among {[frame.url for frame in page.frames]}")


def test_the_grid_fits_airflows_tab_one_line_a_row_with_more_columns_on_demand(
    stack: LocalAirflow, pending_run: str, page
) -> None:
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quote(pending_run, safe='')}")
    page.get_by_text("Billing review").first.click()
    frame = review_frame(page)
    # no horizontal scroll inside the tab, and a plain line is one line high
    width = frame.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], width
    heights = frame.locator("#grid-body tr[data-testid=grid-row]").evaluate_all(
        "rows => rows.map(row => row.getBoundingClientRect().height)"
    )
    assert heights and max(heights) <= 40, heights
    # the deciding columns first; a long text is cut, and whole on hover
    shown = frame.locator("#grid thead th").evaluate_all(
        "cells => cells.filter(cell => getComputedStyle(cell).display !== 'none').map(cell => cell.dataset.col)"
    )
    assert shown[:4] == ["seq", "customer", "product", "unit_change"] and {"status", "mapping"} <= set(shown)
    assert not {"subscription", "bss_units", "autotask_units"} & set(shown)
    cut = frame.locator("#grid-body td[data-col=reason]").evaluate_all(
        "cells => cells.filter(cell => cell.scrollWidth > cell.clientWidth).map(cell => [cell.textContent, cell.title])"
    )
    assert cut and all(text == title for text, title in cut), cut[:3]
    shot(page, "17-grid-in-airflows-tab")
    # more columns on demand, still within the tab; the choice stays after a reload
    frame.locator("#column-chooser summary").click()
    frame.get_by_test_id("column-bss_units").check()
    assert frame.locator("#grid-body td[data-col=bss_units]").first.is_visible()
    width = frame.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], width
    frame.goto(frame.url)
    frame.wait_for_selector('#review[data-ready="true"]', timeout=30_000)
    assert frame.locator("#grid-body td[data-col=bss_units]").first.is_visible()
    frame.locator("#column-chooser summary").click()
    frame.get_by_test_id("column-bss_units").uncheck()
    assert page.dialogs == []


def test_a_lower_lines_detail_opens_under_it_offers_its_decision_and_the_counts_follow(
    stack: LocalAirflow, pending_run: str, page
) -> None:
    from playwright.sync_api import expect

    page.goto(review_url(stack, pending_run, "sort=seq&dir=asc"))
    grid_settled(page)
    # the last line of the page: its detail opens right under it, in view
    last = rows(page).last
    last.click()
    page.get_by_test_id("detail-row").wait_for(timeout=30_000)
    assert last.evaluate("row => row.nextElementSibling.id") == "detail-row"
    box, viewport = page.get_by_test_id("line-detail").bounding_box(), page.viewport_size
    assert box is not None and 0 <= box["y"] < viewport["height"], box
    shot(page, "15-detail-under-its-row")

    # the extend-contract line that asks to confirm its customer's company has the Confirm button itself
    asking = [
        line
        for line in api_lines(stack, pending_run, kind="extend_contract", page_size="500")["lines"]
        if "confirm that company" in line["reason"]
    ]
    assert asking, "the month has no extend-contract line waiting on its customer's company"
    line = asking[0]
    company = line["reason"].split("belongs to company ", 1)[1].split(":", 1)[0]
    page.get_by_test_id("filter-kind").select_option("extend_contract")
    grid_settled(page)
    counts_before = status_counts(page)
    page.locator(f"#grid-body tr[data-action-id='{line['action_id']}']").click()
    confirm = page.locator(
        f"[data-testid=source-company] li[data-target-id='{company}'] [data-testid=confirm-suggestion]"
    )
    confirm.wait_for(timeout=30_000)
    shot(page, "16-extend-contract-confirms-its-company")
    page.evaluate("document.getElementById('review').removeAttribute('data-last-decision')")
    confirm.click()
    page.wait_for_selector('#review[data-last-decision="confirm_suggestion"]', timeout=30_000)
    grid_settled(page)
    expect(page.get_by_test_id("detail-message")).to_contain_text("Saved: confirm_suggestion.", timeout=30_000)

    # the status counts follow the decision without a reload, and match the server's
    counts_after = status_counts(page)
    served = api_lines(stack, pending_run)["counts"]["status"]
    assert counts_after == {status: count for status, count in served.items() if count}
    assert counts_after.get("needs-mapping", 0) < counts_before["needs-mapping"]
    page.get_by_test_id("filter-kind").select_option("")
    grid_settled(page)
    assert page.dialogs == []


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
    review_link = page.get_by_role("link", name="open the billing review")
    assert review_link.get_attribute("href").endswith(f"/billing/run/{DAG_ID}/{quote(pending_run, safe='')}")
    # where to look: links a person can open, never a path on the server
    assert page.get_by_role("link", name="open the Data Docs").count() == 1
    assert "/var/" not in page.get_by_text("Where to look").locator("xpath=following-sibling::*[1]").inner_text()
    shot(page, "02-approval-form")
    approve.dblclick()  # a double-click records one answer (the approval guard takes answers one after the other)

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

    # the months overview: the month approved by admin, with its review, Data Docs and run report
    page.goto(f"{stack.url}/billing/months")
    row = page.locator(f"tr[data-testid=month-row][data-run-id='{pending_run}']")
    row.wait_for(timeout=30_000)
    assert "approved by admin" in row.inner_text()
    for link in ("review-link", "data-docs-link", "report-link"):
        assert row.get_by_test_id(link).count() == 1
    report = row.get_by_test_id("report-link").get_attribute("href")
    opened = page.request.get(stack.url + report if report.startswith("/") else report)
    assert opened.status == 200 and MONTH in opened.text()
    shot(page, "04-billing-months")
    assert page.dialogs == []


def test_a_rerun_of_the_month_leaves_the_first_runs_review_as_it_was_and_the_months_page_tells_the_truth(
    stack: LocalAirflow, pending_run: str, page
) -> None:
    """The loaded month is triggered again with a run id crafted to look like the first run's old folder name (any
    `user` can trigger one); the re-run is rejected. The first run's review, report and Data Docs do not change; the
    months page shows the month once, its latest run rejected and the first run behind it, loaded with its open
    lines."""
    import hashlib

    from include.quality import data_docs_dir

    first_lines = api_lines(stack, pending_run, page_size="500")
    open_lines = sum(
        first_lines["counts"]["status"].get(status, 0) for status in ("proposed", "flagged", "needs-mapping", "blocked")
    )
    assert open_lines > 0, "the loaded month left nothing open: the months page's state would prove little"
    folder = stack.settings.data_docs_dir / MONTH / data_docs_dir(MONTH, pending_run).name

    def files_of(directory: Path) -> dict[str, str]:
        return {
            str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in directory.rglob("*")
            if path.is_file()
        }

    files_before = files_of(folder)
    assert {"report.html", "index.html"} <= set(files_before)
    page.goto(review_url(stack, pending_run))
    grid_settled(page)
    totals_before = totals(page)

    crafted = pending_run.replace(":", "_").replace("+", "_")
    with closing(stack.client()) as client:
        answer = client.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"dag_run_id": crafted, "logical_date": None, "conf": {"month": MONTH}, "note": "re-run"},
        )
        assert answer.status_code in (200, 201), answer.text
        stack.wait_for_task_state(client, crafted, "approve", ("awaiting_input",), timeout_s=900)
        stack.wait_until_scheduler_saw_pause(crafted, "approve")
        rejected = client.patch(
            f"/api/v2/dags/{DAG_ID}/dagRuns/{crafted}/taskInstances/approve/-1/hitlDetails",
            json={"chosen_options": ["Reject"], "params_input": {}},
        )
        assert rejected.status_code == 200, rejected.text
        states = stack.wait_for_task_state(client, crafted, "report", ("success",), timeout_s=600)
        assert states["load"] == "skipped"

    # the first run's review, report and Data Docs as they were
    assert api_lines(stack, pending_run, page_size="500") == first_lines
    page.goto(review_url(stack, pending_run))
    grid_settled(page)
    assert totals(page) == totals_before
    banner = page.get_by_test_id("run-state").inner_text()
    assert "Decisions are closed" in banner and banner.lower().count("decisions are closed") == 1, banner
    assert files_of(folder) == files_before
    crafted_folder = stack.settings.data_docs_dir / MONTH / data_docs_dir(MONTH, crafted).name
    assert crafted_folder != folder and (crafted_folder / "report.html").is_file()
    shot(page, "05-first-run-after-rerun")

    # the months page: the month once, its latest run rejected, the first run behind it, loaded with what it left open
    page.goto(f"{stack.url}/billing/months")
    month_rows = page.locator(f"tr[data-testid=month-row][data-month='{MONTH}']")
    month_rows.first.wait_for(timeout=30_000)
    assert month_rows.count() == 1
    row = month_rows.first
    assert row.get_attribute("data-run-id") == crafted
    assert row.get_by_test_id("month-status").inner_text() == "rejected"
    row.get_by_test_id("earlier-runs").locator("summary").click()
    earlier = row.locator(f"[data-testid=earlier-run][data-run-id='{pending_run}']")
    assert earlier.get_by_test_id("earlier-run-status").inner_text() == f"loaded, {open_lines} lines open"
    report = earlier.get_by_test_id("report-link").get_attribute("href")
    opened = page.request.get(stack.url + report if report.startswith("/") else report)
    assert opened.status == 200 and hashlib.sha256(opened.body()).hexdigest() == files_before["report.html"]
    assert opened.headers["content-security-policy"].startswith("sandbox")
    shot(page, "06-billing-months-after-rerun")
    assert page.dialogs == []
