"""What the review page's lines say and offer (`include.review`), on a month planned by the real pipeline against the
Autotask sandbox (over HTTP), on both warehouses: every line offers the decision its reason asks for, in plain words."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from include import review
from include.warehouse import Warehouse
from stacks.launcher import RunningServer
from tests.plugins.review_support import RUN_ID, SETTINGS, plan_month, start_autotask


@pytest.fixture(scope="module")
def autotask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_autotask(tmp_path_factory.mktemp("review-words"))
    yield server
    server.stop()


@pytest.fixture
def planned(warehouse: Warehouse, autotask: RunningServer) -> Warehouse:
    import httpx

    httpx.post(autotask.url + "/_admin/reset", timeout=30).raise_for_status()
    plan_month(autotask, warehouse)
    return warehouse


def test_the_extend_contract_line_that_asks_to_confirm_a_company_offers_that_confirmation(planned: Warehouse) -> None:
    rows = review.grid_rows(planned, RUN_ID)
    asking = [row for row in rows if row["kind"] == "extend_contract" and "confirm that company" in row["reason"]]
    assert asking, "the sandbox month has no extend-contract line waiting on its customer's company"
    line = asking[0]
    company = int(re.search(r"belongs to company (\d+)", line["reason"]).group(1))
    detail = review.line_detail(planned, RUN_ID, line["action_id"])
    sources = {source["kind"]: source for source in detail["sources"]}
    assert sources["company"]["source_key"] == line["account_id"]
    offered = {item["target_id"] for item in sources["company"]["suggestions"] if item["status"] == "open"}
    assert company in offered

    review.decide(
        planned,
        RUN_ID,
        {"decision": "confirm_suggestion", "kind": "company", "source_key": line["account_id"], "target_id": company},
        "Zoë",
        SETTINGS,
    )
    after = [row for row in review.grid_rows(planned, RUN_ID) if row["kind"] == "extend_contract"]
    same_contract = [row for row in after if row["subscription"] == line["subscription"]]
    assert same_contract and all(row["status"] != "needs-mapping" for row in same_contract), same_contract


def test_every_change_is_one_plain_phrase_and_no_number_shows_its_stored_decimals(planned: Warehouse) -> None:
    rows = review.grid_rows(planned, RUN_ID)
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    assert {"adjust_units", "create_company", "extend_contract"} <= set(by_kind)
    for row in by_kind["adjust_units"]:
        assert re.fullmatch(r"[+-]\d+(\.\d+)? units? from \d{1,2} [A-Z][a-z]{2} \d{4}", row["change"]), row["change"]
    for row in by_kind["create_company"]:
        assert row["change"].startswith("new company ") and "create company" not in row["change"]
    for row in by_kind["extend_contract"]:
        assert re.fullmatch(r"extend contract to \d{1,2} [A-Z][a-z]{2} \d{4}", row["change"]), row["change"]
    decreases = [row["reason"] for row in rows if "decrease of" in row["reason"]]
    assert decreases, "the sandbox month has no decrease inside a commitment"
    assert all(re.search(r"decrease of \d+ units? inside", reason) for reason in decreases), decreases
    assert not [row["reason"] for row in rows if re.search(r"\d\.0000", row["reason"])]


def test_the_decisions_read_as_sentences_about_lines_and_links_with_the_moment_in_utc(planned: Warehouse) -> None:
    rows = review.grid_rows(planned, RUN_ID)
    proposed = next(row for row in rows if row["status"] == "proposed" and row["kind"] == "adjust_units")
    review.decide(planned, RUN_ID, {"decision": "exclude", "action_id": proposed["action_id"]}, "Zoë", SETTINGS)
    suggested = next(row for row in rows if row["mapping"] == "suggestion" and row["kind"] == "create_company")
    source = review.line_detail(planned, RUN_ID, suggested["action_id"])["sources"][0]
    target = next(item for item in source["suggestions"] if item["status"] == "open")
    review.decide(
        planned,
        RUN_ID,
        {
            "decision": "confirm_suggestion",
            "kind": "company",
            "source_key": source["source_key"],
            "target_id": target["target_id"],
        },
        "Zoë",
        SETTINGS,
    )
    confirmed, excluded = review.decisions_of(planned, RUN_ID)
    assert excluded["label"] == "Excluded the line" and excluded["outcome"] == "proposed → excluded"
    assert excluded["what"] == f"{proposed['customer']} · {proposed['product']} · {proposed['change']}"
    assert confirmed["label"] == "Confirmed the suggestion"
    assert confirmed["what"] == f"BSS account {source['source_name']} ({source['source_key']})"
    assert confirmed["outcome"].startswith(f"linked to company {target['target_name']} ({target['target_id']})")
    assert re.search(r"\d+ lines? planned again", confirmed["outcome"])
    for entry in (confirmed, excluded):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", entry["decided_at_utc"])
        words = entry["label"] + entry["what"] + entry["outcome"]
        assert "{" not in words and proposed["action_id"] not in words


def test_the_company_search_tells_companies_of_one_name_apart(planned: Warehouse) -> None:
    names = planned.query(
        "SELECT company_name FROM at_companies WHERE run_id = :run_id GROUP BY company_name HAVING COUNT(*) > 1",
        {"run_id": RUN_ID},
    )
    assert names, "the sandbox's Autotask holds no two companies of one name"
    found = review.search_targets(planned, RUN_ID, "company", names[0]["company_name"])
    twins = [company for company in found if company["name"] == names[0]["company_name"]]
    assert len(twins) >= 2
    particulars = {
        (company["address"], company["city"], company["active_contracts"], tuple(company["linked_accounts"]))
        for company in twins
    }
    assert len(particulars) == len(twins), twins  # every twin reads differently
    assert all(company["city"] for company in twins)
    contracts = planned.query(
        "SELECT company_id, COUNT(*) AS n FROM at_contracts WHERE run_id = :run_id GROUP BY company_id",
        {"run_id": RUN_ID},
    )
    held = {int(row["company_id"]): int(row["n"]) for row in contracts}
    assert all(company["active_contracts"] == held.get(company["id"], 0) for company in twins)
