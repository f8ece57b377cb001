"""Undo an applied run: plan the opposite adjustments of every adjustment it applied, for a person to approve.

Autotask can neither delete an adjustment nor hold two adjustments of one contract service on one day
("Attempt to insert duplicate data into contract_service_period"), so the opposite change cannot go on the
original's own date: it goes on the nearest day that holds no adjustment of this run -- after an increase,
before a decrease (after it when the day before falls before the run's first change of that contract
service: never into the month before) -- and changes landing on one day are netted into one. Every other day
gets the units (and the unit cost, where the original changed it) of before the load back; the few days in
between hold at least the units of before the load or those the load left, so none goes below zero. Every
reversal row says so in its reason.

A contract the run extended ends where it ended before again (`extend_contract` back to its old end date,
sent before the opposite adjustments, as the loader sends extensions): the units the extension carried on into
its days go with them, so every contract service the run touched holds, on every day, the units of before the
run. Opposite adjustments that would fall in the removed days are not written (those days go). The extension
stays, flagged for a person, when another run's approved or applied lines use its days, or when the run changed
the units on the old last day itself (its opposite change would fall after the old end).

Nothing is deleted and nothing else is undone: companies, services, contracts and contract services the run
created stay; the reasons say that too.

The reversal rows are ordinary plan rows of the month (status proposed, run_id = the reversal run), with
their own idempotency keys (their own days), loaded by `include.loader.load_plan_actions` like any other
approved row: recorded in the ledger, written once, verified by reading the units back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal

import sqlalchemy as sa

from include.models import BillingMonth
from include.plan import ADJUSTMENT_KINDS, ActionKind, ActionStatus, PlanAction, PlanSummary, load_plan
from include.verify import AutotaskUnitsReader, VerificationResult, _checks_of, _contract_ends, _units_rows
from include.verify import _store as _store_verification
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

_ADJUSTING = tuple(ADJUSTMENT_KINDS)
_NOT_UNDONE = (
    ActionKind.CREATE_COMPANY,
    ActionKind.CREATE_SERVICE,
    ActionKind.CREATE_CONTRACT,
    ActionKind.CREATE_CONTRACT_SERVICE,
)


class ReversalError(ValueError):
    """The run cannot be reversed as asked (nothing applied, or already reversed by another run)."""


@dataclass(frozen=True)
class _Original:
    """An applied adjustment as Autotask received it (the ledger keeps the resolved references)."""

    action: PlanAction
    contract_id: int
    service_id: int
    contract_service_id: int | None

    @property
    def day(self) -> date:
        assert self.action.effective_date is not None
        return self.action.effective_date

    @property
    def change(self) -> Decimal:
        return self.action.unit_change or Decimal(0)


def plan_reversal(warehouse: Warehouse, month: str, applied_run_id: str, reversal_run_id: str) -> PlanSummary:
    """Write the reversal of `applied_run_id`'s applied adjustments in `month` as proposed plan rows of
    `reversal_run_id` (see the module docstring). Planning the same reversal again replaces its proposed rows;
    a run another reversal already covers is refused."""
    started = time.monotonic()
    month_key = BillingMonth.parse(month).key
    summary = PlanSummary(run_id=reversal_run_id, month=month_key)
    if reversal_run_id == applied_run_id:
        raise ReversalError("the reversal needs a run id of its own")
    plan = load_plan(warehouse, month_key)
    run_of = _runs_of(warehouse, month_key)
    originals = [
        action
        for action in plan
        if action.kind in _ADJUSTING
        and action.status == ActionStatus.APPLIED
        and action.effective_date is not None
        and run_of.get(action.action_id) == applied_run_id
    ]
    if not originals:
        raise ReversalError(f"run {applied_run_id} applied no adjustment in {month_key}: nothing to reverse")
    original_ids = {action.action_id for action in originals}
    earlier = [
        action
        for action in plan
        if original_ids.intersection(action.depends_on)
        and action.kind in _ADJUSTING
        and action.status != ActionStatus.PROPOSED
        and run_of.get(action.action_id) not in (applied_run_id, reversal_run_id)
    ]
    if earlier:
        runs = sorted({str(run_of.get(action.action_id)) for action in earlier})
        raise ReversalError(
            f"run {applied_run_id} of {month_key} is already reversed by run {', '.join(runs)} "
            f"({len(earlier)} reversal rows approved or loaded): plan nothing twice"
        )
    not_undone = Counter(
        str(action.kind)
        for action in plan
        if action.kind in _NOT_UNDONE
        and action.status == ActionStatus.APPLIED
        and run_of.get(action.action_id) == applied_run_id
    )
    kept = (
        "Not undone: " + ", ".join(f"{count} {kind}" for kind, count in sorted(not_undone.items()))
        if not_undone
        else "Nothing else of the run is undone"
    ) + " (records the run created stay; nothing is ever deleted)."

    sent = _sent_references(warehouse, month_key, original_ids)
    by_target: dict[str, list[_Original]] = defaultdict(list)
    for action in originals:
        located = _locate(action, sent.get(action.action_id, {}))
        if located is None:
            log.warning("reversal: no contract and service known for applied action %s; left out", action.action_id)
            continue
        by_target[action.target].append(located)
    reversals = [
        reversal
        for target in sorted(by_target)
        for reversal in _reverse_chain(month_key, applied_run_id, by_target[target], kept)
    ]
    extended = [
        action
        for action in plan
        if action.kind is ActionKind.EXTEND_CONTRACT
        and action.status == ActionStatus.APPLIED
        and run_of.get(action.action_id) == applied_run_id
        and action.contract_id is not None
        and action.end_date_before is not None
        and action.end_date_after is not None
        and action.end_date_after > action.end_date_before
    ]
    original_days = {action.action_id: action.effective_date for action in originals}
    reversals = _shorten_extensions(
        warehouse, month_key, applied_run_id, reversal_run_id, extended, reversals, original_days
    )
    stored = _store(warehouse, month_key, reversal_run_id, reversals, plan)
    summary.actions = len(stored)
    summary.by_kind = dict(sorted(Counter(str(action.kind) for action in stored).items()))
    summary.by_status = dict(sorted(Counter(str(action.status) for action in stored).items()))
    summary.contract_services = len(by_target)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info(
        "reversal %s of run %s in %s: %d adjustments of %d contract services planned (%s)",
        reversal_run_id,
        applied_run_id,
        month_key,
        summary.actions,
        summary.contract_services,
        kept,
    )
    return summary


def _reverse_chain(month: str, applied_run_id: str, chain: list[_Original], kept: str) -> list[PlanAction]:
    """The reversal of one contract service's applied adjustments (see the module docstring for the days).

    An increase is undone on the first free day after it, a decrease on the last free day before it (when that
    day is after the run's first change of the contract service, else after it): so the days in between hold
    at least the units of before the load or those the load left (Autotask refuses units below zero), and
    every other day exactly those of before the load. Reversals that add units are sent first
    (each one that removes units depends on them): no intermediate state goes below the final one."""
    chain.sort(key=lambda original: (original.day, original.action.action_id))
    occupied = {original.day for original in chain}
    # the units before the load on each original's day: its units_before less the run's earlier changes
    base: list[tuple[date, Decimal]] = []
    so_far = Decimal(0)
    for original in chain:
        if original.action.units_before is not None:
            base.append((original.day, original.action.units_before - so_far))
        so_far += original.change

    def free_day(day: date, step: int) -> date:
        day += timedelta(days=step)
        while day in occupied:
            day += timedelta(days=step)
        return day

    groups: dict[date, list[_Original]] = defaultdict(list)
    cost_days: set[date] = set()
    first_day = chain[0].day
    for original in chain:
        before = free_day(original.day, -1)
        # a decrease goes back the day before -- unless that day falls before the run's first change of this
        # contract service (another month, or before a contract the run created): then the day after, where
        # the days in between hold what the load left, which Autotask accepted
        if original.change < 0 and before > first_day:
            groups[before].append(original)
        elif original.change != 0:
            groups[free_day(original.day, +1)].append(original)
        if original.action.unit_cost_after is not None or original.action.unit_price_after is not None:
            # a cost or price holds from its day on: it goes back after the original's day, whatever the units do
            cost_days.add(free_day(original.day, +1))
            groups.setdefault(free_day(original.day, +1), [])
    # the cost before the run's first cost change holds again wherever the run changed the cost
    cost_changes = [original for original in chain if original.action.unit_cost_after is not None]
    cost_before_load = cost_changes[0].action.unit_cost_before if cost_changes else None
    # the same for the customer's unit price
    price_changes = [original for original in chain if original.action.unit_price_after is not None]
    price_before_load = price_changes[0].action.unit_price_before if price_changes else None
    changes = {day: -sum((original.change for original in group), Decimal(0)) for day, group in groups.items()}

    sent: dict[date, Decimal] = {}  # the reversal's changes sent so far, in the order the loader sends them

    def units_on(day: date) -> Decimal | None:
        """The units on `day` once the run and the reversal's changes sent before this one are applied: what
        Autotask holds when the loader sends the next one (adding ones first, each in date order), so a row's
        units before and after are what its write finds and leaves, and a load resumed after a crash tells an
        applied row from one never sent by reading the units on its day."""
        known = [units for start, units in base if start <= day] or [units for _, units in base[:1]]
        if not known:
            return None
        applied = sum((original.change for original in chain if original.day <= day), Decimal(0))
        undone = sum((change for start, change in sent.items() if start <= day), Decimal(0))
        return known[-1] + applied + undone

    adding: list[str] = []
    reversals = []
    for day in sorted(groups, key=lambda day: (changes[day] < 0, day)):  # reversals adding units first
        group = groups[day]
        change = changes[day]
        restores_cost = day in cost_days and cost_before_load is not None
        restores_price = day in cost_days and price_before_load is not None
        if change == 0 and not restores_cost and not restores_price:
            continue  # nothing to write on this day
        latest = max(chain, key=lambda original: (original.day <= day, original.day))
        units_before = units_on(day)
        units_after = None if units_before is None else units_before + change
        sent[day] = change
        undone_days = ", ".join(original.day.isoformat() for original in group) or "-"
        payload: dict[str, object] = {
            "contractID": latest.contract_id,
            "serviceID": latest.service_id,
            "contractServiceID": latest.contract_service_id,
            "effectiveDate": f"{day.isoformat()}T00:00:00",
            "unitChange": _number(change),
        }
        if restores_cost:
            payload["adjustedUnitCost"] = _number(cost_before_load)
        if restores_price:
            payload["adjustedUnitPrice"] = _number(price_before_load)
        reason = (
            f"Reverses run {applied_run_id}: {_signed(change)} units on {day}, undoing the change of "
            f"{undone_days}. Autotask cannot delete an adjustment nor take a second one on the same day, so the "
            "opposite change goes on the nearest free day (before a decrease, after an increase); on the "
            "days in between the units stay at least those of before the load, every other day gets them back."
        )
        if restores_cost:
            reason += f" The unit cost goes back to {cost_before_load.normalize():f}."
        elif day in cost_days and cost_changes:
            reason += " The run set a unit cost where none was known before: that cost stays."
        if restores_price:
            reason += f" The unit price goes back to {price_before_load.normalize():f}."
        undone = [original.action.action_id for original in group]
        action = PlanAction(
            kind=ActionKind.ADJUST_UNITS
            if change != 0
            else ActionKind.CHANGE_COST
            if restores_cost
            else ActionKind.CHANGE_PRICE,
            month=month,
            target=latest.action.target,
            status=ActionStatus.PROPOSED,
            reason=f"{reason} {kept}",
            effective_date=day,
            account_id=latest.action.account_id,
            subscription_ids=tuple(sorted({s for original in chain for s in original.action.subscription_ids})),
            product_id=latest.action.product_id,
            contract_id=latest.contract_id,
            service_id=latest.service_id,
            contract_service_id=latest.contract_service_id,
            # a contract service the run created: named by its creating row, as the originals name it (the
            # plan's checks key adjustment slots by it)
            contract_service_action_id=None
            if latest.contract_service_id is not None
            else latest.action.contract_service_action_id,
            units_before=units_before,
            units_after=units_after,
            unit_change=change,
            unit_cost_before=latest.action.unit_cost_after if restores_cost else None,
            unit_cost_after=cost_before_load if restores_cost else None,
            unit_price_before=latest.action.unit_price_after if restores_price else None,
            unit_price_after=price_before_load if restores_price else None,
            currency=latest.action.currency,
            payload=payload,
            # what it undoes must be applied first; a reversal removing units waits for those adding them
            depends_on=tuple(sorted({*undone, *(adding if change < 0 else [])}))
            or tuple(sorted(original.action.action_id for original in chain)),
        )
        if change >= 0:
            adding.append(action.action_id)
        reversals.append(action)
    return sorted(reversals, key=lambda action: action.effective_date or date.min)


def _shorten_extensions(
    warehouse: Warehouse,
    month: str,
    applied_run_id: str,
    reversal_run_id: str,
    extended: Sequence[PlanAction],
    reversals: list[PlanAction],
    original_days: dict[str, date | None],
) -> list[PlanAction]:
    """Each contract the run extended ends where it ended before: an `extend_contract` row back to the old end
    (sent before the adjustments), and the opposite adjustments that would fall in the removed days left out (see
    the module docstring). Returns the reversal's rows."""
    if not extended:
        return reversals
    ids = sorted({int(action.contract_id) for action in extended if action.contract_id is not None})
    table = warehouse.table("plan_actions")
    with warehouse.engine.connect() as conn:
        others = conn.execute(
            sa.select(table.c.contract_id, table.c.kind, table.c.effective_date, table.c.run_id, table.c.month).where(
                table.c.contract_id.in_(ids),
                table.c.status.in_([str(ActionStatus.APPROVED), str(ActionStatus.APPLIED)]),
                table.c.run_id.notin_([applied_run_id, reversal_run_id]),
                table.c.kind.in_([str(kind) for kind in (*_ADJUSTING, ActionKind.EXTEND_CONTRACT)]),
            )
        ).all()
    kept = list(reversals)
    rows = []
    for extension in sorted(extended, key=lambda action: int(action.contract_id or 0)):
        contract_id, old_end = int(extension.contract_id or 0), extension.end_date_before
        assert old_end is not None and extension.end_date_after is not None
        users = sorted(
            {
                f"{row.run_id} ({row.month})"
                for row in others
                if int(row.contract_id) == contract_id
                and (row.kind == ActionKind.EXTEND_CONTRACT or _day(row.effective_date) > old_end)
            }
        )
        on_contract = [row for row in kept if row.contract_id == contract_id]
        gone = [row for row in on_contract if row.effective_date is not None and row.effective_date > old_end]
        # an original on or before the old end undone after it: its opposite change cannot be written once the
        # contract ends there again
        undone_late = [
            row
            for row in gone
            if any((original_days.get(dependency) or date.max) <= old_end for dependency in row.depends_on)
        ]
        status, why = ActionStatus.PROPOSED, ""
        if users:
            status = ActionStatus.FLAGGED
            why = (
                f" Run(s) {', '.join(users)} use the extended days (approved or applied lines on this contract after "
                f"{old_end}): shortening the contract would cut them; a person decides."
            )
        elif undone_late:
            status = ActionStatus.BLOCKED
            why = (
                f" The run changed the units on or before the old end {old_end} and its opposite change falls after "
                "it: the contract keeps its extension; set the units of the days after the old end to 0 by hand."
            )
        else:
            dropped = {row.action_id for row in gone}
            kept = [
                replace(row, depends_on=tuple(d for d in row.depends_on if d not in dropped), known_id=None)
                if dropped.intersection(row.depends_on)
                else row
                for row in kept
                if row.action_id not in dropped
            ]
        reason = (
            f"Reverses run {applied_run_id}'s extension of contract {contract_id} ({old_end} -> "
            f"{extension.end_date_after}): the contract ends on {old_end} again, so the days after it hold no "
            "units, as before the run."
            + (
                " Its opposite adjustments in those days are not written (the days go)."
                if status is ActionStatus.PROPOSED and gone
                else ""
            )
            + why
        )
        if status is ActionStatus.BLOCKED:
            reason = "blocked: " + reason
        rows.append(
            PlanAction(
                kind=ActionKind.EXTEND_CONTRACT,
                month=month,
                target=f"contract:C{contract_id}",
                status=status,
                reason=reason,
                # the first day it removes: a slot of its own, not the extension's
                effective_date=old_end + timedelta(days=1),
                account_id=extension.account_id,
                subscription_ids=extension.subscription_ids,
                contract_id=contract_id,
                end_date_before=extension.end_date_after,
                end_date_after=old_end,
                payload={"id": contract_id, "endDate": f"{old_end.isoformat()}T00:00:00"},
                charge_ids=extension.charge_ids,
                depends_on=(extension.action_id,),
            )
        )
    return rows + kept


def _day(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _store(
    warehouse: Warehouse, month: str, run_id: str, reversals: Sequence[PlanAction], plan: Sequence[PlanAction]
) -> list[PlanAction]:
    """Insert the reversal's rows, replacing its own proposed rows of an earlier planning. A row whose Autotask
    slot (contract service and day) another row of the month already takes is stored flagged: a person decides."""
    table = warehouse.table("plan_actions")
    now = utcnow()
    with warehouse.begin() as conn:
        conn.execute(
            table.delete().where(
                table.c.month == month, table.c.run_id == run_id, table.c.status == str(ActionStatus.PROPOSED)
            )
        )
        remaining = conn.execute(
            sa.select(table.c.action_id, table.c.idempotency_key, table.c.status).where(table.c.month == month)
        ).all()
        taken_ids = {row.action_id for row in remaining}
        taken_keys = {row.idempotency_key: (row.action_id, row.status) for row in remaining}
        stored, rows = [], []
        for action in reversals:
            if action.action_id in taken_ids:
                continue  # the same reversal row, already decided
            if action.idempotency_key in taken_keys:
                other_id, other_status = taken_keys[action.idempotency_key]
                action = action.held(
                    ActionStatus.FLAGGED, f"writes the same Autotask slot as {other_status} action {other_id}"
                )
            stored.append(action)
            rows.append(action.to_row(run_id, len(rows) + 1, now))
        if rows:
            warehouse.insert(conn, "plan_actions", rows)
    return stored


def _runs_of(warehouse: Warehouse, month: str) -> dict[str, str]:
    """action id -> run id of the month's plan rows (PlanAction does not carry its run)."""
    table = warehouse.table("plan_actions")
    with warehouse.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.action_id, table.c.run_id).where(table.c.month == month)).all()
    return {row.action_id: row.run_id for row in rows}


