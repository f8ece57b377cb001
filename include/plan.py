"""Step 5's output: the change plan, one typed action per change Autotask needs, stored for review.

Identity. `idempotency_key` names the slot in Autotask an action writes: (month, kind family, target,
effective date); the two adjustment kinds share the family `adjust`, because Autotask refuses a second
adjustment of one contract service on one date. `action_id` hashes the key with the action's content
(values, references, inputs, not its status), so the same inputs always give the same ids.

Statuses say what a reviewer can do: proposed (loads on approval), flagged (loads when a person approves the
flagged lines), needs-mapping (waits for a mapping decision), blocked (never loads as it stands: Autotask would
refuse it or it would write a wrong figure; the reason says what a person can do), excluded; the loader then
moves approved rows to applied or failed.

Re-running a month (`replace_plan`). Machine-owned rows (proposed / flagged / needs-mapping / blocked) of the month
are replaced by the new run's rows: they were computed from an older comparison and nobody acted on them. What an
earlier run's review shows of them is kept first (`include.runs.supersede_open_lines`): a run is a snapshot.
Rows a person or the loader owns (approved / excluded / applied / failed) are never touched:
- a new action with the same action_id as such a row is the same decision; it is not inserted again;
- a new action with the same idempotency_key but other content writes the same Autotask slot as an
  already decided action; it is inserted as `flagged` (a reviewer decides), never silently proposed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from operator import attrgetter
from typing import Any, NamedTuple

import sqlalchemy as sa

from include.warehouse import Warehouse, utcnow

# How a moved subscription's plan lines say so: reconciliation writes it into their reason, and the loader reads
# it (the new contract under the new customer may share its number with the old customer's contract).
MOVED_SUBSCRIPTION = "subscription moved to another customer"


@dataclass(frozen=True)
class PlanScope:
    """The part of a month a review decision re-plans: the lines of these customers (BSS accounts), and the catalogue
    services of these products. Linking and reconciling a scope gives the same lines for it as the whole month
    would (`tests/plugins/test_billing_review_domain.py` compares them), in a fraction of the time."""

    accounts: frozenset[str]
    products: frozenset[str] = frozenset()


def sql_in(column: str, values: Iterable[Any], name: str) -> tuple[str, dict[str, Any]]:
    """`column IN (:name0, …)` and its parameters (`1 = 0` for no values): a scope's condition in SQL text."""
    params = {f"{name}{index}": value for index, value in enumerate(sorted(set(values), key=str))}
    if not params:
        return "1 = 0", {}
    return f"{column} IN ({', '.join(':' + key for key in params)})", params


class ActionKind(StrEnum):
    CREATE_COMPANY = "create_company"
    CREATE_SERVICE = "create_service"
    CREATE_CONTRACT = "create_contract"
    CREATE_CONTRACT_SERVICE = "create_contract_service"
    EXTEND_CONTRACT = "extend_contract"
    ADJUST_UNITS = "adjust_units"
    CHANGE_COST = "change_cost"  # an adjustment that sets the unit cost (and maybe the price), units unchanged
    CHANGE_PRICE = "change_price"  # an adjustment that sets only the customer's unit price, units unchanged
    # a contract service the BSS no longer bills: shown for review, writes nothing (the loader skips it)
    REVIEW_UNBILLED = "review_unbilled"


# The order a loader applies kinds in: what an action references is created before it. Both adjustment
# kinds rank the same, so a contract service's adjustments read in date order; reviews come last.
KIND_ORDER = {
    ActionKind.CREATE_COMPANY: 0,
    ActionKind.CREATE_SERVICE: 1,
    ActionKind.CREATE_CONTRACT: 2,
    ActionKind.CREATE_CONTRACT_SERVICE: 3,
    ActionKind.EXTEND_CONTRACT: 4,
    ActionKind.ADJUST_UNITS: 5,
    ActionKind.CHANGE_COST: 5,
    ActionKind.CHANGE_PRICE: 5,
    ActionKind.REVIEW_UNBILLED: 6,
}
# The kinds that write a ContractServiceAdjustment: one Autotask slot per contract service and date (family `adjust`)
ADJUSTMENT_KINDS = frozenset({ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST, ActionKind.CHANGE_PRICE})
# The kinds the loader writes to Autotask (a review writes nothing unless a person chooses a change)
WRITING_KINDS = frozenset(KIND_ORDER) - {ActionKind.REVIEW_UNBILLED}


