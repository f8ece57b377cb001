"""Step 7: read Autotask back after a load and compare the units and the money with what the plan set.

For every contract service an applied adjustment touched, the ContractServiceUnits row covering each
effective date must hold the plan's `units_after` for that date, and the row covering the month end the
units of the last change on or before it. A contract that ends inside the month (a term the BSS did not renew,
and the plan did not extend) has no units row after its end: there the last day the load was meant to make
true is the contract's end (as the load left it: the applied extension, the created contract's end, else the
snapshot's), checked as `contract_end` instead of `month_end`. Adjustments cannot be read back
(autotask-api.md §6), so the units are the proof. The money too: where the plan set a unit cost or unit price (a
new contract service's, a cost or price change's), the same rows must hold it from that date on, to the month end. A
price or cost changed in Autotask behind the loader's back is a difference naming the contract service. (A figure the
plan never set, such as an existing contract service's price under the `keep` policy, is not the load's to check.)
The comparison is stored per run in `load_verifications`; the differences are returned.
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
from include.plan import ADJUSTMENT_KINDS, ActionKind, ActionStatus, PlanAction, load_plan
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

_ADJUSTING = tuple(ADJUSTMENT_KINDS)
_UNITS_TOLERANCE = Decimal("0.0001")
_MONEY_TOLERANCE = Decimal("0.00005")


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
    check_kind: str  # effective_date | month_end | contract_end (the contract ends before the month does)
    expected: Decimal
    found: Decimal | None
    # the unit cost and price the plan set and Autotask's on that date (expected None: the plan set none)
    expected_cost: Decimal | None = None
    found_cost: Decimal | None = None
    expected_price: Decimal | None = None
    found_price: Decimal | None = None
    currency: str | None = None

    @property
    def units_match(self) -> bool:
        return self.found is not None and abs(self.found - self.expected) <= _UNITS_TOLERANCE

    @property
    def cost_matches(self) -> bool:
        return _money_matches(self.expected_cost, self.found_cost)

    @property
    def price_matches(self) -> bool:
        return _money_matches(self.expected_price, self.found_price)

    @property
    def matches(self) -> bool:
        return self.units_match and self.cost_matches and self.price_matches

    def describe(self) -> str:
        holder = f"contract service {self.contract_service_id}, " if self.contract_service_id is not None else ""
        where = (
            f"{', '.join(self.subscription_ids) or '?'} ({holder}contract {self.contract_id}, service "
            f"{self.service_id}) on {self.check_date} ({self.check_kind.replace('_', ' ')})"
        )
        currency = f" {self.currency}" if self.currency else ""
        differences = []
        if not self.units_match:
            found = "no units row" if self.found is None else f"{self.found.normalize():f} units"
            differences.append(f"expected {self.expected.normalize():f} units, Autotask holds {found}")
        for name, expected, found, ok in (
            ("unit cost", self.expected_cost, self.found_cost, self.cost_matches),
            ("unit price", self.expected_price, self.found_price, self.price_matches),
        ):
            if not ok:
                held = "none" if found is None else f"{found:f}{currency}"
                differences.append(f"expected {name} {expected:f}{currency}, Autotask holds {held}")
        if not differences:
            differences.append(f"holds the expected {self.expected.normalize():f} units")
        return f"{where}: " + "; ".join(differences)


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
                "hold the units, unit costs and unit prices the plan set."
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
    applied_plan = load_plan(warehouse, billing_month.key, statuses=[ActionStatus.APPLIED])
    applied = [
        action
        for action in applied_plan
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
        contract_ends = _contract_ends(warehouse, billing_month.key, applied_plan, by_pair)
        created_by_id = {
            action.action_id: action for action in applied_plan if action.kind is ActionKind.CREATE_CONTRACT_SERVICE
        }
        for pair, actions in sorted(by_pair.items()):
            actions.sort(key=lambda action: action.effective_date or date.min)
            last_day = billing_month.last_day
            ends = contract_ends.get(pair[0])
            if ends is not None and ends < last_day:
                last_day = ends
            created = next(
                (
                    created_by_id[action.contract_service_action_id]
                    for action in actions
                    if action.contract_service_action_id in created_by_id
                ),
                None,
            )
            result.checks.extend(
                _checks_of(pair, actions, rows.get(pair, []), last_day, billing_month.last_day, created)
            )
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


def _contract_ends(
    warehouse: Warehouse,
    month: str,
    applied_plan: Sequence[PlanAction],
    by_pair: dict[tuple[int, int], list[PlanAction]],
) -> dict[int, date]:
    """The end date each verified contract has after the load: the latest applied extension, else the end a
    created contract was given, else the end the plan's snapshot read (the contract as it was compared)."""
    ends: dict[int, date] = {}
    contract_ids = sorted({pair[0] for pair in by_pair})
    plan_runs = _plan_runs(warehouse, month)
    if contract_ids and plan_runs:
        contracts = warehouse.table("at_contracts")
        with warehouse.engine.connect() as conn:
            for row in conn.execute(
                sa.select(contracts.c.contract_id, contracts.c.end_date).where(
                    contracts.c.run_id.in_(plan_runs), contracts.c.contract_id.in_(contract_ids)
                )
            ):
                end = api_date(row.end_date)
                if end is not None:
                    ends[int(row.contract_id)] = max(end, ends.get(int(row.contract_id), end))
    by_id = {action.action_id: action for action in applied_plan}
    for (contract_id, _service_id), actions in by_pair.items():
        for action in actions:
            created = by_id.get(action.contract_action_id or "")
            end = api_date(created.payload.get("endDate")) if created is not None else None
            if end is not None:
                ends[contract_id] = end
    for action in applied_plan:
        if action.kind is ActionKind.EXTEND_CONTRACT and action.contract_id is not None and action.end_date_after:
            ends[action.contract_id] = max(action.end_date_after, ends.get(action.contract_id, action.end_date_after))
    for action in applied_plan:  # a reversal took an extension back: the contract ends where it ended before
        shortened = action.kind is ActionKind.EXTEND_CONTRACT and action.contract_id is not None
        if (
            shortened
            and action.end_date_after
            and action.end_date_before
            and action.end_date_after < action.end_date_before
        ):
            ends[action.contract_id] = min(action.end_date_after, ends[action.contract_id])
    return ends


