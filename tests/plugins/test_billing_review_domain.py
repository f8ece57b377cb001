"""`include.review` on both warehouses (SQLite and PostgreSQL): the grid, the snapshot search, the months overview
and the decisions, on a month planned by the real pipeline against the Autotask sandbox (over HTTP)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from openpyxl import load_workbook

from include import review
from include.approval import ApprovalDecision, Decision, record_decision
from include.plan import load_plan
from include.review_export import to_csv, to_xlsx
from include.warehouse import Warehouse, utcnow
from stacks.launcher import RunningServer
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
    months = review.months_overview(planned)
    assert [(month["month"], month["latest"]["run_id"], month["status"]) for month in months] == [
        (MONTH, RUN_ID, "waiting for approval")
    ]
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
    # the person's own decisions (lines that went with an excluded line are audited as well, with that line)
    assert [entry["decision"] for entry in audit if not {"excluded_with", "included_with"} & set(entry["after"])] == [
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


def test_grid_lines_are_stored_with_the_plan_and_read_back_unchanged(planned: Warehouse) -> None:
    gathered = review._static_rows(planned, RUN_ID)
    stored = planned.query("SELECT plan_fingerprint, lines FROM review_grids WHERE run_id = :r", {"r": RUN_ID})
    assert stored and stored[0]["lines"] == len(gathered) == len(load_plan(planned, MONTH, RUN_ID))
    read_back = review._stored_rows(planned, RUN_ID, review._fingerprint(planned, RUN_ID))
    assert read_back == gathered  # every name, figure and search text survives the warehouse round trip
    assert review.grid_rows(planned, RUN_ID)[0]["customer"] == gathered[0]["customer"]

    # a plan written without its grid (or changed since): the first request builds and stores the lines
    with planned.begin() as conn:
        conn.execute(sa.text("DELETE FROM review_grids WHERE run_id = :r"), {"r": RUN_ID})
    assert review._stored_rows(planned, RUN_ID, review._fingerprint(planned, RUN_ID)) is None
    page = review.grid_page(planned, RUN_ID, review.GridQuery())
    assert page["total_lines"] == len(gathered)
    assert review._stored_rows(planned, RUN_ID, review._fingerprint(planned, RUN_ID)) == gathered

    # a mapping decision re-plans and refreshes the stored lines before it answers
    other = next(row for row in gathered if row["mapping"] == "create" and row["kind"] == "create_company")
    review.decide(
        planned, RUN_ID, {"decision": "create", "kind": "company", "source_key": other["account_id"]}, "Zoë", SETTINGS
    )
    fingerprint = review._fingerprint(planned, RUN_ID)
    refreshed = review._stored_rows(planned, RUN_ID, fingerprint)
    assert refreshed is not None and refreshed == review._static_rows(planned, RUN_ID)


def test_search_is_case_insensitive_beyond_ascii(planned: Warehouse) -> None:
    customers = {row["customer"] for row in review.grid_rows(planned, RUN_ID)}
    assert "Société Générale Services" in customers
    for text in ("SOCIÉTÉ GÉNÉRALE", "société générale"):
        found = review.grid_page(planned, RUN_ID, review.GridQuery(search=text, page_size=500))
        assert found["matching"] >= 1
        # its own lines, and a line of another customer whose reason names it (a subscription moved to it)
        own = {row["customer"] for row in found["lines"] if "Société Générale" not in str(row.get("reason") or "")}
        assert own == {"Société Générale Services"}
    for text in ("SOCIÉTÉ GÉNÉRALE", "société générale", "Société Générale"):
        found = review.search_targets(planned, RUN_ID, "company", text)
        assert [item["name"] for item in found] == ["Société Générale Services"], text
    snapshot = planned.query("SELECT company_name FROM at_companies WHERE run_id = :r", {"r": RUN_ID})
    accented = sorted({row["company_name"] for row in snapshot if not row["company_name"].isascii()})
    assert len(accented) >= 3  # e.g. Société Générale, Müller & Söhne, Papadopoulos & Υιοί Α.Ε.
    for name in accented:
        for text in (name.upper(), name.lower()):
            assert name in [item["name"] for item in review.search_targets(planned, RUN_ID, "company", text)], text
    # LIKE's wildcards in the text are plain characters
    assert review.search_targets(planned, RUN_ID, "company", "%") == []
    assert review.search_targets(planned, RUN_ID, "company", "_") == []


@pytest.mark.parametrize(("column", "descending"), [("customer", True), ("cost_change", False), ("reason", False)])
def test_sorted_pages_follow_the_column_with_missing_values_last(
    planned: Warehouse, column: str, descending: bool
) -> None:
    everything = review.grid_rows(planned, RUN_ID)
    present = [row for row in everything if row[column] not in (None, "")]
    missing = [row for row in everything if row[column] in (None, "")]

    def key(row: dict) -> object:
        value = row[column]
        return value.casefold() if isinstance(value, str) else value

    present.sort(key=lambda row: row["seq"])
    present.sort(key=key, reverse=descending)
    expected = [row["action_id"] for row in present + sorted(missing, key=lambda row: row["seq"])]
    shown: list[str] = []
    page = 1
    while len(shown) < len(everything):
        query = review.GridQuery(sort=column, descending=descending, page=page, page_size=17)
        shown += [row["action_id"] for row in review.grid_page(planned, RUN_ID, query)["lines"]]
        page += 1
    assert shown == expected


def _first_change_with_a_later_one(warehouse: Warehouse) -> tuple[dict, dict]:
    """A proposed first adjustment of a contract service this month and a proposed later one that depends on it."""
    rows = [
        {**row, "target": row["idempotency_key"].split("|")[2]}
        for row in warehouse.query(
            "SELECT action_id, kind, idempotency_key, status, effective_date, depends_on FROM plan_actions"
            " WHERE run_id = :run_id AND kind IN ('adjust_units', 'change_cost') ORDER BY effective_date, seq",
            {"run_id": RUN_ID},
        )
    ]
    by_id = {row["action_id"]: row for row in rows}
    for later in rows:
        earlier = [by_id[needed] for needed in json.loads(later["depends_on"]) if needed in by_id]
        if later["status"] != "proposed" or len(earlier) != 1 or earlier[0]["status"] != "proposed":
            continue
        first = earlier[0]
        if first["target"] == later["target"] and not [n for n in json.loads(first["depends_on"]) if n in by_id]:
            return first, later
    raise AssertionError("the planned month has no proposed first adjustment with a later proposed one")


def test_excluding_a_first_change_takes_the_later_ones_and_the_month_loads_completely(
    planned: Warehouse, autotask: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.loader import load_plan_actions
    from tests.include.loader_support import make_hook

    first, later = _first_change_with_a_later_one(planned)
    counted = review.grid_page(planned, RUN_ID, review.GridQuery(page_size=1))["totals"]

    # the later change goes with the first, audited with a reason naming the line it went with
    result = review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": first["action_id"]}, "Zoë", SETTINGS)
    assert result["message"] == "excluded, with 1 later change of the same contract service"
    assert result["dependents"] == [later["action_id"]]
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert (statuses[first["action_id"]], statuses[later["action_id"]]) == ("excluded", "excluded")
    audit = {entry["action_id"]: entry for entry in review.decisions_of(planned, RUN_ID)}
    went = audit[later["action_id"]]
    assert went["decision"] == "exclude" and went["decided_by"] == "Zoë"
    assert went["before"]["status"] == "proposed" and went["after"]["excluded_with"] == first["action_id"]
    day = str(first["effective_date"])[:10]
    assert went["after"]["reason"] == f"excluded with line {first['action_id']} (its earlier change on {day})"
    # a line that went with another comes back only with it
    with pytest.raises(review.ReviewError) as alone:
        review.decide(planned, RUN_ID, {"decision": "include", "action_id": later["action_id"]}, "Zoë", SETTINGS)
    assert alone.value.status == 409 and first["action_id"] in alone.value.message

    # including the first brings both back (and the totals with them); excluding the later one alone takes nothing
    back = review.decide(planned, RUN_ID, {"decision": "include", "action_id": first["action_id"]}, "Zoë", SETTINGS)
    assert back["dependents"] == [later["action_id"]] and back["after"]["status"] == "proposed"
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert (statuses[first["action_id"]], statuses[later["action_id"]]) == ("proposed", "proposed")
    assert review.grid_page(planned, RUN_ID, review.GridQuery(page_size=1))["totals"] == counted
    alone_result = review.decide(
        planned, RUN_ID, {"decision": "exclude", "action_id": later["action_id"]}, "Zoë", SETTINGS
    )
    assert alone_result["message"] == "excluded" and alone_result["dependents"] == []
    assert {a.action_id: str(a.status) for a in load_plan(planned, MONTH, RUN_ID)}[first["action_id"]] == "proposed"
    # the later line was excluded on its own: including the first leaves it out
    review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": first["action_id"]}, "Zoë", SETTINGS)
    review.decide(planned, RUN_ID, {"decision": "include", "action_id": first["action_id"]}, "Zoë", SETTINGS)
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert (statuses[first["action_id"]], statuses[later["action_id"]]) == ("proposed", "excluded")
    review.decide(planned, RUN_ID, {"decision": "include", "action_id": later["action_id"]}, "Zoë", SETTINGS)

    # a contract service to create: its changes go with its creation
    lines = [
        {**row, "target": row["idempotency_key"].split("|")[2]}
        for row in planned.query(
            "SELECT action_id, kind, idempotency_key, status FROM plan_actions WHERE run_id = :run_id",
            {"run_id": RUN_ID},
        )
    ]
    create = next(
        row
        for row in lines
        if row["kind"] == "create_contract_service"
        and row["status"] == "proposed"
        and any(other["target"] == row["target"] and other["kind"] == "adjust_units" for other in lines)
    )
    its_changes = {
        row["action_id"]
        for row in lines
        if row["target"] == create["target"] and row["kind"] in ("adjust_units", "change_cost")
    }
    made = review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": create["action_id"]}, "Zoë", SETTINGS)
    assert its_changes and its_changes <= set(made["dependents"])
    assert made["message"].startswith(f"excluded, with {len(its_changes)} change")

    # the first change again, for the load; re-planning (what a mapping decision does) keeps both out
    review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": first["action_id"]}, "Zoë", SETTINGS)
    review.replan(planned, MONTH, RUN_ID, SETTINGS, "Zoë")
    out = {first["action_id"], later["action_id"], create["action_id"], *its_changes}
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert {statuses[action_id] for action_id in out} == {"excluded"}

    # approved and loaded by the real loader against the Autotask sandbox: complete, nothing of them written
    record_decision(
        planned, MONTH, RUN_ID, ApprovalDecision(Decision.APPROVED, "Ann", utcnow(), ("Approve proposed",), "ok")
    )
    summary = load_plan_actions(make_hook(autotask, monkeypatch, "autotask_review_cascade"), planned, MONTH, RUN_ID)
    assert (summary.status, summary.waiting, summary.failed) == ("succeeded", 0, 0), summary.waits
    assert summary.written > 0
    targets = {first["target"], create["target"]}
    ledger = planned.query("SELECT action_id, idempotency_key FROM load_ledger WHERE month = :month", {"month": MONTH})
    written = [entry for entry in ledger if entry["idempotency_key"].split("|")[2] in targets]
    assert ledger and not written and not out.intersection(entry["action_id"] for entry in ledger)
    statuses = {action.action_id: str(action.status) for action in load_plan(planned, MONTH, RUN_ID)}
    assert {statuses[action_id] for action_id in out} == {"excluded"}


@pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)
def test_make_ui_counts_the_open_suggestions_of_the_runs_own_sources(planned: Warehouse) -> None:
    from scripts.ui import review_counts

    path = planned.engine.url.database
    own = planned.query(
        "SELECT COUNT(*) AS n FROM mapping_suggestions s WHERE s.status = 'open' AND EXISTS (SELECT 1 FROM"
        " month_links m WHERE m.run_id = :run_id AND m.kind = s.kind AND m.source_key = s.source_key)",
        {"run_id": RUN_ID},
    )[0]["n"]
    assert own > 0 and review_counts(path, MONTH, RUN_ID)["suggestions"] == own
    # another month's source left an open suggestion in the warehouse: not this run's to decide
    with planned.begin() as conn:
        planned.insert(
            conn,
            "mapping_suggestions",
            [
                {
                    "kind": "company",
                    "source_key": "ACC-OF-ANOTHER-MONTH",
                    "target_id": 1,
                    "score": 0.9,
                    "source_name": "Elsewhere Ltd",
                    "target_name": "Elsewhere Limited",
                    "reason": "similar name",
                    "month": "2026-09",
                    "run_id": "another-run",
                    "status": "open",
                    "created_at": utcnow(),
                }
            ],
        )
    everything = planned.query("SELECT COUNT(*) AS n FROM mapping_suggestions WHERE status = 'open'")[0]["n"]
    assert everything == own + 1 and review_counts(path, MONTH, RUN_ID)["suggestions"] == own


# -- a decision re-plans only its customers, and gives the plan a whole-month re-plan gives -------------------------


def _plan_state(path: Path) -> tuple[list, list, list]:
    """The run's plan lines (id, status, reason), its links and its grid lines (without their line numbers)."""
    store = Warehouse(f"sqlite:///{path}")
    try:
        plan = sorted(
            (row["action_id"], row["status"], row["reason"] or "", row["kind"])
            for row in store.query("SELECT * FROM plan_actions WHERE run_id = :r", {"r": RUN_ID})
        )
        links = sorted(
            tuple(row.values())
            for row in store.query(
                "SELECT kind, source_key, target_id, resolution, flag, suggestions, detail FROM month_links"
                " WHERE run_id = :r",
                {"r": RUN_ID},
            )
        )
        grid = sorted(
            json.dumps({key: value for key, value in row.items() if key != "seq"}, sort_keys=True, default=str)
            for row in review.grid_rows(store, RUN_ID)
        )
        return plan, links, grid
    finally:
        store.dispose()


