"""The load ledger (`load_ledger`): one row per Autotask slot a month writes, and the only moves it may make.

A row is keyed by the plan's idempotency key (month, kind family, target, effective date): one Autotask slot, one
write. Every state change goes through `move` (or `record_pending` / `record_found` for a row's first state), each
in its own transaction: before the request leaves (pending -> sent, or -> resent) and after the answer arrives
(sent -> confirmed | failed | unknown). A move is a conditional update from the state the caller last saw: when
another load moved the row meanwhile, nothing changes and the caller is told (`False`), so two loads never send one
write, and a row that is confirmed can never be sent again.

    pending  -> sent                      the request is about to leave
    pending  -> confirmed                 a create found by its key before it was sent (the record existed)
    sent     -> confirmed | failed | unknown | pending
    resent   -> confirmed | failed | unknown | pending
    unknown  -> confirmed | resent | failed | pending
    sent     -> resent                    a crash left it sent: Autotask was asked and does not hold it
    resent   -> resent                    the same after a crash during a resend
    failed   -> resent                    Autotask refused it, and a later decision for the slot sends it again
    (none)   -> pending | confirmed       recorded before its send, or found in Autotask before any send

`-> pending` is only for a write Autotask provably never applied: refused before processing (429, never
connected), or not found by reading once its load ended (`include.loader.settle_unknown_writes`).
`confirmed` is final: nothing leaves it.

Recovery reads Autotask through one typed interface (`Lookup`): for each write whose outcome is not known, and for
every create (by its key), it answers found (with the record's id), not found, or cannot tell (with the reason a
person reads). Companies by their key, contracts by contractNumber, services by SKU (else name), contract
extensions by their end date, contract services by contract + service, adjustments by the units on their
effective date (`include.loader`'s finders implement it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa

from include.warehouse import Warehouse, utcnow


class LedgerState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    RESENT = "resent"


S = LedgerState
# The only moves a row may make (from -> the states it may go to). `move` refuses every other.
TRANSITIONS: Mapping[LedgerState, frozenset[LedgerState]] = {
    S.PENDING: frozenset({S.SENT, S.CONFIRMED}),
    S.SENT: frozenset({S.CONFIRMED, S.FAILED, S.UNKNOWN, S.PENDING, S.RESENT}),
    S.RESENT: frozenset({S.CONFIRMED, S.FAILED, S.UNKNOWN, S.PENDING, S.RESENT}),
    S.UNKNOWN: frozenset({S.CONFIRMED, S.RESENT, S.FAILED, S.PENDING}),
    S.FAILED: frozenset({S.RESENT}),
    S.CONFIRMED: frozenset(),
}
# The states a row is born in: recorded before its send, or found in Autotask before this product ever sent it.
FIRST_STATES = frozenset({S.PENDING, S.CONFIRMED})
# A write in one of these states may have reached Autotask: ask before sending it again.
ASK_FIRST = frozenset({S.SENT, S.UNKNOWN, S.RESENT})
# A write in one of these states holds its Autotask slot: no other action may write the slot.
HOLDS_SLOT = ASK_FIRST | {S.CONFIRMED}


class ForbiddenMove(ValueError):
    """A ledger move the table does not allow (a bug in the caller: nothing is written)."""


def allowed(before: LedgerState | None, after: LedgerState) -> bool:
    """Whether a row may go from `before` (None: no row yet) to `after`."""
    if before is None:
        return after in FIRST_STATES
    return after in TRANSITIONS[before]


def check_move(before: LedgerState | None, after: LedgerState) -> None:
    if not allowed(before, after):
        raise ForbiddenMove(f"the load ledger never moves a write from {before or 'nothing'} to {after}")


def move(
    conn: sa.Connection,
    table: sa.Table,
    key: str,
    before: LedgerState,
    after: LedgerState,
    seen_attempts: int | None = None,
    **values: Any,
) -> bool:
    """Move the row of `key` from `before` (what the caller last saw; with `seen_attempts`, also its attempt count)
    to `after`, in the caller's transaction. False when the row is no longer there: another load moved it."""
    check_move(before, after)
    condition = [table.c.idempotency_key == key, table.c.state == str(before)]
    if seen_attempts is not None:
        condition.append(table.c.attempts == seen_attempts)
    return conn.execute(table.update().where(*condition).values(state=str(after), **values)).rowcount == 1