def _plan_runs(warehouse: Warehouse, month: str) -> list[str]:
    table = warehouse.table("plan_actions")
    with warehouse.engine.connect() as conn:
        return [row.run_id for row in conn.execute(sa.select(table.c.run_id).where(table.c.month == month).distinct())]


def _units_rows(
    reader: AutotaskUnitsReader, by_pair: dict[tuple[int, int], list[PlanAction]], month: BillingMonth
) -> dict[tuple[int, int], list[dict]]:
    days = [action.effective_date for actions in by_pair.values() for action in actions if action.effective_date]
    first, last = min([*days, month.last_day]), max([*days, month.last_day])
    overlap = [
        {"op": "lte", "field": "startDate", "value": f"{last.isoformat()}T00:00:00"},
        {"op": "gte", "field": "endDate", "value": f"{first.isoformat()}T00:00:00"},
    ]
    fields = ["id", "contractID", "serviceID", "contractServiceID", "startDate", "endDate", "units", "cost", "price"]
    contract_ids = sorted({pair[0] for pair in by_pair})
    rows: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for record in reader.query_in("ContractServiceUnits", "contractID", contract_ids, overlap, fields):
        pair = (int(record["contractID"]), int(record["serviceID"]))
        if pair in by_pair:
            rows[pair].append(record)
    return rows


def _checks_of(
    pair: tuple[int, int],
    actions: Sequence[PlanAction],
    rows: Sequence[dict],
    last_day: date,
    month_end: date,
    created: PlanAction | None = None,
) -> list[UnitCheck]:
    """`last_day` is the month end, or the contract's end when it comes first (`month_end` tells them apart).
    `created`: the applied action that created the contract service (its unit cost and price hold from the start)."""
    subscriptions = tuple(sorted({s for action in actions for s in action.subscription_ids}))
    checks = []
    # the money the plan set, in force from each action on (a new contract service's from its creation)
    cost = created.unit_cost_after if created is not None else None
    price = created.unit_price_after if created is not None else None
    currency = next((action.currency for action in [created, *actions] if action is not None and action.currency), None)

    def check(day: date, kind: str, expected: Decimal) -> None:
        row = _row_covering(rows, day)
        found = None if row is None or row.get("units") is None else Decimal(str(row["units"]))
        cs_id = None if row is None or row.get("contractServiceID") is None else int(row["contractServiceID"])
        checks.append(
            UnitCheck(
                subscriptions,
                pair[0],
                pair[1],
                cs_id,
                day,
                kind,
                expected,
                found,
                expected_cost=cost,
                found_cost=_figure(row, "cost") if cost is not None else None,
                expected_price=price,
                found_price=_figure(row, "price") if price is not None else None,
                currency=currency,
            )
        )

    for action in actions:
        assert action.effective_date is not None and action.units_after is not None
        cost = action.unit_cost_after if action.unit_cost_after is not None else cost
        price = action.unit_price_after if action.unit_price_after is not None else price
        check(action.effective_date, "effective_date", action.units_after)
    # on the month's last billed day: the last change on or before it, else the units before the first later one
    before_end = [action for action in actions if action.effective_date and action.effective_date <= last_day]
    expected = before_end[-1].units_after if before_end else actions[0].units_before
    if expected is not None:
        check(last_day, "month_end" if last_day == month_end else "contract_end", expected)
    return checks


def _figure(row: dict | None, name: str) -> Decimal | None:
    return None if row is None or row.get(name) is None else Decimal(str(row[name]))


def _money_matches(expected: Decimal | None, found: Decimal | None) -> bool:
    return expected is None or (found is not None and abs(found - expected) <= _MONEY_TOLERANCE)


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
            "expected_cost": check.expected_cost,
            "found_cost": check.found_cost,
            "expected_price": check.expected_price,
            "found_price": check.found_price,
            "currency": check.currency,
            "matches": int(check.matches),
            "checked_at": now,
        }
    with warehouse.begin() as conn:
        conn.execute(table.delete().where(table.c.run_id == result.run_id))
        if rows:
            conn.execute(table.insert(), list(rows.values()))
