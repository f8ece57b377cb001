"""The load ledger's state machine: every allowed move moves the row, every other is refused before anything is
written, and a move from a state the row has left (another load moved it) changes nothing."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest

from include import ledger
from include.ledger import ASK_FIRST, HOLDS_SLOT, TRANSITIONS, ForbiddenMove, LedgerState
from include.warehouse import Warehouse

S = LedgerState
# The moves the ledger's doc promises, written out by hand: the table must say exactly these.
EXPECTED = {
    (S.PENDING, S.SENT),
    (S.PENDING, S.CONFIRMED),
    *((S.SENT, after) for after in (S.CONFIRMED, S.FAILED, S.UNKNOWN, S.PENDING, S.RESENT)),
    *((S.RESENT, after) for after in (S.CONFIRMED, S.FAILED, S.UNKNOWN, S.PENDING, S.RESENT)),
    *((S.UNKNOWN, after) for after in (S.CONFIRMED, S.RESENT, S.FAILED, S.PENDING)),
    (S.FAILED, S.RESENT),
}
ALL_PAIRS = list(itertools.product(LedgerState, LedgerState))


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    store = Warehouse(f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}")
    store.migrate()
    return store


def _row(warehouse: Warehouse, key: str, state: LedgerState) -> None:
    with warehouse.begin() as conn:
        conn.execute(
            warehouse.table("load_ledger").delete().where(warehouse.table("load_ledger").c.idempotency_key == key)
        )
        warehouse.insert(
            conn,
            "load_ledger",
            [
                {
                    "idempotency_key": key,
                    "action_id": "a1",
                    "month": "2026-10",
                    "run_id": "run-1",
                    "load_id": "load-1",
                    "kind": "adjust_units",
                    "entity": "ContractServiceAdjustments",
                    "verb": "POST",
                    "payload": "{}",
                    "state": str(state),
                    "attempts": 1,
                    "created_at": datetime(2026, 11, 1),
                }
            ],
        )


def _state(warehouse: Warehouse, key: str) -> str:
    rows = warehouse.query("SELECT state FROM load_ledger WHERE idempotency_key = :key", {"key": key})
    return rows[0]["state"]


def test_the_table_allows_exactly_the_documented_moves() -> None:
    table = {(before, after) for before, targets in TRANSITIONS.items() for after in targets}
    assert table == EXPECTED
    assert TRANSITIONS[S.CONFIRMED] == frozenset()  # confirmed is final: never sent again
    assert {S.SENT, S.UNKNOWN, S.RESENT} == ASK_FIRST and ASK_FIRST | {S.CONFIRMED} == HOLDS_SLOT
    assert {after for after in LedgerState if ledger.allowed(None, after)} == {S.PENDING, S.CONFIRMED}


@pytest.mark.parametrize(("before", "after"), ALL_PAIRS, ids=[f"{b}->{a}" for b, a in ALL_PAIRS])
def test_every_move_is_made_or_refused_as_the_table_says(warehouse: Warehouse, before, after) -> None:
    key = f"2026-10|adjust|cs:C1/V1|{before}-{after}"
    _row(warehouse, key, before)
    table = warehouse.table("load_ledger")
    if (before, after) in EXPECTED:
        with warehouse.begin() as conn:
            assert ledger.move(conn, table, key, before, after, error=None)
        assert _state(warehouse, key) == after
    else:
        with pytest.raises(ForbiddenMove), warehouse.begin() as conn:
            ledger.move(conn, table, key, before, after)
        assert _state(warehouse, key) == before


def test_a_move_from_a_state_the_row_has_left_changes_nothing(warehouse: Warehouse) -> None:
    """Two loads saw the row pending; the first claimed it (sent): the second's claim finds nothing to move."""
    key = "2026-10|adjust|cs:C1/V1|2026-10-06"
    _row(warehouse, key, S.PENDING)
    table = warehouse.table("load_ledger")
    with warehouse.begin() as conn:
        assert ledger.move(conn, table, key, S.PENDING, S.SENT, seen_attempts=1, attempts=2)
    with warehouse.begin() as conn:
        assert not ledger.move(conn, table, key, S.PENDING, S.SENT, seen_attempts=1, attempts=2)
    with warehouse.begin() as conn:  # the first load's answer arrives; a late claim on the old attempt count fails
        assert not ledger.move(conn, table, key, S.SENT, S.RESENT, seen_attempts=1)
        assert ledger.move(conn, table, key, S.SENT, S.CONFIRMED)
    assert _state(warehouse, key) == "confirmed"


def test_a_new_row_is_born_pending_or_confirmed_only(warehouse: Warehouse) -> None:
    for state in (S.SENT, S.UNKNOWN, S.RESENT, S.FAILED):
        with pytest.raises(ForbiddenMove), warehouse.begin() as conn:
            ledger.record_pending(conn, warehouse, [{"state": str(state), "idempotency_key": f"k-{state}"}])
    assert not warehouse.query("SELECT 1 FROM load_ledger WHERE idempotency_key LIKE 'k-%'")