class ActionStatus(StrEnum):
    """What a reviewer can do with an action (the first five are the plan's; the rest the loader's)."""

    PROPOSED = "proposed"  # loads on approval
    FLAGGED = "flagged"  # loads when a person approves the flagged lines
    NEEDS_MAPPING = "needs-mapping"  # waits for a mapping decision
    BLOCKED = "blocked"  # never loads as it stands; the reason says why and what a person can do
    EXCLUDED = "excluded"
    APPROVED = "approved"
    APPLIED = "applied"
    FAILED = "failed"


MACHINE_STATUSES = frozenset(
    {ActionStatus.PROPOSED, ActionStatus.FLAGGED, ActionStatus.NEEDS_MAPPING, ActionStatus.BLOCKED}
)
DECIDED_STATUSES = frozenset({ActionStatus.EXCLUDED, ActionStatus.APPROVED, ActionStatus.APPLIED, ActionStatus.FAILED})
# Statuses whose actions may be loaded (proposed on approval, flagged when a person approves flagged lines)
LOADABLE_STATUSES = frozenset({ActionStatus.PROPOSED, ActionStatus.FLAGGED})
# How much a status holds an action back; a dependent action is held at least as much as what it needs.
_STATUS_WEIGHT = {
    ActionStatus.PROPOSED: 0,
    ActionStatus.FLAGGED: 1,
    ActionStatus.NEEDS_MAPPING: 2,
    ActionStatus.BLOCKED: 3,
}


# Begins every reason that blocks an action. The reason outlives the status: a blocked row someone sets to
# approved by hand still says it was blocked, and the loader refuses it (`PlanAction.blocked_by_plan`).
BLOCKED_MARK = "blocked: "


def stricter(first: ActionStatus, second: ActionStatus) -> ActionStatus:
    """The status that holds an action back more (blocked > needs-mapping > flagged > proposed)."""
    return first if _STATUS_WEIGHT.get(first, 0) >= _STATUS_WEIGHT.get(second, 0) else second


class Hold(NamedTuple):
    """One thing that holds an action back: at least this status, and why (what a person can do)."""

    status: ActionStatus
    reason: str | None


def held_back(
    holds: Iterable[Hold], status: ActionStatus = ActionStatus.PROPOSED, reason: str | None = None
) -> tuple[ActionStatus, str | None]:
    """The status and reason of an action with `status` and `reason` once each of `holds` holds it back, in
    turn: the strictest status wins; each reason is added after the others (a blocking one begins with
    `BLOCKED_MARK`), unless it repeats the reason so far word for word."""
    for hold in holds:
        added = hold.reason
        if added and hold.status is ActionStatus.BLOCKED and not added.startswith(BLOCKED_MARK):
            added = BLOCKED_MARK + added
        status = stricter(status, hold.status)
        if added and added != reason:
            reason = f"{reason}; {added}" if reason else added
    return status, reason or None


