"""The "Billing review" plugin through a real `airflow api-server` (fixed logins: admin, viewer) against a month
planned by the real pipeline with the Autotask sandbox over HTTP.

One api-server serves the module (it takes ~15 s to start). The tests run in file order: the reads and refusals
first, then the decisions, and last the month's approval, after which every decision is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from openpyxl import load_workbook

from include.approval import ApprovalDecision, Decision, record_decision, render_body, summarise_plan
from include.plan import load_plan
from include.review import review_url
from include.warehouse import Warehouse, utcnow
from stacks.review_server import airflow_env, start_api_server, stop_group, token
from tests.plugins.review_support import (
    DAG_ID,
    FORMULA_NAME,
    MONTH,
    RUN_ID,
    XSS_NAME,
    plan_month,
    start_autotask,
)

OTHER_RUN = "manual__2026-10-01T06:00:00+00:00"
RUN_PATH = f"{quote(DAG_ID)}/{quote(RUN_ID, safe='')}"
AUDITED_TABLES = (
    "plan_actions",
    "mapping_links",
    "mapping_suggestions",
    "month_links",
    "review_decisions",
    "review_line_approvals",
    "month_approvals",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("billing-review")
    autotask = start_autotask(work)
    warehouse_path = work / "warehouse.db"
    warehouse = Warehouse(f"sqlite:///{warehouse_path}")
    server = None
    try:
        # another run of another month first: its lines are "a line of another run"
        plan_month(autotask, warehouse, OTHER_RUN, month="2026-09")
        plan_month(autotask, warehouse, RUN_ID)
        env = airflow_env(work / "airflow", warehouse_path, work / "data_docs")
        server = start_api_server(env, work)
        admin = token(server.url, "admin")
        viewer = token(server.url, "viewer")
        yield {
            "url": server.url,
            "work": work,
            "warehouse": warehouse,
            "autotask": autotask,
            "admin": httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=60),
            "viewer": httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {viewer}"}, timeout=60),
            "anonymous": httpx.Client(base_url=server.url, timeout=60),
            "data_docs": work / "data_docs",
        }
    finally:
        if server is not None:
            stop_group(server)
        autotask.stop()
        warehouse.dispose()


def digest(warehouse: Warehouse) -> str:
    """Everything a decision could change, as one hash."""
    parts = []
    for table in AUDITED_TABLES:
        rows = warehouse.query(f"SELECT * FROM {table}")  # fixed table names
        parts.append(json.dumps(sorted(json.dumps(row, default=str, sort_keys=True) for row in rows)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def csrf(client: httpx.Client) -> str:
    response = client.get("/billing/api/csrf")
    assert response.status_code == 200, response.text
    return response.json()["token"]


def post_decision(
    client: httpx.Client, body: Any, *, token_value: str | None = "auto", **headers: str
) -> httpx.Response:
    sent = dict(headers)
    if token_value == "auto":
        sent["X-Billing-CSRF"] = csrf(client)
    elif token_value is not None:
        sent["X-Billing-CSRF"] = token_value
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(
        f"/billing/api/runs/{RUN_PATH}/decisions",
        content=content,
        headers={"Content-Type": "application/json", **sent},
    )


def lines(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get(f"/billing/api/runs/{RUN_PATH}/lines", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def a_line(stack: dict, **params: Any) -> dict[str, Any]:
    found = lines(stack["admin"], page_size=500, **params)["lines"]
    assert found, f"no line with {params}"
    return found[0]


READ_PATHS = [
    "/billing/months",
    "/billing/api/months",
    "/billing/api/csrf",
    f"/billing/run/{RUN_PATH}",
    f"/billing/api/runs/{RUN_PATH}",
    f"/billing/api/runs/{RUN_PATH}/lines",
    f"/billing/api/runs/{RUN_PATH}/lines/0123",
    f"/billing/api/runs/{RUN_PATH}/targets?kind=company&q=a",
    f"/billing/api/runs/{RUN_PATH}/decisions",
    f"/billing/api/runs/{RUN_PATH}/export.csv",
    f"/billing/api/runs/{RUN_PATH}/export.xlsx",
    "/billing/static/review.js",
    f"/billing/files/{MONTH}/run/index.html",
]


# -- auth ---------------------------------------------------------------------------------------------------------


def test_every_endpoint_refuses_a_request_without_credentials(stack: dict) -> None:
    before = digest(stack["warehouse"])
    for path in READ_PATHS:
        response = stack["anonymous"].get(path)
        assert response.status_code == 401, (path, response.status_code, response.text[:200])
    response = stack["anonymous"].post(
        f"/billing/api/runs/{RUN_PATH}/decisions",
        json={"decision": "exclude", "action_id": a_line(stack, status="proposed")["action_id"]},
    )
    assert response.status_code == 401
    assert digest(stack["warehouse"]) == before


def test_a_bad_token_is_refused_and_a_viewer_reads_but_cannot_decide(stack: dict) -> None:
    before = digest(stack["warehouse"])
    forged = httpx.Client(base_url=stack["url"], headers={"Authorization": "Bearer not.a.token"}, timeout=30)
    assert forged.get(f"/billing/api/runs/{RUN_PATH}/lines").status_code == 403
    viewer = stack["viewer"]
    assert viewer.get(f"/billing/api/runs/{RUN_PATH}/lines").status_code == 200
    assert viewer.get(f"/billing/run/{RUN_PATH}").status_code == 200
    line = a_line(stack, status="proposed")
    response = post_decision(viewer, {"decision": "exclude", "action_id": line["action_id"]})
    assert response.status_code == 403, response.text
    assert digest(stack["warehouse"]) == before


def test_a_decision_without_the_users_csrf_token_or_from_another_origin_is_refused(stack: dict) -> None:
    before = digest(stack["warehouse"])
    body = {"decision": "exclude", "action_id": a_line(stack, status="proposed")["action_id"]}
    admin = stack["admin"]
    missing = post_decision(admin, body, token_value=None)
    assert missing.status_code == 403 and "CSRF token missing" in missing.json()["detail"]
    wrong = post_decision(admin, body, token_value="0" * 64)
    assert wrong.status_code == 403 and "CSRF token invalid" in wrong.json()["detail"]
    # a valid token of another user is not this user's
    of_viewer = post_decision(admin, body, token_value=csrf(stack["viewer"]))
    assert of_viewer.status_code == 403
    foreign = post_decision(admin, body, Origin="https://evil.example")
    assert foreign.status_code == 403 and "origin" in foreign.json()["detail"]
    assert digest(stack["warehouse"]) == before


# -- reads ----------------------------------------------------------------------------------------------------------


def test_grid_pages_sorts_filters_and_totals(stack: dict) -> None:
    admin = stack["admin"]
    first = lines(admin, page_size=10)
    assert first["total_lines"] == len(load_plan(stack["warehouse"], MONTH, RUN_ID))
    assert len(first["lines"]) == 10 and first["pages"] == -(-first["total_lines"] // 10)
    assert [line["seq"] for line in first["lines"]] == sorted(line["seq"] for line in first["lines"])
    second = lines(admin, page_size=10, page=2)
    assert {line["action_id"] for line in first["lines"]}.isdisjoint(line["action_id"] for line in second["lines"])
    line = first["lines"][0]
    for column in ("customer", "subscription", "product", "sku", "billing_period", "commitment", "mapping", "status"):
        assert column in line
    by_customer = lines(admin, page_size=500, sort="customer", dir="desc")["lines"]
    names = [row["customer"].casefold() for row in by_customer if row["customer"]]
    assert names == sorted(names, reverse=True)
    flagged = lines(admin, page_size=500, flagged="true")
    assert flagged["matching"] == first["counts"]["status"]["flagged"] > 0
    assert {row["status"] for row in flagged["lines"]} == {"flagged"}
    needs = lines(admin, page_size=500, needs_mapping="true")
    assert needs["matching"] == first["counts"]["status"]["needs-mapping"] > 0
    adjust = lines(admin, page_size=500, kind="adjust_units", status="proposed")
    assert adjust["lines"] and {row["kind"] for row in adjust["lines"]} == {"adjust_units"}
    expected_added = sum(max(row["unit_change"] or 0, 0) for row in adjust["lines"])
    assert adjust["totals"]["units_added"] == pytest.approx(expected_added)
    assert adjust["totals"]["units_added"] < first["totals"]["units_added"]
    searched = lines(admin, q="img src", page_size=500)
    assert searched["matching"] >= 1 and all(row["customer"] == XSS_NAME for row in searched["lines"])
    by_account = lines(admin, customer=searched["lines"][0]["account_id"], page_size=500)
    assert by_account["matching"] >= searched["matching"]


def test_bad_grid_parameters_and_unknown_things_get_4xx_with_a_message(stack: dict) -> None:
    admin = stack["admin"]
    for params in ({"sort": "password"}, {"page": "0"}, {"page_size": "many"}, {"flagged": "perhaps"}, {"kind": "x"}):
        response = admin.get(f"/billing/api/runs/{RUN_PATH}/lines", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"]
    assert admin.get(f"/billing/api/runs/{quote(DAG_ID)}/no-such-run/lines").status_code == 404
    assert admin.get(f"/billing/api/runs/other_dag/{quote(RUN_ID, safe='')}/lines").status_code == 404
    assert admin.get(f"/billing/api/runs/{RUN_PATH}/lines/not-an-action").status_code == 404
    assert admin.get(f"/billing/api/runs/{RUN_PATH}/targets", params={"kind": "invoice", "q": "a"}).status_code == 422


def test_bad_decisions_get_4xx_and_change_nothing(stack: dict) -> None:
    warehouse = stack["warehouse"]
    admin = stack["admin"]
    before = digest(warehouse)
    other_run_line = load_plan(warehouse, "2026-09", OTHER_RUN)[0].action_id
    suggestion = warehouse.query(
        "SELECT s.kind, s.source_key, s.target_id FROM mapping_suggestions s JOIN month_links m"
        " ON m.kind = s.kind AND m.source_key = s.source_key AND m.run_id = :run_id"
        " WHERE s.status = 'open' AND s.kind = 'company' ORDER BY s.source_key",
        {"run_id": RUN_ID},
    )[0]
    foreign_contract = warehouse.query(
        "SELECT c.contract_id, m.source_key FROM at_contracts c JOIN month_links m ON m.run_id = c.run_id"
        " AND m.kind = 'contract' AND m.target_id IS NOT NULL AND m.target_id <> c.contract_id"
        " JOIN charge_lines l ON l.subscription_id = m.source_key AND l.month = :month"
        " JOIN month_links co ON co.run_id = c.run_id AND co.kind = 'company' AND co.source_key = l.account_id"
        " WHERE c.run_id = :run_id AND co.target_id IS NOT NULL AND co.target_id <> c.company_id LIMIT 1",
        {"run_id": RUN_ID, "month": MONTH},
    )[0]
    cases = [
        ({"decision": "delete_everything"}, 422, "unknown decision"),
        ({"decision": "exclude"}, 422, "needs action_id"),
        ({"decision": "exclude", "action_id": 12}, 422, "needs action_id"),
        ({"decision": "exclude", "action_id": "no-such-line"}, 404, "no plan line"),
        ({"decision": "exclude", "action_id": other_run_line}, 409, "belongs to run"),
        ({"decision": "include", "action_id": a_line(stack, status="proposed")["action_id"]}, 409, "not excluded"),
        ({"decision": "approve_line", "action_id": a_line(stack, status="proposed")["action_id"]}, 409, "flagged"),
        (
            {"decision": "confirm_suggestion", "kind": "company", "source_key": suggestion["source_key"]},
            422,
            "target_id",
        ),
        (
            {**suggestion, "decision": "confirm_suggestion", "target_id": str(suggestion["target_id"])},
            422,
            "whole number",
        ),
        ({**suggestion, "decision": "confirm_suggestion", "target_id": 1}, 404, "no open suggestion"),
        ({**suggestion, "decision": "confirm_suggestion", "kind": "invoice"}, 422, "kind"),
        ({**suggestion, "decision": "confirm_suggestion", "source_key": "ACC-NOPE"}, 404, "not a source"),
        (
            {"decision": "link", "kind": "company", "source_key": suggestion["source_key"], "target_id": 99},
            404,
            "snapshot",
        ),
        (
            {
                "decision": "link",
                "kind": "contract",
                "source_key": foreign_contract["source_key"],
                "target_id": int(foreign_contract["contract_id"]),
            },
            409,
            "wrong customer",
        ),
        ([1, 2, 3], 422, "JSON object"),
        (b"{not json", 422, "JSON"),
    ]
    for body, status, words in cases:
        response = post_decision(admin, body)
        assert response.status_code == status, (body, response.status_code, response.text)
        assert words in response.json()["detail"], (body, response.json())
    assert digest(warehouse) == before


def test_names_that_are_html_or_formulas_stay_text_in_the_page_and_the_exports(stack: dict) -> None:
    admin = stack["admin"]
    page = admin.get(f"/billing/run/{RUN_PATH}", params={"q": "img src", "page_size": 500})
    assert page.status_code == 200
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert XSS_NAME not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # the page's only script is the plugin's file
    exported = admin.get(f"/billing/api/runs/{RUN_PATH}/export.csv", params={"q": "img src"})
    assert exported.status_code == 200 and exported.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert rows and {row["Customer"] for row in rows} == {XSS_NAME}
    formula_csv = admin.get(f"/billing/api/runs/{RUN_PATH}/export.csv", params={"q": "hyperlink"})
    formula_rows = list(csv.DictReader(io.StringIO(formula_csv.content.decode("utf-8-sig"))))
    assert formula_rows, "the formula-named customer has plan lines"
    # the search also finds lines that only name the customer (a subscription that moved to another customer in
    # the month): every line of the formula-named customer itself is a text cell
    formula_rows = [row for row in formula_rows if "HYPERLINK" in row["Customer"]]
    assert formula_rows and {row["Customer"] for row in formula_rows} == {"'" + FORMULA_NAME}
    workbook = load_workbook(
        io.BytesIO(admin.get(f"/billing/api/runs/{RUN_PATH}/export.xlsx", params={"q": "hyperlink"}).content)
    )
    sheet = workbook["Review"]
    customers = [cell for cell in sheet["B"][1:] if "HYPERLINK" in str(cell.value or "")]
    assert [(cell.value, cell.data_type) for cell in customers] == [(FORMULA_NAME, "s")] * len(formula_rows)


def test_xlsx_export_has_typed_cells_a_header_frozen_panes_and_totals(stack: dict) -> None:
    admin = stack["admin"]
    grid = lines(admin, kind="adjust_units", page_size=500, sort="effective_date")
    response = admin.get(
        f"/billing/api/runs/{RUN_PATH}/export.xlsx", params={"kind": "adjust_units", "sort": "effective_date"}
    )
    assert response.status_code == 200
    sheet = load_workbook(io.BytesIO(response.content))["Review"]
    header = [cell.value for cell in sheet[1]]
    assert header[:3] == ["Line", "Customer", "BSS account"] and "Effective date" in header
    assert sheet.freeze_panes == "C2"
    assert sheet.max_row >= grid["matching"] + 3
    column = {name: index + 1 for index, name in enumerate(header)}
    first = grid["lines"][0]
    assert sheet.cell(row=2, column=column["Effective date"]).is_date
    assert sheet.cell(row=2, column=column["Effective date"]).value.date().isoformat() == first["effective_date"]
    assert sheet.cell(row=2, column=column["Unit change"]).value == pytest.approx(first["unit_change"])
    assert sheet.cell(row=2, column=column["Unit change"]).data_type == "n"
    labels = [
        sheet.cell(row=row, column=column["Product"]).value for row in range(grid["matching"] + 2, sheet.max_row + 1)
    ]
    assert "units added" in labels and "units removed" in labels
    added_row = grid["matching"] + 2 + labels.index("units added")
    assert sheet.cell(row=added_row, column=column["BSS units"]).value == pytest.approx(grid["totals"]["units_added"])


def test_months_overview_and_run_files_behind_auth_without_path_traversal(stack: dict) -> None:
    from include.quality import data_docs_dir

    admin = stack["admin"]
    directory = data_docs_dir(MONTH, RUN_ID)
    directory = stack["data_docs"] / directory.relative_to(directory.parent.parent)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_text("<html><body>data docs of the run</body></html>")
    (stack["data_docs"].parent / "secret.txt").write_text("not served")
    months = admin.get("/billing/api/months").json()["months"]
    ours = next(month["latest"] for month in months if month["month"] == MONTH)
    assert ours["run_id"] == RUN_ID and ours["status"] == "waiting for approval" and ours["lines"] > 0
    assert ours["files"]["data_docs"] and ours["files"]["report_html"] is None
    served = admin.get(ours["files"]["data_docs"])
    assert served.status_code == 200 and "data docs of the run" in served.text
    # served sandboxed: nothing in a Data Docs page or a report runs, nor acts as Airflow's origin
    assert served.headers["content-security-policy"].startswith("sandbox;")
    assert served.headers["x-content-type-options"] == "nosniff"
    assert stack["anonymous"].get(ours["files"]["data_docs"]).status_code == 401
    base = ours["files"]["data_docs"].rsplit("/", 1)[0]
    for path in (f"{base}/..%2F..%2Fsecret.txt", f"{base}/%2e%2e/%2e%2e/secret.txt", f"{base}/missing.html"):
        assert admin.get(path).status_code == 404, path
    page = admin.get("/billing/months")
    assert page.status_code == 200 and "waiting for approval" in page.text
    assert review_url(DAG_ID, RUN_ID).replace("%3A", ":") not in page.text  # run ids are quoted in links
    assert quote(RUN_ID, safe="") in page.text


# -- decisions (in order: they build on each other) ----------------------------------------------------------------


def test_confirming_a_suggestion_replans_the_affected_lines_and_is_audited(stack: dict) -> None:
    warehouse = stack["warehouse"]
    admin = stack["admin"]
    start = lines(admin, page_size=500)
    waiting = [row for row in start["lines"] if row["mapping"] == "suggestion" and row["kind"] == "create_company"]
    assert waiting
    detail = admin.get(f"/billing/api/runs/{RUN_PATH}/lines/{waiting[0]['action_id']}").json()
    source = next(item for item in detail["sources"] if item["kind"] == "company")
    suggestion = next(item for item in source["suggestions"] if item["status"] == "open")
    account_lines = [row for row in start["lines"] if row["account_id"] == source["source_key"]]
    assert {row["status"] for row in account_lines} == {"needs-mapping"}

    response = post_decision(
        admin,
        {
            "decision": "confirm_suggestion",
            "kind": "company",
            "source_key": source["source_key"],
            "target_id": suggestion["target_id"],
        },
    )
    assert response.status_code == 200, response.text
    after = lines(admin, page_size=500)
    assert after["counts"]["status"]["needs-mapping"] < start["counts"]["status"]["needs-mapping"]
    assert not any(
        row["kind"] == "create_company" and row["account_id"] == source["source_key"] for row in after["lines"]
    )
    link = warehouse.query(
        "SELECT target_id, method, linked_by FROM mapping_links WHERE kind = 'company' AND source_key = :key",
        {"key": source["source_key"]},
    )
    assert link == [{"target_id": suggestion["target_id"], "method": "confirmed_suggestion", "linked_by": "admin"}]
    audit = admin.get(f"/billing/api/runs/{RUN_PATH}/decisions").json()["decisions"][0]
    assert audit["decision"] == "confirm_suggestion" and audit["decided_by"] == "admin"
    assert audit["before"]["target_id"] is None and audit["after"]["target_id"] == suggestion["target_id"]


def test_excluding_a_line_changes_the_totals_and_including_it_restores_them(stack: dict) -> None:
    admin = stack["admin"]
    start = lines(admin, kind="adjust_units", page_size=500)
    line = next(row for row in start["lines"] if row["status"] == "proposed" and (row["unit_change"] or 0) > 0)
    excluded = post_decision(admin, {"decision": "exclude", "action_id": line["action_id"]})
    assert excluded.status_code == 200, excluded.text
    assert excluded.json()["after"]["status"] == "excluded"
    # the later changes of its contract service go with it (the loader would hold them back without it)
    went = set(excluded.json()["dependents"])
    out = {row["action_id"]: row for row in start["lines"] if row["action_id"] in went | {line["action_id"]}}
    now = lines(admin, kind="adjust_units", page_size=500)
    added = sum(max(row["unit_change"] or 0, 0) for row in out.values() if row["status"] != "excluded")
    assert now["totals"]["units_added"] == pytest.approx(start["totals"]["units_added"] - added)
    assert {row["status"] for row in now["lines"] if row["action_id"] in out} == {"excluded"}
    included = post_decision(admin, {"decision": "include", "action_id": line["action_id"]})
    assert included.status_code == 200 and included.json()["after"]["status"] == "proposed"
    assert lines(admin, kind="adjust_units", page_size=500)["totals"] == start["totals"]
    again = post_decision(admin, {"decision": "exclude", "action_id": line["action_id"]})
    assert again.status_code == 200
    stack["excluded"] = line


def test_a_flagged_line_approved_alone_loads_with_the_month_and_an_excluded_line_never_loads(
    stack: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.loader import load_plan_actions
    from tests.include.loader_support import make_hook

    warehouse = stack["warehouse"]
    admin = stack["admin"]
    flagged = lines(admin, flagged="true", kind="adjust_units", page_size=500)["lines"]
    flagged_ids = [row["action_id"] for row in flagged]
    # one that waits for nothing else (its contract service exists in Autotask), so the load can write it
    standalone = {
        row["action_id"]
        for row in warehouse.query(
            "SELECT action_id FROM plan_actions WHERE run_id = :run_id AND status = 'flagged'"
            " AND depends_on = '[]' AND contract_service_id IS NOT NULL",
            {"run_id": RUN_ID},
        )
    }
    chosen = next(row for row in flagged if row["action_id"] in standalone)
    approved = post_decision(admin, {"decision": "approve_line", "action_id": chosen["action_id"]})
    assert approved.status_code == 200, approved.text
    row = next(
        item
        for item in lines(admin, flagged="true", page_size=500)["lines"]
        if item["action_id"] == chosen["action_id"]
    )
    assert row["line_approved_by"] == "admin"
    twice = post_decision(admin, {"decision": "approve_line", "action_id": chosen["action_id"]})
    assert twice.status_code == 409

    decision = ApprovalDecision(Decision.APPROVED, "Zoë (finance)", utcnow(), ("Approve proposed",), "approved")
    record_decision(warehouse, MONTH, RUN_ID, decision)
    statuses = {action.action_id: action.status for action in load_plan(warehouse, MONTH, RUN_ID)}
    assert statuses[chosen["action_id"]] == "approved"
    assert all(statuses[other] == "flagged" for other in flagged_ids if other != chosen["action_id"])
    excluded = stack["excluded"]
    assert statuses[excluded["action_id"]] == "excluded"

    hook = make_hook(stack["autotask"], monkeypatch, "autotask_review_load")
    summary = load_plan_actions(hook, warehouse, MONTH, RUN_ID)
    assert summary.failed == 0
    after = {action.action_id: action.status for action in load_plan(warehouse, MONTH, RUN_ID)}
    assert after[excluded["action_id"]] == "excluded"
    assert after[chosen["action_id"]] == "applied"
    ledger = warehouse.query("SELECT action_id FROM load_ledger WHERE month = :month", {"month": MONTH})
    assert excluded["action_id"] not in {entry["action_id"] for entry in ledger}
    assert chosen["action_id"] in {entry["action_id"] for entry in ledger}


def test_after_the_approval_every_decision_is_refused_and_nothing_changes(stack: dict) -> None:
    warehouse = stack["warehouse"]
    admin = stack["admin"]
    before = digest(warehouse)
    state = admin.get(f"/billing/api/runs/{RUN_PATH}").json()
    assert state["pending"] is False and "approval was answered" in state["why_not_pending"]
    flagged = a_line(stack, status="flagged")
    for body in (
        {"decision": "exclude", "action_id": flagged["action_id"]},
        {"decision": "include", "action_id": stack["excluded"]["action_id"]},
        {"decision": "approve_line", "action_id": flagged["action_id"]},
        {"decision": "create", "kind": "company", "source_key": "ACC-1001"},
    ):
        response = post_decision(admin, body)
        assert response.status_code == 409, (body, response.text)
        assert "decisions are closed" in response.json()["detail"]
    assert digest(warehouse) == before
    page = admin.get(f"/billing/run/{RUN_PATH}")
    assert "Decisions are closed" in page.text


def test_the_approval_form_links_the_review_page(stack: dict) -> None:
    link = review_url(DAG_ID, RUN_ID, "https://airflow.example.com/")
    assert link == f"https://airflow.example.com/billing/run/{DAG_ID}/{quote(RUN_ID, safe='')}"
    summary = summarise_plan(stack["warehouse"], MONTH, RUN_ID, review_link=link)
    assert f"[open the billing review]({link})" in render_body(summary)
    response = stack["admin"].get(link.replace("https://airflow.example.com", ""))
    assert response.status_code == 200 and "Billing review: 2026-10" in response.text


def test_the_plugin_registers_its_app_and_views() -> None:
    from billing_review_plugin import BillingReviewPlugin

    assert BillingReviewPlugin.fastapi_apps[0]["url_prefix"] == "/billing"
    views = {view["destination"]: view for view in BillingReviewPlugin.external_views}
    assert views["dag_run"]["href"] == "/billing/run/{DAG_ID}/{RUN_ID}"
    assert views["nav"]["href"] == "/billing/months"
    assert Path(__file__).exists()


def test_the_months_page_links_the_months_billing_audit_behind_auth(stack: dict) -> None:
    audit = stack["data_docs"] / MONTH / "audit"
    audit.mkdir(parents=True, exist_ok=True)
    (audit / "billing-audit.html").write_text("<html><body>leakage of the month</body></html>")
    page = stack["admin"].get("/billing/months")
    link = f"/billing/files/{MONTH}/audit/billing-audit.html"
    assert page.status_code == 200 and f'href="{link}" data-testid="audit-link"' in page.text
    assert "leakage of the month" in stack["admin"].get(link).text
    assert stack["anonymous"].get(link).status_code == 401
