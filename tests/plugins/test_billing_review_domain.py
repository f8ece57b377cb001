"""`include.review` on both warehouses (SQLite and PostgreSQL): the grid, the snapshot search, the months overview
and the decisions, on a month planned by the real pipeline against the Autotask sandbox (over HTTP)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from openpyxl import load_workbook

from include import review
from include.approval import ApprovalDecision, Decision, record_decision
from include.plan import load_plan
from include.review_export import to_csv, to_xlsx
from include.warehouse import Warehouse, utcnow
from sandbox.launcher import RunningServer
from tests.plugins.review_support import MONTH, RUN_ID, SETTINGS, XSS_NAME, plan_month, start_autotask


@pytest.fixture(scope="module")
def autotask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_autotask(tmp_path_factory.mktemp("review-domain"))
    yield server
    server.stop()


@pytest.fixture
def planned(warehouse: Warehouse, autotask: RunningServer) -> Warehouse:
    httpx = pytest.importorskip("httpx")
    httpx.post(autotask.url + "/_admin/reset", timeout=30).raise_for_status()
    plan_month(autotask, warehouse)
    return warehouse


def test_grid_search_and_overview(planned: Warehouse) -> None:
    page = review.grid_page(planned, RUN_ID, review.GridQuery.parse({"page_size": "500"}))
    stored = load_plan(planned, MONTH, RUN_ID)
    assert page["total_lines"] == len(stored) == page["matching"]
    assert {row["status"] for row in page["lines"]} == {str(action.status) for action in stored}
    xss = review.grid_page(planned, RUN_ID, review.GridQuery(search="onerror"))
    assert xss["matching"] >= 1 and {row["customer"] for row in xss["lines"]} == {XSS_NAME}
    adjust = review.grid_page(planned, RUN_ID, review.GridQuery(kind="adjust_units", page_size=500))
    assert adjust["totals"]["units_added"] == pytest.approx(
        sum(max(row["unit_change"] or 0, 0) for row in adjust["lines"])
    )
    assert set(adjust["totals"]["cost"]) <= {"EUR", "GBP", "USD"} and adjust["totals"]["cost"]
    found = review.search_targets(planned, RUN_ID, "company", "gmbh")
    assert found and all("gmbh" in (item["name"] + (item["number"] or "")).lower() for item in found)
    runs = review.months_overview(planned)
    assert [(run["month"], run["run_id"], run["status"]) for run in runs] == [(MONTH, RUN_ID, "waiting for approval")]
    workbook = load_workbook(io.BytesIO(to_xlsx(adjust["lines"], adjust["totals"], "t")))
    assert workbook["Review"].max_row >= len(adjust["lines"]) + 3
    exported = list(csv.DictReader(io.StringIO(to_csv(xss["lines"]))))
    assert [row["Customer"] for row in exported] == [XSS_NAME] * len(xss["lines"])


def test_decisions_replan_audit_and_close_with_the_approval(planned: Warehouse) -> None:
    rows = review.grid_rows(planned, RUN_ID)
    suggested = next(row for row in rows if row["mapping"] == "suggestion" and row["kind"] == "create_company")
    detail = review.line_detail(planned, RUN_ID, suggested["action_id"])
    source = detail["sources"][0]
    target = next(item["target_id"] for item in source["suggestions"] if item["status"] == "open")
    before = review.grid_page(planned, RUN_ID, review.GridQuery())["counts"]["status"]["needs-mapping"]
    result = review.decide(
        planned,
        RUN_ID,
        {"decision": "confirm_suggestion", "kind": "company", "source_key": source["source_key"], "target_id": target},
        "Zoë",
        SETTINGS,
    )
    assert result["after"]["target_id"] == target
    after = review.grid_page(planned, RUN_ID, review.GridQuery())["counts"]["status"].get("needs-mapping", 0)
    assert after < before

    proposed = next(row for row in review.grid_rows(planned, RUN_ID) if row["status"] == "proposed")
    review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": proposed["action_id"]}, "Zoë", SETTINGS)
    second = next(row for row in review.grid_rows(planned, RUN_ID) if row["status"] == "proposed")
    review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": second["action_id"]}, "Zoë", SETTINGS)
    # the grid shows each change at once, also when statuses only swap (excluded <-> proposed)
    review.decide(planned, RUN_ID, {"decision": "include", "action_id": proposed["action_id"]}, "Zoë", SETTINGS)
    shown = {row["action_id"]: row["status"] for row in review.grid_rows(planned, RUN_ID)}
    assert (shown[proposed["action_id"]], shown[second["action_id"]]) == ("proposed", "excluded")
    review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": proposed["action_id"]}, "Zoë", SETTINGS)
    flagged = next(row for row in review.grid_rows(planned, RUN_ID) if row["status"] == "flagged")
    review.decide(planned, RUN_ID, {"decision": "approve_line", "action_id": flagged["action_id"]}, "Zoë", SETTINGS)
    # a mapping decision re-plans: the exclusion and the line approval survive it
    other = next(
        row
        for row in review.grid_rows(planned, RUN_ID)
        if row["mapping"] == "create" and row["kind"] == "create_company"
    )
    review.decide(
        planned, RUN_ID, {"decision": "create", "kind": "company", "source_key": other["account_id"]}, "Zoë", SETTINGS
    )
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert statuses[proposed["action_id"]] == "excluded"
    assert statuses[flagged["action_id"]] == "flagged"
    audit = review.decisions_of(planned, RUN_ID)
    assert [entry["decision"] for entry in audit] == [
        "create",
        "approve_line",
        "exclude",
        "include",
        "exclude",
        "exclude",
        "confirm_suggestion",
    ]
    assert {entry["decided_by"] for entry in audit} == {"Zoë"}

    record_decision(
        planned, MONTH, RUN_ID, ApprovalDecision(Decision.APPROVED, "Ann", utcnow(), ("Approve proposed",), "ok")
    )
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert statuses[flagged["action_id"]] == "approved" and statuses[proposed["action_id"]] == "excluded"
    with pytest.raises(review.ReviewError) as refused:
        review.decide(planned, RUN_ID, {"decision": "include", "action_id": proposed["action_id"]}, "Zoë", SETTINGS)
    assert refused.value.status == 409 and "decisions are closed" in refused.value.message
