"""The sandboxes over HTTP hold brand-new customers whose only look-alikes in Autotask are other legal entities
("Brennan Café Oy" beside "Brennan Café Ltd" and "Brennan Café LLP"; "Sánchez Medical Centre Ltd" beside "Schäfer
Medical Centre Limited"): the month planned by the real pipeline proposes their companies, flagged with the
look-alikes named, and holds none of their lines for a mapping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from include.plan import load_plan
from include.warehouse import Warehouse
from stacks.launcher import RunningServer
from tests.plugins.review_support import MONTH, RUN_ID, plan_month, start_autotask

NEW_CUSTOMERS = {
    "Brennan Café Oy": ("Brennan Café Ltd", "Brennan Café LLP"),
    "Sánchez Medical Centre Ltd": ("Schäfer Medical Centre Limited",),
}


@pytest.fixture(scope="module")
def autotask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_autotask(tmp_path_factory.mktemp("new-customers"))
    yield server
    server.stop()


def test_new_customers_with_look_alikes_of_other_entities_are_proposed_new_not_held(
    warehouse: Warehouse, autotask: RunningServer
) -> None:
    httpx = pytest.importorskip("httpx")
    httpx.post(autotask.url + "/_admin/reset", timeout=30).raise_for_status()
    plan_month(autotask, warehouse)
    accounts = {
        row["name"]: row["account_id"]
        for row in warehouse.query("SELECT account_id, name FROM bss_accounts")
        if row["name"] in NEW_CUSTOMERS
    }
    assert set(accounts) == set(NEW_CUSTOMERS)
    plan = load_plan(warehouse, MONTH, RUN_ID)
    for name, account_id in accounts.items():
        [create] = [a for a in plan if str(a.kind) == "create_company" and a.account_id == account_id]
        assert str(create.status) == "flagged" and "new company proposed" in create.reason, create.reason
        for look_alike in NEW_CUSTOMERS[name]:
            assert f'"{look_alike}" (company ' in create.reason
        assert create.payload["companyName"] == name
        theirs = [a for a in plan if a.account_id == account_id]
        assert any(str(a.kind) == "adjust_units" for a in theirs), "the new customer is billed this month"
        assert all(str(a.status) != "needs-mapping" for a in theirs), [(a.kind, a.status, a.reason) for a in theirs]
