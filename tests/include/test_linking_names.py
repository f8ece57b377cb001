"""Linking accounts by name (defects 4 and 5): only a unique exact name links; everything looser is a scored
suggestion with a reason a person can act on. Each test runs on SQLite and PostgreSQL (`warehouse` fixture)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from include.mapping import confirm_suggestion, link_month, reject_suggestion, set_manual_link, stored_links
from include.snapshot import take_snapshot
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month
from tests.include.test_reconcile_golden import SETTINGS

MONTH = "2026-10"
M365 = ("PRD-M365", "M365-BS", "Microsoft 365 Business Standard")


def link_accounts(warehouse: Warehouse, fake: FakeAutotask, accounts: list[tuple[str, str]], run_id: str = "run-1"):
    """Store one M365 line per account, snapshot the fake Autotask and link the month."""
    lines = [
        line(MONTH, account, f"SUB-{number}", M365, "Cycle", 1, 1, date(2026, 10, 1))
        for number, account in enumerate(accounts, start=1)
    ]
    store_month(warehouse, MONTH, lines, [account_row(*account) for account in accounts])
    take_snapshot(fake, warehouse, MONTH, run_id, SETTINGS)
    return link_month(warehouse, MONTH, run_id, SETTINGS)


def company_link(warehouse: Warehouse, account_id: str, run_id: str = "run-1") -> tuple:
    row = warehouse.query(
        "SELECT target_id, resolution, suggestions FROM month_links"
        " WHERE run_id = :run AND kind = 'company' AND source_key = :account",
        {"run": run_id, "account": account_id},
    )[0]
    return row["target_id"], row["resolution"], row["suggestions"]


def suggestions_for(warehouse: Warehouse, account_id: str) -> list[dict]:
    rows = warehouse.query(
        "SELECT target_id, score, reason, status FROM mapping_suggestions"
        " WHERE kind = 'company' AND source_key = :account ORDER BY score DESC, target_id",
        {"account": account_id},
    )
    return [{**row, "score": float(row["score"])} for row in rows]


def test_a_different_legal_form_is_a_suggestion_that_says_so_never_a_link(warehouse):
    fake = FakeAutotask()
    aps = fake.add_company("Kowalski Bäckerei ApS")
    link_accounts(warehouse, fake, [("ACC-1", "Kowalski Bäckerei SARL")])
    # its only look-alike is another legal entity: it holds nothing (the plan proposes a new company, flagged
    # with the look-alike named), and stays offered for a person who knows better
    assert company_link(warehouse, "ACC-1") == (None, "unlinked", 0)
    detail = warehouse.scalar("SELECT detail FROM month_links WHERE kind = 'company' AND source_key = 'ACC-1'")
    assert detail.startswith("new company proposed") and f'"Kowalski Bäckerei ApS" (company {aps}' in detail
    [suggestion] = suggestions_for(warehouse, "ACC-1")
    assert suggestion["target_id"] == aps and suggestion["status"] == "open"
    assert 80 <= suggestion["score"] < 95
    assert '"SARL" vs "ApS"' in suggestion["reason"] and "different legal entity" in suggestion["reason"]
    assert stored_links(warehouse, "company") == []

    # a person who confirms it anyway leaves the reason in the audit trail
    confirm_suggestion(warehouse, "company", "ACC-1", aps, by="judy")
    note = warehouse.scalar("SELECT note FROM mapping_link_events WHERE source_key = 'ACC-1' AND changed_by = 'judy'")
    assert note.startswith("suggestion score 85.0: same name, but the legal form differs")


def test_an_accent_folded_twin_is_a_high_scoring_suggestion_never_a_link(warehouse):
    fake = FakeAutotask()
    folded = fake.add_company("Muller & Sohne GmbH")
    link_accounts(warehouse, fake, [("ACC-1", "Müller & Söhne GmbH")])
    assert company_link(warehouse, "ACC-1") == (None, "unlinked", 1)
    [suggestion] = suggestions_for(warehouse, "ACC-1")
    assert suggestion["target_id"] == folded
    assert suggestion["score"] >= 95 and "accents" in suggestion["reason"]


def test_an_exact_name_links_even_when_other_companies_share_the_loose_name(warehouse):
    fake = FakeAutotask()
    twins = [
        fake.add_company("Nordlicht Consulting AG"),
        fake.add_company("Nordlicht Consulting Ltd"),
        fake.add_company("Nordlicht-Consulting GmbH"),
        fake.add_company("Nordlicht Consulting GmbH (alt)", active=False),
    ]
    exact = fake.add_company("Nordlicht Consulting GmbH")
    mapping = link_accounts(warehouse, fake, [("ACC-1", "Nordlicht Consulting GmbH")])
    assert company_link(warehouse, "ACC-1") == (exact, "name", 0)
    assert exact not in twins and mapping.new_links >= 1
    assert suggestions_for(warehouse, "ACC-1") == []


def test_two_companies_with_the_same_exact_name_are_two_suggestions_and_no_link(warehouse):
    fake = FakeAutotask()
    first = fake.add_company("Alpenblick Hotel GmbH")
    second = fake.add_company("ALPENBLICK  Hotel GmbH")
    near = fake.add_company("Alpenblick Hotels GmbH")
    link_accounts(warehouse, fake, [("ACC-1", "Alpenblick Hotel GmbH")])
    target, resolution, count = company_link(warehouse, "ACC-1")
    assert (target, resolution) == (None, "unlinked")
    suggestions = suggestions_for(warehouse, "ACC-1")
    assert [(s["target_id"], s["score"]) for s in suggestions[:2]] == [(first, 100.0), (second, 100.0)]
    assert all(s["reason"] == "2 companies share this exact name" for s in suggestions[:2])
    # the near miss ranks below both, and the month_links count matches what is stored
    assert suggestions[2]["target_id"] == near and suggestions[2]["score"] < 95
    assert count == len(suggestions) == 3


def test_unicode_form_case_and_spaces_do_not_stop_an_exact_link(warehouse):
    fake = FakeAutotask()
    nfd = fake.add_company("Cafe\u0301 de l'Horloge SARL")
    spaced = fake.add_company("  ZÜRICH   Treuhand\tAG ")
    link_accounts(
        warehouse,
        fake,
        [("ACC-1", "Caf\u00e9 de l'Horloge SARL"), ("ACC-2", "Zürich Treuhand AG")],
    )
    assert company_link(warehouse, "ACC-1") == (nfd, "name", 0)
    assert company_link(warehouse, "ACC-2") == (spaced, "name", 0)


def test_a_rejected_suggestion_stays_rejected_and_blocks_a_later_exact_link(warehouse):
    fake = FakeAutotask()
    first = fake.add_company("Alpenblick Hotel GmbH")
    second = fake.add_company("Alpenblick Hotel GmbH")
    link_accounts(warehouse, fake, [("ACC-1", "Alpenblick Hotel GmbH")])
    reject_suggestion(warehouse, "company", "ACC-1", first, by="erin")
    # the other twin is deactivated: only the rejected one still carries the exact name
    fake.companies[second]["isActive"] = False
    take_snapshot(fake, warehouse, MONTH, "run-2", SETTINGS)
    link_month(warehouse, MONTH, "run-2", SETTINGS)
    assert company_link(warehouse, "ACC-1", "run-2") == (None, "unlinked", 0)
    statuses = {s["target_id"]: s["status"] for s in suggestions_for(warehouse, "ACC-1")}
    assert statuses[first] == "rejected"


def test_a_remembered_link_made_by_the_old_loose_rule_is_demoted_with_an_event(warehouse):
    fake = FakeAutotask()
    aps = fake.add_company("Kowalski Bäckerei ApS")
    folded = fake.add_company("Muller & Sohne GmbH")
    lines = [
        line(MONTH, ("ACC-1", "Kowalski Bäckerei SARL"), "SUB-1", M365, "Cycle", 1, 1, date(2026, 10, 1)),
        line(MONTH, ("ACC-2", "Müller & Söhne GmbH"), "SUB-2", M365, "Cycle", 1, 1, date(2026, 10, 1)),
    ]
    store_month(warehouse, MONTH, lines, [account_row("ACC-1", "x"), account_row("ACC-2", "y")])
    # what the old linker stored for the SARL account; a person pinned the accent twin by hand
    with warehouse.begin() as conn:
        warehouse.insert(
            conn,
            "mapping_links",
            [
                {
                    "kind": "company",
                    "source_key": "ACC-1",
                    "target_id": aps,
                    "method": "name",
                    "linked_by": "auto-linker",
                    "linked_at": date(2026, 9, 1),
                    "source_name": "Kowalski Bäckerei SARL",
                    "target_name": "Kowalski Bäckerei ApS",
                    "first_month": "2026-09",
                    "last_month": "2026-09",
                    "flag": None,
                    "flagged_at": None,
                }
            ],
        )
    set_manual_link(warehouse, "company", "ACC-2", folded, by="frank", note="same firm, checked the VAT number")
    take_snapshot(fake, warehouse, MONTH, "run-1", SETTINGS)
    mapping = link_month(warehouse, MONTH, "run-1", SETTINGS)

    assert mapping.demoted_links == 1
    assert company_link(warehouse, "ACC-1") == (None, "unlinked", 1)
    assert company_link(warehouse, "ACC-2") == (folded, "manual", 0)
    assert {link["source_key"] for link in stored_links(warehouse, "company")} == {"ACC-2"}
    [suggestion] = suggestions_for(warehouse, "ACC-1")
    assert suggestion["target_id"] == aps and "legal form differs" in suggestion["reason"]
    [event] = warehouse.query(
        "SELECT old_target_id, new_target_id, method, changed_by, note FROM mapping_link_events"
        " WHERE source_key = 'ACC-1'"
    )
    assert (event["old_target_id"], event["new_target_id"], event["method"]) == (aps, None, "demoted")
    assert "old loose-name rule" in event["note"] and "Kowalski Bäckerei ApS" in event["note"]

    # demoted once: the next run neither demotes again nor links
    mapping = link_month(warehouse, MONTH, "run-1", SETTINGS)
    assert mapping.demoted_links == 0 and company_link(warehouse, "ACC-1") == (None, "unlinked", 1)


def test_every_automatic_link_writes_an_audit_event_once(warehouse):
    fake = FakeAutotask()
    keyed = fake.add_company("Contoso Ltd", key="ACC-1")
    named = fake.add_company("Fabrikam Inc")
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    link_accounts(warehouse, fake, [("ACC-1", "Contoso Ltd"), ("ACC-2", "Fabrikam Inc")])
    events = {
        (row["kind"], row["source_key"]): row
        for row in warehouse.query("SELECT * FROM mapping_link_events WHERE changed_by = 'auto-linker'")
    }
    assert set(events) == {("company", "ACC-1"), ("company", "ACC-2"), ("service", "PRD-M365")}
    assert (events[("company", "ACC-1")]["method"], events[("company", "ACC-1")]["new_target_id"]) == ("key", keyed)
    assert (events[("company", "ACC-2")]["method"], events[("company", "ACC-2")]["new_target_id"]) == ("name", named)
    assert events[("company", "ACC-2")]["old_target_id"] is None
    assert 'exact name "Fabrikam Inc"' in events[("company", "ACC-2")]["note"]
    assert events[("service", "PRD-M365")]["new_target_id"] == service

    # a remembered link that is merely used again is no new event; a flag that appears is
    fake.companies[named]["isActive"] = False
    take_snapshot(fake, warehouse, MONTH, "run-2", SETTINGS)
    link_month(warehouse, MONTH, "run-2", SETTINGS)
    later = warehouse.query(
        "SELECT source_key, method, note FROM mapping_link_events WHERE changed_at > :at",
        {"at": max(row["changed_at"] for row in events.values())},
    )
    assert [(row["source_key"], row["method"]) for row in later] == [("ACC-2", "flagged")]
    assert "inactive in Autotask" in later[0]["note"]
    detail = warehouse.scalar("SELECT detail FROM month_links WHERE run_id = 'run-2' AND source_key = 'ACC-2'")
    assert detail.startswith(f'company {named} "Fabrikam Inc" is inactive in Autotask; account ACC-2')


def test_the_limit_caps_looser_candidates_but_every_exact_twin_is_listed(warehouse):
    fake = FakeAutotask()
    twins = [fake.add_company("Alpenblick Hotel GmbH") for _ in range(3)]
    near = [fake.add_company(name) for name in ("Alpenblick Hotels GmbH", "Alpenblick-Hotel AG", "Alpenblik Hotel")]
    lines = [
        line(MONTH, ("ACC-1", "Alpenblick Hotel GmbH"), "SUB-1", M365, "Cycle", 1, 1, date(2026, 10, 1)),
        line(MONTH, ("ACC-2", "Alpenblick Hotel Gmbh."), "SUB-2", M365, "Cycle", 1, 1, date(2026, 10, 1)),
    ]
    store_month(warehouse, MONTH, lines, [account_row("ACC-1", "a"), account_row("ACC-2", "b")])
    take_snapshot(fake, warehouse, MONTH, "run-1", SETTINGS)
    link_month(warehouse, MONTH, "run-1", replace(SETTINGS, suggestion_limit=2))
    assert [s["target_id"] for s in suggestions_for(warehouse, "ACC-1")] == twins
    looser = suggestions_for(warehouse, "ACC-2")
    assert len(looser) == 2 and {s["target_id"] for s in looser} <= {*twins, *near}
    assert all(80 <= s["score"] < 100 for s in looser)
