"""A reversal load whose hourly budget runs out mid-way (the Autotask sandbox's limit set low): the hook stops
at once with its typed error instead of sleeping inside a request, the load pauses saying why, how much it
used and when it goes on, and the next load finishes it with no adjustment lost or written twice."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from include.loader import BudgetExhausted, LoadSettings, load_plan_actions
from include.plan import load_plan, set_action_status
from include.reversal import plan_reversal, verify_reversal
from include.warehouse import Warehouse
from stacks.local_stack import autotask_connection
from tests.include.loader_support import (
    MONTH,
    SETTINGS,
    make_hook,
    plan_month,
    seeded_adjustment_ids,
)


def pacing_hook(server, monkeypatch: pytest.MonkeyPatch, conn_id: str):
    """The hook with its own budget defaults (stop at 90 %), reading the budget before every request."""
    from connectors.autotask_hook import AutotaskHook

    connection = autotask_connection(
        server.url,
        budget_check_every=1,
        budget_refresh_in_background=False,
        budget_max_delay_s=0.01,
        retry_wait_s=0.01,
        retry_max_wait_s=0.05,
    )
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return AutotaskHook(conn_id, sleep=lambda seconds: None)


def test_a_reversal_paused_by_a_spent_budget_says_when_and_the_next_load_finishes_it_once(
    autotask, admin, warehouse: Warehouse, monkeypatch
):
    loader_hook = make_hook(autotask, monkeypatch)
    plan_month(loader_hook, warehouse)
    assert load_plan_actions(loader_hook, warehouse, MONTH, "run-1", SETTINGS).status == "succeeded"
    seeded = seeded_adjustment_ids(admin)
    plan_reversal(warehouse, MONTH, "run-1", "reverse-1")
    reversal = load_plan(warehouse, MONTH, "reverse-1")
    assert len(reversal) > 20
    reversal = [action for action in reversal if action.loadable]  # a blocked row never loads
    set_action_status(warehouse, [action.action_id for action in reversal], "approved", "Zoë")
    # other integrations have used the budget: room for about a dozen more requests before the hook's 90 %
    used = int(loader_hook.threshold_information()["currentTimeframeRequestCount"])
    admin.faults(hourly_limit=int((used + 24) / 0.9))
    admin.reset_stats()
    hook = pacing_hook(autotask, monkeypatch, "autotask_budget_low")
    started = datetime.now(UTC)

    # the loader keeps no reserve and no margin here (its own stop would otherwise come at the same 91 requests
    # as the hook's 90 %, and which one sees it first would depend on timing), so it is the hook that sees the
    # budget run out
    no_reserve = LoadSettings(budget_reserve_share=0.0, budget_margin=0)
    with pytest.raises(BudgetExhausted) as caught:
        load_plan_actions(hook, warehouse, MONTH, "reverse-1", SETTINGS, no_reserve)

    stop = caught.value
    text = str(stop)
    assert "hourly request budget ran out" in text and "This load used" in text and "will go on at about" in text
    assert started < stop.resume_at <= started + timedelta(hours=1, minutes=1)
    stats = admin.stats()
    written_first = stats["writes"]
    assert 0 < written_first < len(reversal), "it stopped part-way"
    assert stats["rejected"].get("hourly_limit", 0) <= 1, "no request was retried against the spent budget"
    runs = warehouse.query("SELECT status, resume_at, message FROM load_runs WHERE run_id = 'reverse-1'")
    assert [run["status"] for run in runs] == ["paused"] and runs[0]["resume_at"] is not None

    # the window frees: the next load (a new process, a new hook) finishes what is missing, nothing twice
    admin.faults(hourly_limit=10000)
    admin.reset_stats()
    fresh = pacing_hook(autotask, monkeypatch, "autotask_budget_back")
    second = load_plan_actions(fresh, warehouse, MONTH, "reverse-1", SETTINGS)
    assert second.status == "succeeded" and not second.failures
    assert written_first + admin.stats()["writes"] == len(reversal)
    stored = [item for item in admin.state("ContractServiceAdjustments") if item["id"] not in seeded]
    slots = Counter((item["contractID"], item["serviceID"], item["effectiveDate"][:10]) for item in stored)
    assert max(slots.values()) == 1, "no adjustment applied twice"
    reversed_slots = {
        (a.contract_id, a.service_id, a.effective_date.isoformat()) for a in reversal if a.service_id is not None
    }
    # the extensions taken back: each contract ends where it ended before again
    ends = {record["id"]: record["endDate"][:10] for record in admin.state("Contracts")}
    shortened = [a for a in reversal if a.kind.value == "extend_contract"]
    assert shortened and all(ends[a.contract_id] == a.end_date_after.isoformat() for a in shortened)
    assert reversed_slots <= set(slots), "no reversal lost"
    assert verify_reversal(fresh, warehouse, MONTH, "reverse-1").ok