def _sent_references(warehouse: Warehouse, month: str, action_ids: set[str]) -> dict[str, dict]:
    """The bodies Autotask confirmed for these actions (references resolved when the load created them)."""
    ledger = warehouse.table("load_ledger")
    with warehouse.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.action_id, ledger.c.payload).where(
                ledger.c.month == month, ledger.c.state == "confirmed"
            )
        ).all()
    return {row.action_id: json.loads(row.payload) for row in rows if row.action_id in action_ids}


def _locate(action: PlanAction, body: dict) -> _Original | None:
    contract_id = action.contract_id if action.contract_id is not None else body.get("contractID")
    service_id = action.service_id if action.service_id is not None else body.get("serviceID")
    cs_id = action.contract_service_id if action.contract_service_id is not None else body.get("contractServiceID")
    if contract_id is None or service_id is None:
        return None
    return _Original(action, int(contract_id), int(service_id), None if cs_id is None else int(cs_id))


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _signed(value: Decimal) -> str:
    return f"{'+' if value > 0 else ''}{value.normalize():f}"


def verify_reversal(reader: AutotaskUnitsReader, warehouse: Warehouse, month: str, run_id: str) -> VerificationResult:
    """Read the units back after a reversal load: each applied reversal row's day must hold its units_after, and
    the month end the units of the last one. Stored under the reversal's run id in `load_verifications`.

    Not `verify_load`: that one compares every applied adjustment of the month, and the reversed originals'
    days no longer hold what the original set (that is the point of the reversal)."""
    month_key = BillingMonth.parse(month).key
    result = VerificationResult(month=month_key, run_id=run_id)
    applied = [
        action
        for action in load_plan(warehouse, month_key, run_id, statuses=[ActionStatus.APPLIED])
        if action.kind in _ADJUSTING and action.effective_date is not None and action.units_after is not None
    ]
    by_pair: dict[tuple[int, int], list[PlanAction]] = defaultdict(list)
    for action in applied:
        if action.contract_id is not None and action.service_id is not None:
            by_pair[(action.contract_id, action.service_id)].append(action)
    result.contract_services = len(by_pair)
    if by_pair:
        billing_month = BillingMonth.parse(month_key)
        rows = _units_rows(reader, by_pair, billing_month)
        month_plan = load_plan(warehouse, month_key)
        originals = {action.action_id: action for action in month_plan}
        applied_in_month = [action for action in month_plan if action.status is ActionStatus.APPLIED]
        contract_ends = _contract_ends(warehouse, month_key, applied_in_month, by_pair)
        for pair, actions in sorted(by_pair.items()):
            actions = _finally_held(actions)
            actions.sort(key=lambda action: action.effective_date or date.min)
            # a contract that ends inside the month holds no units after its end: check its last day instead
            last_day = min(billing_month.last_day, contract_ends.get(pair[0]) or billing_month.last_day)
            checks = _checks_of(pair, actions, rows.get(pair, []), last_day, billing_month.last_day)
            # the month end holds the units of before the load: the last undone original's units before it,
            # less the run's earlier changes (not the units of the last reversal day: see _reverse_chain)
            own = {action.action_id for action in actions}
            undone_ids = {key for action in actions for key in action.depends_on if key in originals} - own
            undone = sorted(
                (originals[key] for key in undone_ids if originals[key].kind in _ADJUSTING),
                key=lambda original: original.effective_date or date.min,
            )
            if undone and undone[-1].units_before is not None:
                earlier = sum((original.unit_change or Decimal(0) for original in undone[:-1]), Decimal(0))
                checks = [
                    replace(check, expected=undone[-1].units_before - earlier)
                    if check.check_kind in ("month_end", "contract_end")
                    else check
                    for check in checks
                ]
            result.checks.extend(checks)
    _store_verification(warehouse, result)
    (log.info if result.ok else log.warning)("reversal %s: %s", run_id, result.message())
    return result