def record_pending(conn: sa.Connection, warehouse: Warehouse, rows: Sequence[dict[str, Any]]) -> None:
    """New rows, pending (a row another load inserted meanwhile stays theirs: the claim of its send sees it)."""
    for row in rows:
        check_move(None, LedgerState(row["state"]))
    warehouse.insert(conn, "load_ledger", rows, ignore_conflicts=True)


@dataclass(frozen=True)
class SlotHolder:
    """The write that holds an Autotask slot in the ledger: which plan action, in which state."""

    key: str
    action_id: str
    state: LedgerState
    run_id: str
    load_id: str
    sent_at: datetime | None


def slots_held(warehouse: Warehouse | sa.Connection, month: str) -> dict[str, SlotHolder]:
    """The month's slots whose write may have reached Autotask or did (sent, unknown, resent, confirmed)."""
    table = sa.table(
        "load_ledger",
        *(sa.column(name) for name in ("idempotency_key", "action_id", "state", "run_id", "load_id", "sent_at")),
        sa.column("month"),
    )
    query = sa.select(table).where(table.c.month == month, table.c.state.in_([str(s) for s in HOLDS_SLOT]))
    if isinstance(warehouse, Warehouse):
        with warehouse.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
    else:
        rows = warehouse.execute(query).mappings().all()
    return {
        row["idempotency_key"]: SlotHolder(
            row["idempotency_key"],
            row["action_id"],
            LedgerState(row["state"]),
            row["run_id"],
            row["load_id"],
            row["sent_at"],
        )
        for row in rows
    }


def months_in_doubt(warehouse: Warehouse) -> list[str]:
    """Months whose ledger holds a write of unknown outcome (sent, unknown, resent), oldest first."""
    rows = warehouse.query(
        "SELECT DISTINCT month FROM load_ledger WHERE state IN ('sent', 'unknown', 'resent') ORDER BY month"
    )
    return [row["month"] for row in rows]


# -- recovery: what does Autotask hold? ----------------------------------------------------------------------------


class Found(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not found"
    CANNOT_TELL = "cannot tell"


@dataclass(frozen=True)
class Lookup:
    """One recovery look-up's answer for one write: found (the record's id, None for an adjustment, which Autotask
    gives no id to read back), not found (provably not in Autotask: it may be sent), or cannot tell (a person looks;
    `note` says why)."""

    found: Found
    autotask_id: int | None = None
    note: str = ""

    @classmethod
    def of(cls, autotask_id: int | None, note: str) -> Lookup:
        return cls(Found.FOUND, autotask_id, note)

    @classmethod
    def not_found(cls) -> Lookup:
        return cls(Found.NOT_FOUND)

    @classmethod
    def cannot_tell(cls, reason: str) -> Lookup:
        return cls(Found.CANNOT_TELL, None, reason)


class RecoveryLookups(Protocol):
    """Ask Autotask what became of writes: one batched read per kind, one `Lookup` per action asked about."""

    def look_up(self, kind: Any, actions: Sequence[Any]) -> Iterable[tuple[Any, Lookup]]: ...


def payload_json(body: Mapping[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


__all__ = [
    "ASK_FIRST",
    "FIRST_STATES",
    "HOLDS_SLOT",
    "TRANSITIONS",
    "ForbiddenMove",
    "Found",
    "LedgerState",
    "Lookup",
    "RecoveryLookups",
    "SlotHolder",
    "allowed",
    "check_move",
    "months_in_doubt",
    "move",
    "payload_json",
    "record_pending",
    "slots_held",
    "utcnow",
]