@dataclass(frozen=True)
class PlanAction:
    """One change for Autotask. References to records not yet created are the creating action's id."""

    kind: ActionKind
    month: str
    target: str  # symbolic: "account:ACC-1", "product:PRD-1", "subscription:SUB-1", "contract:C12", "cs:C12/V7"
    status: ActionStatus = ActionStatus.PROPOSED
    reason: str | None = None
    effective_date: date | None = None
    account_id: str | None = None
    subscription_ids: tuple[str, ...] = ()
    product_id: str | None = None
    company_id: int | None = None
    company_action_id: str | None = None
    contract_id: int | None = None
    contract_action_id: str | None = None
    service_id: int | None = None
    service_action_id: str | None = None
    contract_service_id: int | None = None
    contract_service_action_id: str | None = None
    units_before: Decimal | None = None
    units_after: Decimal | None = None
    unit_change: Decimal | None = None
    unit_cost_before: Decimal | None = None
    unit_cost_after: Decimal | None = None
    end_date_before: date | None = None
    end_date_after: date | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    charge_ids: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    # What the customer's unit price is before and after this action (a new contract service: None -> its price;
    # an adjustment that sets no price: both None), and the currency of every figure of the action (the BSS line's).
    # Shown, not hashed: what the action writes is in its payload (adjustedUnitPrice, unitPrice), which is hashed.
    unit_price_before: Decimal | None = None
    unit_price_after: Decimal | None = None
    currency: str | None = None
    # the id when it is already known: a stored row's (JSON does not give back Decimal/date types to re-hash
    # exactly), or that of the action this one holds back (same content, same id)
    known_id: str | None = field(default=None, repr=False, compare=False)

    @property
    def family(self) -> str:
        return "adjust" if self.kind in ADJUSTMENT_KINDS else str(self.kind)

    @cached_property
    def idempotency_key(self) -> str:
        # cached like action_id: the fields it reads are never changed on an action
        day = self.effective_date.isoformat() if self.effective_date else "-"
        return f"{self.month}|{self.family}|{self.target}|{day}"

    @cached_property
    def action_id(self) -> str:
        """A hash of the slot and the content (never the status or reason): the same inputs, the same id.
        repr() of the content fields is deterministic: Decimals keep their 4 places, payloads are built in a
        fixed key order."""
        if self.known_id is not None:
            return self.known_id
        content = _content_of(self)
        text = self.idempotency_key + "\n" + repr(content)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def loadable(self) -> bool:
        """Whether the loader may write it (once approved): proposed or flagged, and a kind that writes."""
        return self.status in LOADABLE_STATUSES and self.kind in WRITING_KINDS

    @property
    def blocked_by_plan(self) -> bool:
        """The plan blocked it: its status says so, or (when someone changed the status) its reason does."""
        reasons = (self.reason or "").split("; ")
        return self.status is ActionStatus.BLOCKED or any(part.startswith(BLOCKED_MARK) for part in reasons)

    def held(self, status: ActionStatus, reason: str | None) -> PlanAction:
        """This action held back at least as much as `status`, with the reason added (a blocking reason
        begins with `BLOCKED_MARK`)."""
        status, reason = held_back([Hold(status, reason)], self.status, self.reason)
        return replace(self, status=status, reason=reason, known_id=self.action_id)

    def to_row(self, run_id: str, seq: int, created_at: Any) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "idempotency_key": self.idempotency_key,
            "month": self.month,
            "run_id": run_id,
            "seq": seq,
            "kind": str(self.kind),
            "status": str(self.status),
            "reason": self.reason,
            "account_id": self.account_id,
            "subscription_ids": json.dumps(list(self.subscription_ids)),
            "product_id": self.product_id,
            "company_id": self.company_id,
            "company_action_id": self.company_action_id,
            "contract_id": self.contract_id,
            "contract_action_id": self.contract_action_id,
            "service_id": self.service_id,
            "service_action_id": self.service_action_id,
            "contract_service_id": self.contract_service_id,
            "contract_service_action_id": self.contract_service_action_id,
            "effective_date": self.effective_date,
            "units_before": self.units_before,
            "units_after": self.units_after,
            "unit_change": self.unit_change,
            "unit_cost_before": self.unit_cost_before,
            "unit_cost_after": self.unit_cost_after,
            "end_date_before": self.end_date_before,
            "end_date_after": self.end_date_after,
            "unit_price_before": self.unit_price_before,
            "unit_price_after": self.unit_price_after,
            "currency": self.currency,
            "payload": json.dumps(self.payload, sort_keys=True, default=_jsonable),
            "charge_ids": json.dumps(list(self.charge_ids)),
            "depends_on": json.dumps(list(self.depends_on)),
            "created_at": created_at,
            "decided_by": None,
            "decided_at": None,
            "applied_entity_id": None,
            "error": None,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PlanAction:
        def decimal(value: Any) -> Decimal | None:
            return None if value is None else Decimal(str(value)).quantize(Decimal("0.0001"))

        def day(value: Any) -> date | None:
            return None if value is None else value if isinstance(value, date) else date.fromisoformat(str(value))

        return cls(
            kind=ActionKind(row["kind"]),
            month=row["month"],
            target=_target_of(row["idempotency_key"]),
            status=ActionStatus(row["status"]),
            reason=row["reason"],
            effective_date=day(row["effective_date"]),
            account_id=row["account_id"],
            subscription_ids=tuple(json.loads(row["subscription_ids"] or "[]")),
            product_id=row["product_id"],
            company_id=row["company_id"],
            company_action_id=row["company_action_id"],
            contract_id=row["contract_id"],
            contract_action_id=row["contract_action_id"],
            service_id=row["service_id"],
            service_action_id=row["service_action_id"],
            contract_service_id=row["contract_service_id"],
            contract_service_action_id=row["contract_service_action_id"],
            units_before=decimal(row["units_before"]),
            units_after=decimal(row["units_after"]),
            unit_change=decimal(row["unit_change"]),
            unit_cost_before=decimal(row["unit_cost_before"]),
            unit_cost_after=decimal(row["unit_cost_after"]),
            end_date_before=day(row["end_date_before"]),
            end_date_after=day(row["end_date_after"]),
            unit_price_before=decimal(row.get("unit_price_before")),
            unit_price_after=decimal(row.get("unit_price_after")),
            currency=row.get("currency"),
            payload=json.loads(row["payload"]),
            charge_ids=tuple(json.loads(row["charge_ids"])),
            depends_on=tuple(json.loads(row["depends_on"])),
            known_id=row["action_id"],
        )


