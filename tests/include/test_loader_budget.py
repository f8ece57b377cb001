"""The hourly request budget: the loader keeps a share free for other integrations, stops cleanly with a
readable reason when the budget runs low, and a later load finishes without losing or repeating a write."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from include.loader import BudgetExhausted, LoadSettings, load_plan_actions
from include.warehouse import Warehouse
from tests.include.loader_support import (
    MONTH,
    SETTINGS,
    assert_each_applied_exactly_once,
    ledger_states,
    make_hook,
    plan_month,
    plan_statuses,
    seeded_adjustment_ids,
)


def test_a_low_budget_pauses_the_load_with_a_reason_and_a_later_load_finishes_it(
    autotask, admin, tmp_path, monkeypatch
):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    seeded = seeded_adjustment_ids(admin)
    used_before = int(hook.threshold_information()["currentTimeframeRequestCount"])
    # Other integrations used what the snapshot did; the loader may use the rest down to its 20 % reserve:
    # room for about 25 requests, fewer than the month needs
    settings = LoadSettings(budget_reserve_share=0.2, write_batch_size=10)
    limit = math.ceil((used_before + settings.budget_margin + 25) / 0.8)
    admin.faults(hourly_limit=limit)
    started = datetime.now(UTC)

    with pytest.raises(BudgetExhausted) as stopped:
        load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS, settings)

    message = str(stopped.value)
    assert "hourly request budget is nearly used up" in message
    assert f"of {limit:,} requests in the last 60 minutes" in message and "20% is kept free" in message
    assert f"This load used {stopped.value.used:,} requests" in message and stopped.value.used > 0
    assert "go on at about" in message and "resumes where this one stopped" in message
    # the load's own requests leave the rolling hour 60 minutes after they were made
    assert started < stopped.value.resume_at <= started + timedelta(minutes=61)
    # a clean stop: the reserve was never touched (Autotask rejected nothing), every write sent is confirmed
    assert admin.stats()["rejected"].get("hourly_limit", 0) == 0
    threshold = hook.threshold_information()
    assert threshold["currentTimeframeRequestCount"] <= 0.8 * limit + 2
    states = ledger_states(warehouse)
    assert states["confirmed"] > 0 and not {"sent", "resent", "unknown", "failed"} & set(states)
    assert plan_statuses(warehouse)["approved"] > 0
    (paused,) = warehouse.query("SELECT status, resume_at, message, requests_used FROM load_runs")
    assert paused["status"] == "paused" and paused["resume_at"] is not None
    assert paused["message"] == message and paused["requests_used"] == stopped.value.used

    # the rolling hour frees capacity: the next load goes on from where this one stopped
    admin.faults(hourly_limit=10000)
    summary = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS, settings)

    assert summary.status == "succeeded", summary.waits
    assert summary.already_applied == 0 and summary.found_applied == 0 and summary.failed == 0
    assert_each_applied_exactly_once(admin, approved, seeded)
    assert "approved" not in plan_statuses(warehouse)