def _finally_held(actions: list[PlanAction]) -> list[PlanAction]:
    """One contract service's reversal rows with the units each day holds once all of them are applied: a row's
    units after are those its write left (`_reverse_chain`), plus the changes sent after it on or before its day
    (the loader sends the rows adding units first, then those removing them, each kind in date order)."""
    in_order = sorted(actions, key=lambda action: ((action.unit_change or 0) < 0, action.effective_date or date.min))
    held = []
    for position, action in enumerate(in_order):
        if action.units_after is None or action.effective_date is None:
            held.append(action)
            continue
        later = sum(
            (
                other.unit_change or Decimal(0)
                for other in in_order[position + 1 :]
                if other.effective_date is not None and other.effective_date <= action.effective_date
            ),
            Decimal(0),
        )
        held.append(replace(action, units_after=action.units_after + later) if later else action)
    return held


def describe_reversal(rows: Sequence[PlanAction], month: str, applied_run_id: str, limit: int = 15) -> str:
    """The approval body (Markdown) for a finance person: what the reversal writes, and what it leaves."""
    if not rows:
        return f"Nothing to reverse for run {applied_run_id} of {month}: no proposed reversal rows."
    removed = sum((-(row.unit_change or 0) for row in rows if (row.unit_change or 0) < 0), Decimal(0))
    added = sum(((row.unit_change or 0) for row in rows if (row.unit_change or 0) > 0), Decimal(0))
    services = len({row.target for row in rows})
    lines = [
        f"**Reverse run {applied_run_id} of {month}**: {len(rows)} opposite adjustments on {services} contract "
        f"services ({removed.normalize():f} units removed, {added.normalize():f} units added back).",
        "",
        "Autotask cannot delete an adjustment nor take two on one day: each opposite change goes on the nearest "
        "free day (after an increase, before a decrease). Every other day gets the units of before the load; "
        "the days in between keep at least them. Companies, contracts, services and contract extensions the run "
        "created stay; nothing is deleted.",
        "",
        "| Subscriptions | Day | Unit change | Units after |",
        "|---|---|---|---|",
    ]
    for row in rows[:limit]:
        units_after = "" if row.units_after is None else f"{row.units_after.normalize():f}"
        lines.append(
            f"| {', '.join(row.subscription_ids) or row.target} | {row.effective_date} | "
            f"{_signed(row.unit_change or Decimal(0))} | {units_after} |"
        )
    if len(rows) > limit:
        lines.append(f"| … and {len(rows) - limit} more | | | |")
    return "\n".join(lines)