@dataclass
class PlanSummary:
    run_id: str
    month: str
    actions: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    contract_services: int = 0
    contract_services_in_sync: int = 0
    already_decided: int = 0
    conflicting_with_decided: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def order_actions(actions: Iterable[PlanAction]) -> list[PlanAction]:
    """Dependencies first, then a stable order a reviewer can read (target, date)."""
    return sorted(
        actions,
        key=lambda action: (
            KIND_ORDER[action.kind],
            action.target,
            action.effective_date or date.min,
            action.action_id,
        ),
    )


def replace_plan(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    actions: Sequence[PlanAction],
    summary: PlanSummary,
    scope: PlanScope | None = None,
    scope_contracts: Iterable[int] = (),
) -> list[PlanAction]:
    """Store the run's plan for `month` (see the module docstring). Returns the actions as stored.

    With `scope`, `actions` are the plan of the scope's customers only (a review decision's re-plan): only the run's
    open lines of those customers are replaced (their lines, the extensions of `scope_contracts`, the scope's
    products' catalogue services), the new lines are added after the run's others, and a line the run already
    holds for the same Autotask slot outside the scope (a catalogue service another customer needs too) is kept and
    referenced in place of the new one."""
    if scope is not None:
        return _replace_scope(warehouse, month, run_id, actions, summary, scope, set(scope_contracts))
    table = warehouse.table("plan_actions")
    now = utcnow()
    stored: list[PlanAction] = []
    with warehouse.begin() as conn:
        from include.ledger import ASK_FIRST, slots_held
        from include.runs import supersede_open_lines  # runs imports the settings, which import models only

        supersede_open_lines(conn, warehouse, month, run_id, MACHINE_STATUSES)
        conn.execute(
            table.delete().where(
                table.c.month == month, table.c.status.in_([str(status) for status in MACHINE_STATUSES])
            )
        )
        held = slots_held(conn, month)
        replaced = _supersede_unsent_approvals(conn, warehouse, month, run_id, held, actions)
        decided = conn.execute(
            sa.select(table.c.action_id, table.c.idempotency_key, table.c.status).where(
                table.c.month == month, table.c.status.in_([str(status) for status in DECIDED_STATUSES])
            )
        ).all()
        decided_ids = {row.action_id for row in decided}
        decided_keys = {row.idempotency_key: (row.action_id, row.status) for row in decided}
        # a slot an earlier run's write may have reached (its outcome still not known once settled) is that write's:
        # never planned again; what the new plan hangs on the slot refers to the earlier run's line
        in_flight = {
            key: holder.action_id
            for key, holder in held.items()
            if holder.state in ASK_FIRST and holder.action_id in decided_ids
        }
        renamed = {
            action.action_id: in_flight[action.idempotency_key]
            for action in actions
            if action.idempotency_key in in_flight and action.action_id != in_flight[action.idempotency_key]
        }
        rows = []
        for action in actions:
            if action.action_id in decided_ids:
                summary.already_decided += 1
                continue
            if action.idempotency_key in in_flight:
                summary.already_decided += 1
                continue
            action = _with_references(action, renamed) if renamed else action
            holder = held.get(action.idempotency_key)
            if holder is not None and holder.action_id != action.action_id:
                # Autotask's slot was written by another decision: a second write there posts it twice
                action = action.held(
                    ActionStatus.BLOCKED,
                    f"Autotask's slot {action.idempotency_key} was already written by action {holder.action_id} "
                    f"(run {holder.run_id}, {holder.state}): writing it again would post it twice; check the "
                    "record in Autotask and correct it there",
                )
                summary.conflicting_with_decided += 1
            elif action.idempotency_key in replaced:
                other_id, other_run = replaced[action.idempotency_key]
                action = action.held(
                    action.status,
                    f"replaces approved action {other_id} of run {other_run}, which never reached Autotask: "
                    "this run planned its slot again from today's Autotask",
                )
                summary.conflicting_with_decided += 1
            elif action.idempotency_key in decided_keys:
                other_id, other_status = decided_keys[action.idempotency_key]
                action = action.held(
                    ActionStatus.FLAGGED, f"writes the same Autotask slot as {other_status} action {other_id}"
                )
                summary.conflicting_with_decided += 1
            stored.append(action)
            rows.append(action.to_row(run_id, len(rows) + 1, now))
        warehouse.insert(conn, "plan_actions", rows)
    summary.actions = len(stored)
    summary.by_kind = dict(sorted(Counter(str(action.kind) for action in stored).items()))
    summary.by_status = dict(sorted(Counter(str(action.status) for action in stored).items()))
    return stored


