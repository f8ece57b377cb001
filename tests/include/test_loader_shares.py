"""The load in shares (`LoadSettings(share=…, shares=…)`, what the DAG's `load_share` tasks run on different
workers): the shares run side by side against the Autotask sandbox, each writes only its customers' records,
and the whole-month load after them writes what they left; every record once."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from include.loader import LoadSettings, load_plan_actions, share_of
from include.plan import ActionKind
from include.warehouse import Warehouse
from tests.include.loader_support import (
    MONTH,
    SETTINGS,
    SandboxAdmin,
    assert_each_applied_exactly_once,
    ledger_states,
    make_hook,
    plan_month,
    seeded_adjustment_ids,
)

SHARES = 3


def test_shares_side_by_side_then_the_whole_month_write_every_record_once(autotask, warehouse: Warehouse, monkeypatch):
    admin = SandboxAdmin(autotask)
    admin.reset()
    approved = plan_month(make_hook(autotask, monkeypatch), warehouse)
    seeded = seeded_adjustment_ids(admin)
    owners = Counter(share_of(action, SHARES) for action in approved)
    assert all(owners[share] for share in range(SHARES)), owners  # every share has work: the split is real
    # a customer's records all go to one share; a new catalogue service to none (the whole-month load)
    by_account: dict[str, set] = {}
    for action in approved:
        if action.account_id:
            by_account.setdefault(action.account_id, set()).add(share_of(action, SHARES))
    assert all(len(shares) == 1 for shares in by_account.values())
    assert all(share_of(action, SHARES) is None for action in approved if action.kind is ActionKind.CREATE_SERVICE)

    def load_share(share: int):
        hook = make_hook(autotask, monkeypatch, conn_id=f"autotask_share_{share}")
        return load_plan_actions(
            hook, warehouse, MONTH, "run-1", SETTINGS, LoadSettings(workers=1, share=share, shares=SHARES)
        )

    with ThreadPoolExecutor(SHARES) as pool:
        summaries = list(pool.map(load_share, range(SHARES)))
    assert all(summary.failed == 0 for summary in summaries), [summary.failures for summary in summaries]
    assert all(summary.written > 0 for summary in summaries), [summary.written for summary in summaries]
    written_by_shares = sum(summary.written for summary in summaries)

    whole = load_plan_actions(make_hook(autotask, monkeypatch), warehouse, MONTH, "run-1", SETTINGS)
    assert whole.status == "succeeded" and whole.failed == 0 and whole.waiting == 0, whole.waits or whole.failures
    writes = len(approved)  # a new contract service is a write of its own (it carries its price and cost)
    # the shares and the whole-month load together wrote each record once: nothing twice, nothing missing
    assert written_by_shares + whole.written == writes == admin.write_requests()
    assert ledger_states(warehouse) == {"confirmed": writes}
    assert_each_applied_exactly_once(admin, approved, seeded)
    statuses = Counter(row["status"] for row in warehouse.query("SELECT status FROM load_runs"))
    # a share never marks another running share interrupted; one waiting for another share's record is incomplete
    assert set(statuses) <= {"succeeded", "incomplete"} and sum(statuses.values()) == SHARES + 1, statuses


def test_a_share_must_be_one_of_the_shares() -> None:
    with pytest.raises(ValueError, match=r"share must be in 0\.\.shares-1"):
        LoadSettings(share=3, shares=3)
    with pytest.raises(ValueError, match=r"share must be in 0\.\.shares-1"):
        LoadSettings(shares=0)
