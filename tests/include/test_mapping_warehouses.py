"""Mapping memory and the plan store on both warehouses (the `warehouse` fixture runs SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date

import pytest

from include.mapping import confirm_suggestion, link_month, reject_suggestion, set_manual_link, stored_links
from include.plan import load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month
from tests.include.test_reconcile_golden import EXPECTED, MONTH, SETTINGS, _projection, autotask_state, bss_month

CONTOSO = ("ACC-1", "Contoso Ltd")
NORTHWIND = ("ACC-3", "Northwind Trading Ltd")
M365 = ("PRD-M365", "M365-BS", "Microsoft 365 Business Standard")


def _run(warehouse, fake, month: str, run_id: str):
    take_snapshot(fake, warehouse, month, run_id, SETTINGS)
    mapping = link_month(warehouse, month, run_id, SETTINGS)
    reconcile_month(warehouse, month, run_id, SETTINGS)
    return mapping


def _resolution(warehouse, run_id: str, kind: str, source: str) -> tuple:
    row = warehouse.query(
        "SELECT target_id, resolution FROM month_links WHERE run_id = :run AND kind = :kind AND source_key = :source",
        {"run": run_id, "kind": kind, "source": source},
    )[0]
    return row["target_id"], row["resolution"]


def test_golden_plan_is_the_same_on_this_warehouse(warehouse):
    fake = autotask_state()
    lines, accounts = bss_month()
    store_month(warehouse, MONTH, lines, accounts)
    set_manual_link(warehouse, "contract", "SUB-3", 1002, by="alice")
    from include.mapping import record_created_link

    record_created_link(warehouse, "service", "PRD-VEEAM", 503, by="loader")
    _run(warehouse, fake, MONTH, "run-1")
    assert [_projection(action) for action in load_plan(warehouse, MONTH, "run-1")] == EXPECTED


def test_links_are_remembered_next_month_and_a_manual_link_is_never_overwritten(warehouse):
    fake = FakeAutotask()
    contoso = fake.add_company("Contoso Ltd")  # linked by name in October
    other = fake.add_company("Cloud Partners", key="ACC-9")
    northwind = fake.add_company("Northwind Traders Ltd")
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    fake.add_contract(contoso, "M365", "SUB-1", date(2026, 1, 1), date(2027, 12, 31))
    october = [
        line("2026-10", CONTOSO, "SUB-1", M365, "Cycle", 5, 5, date(2026, 10, 1)),
        line("2026-10", NORTHWIND, "SUB-2", M365, "Cycle", 3, 3, date(2026, 10, 1)),
    ]
    store_month(warehouse, "2026-10", october, [account_row(*CONTOSO), account_row(*NORTHWIND)])
    _run(warehouse, fake, "2026-10", "oct")
    assert _resolution(warehouse, "oct", "company", "ACC-1") == (contoso, "name")
    assert _resolution(warehouse, "oct", "company", "ACC-3") == (None, "unlinked")
    suggestion = warehouse.query("SELECT target_id, status FROM mapping_suggestions WHERE source_key = 'ACC-3'")
    assert suggestion == [{"target_id": northwind, "status": "open"}]

    # a person confirms the near miss, and pins SUB-2 to a contract by hand
    confirm_suggestion(warehouse, "company", "ACC-3", northwind, by="carol")
    pinned = fake.add_contract(northwind, "Everything Microsoft", None, date(2026, 1, 1), date(2027, 12, 31))
    set_manual_link(warehouse, "contract", "SUB-2", pinned, by="carol")

    # November: Contoso renamed in Autotask and another company now carries ACC-1 as its key
    fake.companies[contoso]["companyName"] = "Contoso Group"
    fake.companies[other]["userDefinedFields"] = [{"name": "BSS Account ID", "value": "ACC-1"}]
    decoy = fake.add_contract(northwind, "decoy", "SUB-2", date(2026, 1, 1), date(2027, 12, 31))
    november = [
        line("2026-11", CONTOSO, "SUB-1", M365, "Cycle", 5, 5, date(2026, 11, 1)),
        line("2026-11", NORTHWIND, "SUB-2", M365, "Cycle", 3, 3, date(2026, 11, 1)),
    ]
    store_month(warehouse, "2026-11", november, [account_row(*CONTOSO), account_row(*NORTHWIND)])
    mapping = _run(warehouse, fake, "2026-11", "nov")
    assert _resolution(warehouse, "nov", "company", "ACC-1") == (contoso, "remembered")
    assert _resolution(warehouse, "nov", "company", "ACC-3") == (northwind, "remembered")
    assert _resolution(warehouse, "nov", "contract", "SUB-2") == (pinned, "manual")
    assert decoy != pinned
    assert mapping.new_links == 0
    links = {(link["kind"], link["source_key"]): link for link in stored_links(warehouse)}
    assert links[("company", "ACC-3")]["method"] == "confirmed_suggestion"
    assert links[("company", "ACC-3")]["linked_by"] == "carol"
    assert links[("contract", "SUB-2")]["method"] == "manual"
    assert links[("company", "ACC-1")]["last_month"] == "2026-11"
    # the audit trail holds every link made: the auto-links of October and the two decisions of carol
    events = warehouse.query("SELECT kind, source_key, method, changed_by FROM mapping_link_events ORDER BY kind")
    assert {(e["kind"], e["source_key"], e["method"], e["changed_by"]) for e in events} == {
        ("company", "ACC-1", "name", "auto-linker"),
        ("contract", "SUB-1", "key", "auto-linker"),
        ("service", "PRD-M365", "key", "auto-linker"),
        ("company", "ACC-3", "confirmed_suggestion", "carol"),
        ("contract", "SUB-2", "manual", "carol"),
    }

    # the created contract service for the pinned contract is planned against the manual link
    plan = load_plan(warehouse, "2026-11", "nov")
    assert any(action.contract_id == pinned for action in plan)
    assert service in {action.service_id for action in plan}


def test_a_rejected_suggestion_is_not_offered_again_and_a_missing_target_is_flagged(warehouse):
    fake = FakeAutotask()
    northwind = fake.add_company("Northwind Traders Ltd")
    gone = fake.add_company("Contoso Ltd")
    fake.add_service(M365[2], M365[1], 10.0, 12.0)
    rows = [
        line("2026-10", NORTHWIND, "SUB-2", M365, "Cycle", 3, 3, date(2026, 10, 1)),
        line("2026-10", CONTOSO, "SUB-1", M365, "Cycle", 5, 5, date(2026, 10, 1)),
    ]
    store_month(warehouse, "2026-10", rows, [account_row(*NORTHWIND), account_row(*CONTOSO)])
    _run(warehouse, fake, "2026-10", "r1")
    reject_suggestion(warehouse, "company", "ACC-3", northwind, by="dave")
    del fake.companies[gone]  # the linked company disappears from Autotask
    mapping = _run(warehouse, fake, "2026-10", "r2")
    assert warehouse.query("SELECT status FROM mapping_suggestions WHERE source_key = 'ACC-3'") == [
        {"status": "rejected"}
    ]
    assert mapping.flagged == 1
    flag = warehouse.query("SELECT flag FROM month_links WHERE run_id = 'r2' AND source_key = 'ACC-1'")
    assert flag == [{"flag": "target_missing"}]
    # with no open suggestion left, the company create is proposed rather than waiting for a mapping
    statuses = {a.target: a.status for a in load_plan(warehouse, "2026-10", "r2") if a.kind == "create_company"}
    assert str(statuses["account:ACC-3"]) == "proposed"
    # the flagged company's contract create is held for review
    contract = [a for a in load_plan(warehouse, "2026-10", "r2") if a.target == "subscription:SUB-1"]
    assert str(contract[0].status) == "flagged"


@pytest.mark.parametrize("kind", ["company", "contract", "service"])
def test_unknown_kind_is_refused(warehouse, kind):
    with pytest.raises(ValueError):
        set_manual_link(warehouse, kind + "x", "A", 1, by="x")