_REFERENCES = ("company_action_id", "contract_action_id", "service_action_id", "contract_service_action_id")


def _supersede_unsent_approvals(
    conn: sa.Connection,
    warehouse: Warehouse,
    month: str,
    run_id: str,
    held: Mapping[str, Any],
    actions: Sequence[PlanAction],
) -> dict[str, tuple[str, str]]:
    """An earlier sync run's approved lines that never reached Autotask (no ledger write holds their slot), when the
    new run plans their slot again, or when they write to records that earlier run was to create (their slot's name
    changes once the record exists: a contract created before a crash is `cs:C<id>/…` in the new plan, not the
    earlier `cs:S:<subscription>/…`), were computed from an older Autotask and signed for that run: the new run plans
    them afresh from today's Autotask and its own approval signs them. Kept for the earlier run's review
    (`include.runs.supersede_lines`), then taken out of the month's plan. Any other approved line stays and loads
    (an existing record's change the new plan does not repeat, e.g. a moved subscription's zeroing of its old
    contract once the new contract is its remembered link), and so do lines a write of unknown outcome depends on.
    A line the new plan gives again word for word (the same action id) is the same decision: it stays approved.
    A reversal run's lines are its own: never superseded here. Returns slot -> (the superseded line, its run)."""
    new_keys = {action.idempotency_key for action in actions}
    new_ids = {action.action_id for action in actions}
    table = warehouse.table("plan_actions")
    approved = (
        conn.execute(
            sa.select(
                table.c.action_id,
                table.c.idempotency_key,
                table.c.run_id,
                table.c.depends_on,
                *(table.c[name] for name in _REFERENCES),
            ).where(table.c.month == month, table.c.status == str(ActionStatus.APPROVED), table.c.run_id != run_id)
        )
        .mappings()
        .all()
    )
    if not approved:
        return {}
    reversal_runs = {
        row[0]
        for row in conn.execute(
            sa.text("SELECT run_id FROM billing_runs WHERE month = :month AND reverses_run_id IS NOT NULL"),
            {"month": month},
        )
    }
    by_id = {row["action_id"]: row for row in approved if row["run_id"] not in reversal_runs}
    keep = [
        action_id
        for action_id, row in by_id.items()
        if row["idempotency_key"] in held
        or action_id in new_ids
        or (row["idempotency_key"] not in new_keys and not any(row[name] for name in _REFERENCES))
    ]
    kept: set[str] = set()
    while keep:  # what a write in flight depends on stays with it
        action_id = keep.pop()
        if action_id in kept or action_id not in by_id:
            continue
        kept.add(action_id)
        keep.extend(json.loads(by_id[action_id]["depends_on"] or "[]"))
    stale = sorted(set(by_id) - kept)
    if not stale:
        return {}
    from include.runs import supersede_lines

    for start in range(0, len(stale), 250):
        batch = stale[start : start + 250]
        supersede_lines(conn, warehouse, run_id, table.c.action_id.in_(batch))
        conn.execute(table.delete().where(table.c.action_id.in_(batch), table.c.status == str(ActionStatus.APPROVED)))
    return {by_id[action_id]["idempotency_key"]: (action_id, by_id[action_id]["run_id"]) for action_id in stale}


