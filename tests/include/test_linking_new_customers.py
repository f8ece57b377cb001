"""New customers are not held because another company looks like them (issue 15): a BSS account never linked before
whose only look-alikes in Autotask are other legal entities — another legal form, another distinctive word — is
proposed as a new company, flagged with the look-alikes named; an accent-folded or spacing-only twin of the same
legal form still waits for a person, and so does an account linked before. Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from include.mapping import set_manual_link
from include.names import compare_names, other_entity
from include.plan import load_plan
from include.reconcile import reconcile_month
from include.warehouse import Warehouse
from tests.include.fake_autotask import FakeAutotask
from tests.include.test_linking_names import MONTH, company_link, link_accounts, suggestions_for
from tests.include.test_reconcile_golden import SETTINGS


def create_company_of(warehouse: Warehouse, account_id: str):
    reconcile_month(warehouse, MONTH, "run-1", SETTINGS)
    [action] = [
        action
        for action in load_plan(warehouse, MONTH, "run-1")
        if action.kind == "create_company" and action.account_id == account_id
    ]
    return action


@pytest.mark.parametrize(
    ("name", "look_alikes", "why"),
    [
        ("Brennan Café Oy", ["Brennan Café Ltd", "Brennan Café LLP"], ['"Oy" vs "Ltd"', '"Oy" vs "LLP"']),
        ("Sánchez Medical Centre Ltd", ["Schäfer Medical Centre Limited"], ['"Sánchez" vs "Schäfer"']),
        ("Αθηνά Ψηφιακή ΙΚΕ", ["Αθηνά Ψηφιακή Α.Ε."], ['"ΙΚΕ" vs "Α.Ε."']),
        ("<b>Kowalski</b> Bäckerei SARL", ["<b>Kowalski</b> Bäckerei ApS"], ['"SARL" vs "ApS"']),
    ],
)
def test_a_new_customer_whose_look_alikes_are_other_entities_is_proposed_new_and_flagged_with_them(
    warehouse: Warehouse, name: str, look_alikes: list[str], why: list[str]
) -> None:
    fake = FakeAutotask()
    ids = [fake.add_company(other) for other in look_alikes]
    link_accounts(warehouse, fake, [("ACC-NEW", name)])

    assert company_link(warehouse, "ACC-NEW") == (None, "unlinked", 0)  # nothing waits for a person
    # the look-alikes stay offered (a person who knows better confirms one), none of them is applied
    assert {row["target_id"] for row in suggestions_for(warehouse, "ACC-NEW")} == set(ids)
    action = create_company_of(warehouse, "ACC-NEW")
    assert str(action.status) == "flagged", action.reason
    assert "new company proposed" in action.reason
    for other, company_id, because in zip(look_alikes, ids, why, strict=True):
        assert f'"{other}" (company {company_id}' in action.reason and because in action.reason
    assert action.payload["companyName"] == name
    # what the new company carries is flagged too, never needs-mapping
    for other in load_plan(warehouse, MONTH, "run-1"):
        if other.account_id == "ACC-NEW":
            assert str(other.status) != "needs-mapping", other


@pytest.mark.parametrize(
    ("name", "look_alikes"),
    [
        ("Müller & Söhne GmbH", ["Muller & Sohne GmbH"]),  # accents folded, the same legal form
        ("Data Bridge Ltd", ["DataBridge Limited"]),  # spacing only, the same legal form spelt otherwise
        ("Northwind Trading Ltd", ["Northwind Traders Ltd"]),  # another form of the same word
        ("Northwnd Traders Ltd", ["Northwind Traders Ltd"]),  # a typo
        ("Brennan Café", ["Brennan Café Ltd"]),  # a legal form on one side only
        ("Brennan Café Oy", ["Brennan Café Ltd", "Brennan Cafe Oy"]),  # one look-alike a person must judge
    ],
)
def test_a_look_alike_a_person_must_judge_still_holds_the_new_customer(
    warehouse: Warehouse, name: str, look_alikes: list[str]
) -> None:
    fake = FakeAutotask()
    for other in look_alikes:
        fake.add_company(other)
    link_accounts(warehouse, fake, [("ACC-NEW", name)])
    target, resolution, waiting = company_link(warehouse, "ACC-NEW")
    assert (target, resolution) == (None, "unlinked") and waiting == len(look_alikes)
    action = create_company_of(warehouse, "ACC-NEW")
    assert str(action.status) == "needs-mapping" and "new company proposed" not in action.reason


def test_an_account_linked_before_is_never_proposed_as_a_new_company(warehouse: Warehouse) -> None:
    fake = FakeAutotask()
    ltd = fake.add_company("Brennan Café Ltd")
    set_manual_link(warehouse, "company", "ACC-OLD", ltd, by="frank", note="checked")
    # the link is removed by hand (a person unlinked it): the account has a history, it waits for a person
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DELETE FROM mapping_links WHERE source_key = 'ACC-OLD'")
    link_accounts(warehouse, fake, [("ACC-OLD", "Brennan Café Oy")])
    assert company_link(warehouse, "ACC-OLD") == (None, "unlinked", 1)
    assert str(create_company_of(warehouse, "ACC-OLD").status) == "needs-mapping"


def test_other_entity_names_the_difference_and_leaves_the_rest_to_a_person() -> None:
    assert other_entity("Brennan Café Oy", "Brennan Café Ltd") == 'the legal form differs: "Oy" vs "Ltd"'
    assert other_entity("Acme Medical Ltd", "Acme Dental Ltd") == 'the distinctive word differs: "Medical" vs "Dental"'
    for same in (
        ("Brennan Cafe Ltd", "Brennan Café Limited"),
        ("Data Bridge Ltd", "DataBridge Ltd"),
        ("Sánchez Medical Centre Ltd", "Sanchez Medical Center Ltd"),
        ("Woodgrove Bank", "Woodgrove Bank Amsterdam"),
    ):
        assert other_entity(*same) is None, same
    # spacing only is the same name written otherwise: a suggestion a person sees first
    assert compare_names("Data Bridge Ltd", "DataBridge Ltd").score == 96.0