def _copy(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    return target


def test_a_mapping_decision_replans_only_its_customers_and_gives_the_whole_months_plan(
    autotask: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every mapping decision the month offers (confirm, reject, create, links of companies and products, a moved
    customer's), once re-planned for its customers only and once for the whole month: the same plan, links and
    grid. The customers of a moved subscription are re-planned whole."""
    httpx = pytest.importorskip("httpx")
    httpx.post(autotask.url + "/_admin/reset", timeout=30).raise_for_status()
    base = tmp_path / "base.db"
    store = Warehouse(f"sqlite:///{base}")
    plan_month(autotask, store)
    review.replan(store, MONTH, RUN_ID, SETTINGS)  # links made by key or name are remembered from here on
    requests = []
    seen = set()
    for row in store.query(
        "SELECT s.kind, s.source_key, s.target_id FROM mapping_suggestions s JOIN month_links m ON m.kind = s.kind"
        " AND m.source_key = s.source_key AND m.run_id = :r WHERE s.status = 'open'"
        " ORDER BY s.kind, s.source_key, s.target_id",
        {"r": RUN_ID},
    ):
        if (row["kind"], row["source_key"]) not in seen:
            seen.add((row["kind"], row["source_key"]))
            requests += [
                {"decision": "confirm_suggestion", **row},
                {"decision": "reject_suggestion", **row},
                {"decision": "create", "kind": row["kind"], "source_key": row["source_key"]},
            ]
    for row in store.query(
        "SELECT kind, source_key FROM month_links WHERE run_id = :r AND target_id IS NULL AND suggestions = 0"
        " ORDER BY kind, source_key",
        {"r": RUN_ID},
    )[:3]:
        requests.append({"decision": "create", **row})
    companies = [
        row["company_id"]
        for row in store.query(
            "SELECT company_id FROM at_companies WHERE run_id = :r AND is_active = 1 ORDER BY company_id", {"r": RUN_ID}
        )
    ]
    for row in store.query(
        "SELECT source_key, target_id FROM month_links WHERE run_id = :r AND kind = 'company' AND target_id IS NOT NULL"
        " ORDER BY source_key",
        {"r": RUN_ID},
    )[:2]:
        other = next(company for company in companies if company != row["target_id"])
        requests.append({"decision": "link", "kind": "company", "source_key": row["source_key"], "target_id": other})
    services = [
        row["service_id"]
        for row in store.query(
            "SELECT service_id FROM at_services WHERE run_id = :r AND is_active = 1 ORDER BY service_id", {"r": RUN_ID}
        )
    ]
    product = store.query(
        "SELECT source_key, target_id FROM month_links WHERE run_id = :r AND kind = 'service' AND target_id IS NOT NULL"
        " ORDER BY source_key LIMIT 1",
        {"r": RUN_ID},
    )[0]
    other_service = next(service for service in services if service != product["target_id"])
    requests.append(
        {"decision": "link", "kind": "service", "source_key": product["source_key"], "target_id": other_service}
    )
    moved = store.query(
        "SELECT DISTINCT l.account_id, m.target_id FROM month_links m JOIN charge_lines l ON l.subscription_id ="
        " m.source_key AND l.month = :month WHERE m.run_id = :r AND m.kind = 'contract' AND m.flag = 'other_company'",
        {"r": RUN_ID, "month": MONTH},
    )
    assert moved, "the sandbox month has no moved subscription: the whole-month path would go untested"
    moved_company = store.query(
        "SELECT target_id FROM month_links WHERE run_id = :r AND kind = 'company' AND source_key = :a",
        {"r": RUN_ID, "a": moved[0]["account_id"]},
    )[0]["target_id"]
    requests.append(
        {
            "decision": "link",
            "kind": "company",
            "source_key": moved[0]["account_id"],
            "target_id": next(company for company in companies if company != moved_company),
        }
    )
    column = {"company": "account_id", "contract": "subscription_id", "service": "product_id"}
    two_accounts = {
        row["account_id"]
        for row in store.query(
            "SELECT DISTINCT l.account_id FROM charge_lines l JOIN charge_lines o ON o.month = l.month"
            " AND o.subscription_id = l.subscription_id AND o.account_id <> l.account_id WHERE l.month = :month",
            {"month": MONTH},
        )
    }
    moved_accounts = {row["account_id"] for row in moved} | two_accounts
    whole_expected = []
    for request in requests:
        accounts = {
            row["account_id"]
            for row in store.query(
                f"SELECT DISTINCT account_id FROM charge_lines WHERE month = :month AND {column[request['kind']]} = :k",
                {"month": MONTH, "k": request["source_key"]},
            )
        } | ({request["source_key"]} if request["kind"] == "company" else set())
        if accounts & moved_accounts:
            whole_expected.append((request["decision"], request["kind"], request["source_key"]))
    assert two_accounts and len(whole_expected) >= 2
    store.dispose()
    assert len(requests) >= 20

    scoped_count = whole_count = 0
    for index, request in enumerate(requests):
        scoped, whole = _copy(base, tmp_path / f"scoped-{index}.db"), _copy(base, tmp_path / f"whole-{index}.db")
        first = Warehouse(f"sqlite:///{scoped}")
        result = review.decide(first, RUN_ID, request, "Zoë")
        first.dispose()
        with monkeypatch.context() as patched:
            patched.setattr(review, "scope_of_decision", lambda *args: None)
            second = Warehouse(f"sqlite:///{whole}")
            review.decide(second, RUN_ID, request, "Zoë")
            second.dispose()
        assert _plan_state(scoped) == _plan_state(whole), request
        if result["after"]["plan"]["scope"] is None:
            whole_count += 1
        else:
            scoped_count += 1
            if request["kind"] == "company":
                assert result["after"]["plan"]["scope"]["accounts"] == [request["source_key"]]
    # only the decisions of customers with a moved subscription (a remembered contract of another customer, or a
    # move in mid-month: billed to two accounts) are re-planned whole
    assert whole_count == len(whole_expected) and scoped_count == len(requests) - len(whole_expected), whole_expected


# -- runs are snapshots ----------------------------------------------------------------------------------------------


def test_a_later_run_of_the_month_leaves_the_earlier_runs_review_exports_and_months_row_as_they_were(
    planned: Warehouse, autotask: RunningServer
) -> None:
    flagged = next(row for row in review.grid_rows(planned, RUN_ID) if row["status"] == "flagged")
    review.decide(planned, RUN_ID, {"decision": "approve_line", "action_id": flagged["action_id"]}, "Zoë", SETTINGS)
    record_decision(planned, MONTH, RUN_ID, ApprovalDecision(Decision.APPROVED, "finance", utcnow(), ("x",), "ok"))
    query = review.GridQuery(page_size=500)
    before = (review.grid_page(planned, RUN_ID, query), review.grid_export(planned, RUN_ID, query))
    months_before = review.months_overview(planned)
    assert months_before[0]["status"].startswith("loaded") or "not loaded yet" in months_before[0]["status"]

    later = "manual__2026-11-09T06:00:00+00:00"
    plan_month(autotask, planned, later)  # the month planned again: its open lines are the later run's now

    assert (review.grid_page(planned, RUN_ID, query), review.grid_export(planned, RUN_ID, query)) == before
    state = review.run_state(planned, RUN_ID)
    assert state.lines == before[0]["total_lines"] and state.superseded_by == later
    [month] = review.months_overview(planned)
    assert month["latest"]["run_id"] == later and month["status"] == "waiting for approval"
    [earlier] = month["earlier"]
    assert {key: earlier[key] for key in ("run_id", "lines", "by_status", "status")} == {
        key: months_before[0]["latest"][key] for key in ("run_id", "lines", "by_status", "status")
    }
    open_lines = sum(before[0]["counts"]["status"].get(status, 0) for status in ("flagged", "needs-mapping", "blocked"))
    assert f"{open_lines} lines open" in earlier["status"]
    # the earlier run takes no decision any more, and says why
    with pytest.raises(review.ReviewError, match="takes no more decisions"):
        review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": flagged["action_id"]}, "Zoë", SETTINGS)


# -- a decision is one transaction, serialised with the approval -----------------------------------------------------


def test_a_decision_that_fails_half_way_leaves_no_link_no_line_and_no_audit(
    planned: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include import reconcile

    suggestion = planned.query(
        "SELECT s.kind, s.source_key, s.target_id FROM mapping_suggestions s JOIN month_links m ON m.kind = s.kind"
        " AND m.source_key = s.source_key AND m.run_id = :r WHERE s.status = 'open' ORDER BY s.source_key",
        {"r": RUN_ID},
    )[0]
    tables = (
        "mapping_links",
        "mapping_link_events",
        "mapping_suggestions",
        "month_links",
        "plan_actions",
        "review_decisions",
        "review_grid_lines",
    )
    before = {table: planned.query(f"SELECT * FROM {table}") for table in tables}  # fixed names

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the re-plan broke after the link was written")

    monkeypatch.setattr(reconcile, "reconcile_month", broken)
    with pytest.raises(RuntimeError, match="re-plan broke"):
        review.decide(planned, RUN_ID, {"decision": "confirm_suggestion", **suggestion}, "Zoë", SETTINGS)
    assert {table: planned.query(f"SELECT * FROM {table}") for table in tables} == before


def test_a_decision_waits_for_an_approval_being_recorded_and_is_then_refused(planned: Warehouse) -> None:
    proposed = next(row for row in review.grid_rows(planned, RUN_ID) if row["status"] == "proposed")
    outcome: dict[str, Any] = {}

    def decide_meanwhile() -> None:
        try:
            review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": proposed["action_id"]}, "Zoë", SETTINGS)
        except review.ReviewError as error:
            outcome["refused"] = error

    decision = ApprovalDecision(Decision.APPROVED, "finance", utcnow(), ("x",), "ok")
    with planned.begin() as conn:  # the approval holds the month while it records its answer
        planned.lock_month(conn, MONTH)
        thread = threading.Thread(target=decide_meanwhile)
        thread.start()
        thread.join(timeout=2)
        assert thread.is_alive()  # the decision waits for the month
        joined = planned.within(conn)
        record_decision_in(joined, decision)
    thread.join(timeout=60)
    assert not thread.is_alive() and outcome["refused"].status == 409
    assert "approval was answered" in outcome["refused"].message
    status = planned.query("SELECT status FROM plan_actions WHERE action_id = :a", {"a": proposed["action_id"]})
    assert status == [{"status": "approved"}]


def record_decision_in(joined: Warehouse, decision: ApprovalDecision) -> None:
    """What `record_decision` writes, inside a transaction the test holds (its own nests in it)."""
    record_decision(joined, MONTH, RUN_ID, decision)


# -- a reversal run has its own review -------------------------------------------------------------------------------


def test_a_reversal_run_is_served_under_its_own_dag_and_takes_line_decisions_only(
    planned: Warehouse, autotask: RunningServer
) -> None:
    from include.identifiers import REVERSAL_DAG_ID, SYNC_DAG_ID
    from include.runs import RunConflictError, register_run

    assert review.run_state(planned, RUN_ID, SYNC_DAG_ID).dag_id == SYNC_DAG_ID
    with pytest.raises(review.ReviewError, match=f"is not a run of {REVERSAL_DAG_ID}: it is a run of {SYNC_DAG_ID}"):
        review.run_state(planned, RUN_ID, REVERSAL_DAG_ID)
    with pytest.raises(RunConflictError, match="already a run of"):
        register_run(planned, RUN_ID, REVERSAL_DAG_ID, MONTH, SETTINGS, "another run")
    reversal = "manual__2026-11-20T08:00:00+00:00"
    register_run(planned, reversal, REVERSAL_DAG_ID, MONTH, SETTINGS, RUN_ID)
    rows = planned.query(
        "SELECT * FROM plan_actions WHERE run_id = :r AND kind = 'adjust_units' LIMIT 2", {"r": RUN_ID}
    )
    with planned.begin() as conn:  # two reversal lines of the reversal run
        planned.insert(
            conn,
            "plan_actions",
            [
                {
                    **row,
                    "action_id": f"rev{index}",
                    "run_id": reversal,
                    "status": "proposed",
                    "seq": index + 1,
                    "idempotency_key": row["idempotency_key"] + f"|reversal{index}",
                }
                for index, row in enumerate(rows)
            ],
        )
    review.build_grid(planned, reversal)
    assert review.run_state(planned, reversal, REVERSAL_DAG_ID).pending
    with pytest.raises(review.ReviewError, match="a mapping decision does not apply"):
        review.decide(
            planned,
            reversal,
            {"decision": "create", "kind": "company", "source_key": rows[0]["account_id"]},
            "Zoë",
            SETTINGS,
            REVERSAL_DAG_ID,
        )
    done = review.decide(
        planned, reversal, {"decision": "exclude", "action_id": "rev0"}, "Zoë", SETTINGS, REVERSAL_DAG_ID
    )
    assert done["after"]["status"] == "excluded"
    months = review.months_overview(planned)
    [month] = months
    assert month["latest"]["run_id"] == RUN_ID  # the month's own run leads; the reversal is behind it
    assert [(run["run_id"], run["dag_id"], run["reverses_run_id"]) for run in month["earlier"]] == [
        (reversal, REVERSAL_DAG_ID, RUN_ID)
    ]


@pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)
def test_make_ui_names_the_earlier_months_left_open_and_the_months_page_says_so(planned: Warehouse) -> None:
    from scripts.ui import earlier_open_months

    record_decision(planned, MONTH, RUN_ID, ApprovalDecision(Decision.APPROVED, "finance", utcnow(), ("x",), "ok"))
    assert review.months_overview(planned)[0]["status"].startswith("approved, ")  # approved, not loaded yet
    with planned.begin() as conn:  # what the load does with the approved lines
        conn.execute(sa.text("UPDATE plan_actions SET status = 'applied' WHERE status = 'approved'"))
    counts = review.grid_page(planned, RUN_ID, review.GridQuery())["counts"]["status"]
    left = sum(counts.get(status, 0) for status in ("proposed", "flagged", "needs-mapping", "blocked"))
    assert left > 0
    [month] = review.months_overview(planned)
    assert month["status"] == f"loaded, {left} lines open"
    [named] = earlier_open_months(Path(planned.engine.url.database), "2026-11")
    assert named.startswith(f"{MONTH}: {left} lines (") and named.endswith(f"loaded, {left} lines open")
    assert "flagged" in named and earlier_open_months(Path(planned.engine.url.database), MONTH) == []
