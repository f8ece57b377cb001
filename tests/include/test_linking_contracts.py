"""Linking subscriptions to contracts (defects 6 and 7, linking side): a contract numbered with another
subscription's id is never linked nor suggested, names stay inside the account's company, and a remembered or
keyed contract of another company is kept but flagged with both companies named. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

from include.mapping import link_month, reject_suggestion, set_manual_link, stored_links
from include.plan import load_plan
from include.reconcile import reconcile_month
from include.snapshot import take_snapshot
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.line_factory import account_row, line, store_month
from tests.include.test_reconcile_golden import SETTINGS

MONTH = "2026-10"
YEAR = (date(2026, 1, 1), date(2026, 12, 31))
M365 = ("PRD-M365", "M365-BS", "Microsoft 365 Business Standard")
EXCHANGE = ("PRD-EXO", "EXO-P1", "Exchange Online (Plan 1)")


def run_month(warehouse: Warehouse, fake: FakeAutotask, lines: list[dict], run_id: str = "run-1"):
    accounts = {(row["account_id"], row["account_name"]) for row in lines}
    store_month(warehouse, MONTH, lines, [account_row(*account) for account in sorted(accounts)])
    take_snapshot(fake, warehouse, MONTH, run_id, SETTINGS)
    return link_month(warehouse, MONTH, run_id, SETTINGS)


def month_link(warehouse: Warehouse, kind: str, source: str, run_id: str = "run-1") -> dict:
    return warehouse.query(
        "SELECT target_id, resolution, flag, detail, suggestions FROM month_links"
        " WHERE run_id = :run AND kind = :kind AND source_key = :source",
        {"run": run_id, "kind": kind, "source": source},
    )[0]


def _old_suggestion(source_key: str, target_id: int) -> dict:
    return {
        "kind": "contract",
        "source_key": source_key,
        "target_id": target_id,
        "score": 100,
        "source_name": M365[2],
        "target_name": M365[2],
        "month": "2026-09",
        "run_id": "old-run",
        "status": "open",
        "created_at": date(2026, 9, 1),
    }


def test_a_second_subscription_never_gets_the_contract_numbered_for_the_first(warehouse):
    fake = FakeAutotask()
    contoso = fake.add_company("Contoso Ltd", key="ACC-1")
    service = fake.add_service(M365[2], M365[1], 10.0, 12.0)
    first = fake.add_contract(contoso, "Microsoft 365 Business Standard", "SUB-1", *YEAR)
    fake.add_contract(contoso, "Microsoft 365 Business Std", "SUB-1", *YEAR)  # a near name, same subscription
    fake.add_contract_service(first, service, 10)
    contoso_account = ("ACC-1", "Contoso Ltd")
    lines = [
        line(MONTH, contoso_account, "SUB-1", M365, "Cycle", 10, 10, date(2026, 10, 1)),
        line(MONTH, contoso_account, "SUB-2", M365, "New", 3, 3, date(2026, 10, 12)),
    ]
    store_month(warehouse, MONTH, lines, [account_row(*contoso_account)])
    with warehouse.begin() as conn:  # what the old linker offered SUB-2, still open
        warehouse.insert(conn, "mapping_suggestions", [_old_suggestion("SUB-2", first)])
    run_month(warehouse, fake, lines)
    # SUB-1 has two contracts numbered for it: a person picks between them
    assert month_link(warehouse, "contract", "SUB-1")["suggestions"] == 2
    sub2 = month_link(warehouse, "contract", "SUB-2")
    assert (sub2["target_id"], sub2["resolution"], sub2["suggestions"]) == (None, "unlinked", 0)
    # the old offer is withdrawn, nothing new is offered
    assert warehouse.query("SELECT target_id, status FROM mapping_suggestions WHERE source_key = 'SUB-2'") == [
        {"target_id": first, "status": "stale"}
    ]

    # reconciliation plans SUB-2 its own contract, stamped with its id, without waiting for a person
    reconcile_month(warehouse, MONTH, "run-1", SETTINGS)
    [create] = [a for a in load_plan(warehouse, MONTH, "run-1") if a.target == "subscription:SUB-2"]
    assert str(create.kind) == "create_contract" and str(create.status) == "proposed"
    assert create.payload["contractNumber"] == "SUB-2"


def test_a_contract_numbered_otherwise_still_links_by_its_exact_name_inside_the_company(warehouse):
    fake = FakeAutotask()
    contoso = fake.add_company("Contoso Ltd", key="ACC-1")
    own = fake.add_contract(contoso, "Exchange Online (Plan 1)", "AT-CTR-0077", *YEAR)
    fabrikam = fake.add_company("Fabrikam Inc", key="ACC-2")
    fake.add_contract(fabrikam, "Exchange Online (Plan 1)", None, *YEAR)
    run_month(
        warehouse,
        fake,
        [
            line(MONTH, ("ACC-1", "Contoso Ltd"), "SUB-1", EXCHANGE, "Cycle", 2, 2, date(2026, 10, 1)),
            line(MONTH, ("ACC-3", "Northwind Ltd"), "SUB-3", EXCHANGE, "Cycle", 2, 2, date(2026, 10, 1)),
        ],
    )
    assert month_link(warehouse, "contract", "SUB-1")["target_id"] == own
    # Northwind has no company: Fabrikam's contract of the same name is never linked nor suggested
    sub3 = month_link(warehouse, "contract", "SUB-3")
    assert (sub3["target_id"], sub3["suggestions"]) == (None, 0)


def test_a_keyed_contract_of_another_company_is_kept_and_flagged_with_both_companies(warehouse):
    fake = FakeAutotask()
    gmbh = fake.add_company("Acme GmbH")
    sarl = fake.add_company("Acme SARL", key="ACC-1002")
    moved = fake.add_contract(gmbh, "M365 (SUB-9)", "SUB-9", *YEAR)
    pinned = fake.add_contract(gmbh, "Everything Exchange", None, *YEAR)
    set_manual_link(warehouse, "contract", "SUB-10", pinned, by="grace")
    acme = ("ACC-1002", "Acme SARL")
    mapping = run_month(
        warehouse,
        fake,
        [
            line(MONTH, acme, "SUB-9", M365, "Cycle", 4, 4, date(2026, 10, 1)),
            line(MONTH, acme, "SUB-10", EXCHANGE, "Cycle", 1, 1, date(2026, 10, 1)),
        ],
    )
    sub9 = month_link(warehouse, "contract", "SUB-9")
    assert (sub9["target_id"], sub9["resolution"], sub9["flag"]) == (moved, "key", "other_company")
    assert sub9["detail"] == (
        f'contract {moved} "M365 (SUB-9)" belongs to Acme GmbH (company {gmbh}); account ACC-1002 "Acme SARL"'
        f" is linked to Acme SARL (company {sarl})"
    )
    # a person's link is kept too, and flagged the same way
    sub10 = month_link(warehouse, "contract", "SUB-10")
    assert (sub10["target_id"], sub10["resolution"], sub10["flag"]) == (pinned, "manual", "other_company")
    assert mapping.flagged == 2
    links = {link["source_key"]: link for link in stored_links(warehouse, "contract")}
    assert links["SUB-9"]["flag"] == links["SUB-10"]["flag"] == "other_company"
    events = warehouse.query("SELECT source_key, method, note FROM mapping_link_events WHERE source_key = 'SUB-10'")
    assert sorted(e["method"] for e in events) == ["flagged", "manual"]
    assert any("Acme GmbH" in (e["note"] or "") and "Acme SARL" in (e["note"] or "") for e in events)


def test_an_unlinked_account_is_offered_the_company_owning_its_keyed_contract(warehouse):
    fake = FakeAutotask()
    owner = fake.add_company("Tailspin Toys Holding")  # a name nothing like the account's
    contract = fake.add_contract(owner, "M365", "SUB-5", *YEAR)
    # another account whose three subscriptions are all keyed to contracts of one company
    lakeshore = fake.add_company("Lakeshore Retail", active=False)
    theirs = [fake.add_contract(lakeshore, "M365", f"SUB-{n}", *YEAR) for n in (6, 7, 8)]
    wingtip, fourth = ("ACC-5", "Wingtip Ventures"), ("ACC-6", "Fourth Coffee")
    run_month(
        warehouse,
        fake,
        [
            line(MONTH, wingtip, "SUB-5", M365, "Cycle", 3, 3, date(2026, 10, 1)),
            *(line(MONTH, fourth, f"SUB-{n}", M365, "Cycle", 1, 1, date(2026, 10, 1)) for n in (6, 7, 8)),
        ],
    )
    sub5 = month_link(warehouse, "contract", "SUB-5")
    # no company to compare with: the keyed contract stays linked, unflagged
    assert (sub5["target_id"], sub5["flag"]) == (contract, None)
    assert month_link(warehouse, "company", "ACC-5")["suggestions"] == 1
    [suggestion] = warehouse.query(
        "SELECT target_id, reason, status FROM mapping_suggestions WHERE source_key = 'ACC-5'"
    )
    assert suggestion == {
        "target_id": owner,
        "reason": f"owns contract {contract} keyed to SUB-5",
        "status": "open",
    }

    [many] = warehouse.query("SELECT target_id, reason FROM mapping_suggestions WHERE source_key = 'ACC-6'")
    assert many == {
        "target_id": lakeshore,
        "reason": f"owns contract {theirs[0]} keyed to SUB-6; owns contract {theirs[1]} keyed to SUB-7;"
        " and 1 more contract of this account; the company is inactive in Autotask",
    }

    # rejected, it is not offered again
    reject_suggestion(warehouse, "company", "ACC-5", owner, by="heidi")
    take_snapshot(fake, warehouse, MONTH, "run-2", SETTINGS)
    link_month(warehouse, MONTH, "run-2", SETTINGS)
    assert month_link(warehouse, "company", "ACC-5", "run-2")["suggestions"] == 0
    assert warehouse.scalar("SELECT status FROM mapping_suggestions WHERE source_key = 'ACC-5'") == "rejected"


def test_a_remembered_name_link_to_a_contract_numbered_for_another_subscription_is_demoted(warehouse):
    fake = FakeAutotask()
    contoso = fake.add_company("Contoso Ltd", key="ACC-1")
    first = fake.add_contract(contoso, "Microsoft 365 Business Standard", "SUB-1", *YEAR)
    contoso_account = ("ACC-1", "Contoso Ltd")
    lines = [
        line(MONTH, contoso_account, "SUB-1", M365, "Cycle", 10, 10, date(2026, 10, 1)),
        line(MONTH, contoso_account, "SUB-2", M365, "Cycle", 3, 3, date(2026, 10, 1)),
    ]
    store_month(warehouse, MONTH, lines, [account_row(*contoso_account)])
    with warehouse.begin() as conn:  # what the old linker stored: SUB-2 on SUB-1's contract by name
        warehouse.insert(
            conn,
            "mapping_links",
            [
                {
                    "kind": "contract",
                    "source_key": "SUB-2",
                    "target_id": first,
                    "method": "name",
                    "linked_by": "auto-linker",
                    "linked_at": date(2026, 9, 1),
                    "source_name": M365[2],
                    "target_name": "Microsoft 365 Business Standard",
                    "first_month": "2026-09",
                    "last_month": "2026-09",
                    "flag": None,
                    "flagged_at": None,
                }
            ],
        )
    take_snapshot(fake, warehouse, MONTH, "run-1", SETTINGS)
    mapping = link_month(warehouse, MONTH, "run-1", SETTINGS)
    assert mapping.demoted_links == 1
    sub2 = month_link(warehouse, "contract", "SUB-2")
    assert (sub2["target_id"], sub2["suggestions"]) == (None, 0)
    note = warehouse.scalar("SELECT note FROM mapping_link_events WHERE source_key = 'SUB-2' AND method = 'demoted'")
    assert f"contract {first} is numbered with another subscription (SUB-1)" in note


def test_a_missing_contract_is_flagged_with_a_readable_detail(warehouse):
    fake = FakeAutotask()
    fake.add_company("Contoso Ltd", key="ACC-1")
    set_manual_link(warehouse, "contract", "SUB-1", 987654, by="ivan")
    run_month(warehouse, fake, [line(MONTH, ("ACC-1", "Contoso Ltd"), "SUB-1", M365, "Cycle", 1, 1, date(2026, 10, 1))])
    sub1 = month_link(warehouse, "contract", "SUB-1")
    assert (sub1["target_id"], sub1["flag"]) == (987654, "target_missing")
    assert sub1["detail"].startswith("contract 987654 no longer exists in Autotask; subscription SUB-1")