def _replace_scope(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    actions: Sequence[PlanAction],
    summary: PlanSummary,
    scope: PlanScope,
    scope_contracts: set[int],
) -> list[PlanAction]:
    table = warehouse.table("plan_actions")
    machine = [str(status) for status in MACHINE_STATUSES]
    now = utcnow()
    of_accounts, account_params = sql_in("account_id", scope.accounts, "acc")
    of_contracts, contract_params = sql_in("contract_id", scope_contracts, "con")
    of_products, product_params = sql_in("product_id", scope.products, "prod")
    statuses, status_params = sql_in("status", machine, "st")
    stored: list[PlanAction] = []
    with warehouse.begin() as conn:
        decided = conn.execute(
            sa.select(table.c.action_id, table.c.idempotency_key, table.c.status).where(
                table.c.month == month, table.c.status.in_([str(status) for status in DECIDED_STATUSES])
            )
        ).all()
        decided_ids = {row.action_id for row in decided}
        decided_keys = {row.idempotency_key: (row.action_id, row.status) for row in decided}
        conn.execute(
            sa.text(
                f"DELETE FROM plan_actions WHERE run_id = :run_id AND month = :month AND {statuses} AND ({of_accounts}"
                f" OR (kind = 'extend_contract' AND {of_contracts}) OR (kind = 'create_service' AND {of_products}))"
            ),
            {"run_id": run_id, "month": month, **status_params, **account_params, **contract_params, **product_params},
        )
        # the run's other open lines that may be the same as, or write the same slot as, a line of the scope's plan
        ids = {action.action_id for action in actions}
        keys = {action.idempotency_key for action in actions}
        kept = []
        for start in range(0, max(len(ids), len(keys)), 250):
            kept += conn.execute(
                sa.select(table.c.action_id, table.c.idempotency_key).where(
                    table.c.run_id == run_id,
                    table.c.month == month,
                    table.c.status.in_(machine),
                    sa.or_(
                        table.c.action_id.in_(sorted(ids)[start : start + 250]),
                        table.c.idempotency_key.in_(sorted(keys)[start : start + 250]),
                    ),
                )
            ).all()
        kept_ids = {row.action_id for row in kept}
        kept_keys = {row.idempotency_key: row.action_id for row in kept}
        next_seq = int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(table.c.seq), 0)).where(table.c.run_id == run_id)
            ).scalar_one()
        )
        renamed: dict[str, str] = {}  # id the scope's plan gave -> id the line has in the run
        rows = []
        for computed in actions:
            action = _with_references(computed, renamed)
            if action.action_id != computed.action_id:
                renamed[computed.action_id] = action.action_id
            if action.action_id in decided_ids:
                summary.already_decided += 1
                continue
            if action.action_id in kept_ids:
                continue  # a line outside the scope the run holds already, unchanged
            if action.idempotency_key in kept_keys:
                renamed[computed.action_id] = kept_keys[action.idempotency_key]
                continue  # the same slot another customer's lines need: the run's line stays theirs and the scope's
            if action.idempotency_key in decided_keys:
                other_id, other_status = decided_keys[action.idempotency_key]
                action = action.held(
                    ActionStatus.FLAGGED, f"writes the same Autotask slot as {other_status} action {other_id}"
                )
                summary.conflicting_with_decided += 1
            stored.append(action)
            rows.append(action.to_row(run_id, next_seq + len(rows) + 1, now))
        warehouse.insert(conn, "plan_actions", rows)
    summary.actions = len(stored)
    summary.by_kind = dict(sorted(Counter(str(action.kind) for action in stored).items()))
    summary.by_status = dict(sorted(Counter(str(action.status) for action in stored).items()))
    return stored


