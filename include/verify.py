"""Step 7: read Autotask back after a load and compare the units with what the plan set.

For every contract service an applied adjustment touched, the ContractServiceUnits row covering each
effective date must hold the plan's `units_after` for that date, and the row covering the month end the
units of the last change on or before it. Adjustments cannot be read back (autotask-api.md §6), so the units
are the proof. The comparison is stored per run in `load_verifications`; the differences are returned.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa

from include.autotask_reader import api_date
from include.models import BillingMonth
from include.plan import ActionKind, ActionStatus, PlanAction, load_plan
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

_ADJUSTING = (ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST)
_UNITS_TOLERANCE = Decimal("0.0001")


class AutotaskUnitsReader(Protocol):
    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[Any] | None = None,
        include_fields: list[str] | None = None,
    ) -> list[dict]: ...


@dataclass(frozen=True)
class UnitCheck:
    """One compared date of one contract service; `found` is None when Autotask has no row on that date."""

    subscription_ids: tuple[str, ...]
    contract_id: int
    service_id: int
    contract_service_id: int | None
    check_date: date
    check_kind: str  # effective_date | month_end
    expected: Decimal
    found: Decimal | None

    @property
    def matches(self) -> bool:
        return self.found is not None and abs(self.found - self.expected) <= _UNITS_TOLERANCE

    def describe(self) -> str:
        found = "no units row" if self.found is None else f"{self.found.normalize():f} units"
        return (
            f"{', '.join(self.subscription_ids) or '?'} (contract {self.contract_id}, service {self.service_id}) on "
            f"{self.check_date} ({self.check_kind.replace('_', ' ')}): expected "
            f"{self.expected.normalize():f} units, Autotask holds {found}"
        )


@dataclass
class VerificationResult:
    month: str
    run_id: str
    contract_services: int = 0
    checks: list[UnitCheck] = field(default_factory=list)

    @property
    def differences(self) -> list[UnitCheck]:
        return [check for check in self.checks if not check.matches]

    @property
    def ok(self) -> bool:
        return not self.differences

    def message(self, limit: int = 20) -> str:
        if self.ok:
            return (
                f"Verified {self.month}: {len(self.checks)} dates of {self.contract_services} contract services "
                "hold the units the plan set."
            )
        lines = [check.describe() for check in self.differences[:limit]]
        more = len(self.differences) - len(lines)
        return (
            f"{len(self.differences)} of {len(self.checks)} checked dates differ from the plan in {self.month}:\n- "
            + "\n- ".join(lines)
            + (f"\n- … and {more} more (table load_verifications)" if more > 0 else "")
        )


def verify_load(reader: AutotaskUnitsReader, warehouse: Warehouse, month: str, run_id: str) -> VerificationResult:
    """Compare Autotask's units with the month's applied adjustments; store the comparison under `run_id`."""
    billing_month = BillingMonth.parse(month)
    result = VerificationResult(month=billing_month.key, run_id=run_id)
    applied = [
        action
        for action in load_plan(warehouse, billing_month.key, statuses=[ActionStatus.APPLIED])
        if action.kind in _ADJUSTING and action.effective_date is not None and action.units_after is not None
    ]
    located = _contract_and_service_of(warehouse, billing_month.key, applied)
    by_pair: dict[tuple[int, int], list[PlanAction]] = defaultdict(list)
    for action in applied:
        pair = located.get(action.action_id)
        if pair is not None:
            by_pair[pair].append(action)
    result.contract_services = len(by_pair)
    if by_pair:
        rows = _units_rows(reader, by_pair, billing_month)
        for pair, actions in sorted(by_pair.items()):
            actions.sort(key=lambda action: action.effective_date or date.min)
            result.checks.extend(_checks_of(pair, actions, rows.get(pair, []), billing_month.last_day))
    _store(warehouse, result)
    if result.ok:
        log.info(result.message())
    else:
        log.warning(result.message())
    return result


def _contract_and_service_of(
    warehouse: Warehouse, month: str, actions: Sequence[PlanAction]
) -> dict[str, tuple[int, int]]:
    """Each applied adjustment's contract and service, as sent (the ledger holds the resolved references of
    records the load created)."""
    ledger = warehouse.table("load_ledger")
    with warehouse.engine.connect() as conn:
        sent = {
            row.action_id: json.loads(row.payload)
            for row in conn.execute(
                sa.select(ledger.c.action_id, ledger.c.payload).where(
                    ledger.c.month == month, ledger.c.state == "confirmed"
                )
            )
        }
    located: dict[str, tuple[int, int]] = {}
    for action in actions:
        body = sent.get(action.action_id, {})
        contract_id = action.contract_id if action.contract_id is not None else body.get("contractID")
        service_id = action.service_id if action.service_id is not None else body.get("serviceID")
        if contract_id is not None and service_id is not None:
            located[action.action_id] = (int(contract_id), int(service_id))
        else:
            log.warning("verify: no contract/service known for applied action %s", action.action_id)
    return located


def _units_rows(
    reader: AutotaskUnitsReader, by_pair: dict[tuple[int, int], list[PlanAction]], month: BillingMonth
) -> dict[tuple[int, int], list[dict]]:
    days = [action.effective_date for actions in by_pair.values() for action in actions if action.effective_date]
    first, last = min([*days, month.last_day]), max([*days, month.last_day])
    overlap = [
        {"op": "lte", "field": "startDate", "value": f"{last.isoformat()}T00:00:00"},
        {"op": "gte", "field": "endDate", "value": f"{first.isoformat()}T00:00:00"},
    ]
    fields = ["id", "contractID", "serviceID", "contractServiceID", "startDate", "endDate", "units"]
    contract_ids = sorted({pair[0] for pair in by_pair})
    rows: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for record in reader.query_in("ContractServiceUnits", "contractID", contract_ids, overlap, fields):
        pair = (int(record["contractID"]), int(record["serviceID"]))
        if pair in by_pair:
            rows[pair].append(record)
    return rows


def _checks_of(
    pair: tuple[int, int], actions: Sequence[PlanAction], rows: Sequence[dict], month_end: date
) -> list[UnitCheck]:
    subscriptions = tuple(sorted({s for action in actions for s in action.subscription_ids}))
    checks = []

    def check(day: date, kind: str, expected: Decimal) -> None:
        row = _row_covering(rows, day)
        found = None if row is None or row.get("units") is None else Decimal(str(row["units"]))
        cs_id = None if row is None or row.get("contractServiceID") is None else int(row["contractServiceID"])
        checks.append(UnitCheck(subscriptions, pair[0], pair[1], cs_id, day, kind, expected, found))

    for action in actions:
        assert action.effective_date is not None and action.units_after is not None
        check(action.effective_date, "effective_date", action.units_after)
    # at the month end: the last change on or before it, else the units before the first later change
    before_end = [action for action in actions if action.effective_date and action.effective_date <= month_end]
    expected = before_end[-1].units_after if before_end else actions[0].units_before
    if expected is not None:
        check(month_end, "month_end", expected)
    return checks


def _row_covering(rows: Sequence[dict], day: date) -> dict | None:
    for row in rows:
        start, end = api_date(row.get("startDate")), api_date(row.get("endDate"))
        if start is not None and start <= day and (end is None or day <= end):
            return row
    return None


def _store(warehouse: Warehouse, result: VerificationResult) -> None:
    """Replace the run's stored comparison (verifying again after a fix gives the newer answer)."""
    table = warehouse.table("load_verifications")
    now = utcnow()
    rows = {}
    for check in result.checks:
        rows[(check.contract_id, check.service_id, check.check_date, check.check_kind)] = {
            "run_id": result.run_id,
            "month": result.month,
            "contract_id": check.contract_id,
            "service_id": check.service_id,
            "check_date": check.check_date,
            "check_kind": check.check_kind,
            "contract_service_id": check.contract_service_id,
            "subscription_ids": json.dumps(list(check.subscription_ids)),
            "expected_units": check.expected,
            "found_units": check.found,
            "matches": int(check.matches),
            "checked_at": now,
        }
    with warehouse.begin() as conn:
        conn.execute(table.delete().where(table.c.run_id == result.run_id))
        if rows:
            conn.execute(table.insert(), list(rows.values()))
