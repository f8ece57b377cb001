"""Reversal against the real Autotask sandbox over HTTP: a month planned by the real pipeline is loaded, then
reversed (planned, approved, loaded, verified), and the sandbox's own units rows are compared day by day with
those of before the load."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

import pytest

from include.loader import load_plan_actions
from include.plan import ActionKind, ActionStatus, load_plan, set_action_status
from include.reversal import ReversalError, describe_reversal, plan_reversal, verify_reversal
from include.warehouse import Warehouse
from tests.include.loader_support import (
    ADJUSTING,
    MONTH,
    SETTINGS,
    SandboxAdmin,
    expected_adjustments,
    make_hook,
    plan_month,
)

OCTOBER = [date(2026, 10, 1) + timedelta(days=offset) for offset in range(31)]
REVERSER = "Ana Müller-Lüdenscheidt (finance)"


def _units_by_pair(admin: SandboxAdmin) -> dict[tuple[int, int], list[dict]]:
    rows = defaultdict(list)
    for row in admin.state("ContractServiceUnits"):
        rows[(row["contractID"], row["serviceID"])].append(row)
    return rows


def _units_on(rows: list[dict], day: date) -> float | None:
    text = day.isoformat()
    covering = [row for row in rows if row["startDate"][:10] <= text <= row["endDate"][:10]]
    assert len(covering) <= 1, covering
    return float(covering[0]["units"]) if covering else None


def test_a_reversal_restores_the_units_of_before_the_load_and_a_second_reversal_load_writes_nothing(
    autotask, admin, warehouse: Warehouse, monkeypatch, tmp_path
):
    hook = make_hook(autotask, monkeypatch)
    approved = plan_month(hook, warehouse)
    before_load = _units_by_pair(admin)
    load = load_plan_actions(hook, warehouse, MONTH, "run-1", SETTINGS)
    assert load.status == "succeeded", load.failures
    loaded = _units_by_pair(admin)
    adjustments = expected_adjustments(admin, approved)
    original_days: dict[tuple[int, int], set[date]] = defaultdict(set)
    for adjustment in adjustments:
        original_days[(adjustment.contract_id, adjustment.service_id)].add(adjustment.effective_date)
    assert any(len(days) > 1 for days in original_days.values()), "the month needs chains of several dates"

    summary = plan_reversal(warehouse, MONTH, "run-1", "reverse-1")

    reversal = load_plan(warehouse, MONTH, "reverse-1")
    assert summary.actions == len(reversal) > 0
    shortened = {action.contract_id: action for action in reversal if action.kind is ActionKind.EXTEND_CONTRACT}
    assert shortened, "the month extends contracts: the reversal takes the extensions back"
    assert {action.status for action in reversal if action.kind in ADJUSTING} == {ActionStatus.PROPOSED}
    assert {action.kind for action in reversal} <= {*ADJUSTING, ActionKind.EXTEND_CONTRACT}
    for action in shortened.values():
        assert action.end_date_after < action.end_date_before
        assert f"ends on {action.end_date_after} again" in action.reason
    originals = {action.idempotency_key for action in load_plan(warehouse, MONTH, "run-1")}
    assert not originals & {action.idempotency_key for action in reversal}, "a reversal has its own Autotask slots"
    # the reason says what is not undone and why the day moves
    adjusting = [action for action in reversal if action.kind in ADJUSTING]
    assert all("Not undone" in action.reason and "cannot delete" in action.reason for action in adjusting)
    assert "create_company" in adjusting[0].reason and "extend_contract" not in adjusting[0].reason
    body = describe_reversal(adjusting, MONTH, "run-1", limit=5)
    assert f"{len(adjusting)} opposite adjustments" in body and "nothing is deleted" in body
    assert body.count("\n| ") == 5 + 2 and f"and {len(adjusting) - 5} more" in body
    # nothing is written before a person approves
    admin.reset_stats()
    assert load_plan_actions(hook, warehouse, MONTH, "reverse-1", SETTINGS).write_requests == 0
    assert admin.write_requests() == 0

    # a person approves what can load (a blocked row never does)
    reversal = [action for action in reversal if action.loadable]
    set_action_status(warehouse, [action.action_id for action in reversal], "approved", REVERSER)
    admin.reset_stats()
    reversed_load = load_plan_actions(hook, warehouse, MONTH, "reverse-1", SETTINGS)

    assert reversed_load.status == "succeeded" and not reversed_load.failures, reversed_load.failures
    assert reversed_load.write_requests == len(reversal) == admin.write_requests()
    stats = admin.stats()
    assert set(stats["requests"]) - {"ThresholdInformation"} <= {
        "ContractServiceAdjustments",
        "ContractServiceUnits",
        "Contracts",
    }
    assert "DELETE" not in str(stats["requests"])
    after = _units_by_pair(admin)
    # Autotask holds one adjustment per contract service and day, so a reversal goes on the nearest free day:
    # an original's day, and the days from a decrease's reversal (before it) to the decrease, may differ --
    # never below both the units of before the load and those the load left. Every other day holds exactly
    # the units of before the load.
    moved: dict[tuple[int, int], set[date]] = defaultdict(set)
    for action in reversal:
        if action.kind not in ADJUSTING:
            continue
        pair = (action.contract_id, action.service_id)
        later = [day for day in original_days[pair] if day > action.effective_date]
        if action.unit_change > 0 and later:
            day = action.effective_date
            while day < min(later):
                moved[pair].add(day)
                day += timedelta(days=1)
    exact = at_least = 0
    taken_back = {contract_id for contract_id, action in shortened.items() if action.loadable}
    extension_days = 0
    for pair, days in original_days.items():
        existed_before = pair in before_load
        for day in OCTOBER:
            found = _units_on(after[pair], day) or 0.0
            expected = _units_on(before_load[pair], day) if existed_before else None
            if existed_before and expected is None:
                # after the contract's old end: the extension is taken back, those days hold no units again
                if pair[0] in taken_back:
                    assert _units_on(after[pair], day) is None, (pair, day, found)
                    extension_days += 1
                continue
            if day in days or day in moved[pair]:
                left = _units_on(loaded[pair], day) or 0.0
                assert found >= min(expected or 0.0, left), (pair, day, found, expected, left)
                at_least += 1
            else:
                assert found == pytest.approx(expected or 0.0), (pair, day, found, expected)
                exact += 1
    assert exact > 20 * len(original_days) and at_least <= 2 * sum(len(days) for days in original_days.values())
    # the last day of the month holds exactly the units of before the load (where the contract ran then)
    month_end = [pair for pair in original_days if pair not in before_load or _units_on(before_load[pair], OCTOBER[-1])]
    assert len(month_end) > len(original_days) / 2
    for pair in month_end:
        expected = _units_on(before_load[pair], OCTOBER[-1]) if pair in before_load else None
        assert (_units_on(after[pair], OCTOBER[-1]) or 0.0) == pytest.approx(expected or 0.0)
    assert extension_days > 0
    # the run's own records stay: nothing is deleted (a unit row of an extension's days goes with those days)
    ends = {action.contract_id: action.end_date_after.isoformat() for action in shortened.values() if action.loadable}
    assert {
        row["id"]
        for (contract_id, _), rows in loaded.items()
        for row in rows
        if row["startDate"][:10] <= ends.get(contract_id, "9999")
    } <= {row["id"] for rows in after.values() for row in rows}

    verification = verify_reversal(hook, warehouse, MONTH, "reverse-1")
    assert verification.ok, verification.message()
    ledger = warehouse.query(
        "SELECT state, action_id FROM load_ledger WHERE run_id = 'reverse-1'",
    )
    assert sorted(row["action_id"] for row in ledger) == sorted(action.action_id for action in reversal)
    assert {row["state"] for row in ledger} == {"confirmed"}
    decided = warehouse.query("SELECT DISTINCT decided_by, status FROM plan_actions WHERE run_id = 'reverse-1'")
    assert decided == [{"decided_by": REVERSER, "status": "applied"}]

    # the month's plan, reversal rows included, still passes the plan's own checks (one adjustment per contract
    # service and day, every unit change on a known contract service, units before + change = units after)
    from include.quality import validate_plan

    monkeypatch.setenv("BILLING_DATA_DOCS_DIR", str(tmp_path / "docs"))
    plan_checks = validate_plan(warehouse, MONTH, "run-1")
    assert not [failure for failure in plan_checks.failures if failure.suite == "change_plan"], plan_checks.summary()

    # the reversal again: zero writes; planning it again adds nothing; another reversal of the run is refused
    admin.reset_stats()
    again = load_plan_actions(hook, warehouse, MONTH, "reverse-1", SETTINGS)
    assert again.write_requests == 0 and admin.write_requests() == 0
    assert plan_reversal(warehouse, MONTH, "run-1", "reverse-1").actions == 0
    with pytest.raises(ReversalError, match="already reversed by run reverse-1"):
        plan_reversal(warehouse, MONTH, "run-1", "reverse-2")
    assert admin.write_requests() == 0


def test_nothing_applied_is_nothing_to_reverse_and_a_run_cannot_reverse_itself(warehouse: Warehouse):
    with pytest.raises(ReversalError, match="applied no adjustment"):
        plan_reversal(warehouse, MONTH, "run-1", "reverse-1")
    with pytest.raises(ReversalError, match="a run id of its own"):
        plan_reversal(warehouse, MONTH, "run-1", "run-1")


def test_consecutive_days_and_a_cost_change_are_reversed_on_the_next_free_day_with_the_cost_of_before():
    """+2 on the 5th, +3 on the 6th (a cost change 10 -> 12.5), -1 on the 20th: the increases are undone
    together on the 7th (-5, cost back to 10), the decrease the day before it (+1 on the 19th), and that one
    is sent first."""
    from decimal import Decimal

    from include.plan import PlanAction
    from include.reversal import _Original, _reverse_chain

    def original(day: int, change: int, before: int, cost: tuple[str, str] | None = None) -> _Original:
        action = PlanAction(
            kind=ActionKind.ADJUST_UNITS,
            month=MONTH,
            target="cs:C7/V3",
            status=ActionStatus.APPLIED,
            effective_date=date(2026, 10, day),
            subscription_ids=("SUB-Ünïcode-1",),
            units_before=Decimal(before),
            units_after=Decimal(before + change),
            unit_change=Decimal(change),
            unit_cost_before=None if cost is None else Decimal(cost[0]),
            unit_cost_after=None if cost is None else Decimal(cost[1]),
        )
        return _Original(action, 7, 3, 70)

    chain = [original(20, -1, 10), original(6, 3, 7, ("10", "12.5")), original(5, 2, 5)]
    reversals = _reverse_chain(MONTH, "run-1", chain, "Not undone: nothing.")

    assert [(action.effective_date.day, action.unit_change) for action in reversals] == [(7, -5), (19, 1)]
    first, second = reversals
    assert (first.units_before, first.units_after) == (Decimal(10), Decimal(5))
    assert first.payload["adjustedUnitCost"] == 10 and first.unit_cost_after == Decimal("10")
    assert "adjustedUnitCost" not in second.payload
    # each row's units are what its write finds and leaves: the +1 goes first (10 -> 11 on the 19th), then the -5
    # (10 -> 5 on the 7th); once both are in, the 19th holds 6 (what verification reads back)
    assert (second.units_before, second.units_after) == (Decimal(10), Decimal(11))
    from include.reversal import _finally_held

    held = {action.effective_date.day: action.units_after for action in _finally_held(reversals)}
    assert held == {7: Decimal(5), 19: Decimal(6)}
    assert first.payload["contractServiceID"] == 70 and first.payload["effectiveDate"] == "2026-10-07T00:00:00"
    by_id = {original.action.effective_date.day: original.action.action_id for original in chain}
    assert set(first.depends_on) == {by_id[5], by_id[6], second.action_id}
    assert second.depends_on == (by_id[20],)
    # the loader sends the 19th before the 7th: no intermediate state goes below zero
    from include.loader import _dependencies_first

    assert [action.effective_date.day for action in _dependencies_first(reversals)] == [19, 7]


def test_a_decrease_on_the_first_changed_day_is_undone_after_it_never_in_the_month_before():
    """-2 on 1 October and +3 on the 2nd: the day before the decrease is September (another, maybe invoiced
    month), so both are undone together on the 3rd (-1), and 1-2 October keep what the load left."""
    from decimal import Decimal

    from include.plan import PlanAction
    from include.reversal import _Original, _reverse_chain

    def original(day: int, change: int, before: int) -> _Original:
        action = PlanAction(
            kind=ActionKind.ADJUST_UNITS,
            month=MONTH,
            target="cs:S:SUB-Ø-7/V9",
            status=ActionStatus.APPLIED,
            effective_date=date(2026, 10, day),
            units_before=Decimal(before),
            units_after=Decimal(before + change),
            unit_change=Decimal(change),
        )
        return _Original(action, 8, 9, None)

    (only,) = _reverse_chain(MONTH, "run-1", [original(2, 3, 3), original(1, -2, 5)], "")

    assert only.effective_date == date(2026, 10, 3) and only.unit_change == Decimal(-1)
    assert (only.units_before, only.units_after) == (Decimal(6), Decimal(5))
    assert "contractServiceID" in only.payload and only.payload["contractServiceID"] is None