def _with_references(action: PlanAction, renamed: Mapping[str, str]) -> PlanAction:
    """The action referring to renamed lines by their new ids (its own id then follows from its new content)."""
    changes: dict[str, Any] = {
        name: renamed[value] for name in _REFERENCES if (value := getattr(action, name)) in renamed
    }
    if any(dependency in renamed for dependency in action.depends_on):
        changes["depends_on"] = tuple(renamed.get(dependency, dependency) for dependency in action.depends_on)
    return replace(action, **changes, known_id=None) if changes else action


def load_plan(
    warehouse: Warehouse, month: str, run_id: str | None = None, statuses: Iterable[str] | None = None
) -> list[PlanAction]:
    """The stored plan of a month (optionally one run's rows, or some statuses), in apply order."""
    table = warehouse.table("plan_actions")
    query = sa.select(table).where(table.c.month == month)
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    if statuses is not None:
        query = query.where(table.c.status.in_([str(ActionStatus(status)) for status in statuses]))
    with warehouse.engine.connect() as conn:
        rows = conn.execute(query.order_by(table.c.run_id, table.c.seq)).mappings().all()
    return [PlanAction.from_row(row) for row in rows]


def set_action_status(warehouse: Warehouse, action_ids: Iterable[str], status: str, by: str) -> int:
    """Record a decision (approved / excluded) or an outcome (applied / failed) on plan rows."""
    table = warehouse.table("plan_actions")
    ids = list(action_ids)
    if not ids:
        return 0
    with warehouse.begin() as conn:
        result = conn.execute(
            table.update()
            .where(table.c.action_id.in_(ids))
            .values(status=str(ActionStatus(status)), decided_by=by, decided_at=utcnow())
        )
    return result.rowcount


# shown, not hashed (their written figures are in the payload): an action's id is what it was before prices were shown
_DESCRIPTIVE_FIELDS = ("unit_price_before", "unit_price_after", "currency")
_CONTENT_FIELDS = tuple(
    item.name for item in fields(PlanAction) if item.name not in ("status", "reason", "known_id", *_DESCRIPTIVE_FIELDS)
)
# the content fields' values as one tuple, in field order
_content_of = attrgetter(*_CONTENT_FIELDS)


def _target_of(idempotency_key: str) -> str:
    return idempotency_key.split("|")[2]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
