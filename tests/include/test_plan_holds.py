"""What holds a plan action back is decided before the action is built (`held_back`); holding a built action
back (`PlanAction.held`, as the loader's conflicts do) gives the same status and reason text, and neither
changes the action's id. The expected texts are those the plan wrote when every hold copied the action."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from include.plan import BLOCKED_MARK, ActionKind, ActionStatus, Hold, PlanAction, held_back

_MOVED = "subscription moved to another customer: contract 7 belongs to company 3"
_CURRENCY = "the BSS bills this in EUR but the company's Autotask currency is USD"
_LINK = "the linked Autotask contract 7 is inactive"

FLAGGED, NEEDS_MAPPING, BLOCKED = ActionStatus.FLAGGED, ActionStatus.NEEDS_MAPPING, ActionStatus.BLOCKED

CASES = [
    ([], ActionStatus.PROPOSED, None),
    ([Hold(FLAGGED, _MOVED)], FLAGGED, _MOVED),
    # the strictest status wins; a blocking reason is marked, in the order the holds came
    (
        [Hold(FLAGGED, _LINK), Hold(BLOCKED, _CURRENCY), Hold(FLAGGED, _MOVED)],
        BLOCKED,
        f"{_LINK}; {BLOCKED_MARK}{_CURRENCY}; {_MOVED}",
    ),
    # a reason equal to the whole reason so far is not repeated; one equal to a part of it is
    ([Hold(FLAGGED, _LINK), Hold(FLAGGED, _LINK)], FLAGGED, _LINK),
    (
        [Hold(FLAGGED, _LINK), Hold(NEEDS_MAPPING, _MOVED), Hold(FLAGGED, _LINK)],
        NEEDS_MAPPING,
        f"{_LINK}; {_MOVED}; {_LINK}",
    ),
    # a status without a reason still holds the action back
    ([Hold(NEEDS_MAPPING, None), Hold(FLAGGED, "")], NEEDS_MAPPING, None),
    # a reason already marked blocked is not marked twice
    ([Hold(BLOCKED, BLOCKED_MARK + _CURRENCY)], BLOCKED, BLOCKED_MARK + _CURRENCY),
]


def _adjustment(status: ActionStatus = ActionStatus.PROPOSED, reason: str | None = None) -> PlanAction:
    return PlanAction(
        kind=ActionKind.ADJUST_UNITS,
        month="2026-10",
        target="cs:C7/V9",
        status=status,
        reason=reason,
        effective_date=date(2026, 10, 15),
        contract_id=7,
        service_id=9,
        contract_service_id=11,
        units_before=Decimal("3.0000"),
        units_after=Decimal("5.0000"),
        unit_change=Decimal("2.0000"),
        payload={"contractServiceID": 11, "unitChange": Decimal("2.0000")},
    )


@pytest.mark.parametrize(("holds", "status", "reason"), CASES)
def test_holds_decided_before_the_action_is_built(holds: list[Hold], status: ActionStatus, reason: str | None) -> None:
    assert held_back(holds) == (status, reason)
    assert _adjustment(*held_back(holds)).action_id == _adjustment().action_id


@pytest.mark.parametrize(("holds", "status", "reason"), CASES)
def test_a_built_action_held_back_one_hold_at_a_time(
    holds: list[Hold], status: ActionStatus, reason: str | None
) -> None:
    action = _adjustment()
    for hold in holds:
        action = action.held(hold.status, hold.reason)
    assert (action.status, action.reason) == (status, reason)
    assert action.action_id == _adjustment().action_id


def test_holds_added_to_a_held_action_keep_its_reason_first() -> None:
    assert held_back([Hold(FLAGGED, _MOVED)], NEEDS_MAPPING, _LINK) == (NEEDS_MAPPING, f"{_LINK}; {_MOVED}")
    assert _adjustment(BLOCKED, BLOCKED_MARK + _CURRENCY).held(FLAGGED, _MOVED).blocked_by_plan
