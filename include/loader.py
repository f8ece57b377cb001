"""Step 6: write a month's approved plan actions into Autotask exactly once, driven by a ledger.

The ledger (`load_ledger`, one row per write, keyed by the plan's idempotency key) is a state machine in
the spirit of Stripe's idempotency keys. Each row is written in its own transaction before the request
leaves and after the answer arrives:

    pending -> sent -> confirmed | failed | unknown
    unknown (or sent: the process died while waiting) -> confirmed (Autotask holds it) | resent -> ...

Resuming is the same code as the first run. Every pass over a level of the plan first asks Autotask about
the writes whose outcome is not known (batched reads: companies by their key, contracts by contractNumber,
services by sku, contract extensions by their end date, adjustments by the ContractServiceUnits on their
effective date) and only then sends what is still missing. A month already applied makes zero writes.

Order: companies -> services -> contracts -> contract extensions -> contract services -> adjustments and
cost changes; an action waits until everything it depends on is applied. Creates look their key up first,
so a record is never created twice (not across months, not after a lost warehouse), and what they create
carries its key. A new contract service is created on its own with its unit price and unit cost (the customer's
currency: never the catalogue Service's price); only one without figures is created by its first adjustment.

Speed and budget: the adjustments of independent contract services run concurrently (the hook allows 3
requests per endpoint); the adjustments of one contract service run in date order, each unitChange being
relative to the one before (an adjustment that depends on a later-dated one of its contract service, as a
reversal's may, goes after it). Before each batch of writes the loader reads ThresholdInformation and keeps a
share of the hourly budget free for the customer's other integrations; when too little is left it stops
cleanly with `BudgetExhausted`, saying when it can go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa

from include import ledger
from include.autotask_errors import (
    AutotaskApiError,
    AutotaskBudgetExhaustedError,
    AutotaskOutcomeUnknownError,
    AutotaskRateLimitError,
)
from include.autotask_reader import api_date, to_api_value, udf_value
from include.ledger import ASK_FIRST, Found, LedgerState, Lookup
from include.mapping import record_created_link
from include.plan import ADJUSTMENT_KINDS, MOVED_SUBSCRIPTION, ActionKind, ActionStatus, PlanAction, load_plan
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

# Share of Autotask's hourly request budget a load leaves for the customer's other integrations.
BUDGET_RESERVE_SHARE = 0.2


class AutotaskWriter(Protocol):
    """The Autotask hook's methods the loader uses (`connectors.autotask_hook.AutotaskHook`)."""

    def query(
        self,
        entity: str,
        filters: list[Any] | None = None,
        include_fields: list[str] | None = None,
        max_records: int | None = None,
    ) -> list[dict]: ...

    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[Any] | None = None,
        include_fields: list[str] | None = None,
    ) -> list[dict]: ...

    def create(self, entity: str, body: dict) -> int: ...

    def update(self, entity: str, body: dict) -> int: ...

    def create_child(self, parent: str, parent_id: int, child: str, body: dict) -> int: ...

    def threshold_information(self) -> dict: ...


@dataclass(frozen=True)
class LoadSettings:
    """How a load paces itself. `budget_reserve_share` moves into SyncSettings later (one home per setting)."""

    budget_reserve_share: float = BUDGET_RESERVE_SHARE
    write_batch_size: int = 200  # writes between two ThresholdInformation reads
    budget_margin: int = 10  # requests kept aside for the reads a batch needs (recovery, the budget read)
    workers: int = 6  # contract services adjusted at once; the hook lets 3 requests per endpoint through
    max_passes: int = 6  # rounds of "ask Autotask about unknown writes, then send what is missing" per level
    # A share of the month (`share` of `shares`): only the actions of its customers (see `share_of`). Shares run
    # side by side on different workers; the whole-month load after them takes what they left.
    share: int = 0
    shares: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.budget_reserve_share < 1:
            raise ValueError("budget_reserve_share must be in [0, 1)")
        if self.write_batch_size < 1 or self.workers < 1 or self.max_passes < 1:
            raise ValueError("write_batch_size, workers and max_passes must be at least 1")
        if self.shares < 1 or not 0 <= self.share < self.shares:
            raise ValueError(
                f"share must be in 0..shares-1 and shares at least 1 (got share {self.share} of {self.shares})"
            )


def share_of(action: PlanAction, shares: int) -> int | None:
    """Which share of a month loads `action`: one customer's actions (by BSS account, else by the target) all go
    to one share, so the shares never write the same record. A new catalogue service serves every customer: no
    share loads it (None), the whole-month load does."""
    if action.kind is ActionKind.CREATE_SERVICE:
        return None
    key = action.account_id or action.target
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % shares


class BudgetExhausted(Exception):
    """Autotask's hourly request budget is too low to go on; the load stopped cleanly and can resume.
    The message says it in plain words: why, how much this load used, and when it can go on."""

    def __init__(self, resume_at: datetime, used: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.resume_at = resume_at
        self.used = used
        self.reason = reason or message


class AutotaskUnreachable(Exception):
    """Autotask did not accept requests (not sent): the load stopped; nothing is in an unknown state."""


@dataclass
class LoadSummary:
    month: str
    run_id: str
    load_id: str
    status: str = "running"
    approved: int = 0  # approved actions that write to Autotask
    written: int = 0  # confirmed by a write of this load
    found_applied: int = 0  # confirmed by asking Autotask (a lost answer, a crash, or a record that existed)
    already_applied: int = 0  # confirmed by an earlier load: nothing sent
    folded: int = 0  # contract services created by their first adjustment
    failed: int = 0
    waiting: int = 0  # held back: what they depend on is not applied (not approved, failed, or unknown)
    skipped: int = 0  # approved actions of kinds that write nothing
    write_requests: int = 0  # creates and updates sent by this load (each write once, resends included)
    requests_used: int = 0  # every Autotask request of this load, reads included
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    waits: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- what each kind writes --------------------------------------------------------------------------------

# Kinds in apply order; a kind not listed writes nothing (e.g. a line to review) and is skipped.
LEVELS: tuple[tuple[ActionKind, ...], ...] = (
    (ActionKind.CREATE_COMPANY,),
    (ActionKind.CREATE_SERVICE,),
    (ActionKind.CREATE_CONTRACT,),
    (ActionKind.EXTEND_CONTRACT,),
    (ActionKind.CREATE_CONTRACT_SERVICE,),
    (ActionKind.ADJUST_UNITS, ActionKind.CHANGE_COST, ActionKind.CHANGE_PRICE),
)
WRITING_KINDS = frozenset(kind for level in LEVELS for kind in level)
ADJUSTING_KINDS = ADJUSTMENT_KINDS
_ENTITY_OF = {
    ActionKind.CREATE_COMPANY: ("Companies", "POST"),
    ActionKind.CREATE_SERVICE: ("Services", "POST"),
    ActionKind.CREATE_CONTRACT: ("Contracts", "POST"),
    ActionKind.EXTEND_CONTRACT: ("Contracts", "PATCH"),
    ActionKind.CREATE_CONTRACT_SERVICE: ("ContractServices", "POST"),
    ActionKind.ADJUST_UNITS: ("ContractServiceAdjustments", "POST"),
    ActionKind.CHANGE_COST: ("ContractServiceAdjustments", "POST"),
    ActionKind.CHANGE_PRICE: ("ContractServiceAdjustments", "POST"),
}


@dataclass
class _Write:
    """One write about to be sent: the action, the body with every reference resolved."""

    action: PlanAction
    entity: str
    verb: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return self.action.idempotency_key


@dataclass
class _LedgerRow:
    action_id: str
    state: LedgerState
    autotask_id: int | None
    payload: dict[str, Any]
    attempts: int


class _Outcome(StrEnum):
    CONFIRMED = "confirmed"
    FAILED = "failed"
    UNKNOWN = "unknown"


def load_plan_actions(
    writer: AutotaskWriter,
    warehouse: Warehouse,
    month: str,
    run_id: str,
    settings: SyncSettings | None = None,
    load_settings: LoadSettings | None = None,
) -> LoadSummary:
    """Apply the month's approved actions to Autotask (see the module docstring). Safe to call again: it
    resumes where an earlier call stopped and writes nothing that Autotask already holds."""
    settings = settings or SyncSettings()
    if load_settings is None:
        reserve = getattr(settings, "budget_reserve_share", BUDGET_RESERVE_SHARE)
        load_settings = LoadSettings(budget_reserve_share=reserve)
    return _Loader(writer, warehouse, month, run_id, settings, load_settings).run()


@dataclass
class SettleSummary:
    """What settling a month's writes of unknown outcome found (`settle_unknown_writes`)."""

    month: str
    asked: int = 0  # writes whose outcome was not known
    found_applied: int = 0  # Autotask holds them: confirmed, their plan rows applied
    not_applied: int = 0  # Autotask does not hold them and their load has ended: back to pending, never sent twice
    cannot_tell: int = 0  # a person looks (the plan row failed with the reason)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def settle_unknown_writes(
    writer: AutotaskWriter, warehouse: Warehouse, month: str, run_id: str, settings: SyncSettings | None = None
) -> list[SettleSummary]:
    """Before a new run of `month` plans: every write of an earlier load of this month or an earlier month whose
    outcome is not known (sent, unknown, resent: its process died, or its answer was lost) is settled by reading
    Autotask — found (confirmed, its plan row applied), not there (pending again: the slot is free for the new plan,
    nothing was applied), or cannot tell (its plan row fails with the reason a person reads). Nothing is sent.

    The DAG runs one run at a time (`max_active_runs=1`), so an earlier run's load has ended when a new run plans;
    a load found still `running` is marked interrupted, as the next load of the month would."""
    settings = settings or SyncSettings()
    summaries = []
    for each in ledger.months_in_doubt(warehouse):
        if each <= month:
            summaries.append(_Loader(writer, warehouse, each, run_id, settings, LoadSettings()).settle())
    return summaries


class _Loader:
    def __init__(
        self,
        writer: AutotaskWriter,
        warehouse: Warehouse,
        month: str,
        run_id: str,
        settings: SyncSettings,
        load_settings: LoadSettings,
    ) -> None:
        self.writer = writer
        self.warehouse = warehouse
        self.month = month
        self.run_id = run_id
        self.settings = settings
        self.load_settings = load_settings
        self.load_id = uuid.uuid4().hex
        self.summary = LoadSummary(month=month, run_id=run_id, load_id=self.load_id)
        self.lock = threading.Lock()
        self.ledger: dict[str, _LedgerRow] = {}
        self.resolved: dict[str, int] = {}  # action id -> Autotask id of what it created or changed
        self.failed: dict[str, str] = {}  # action id -> why
        self.applied: set[str] = set()
        self.plan: dict[str, PlanAction] = {}
        self.folded: dict[str, PlanAction] = {}  # contract service action id -> its first adjustment
        self.requests_at_start = self._requests_sent()
        self.own_requests = 0  # for a writer that does not count its requests
        self.checkpoints: list[tuple[datetime, int]] = []  # (when, requests used so far): for resume_at
        self.tables = _reflected(warehouse, ("plan_actions", "load_ledger", "load_runs"))

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> LoadSummary:
        started = time.monotonic()
        self._start_load_run()
        try:
            try:
                self._read_state()
                self._refuse_blocked()
                for level in LEVELS:
                    self._run_level(level)
                self._resolve_folded_contract_services()
            except AutotaskBudgetExhaustedError as error:  # a read refused: the hook says the budget is spent
                raise self._budget_stop(str(error), resume_at=error.resume_at) from error
            self._count_waiting()
            self.summary.status = "incomplete" if self.summary.waiting else "succeeded"
            message = None
        except BudgetExhausted as stop:
            # said once every write on its way has ended, so the counts are final
            final = self._budget_message(stop.reason, stop.resume_at)
            self.summary.status = "paused"
            self._finish_load_run(started, final, stop.resume_at)
            log.warning(final)
            raise BudgetExhausted(stop.resume_at, self._used(), final, stop.reason) from None
        except BaseException as error:
            self.summary.status = "failed"
            self._finish_load_run(started, f"{type(error).__name__}: {error}")
            raise
        self._finish_load_run(started, message)
        log.info("load %s of %s: %s", self.load_id, self.month, self._counts())
        return self.summary

    def settle(self) -> SettleSummary:
        """Ask Autotask about the month's writes of unknown outcome, level by level; send nothing."""
        summary = SettleSummary(self.month)
        table = self.tables["load_runs"]
        with self.warehouse.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.month == self.month, table.c.status == "running")
                .values(status="interrupted", message="a later run found it still running: the process stopped")
            )
        self._read_state()
        for level in LEVELS:
            in_doubt = [
                action
                for action in self.plan.values()
                if action.kind in level
                and action.status == ActionStatus.APPROVED
                and not self._settled(action)
                and self._outcome_unknown(action)
                and self.ledger[action.idempotency_key].action_id == action.action_id
            ]
            if not in_doubt:
                continue
            summary.asked += len(in_doubt)
            failed_before = len(self.failed)
            self._recover(in_doubt)
            summary.found_applied += sum(1 for action in in_doubt if action.action_id in self.applied)
            summary.cannot_tell += len(self.failed) - failed_before
            for action in in_doubt:
                if self._settled(action):
                    continue
                with self.warehouse.begin() as conn:
                    self._move(
                        conn,
                        action.idempotency_key,
                        LedgerState.PENDING,
                        error="not in Autotask after its load ended: never applied",
                    )
                with self.lock:
                    self.ledger[action.idempotency_key].state = LedgerState.PENDING
                summary.not_applied += 1
        if summary.asked:
            log.info("settled the writes of unknown outcome of %s: %s", self.month, summary.as_dict())
        return summary

    def _read_state(self) -> None:
        plan = load_plan(self.warehouse, self.month)
        self.plan = {action.action_id: action for action in plan}
        table = self.tables["plan_actions"]
        with self.warehouse.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.action_id, table.c.status, table.c.applied_entity_id, table.c.error).where(
                    table.c.month == self.month
                )
            ).all()
        for row in rows:
            if row.status == ActionStatus.APPLIED:
                self.applied.add(row.action_id)
                if row.applied_entity_id is not None:
                    self.resolved[row.action_id] = int(row.applied_entity_id)
            elif row.status == ActionStatus.FAILED:
                self.failed[row.action_id] = row.error or "failed"
        ledger = self.tables["load_ledger"]
        with self.warehouse.engine.connect() as conn:
            for row in conn.execute(sa.select(ledger).where(ledger.c.month == self.month)).mappings():
                self.ledger[row["idempotency_key"]] = _LedgerRow(
                    row["action_id"],
                    LedgerState(row["state"]),
                    None if row["autotask_id"] is None else int(row["autotask_id"]),
                    json.loads(row["payload"]),
                    int(row["attempts"]),
                )
        approved = [action for action in plan if action.status == ActionStatus.APPROVED and self._mine(action)]
        self.summary.skipped = sum(1 for action in approved if action.kind not in WRITING_KINDS)
        self.summary.approved = len(approved) - self.summary.skipped
        # a new contract service that carries its money (unitPrice, unitCost in the customer's currency) is created
        # on its own, so the record itself holds them: created by an adjustment it would take the catalogue Service's
        # price, in the internal currency, whatever the customer's currency is. Only one without figures is created
        # by its first adjustment (contractID + serviceID, no own write), and only when that first adjustment is
        # approved: a later one waits for it (each unitChange is relative to the one before), so folding into it
        # would leave the contract service uncreated; then it is created on its own
        first_adjustment: dict[str, PlanAction] = {}
        for action in sorted(plan, key=lambda item: (item.effective_date or date.min, item.action_id)):
            cs_action_id = action.contract_service_action_id
            if action.kind in ADJUSTING_KINDS and cs_action_id and cs_action_id not in first_adjustment:
                first_adjustment[cs_action_id] = action
        for cs_action_id, action in first_adjustment.items():
            cs_action = self.plan.get(cs_action_id)
            if cs_action is None or cs_action.status != ActionStatus.APPROVED or cs_action.blocked_by_plan:
                continue  # a blocked one is refused on its own (`_refuse_blocked`)
            if any(cs_action.payload.get(name) is not None for name in ("unitPrice", "unitCost")):
                continue
            if action.status in (ActionStatus.APPROVED, ActionStatus.APPLIED) and not action.blocked_by_plan:
                self.folded[cs_action_id] = action

    def _refuse_blocked(self) -> None:
        """Defence in depth: an approved row the plan blocked (Autotask would refuse it, or it would write a
        wrong figure) is never sent, even when someone set it approved by hand; it fails with the plan's reason
        and sends nothing. What depends on it fails with it."""
        for action in self.plan.values():
            if action.status != ActionStatus.APPROVED or action.kind not in WRITING_KINDS or self._settled(action):
                continue
            if action.blocked_by_plan and self._mine(action):
                self._fail_without_write(
                    action,
                    "refused: the plan blocked this write and it never loads as it stands, although its row was "
                    f"set to approved ({action.reason}); resolve the block in Autotask or the BSS and plan the "
                    "month again",
                )

    # -- one level: ask about the unknown, then send what is missing --------------------------------------

    def _run_level(self, kinds: Sequence[ActionKind]) -> None:
        actions = [
            action
            for action in self.plan.values()
            if action.kind in kinds
            and action.status == ActionStatus.APPROVED
            and not self._settled(action)
            and self._mine(action)
        ]
        if not actions:
            return
        for _ in range(self.load_settings.max_passes):
            self._fail_dependents_of_failures(actions)
            # an adjustment that waits only for earlier adjustments of its contract service goes in this pass:
            # its chain is sent in date order, each one after the one before is confirmed
            pending_ids = {action.action_id for action in actions if not self._settled(action)}
            ready = [
                action
                for action in actions
                if action.action_id in pending_ids and self._dependencies_met(action, ignoring=pending_ids)
            ]
            if not ready:
                break
            settled_before = len(actions) - len(pending_ids)
            sent_before = self.summary.write_requests
            self._recover(ready)
            self._send(ready)
            settled = sum(1 for action in actions if self._settled(action))
            if settled == settled_before and self.summary.write_requests == sent_before:
                break  # nothing moved (e.g. an outcome Autotask cannot tell yet): the next load goes on
        self._fail_dependents_of_failures(actions)

    def _mine(self, action: PlanAction) -> bool:
        """Whether this load writes `action`: always for a whole-month load, else when it is in its share."""
        if self.load_settings.shares == 1:
            return True
        return share_of(action, self.load_settings.shares) == self.load_settings.share

    def _settled(self, action: PlanAction) -> bool:
        if action.action_id in self.applied or action.action_id in self.failed:
            return True
        # a contract service created by its first adjustment has no write of its own
        return action.kind is ActionKind.CREATE_CONTRACT_SERVICE and action.action_id in self.folded

    def _done(self, action_id: str) -> bool:
        """What `action_id` stands for exists in Autotask (a folded contract service: its parts exist)."""
        if action_id in self.applied:
            return True
        folded = self.plan.get(action_id)
        if action_id in self.folded and folded is not None:
            return all(self._done(dependency) for dependency in folded.depends_on)
        return False

    def _dependencies_met(self, action: PlanAction, ignoring: frozenset[str] | set[str] = frozenset()) -> bool:
        """Everything `action` depends on is done; with `ignoring`, earlier adjustments of the same contract
        service among those ids count as met (the chain sends them first)."""
        for dependency in action.depends_on:
            if self._done(dependency):
                continue
            before = self.plan.get(dependency)
            same_chain = (
                before is not None
                and dependency in ignoring
                and action.kind in ADJUSTING_KINDS
                and before.kind in ADJUSTING_KINDS
                and before.target == action.target
            )
            if not same_chain:
                return False
        return True

    def _fail_dependents_of_failures(self, actions: Sequence[PlanAction]) -> None:
        changed = True
        while changed:
            changed = False
            for action in actions:
                if self._settled(action):
                    continue
                for dependency in action.depends_on:
                    why = self.failed.get(dependency)
                    if why is None and dependency in self.folded:
                        why = self.failed.get(self.folded[dependency].action_id)
                    if why is not None:
                        kind = self.plan[dependency].kind if dependency in self.plan else "action"
                        self._fail_without_write(action, f"not sent: it depends on {kind} {dependency}, which failed")
                        changed = True
                        break

    # -- recovery: what does Autotask hold? ----------------------------------------------------------------

    def _recover(self, actions: Sequence[PlanAction]) -> None:
        """Confirm from Autotask what may already be there: unknown outcomes, and every create (by its key)."""
        asking = []
        for action in actions:
            row = self.ledger.get(action.idempotency_key)
            provably_unwritten = (LedgerState.PENDING, LedgerState.FAILED)
            if row is not None and row.action_id != action.action_id and row.state not in provably_unwritten:
                # another decision for the same Autotask slot may have reached it: a person compares the two
                self._fail_without_write(
                    action, f"the Autotask slot {action.idempotency_key} was already written by action {row.action_id}"
                )
                continue
            if row is not None and row.state == LedgerState.CONFIRMED:
                self._confirm(action, row.autotask_id, "confirmed by an earlier load", counter="already_applied")
                continue
            if row is not None and row.state == LedgerState.FAILED:
                continue  # a plan row left approved after a failure: the next send tries again
            creates = action.kind in (ActionKind.CREATE_COMPANY, ActionKind.CREATE_SERVICE, ActionKind.CREATE_CONTRACT)
            if creates or (row is not None and row.state in ASK_FIRST):
                asking.append(action)
        if not asking:
            return
        by_kind: dict[ActionKind, list[PlanAction]] = defaultdict(list)
        for action in asking:
            by_kind[action.kind].append(action)
        for kind, group in by_kind.items():
            for action, answer in self.look_up(kind, group):
                if answer.found is Found.NOT_FOUND:
                    continue
                if answer.found is Found.CANNOT_TELL:
                    self._fail_without_write(action, answer.note)
                else:
                    self._confirm(action, answer.autotask_id, answer.note, counter="found_applied")

    def look_up(self, kind: ActionKind, actions: Sequence[PlanAction]) -> list[tuple[PlanAction, Lookup]]:
        """What Autotask holds for these writes of one kind (`include.ledger.RecoveryLookups`): one batched read, one
        answer each — found (with the record's id), not found, or cannot tell (why, for a person)."""
        answers = []
        for action, found, note in _FINDERS[kind](self, actions):
            if found is _NOT_FOUND:
                answers.append((action, Lookup.not_found()))
            elif isinstance(found, _Refusal):
                answers.append((action, Lookup.cannot_tell(found.reason)))
            else:
                answers.append((action, Lookup.of(found, note)))
        return answers

    def _find_companies(self, actions: Sequence[PlanAction]) -> Iterable[tuple[PlanAction, Any, str]]:
        keys = {action.account_id: action for action in actions if action.account_id}
        if not keys:
            return []
        field_name = self.settings.company_key_field
        udf = self.settings.company_key_udf
        if field_name:
            records = self._query_in("Companies", field_name, list(keys), ["id", field_name])
            key_of = {record["id"]: record.get(field_name) for record in records}
        elif udf:
            records = []
            values = list(keys)
            for start in range(0, len(values), 500):
                records += self._query(
                    "Companies",
                    [{"op": "in", "field": udf, "value": values[start : start + 500], "udf": True}],
                    ["id", "userDefinedFields"],
                )
            key_of = {record["id"]: udf_value(record, udf) for record in records}
        else:  # no key to look a company up by: an unknown outcome cannot be settled by the loader
            reason = "no company key is configured, so whether Autotask created it cannot be checked: a person looks"
            return [
                (action, _Refusal(reason) if self._outcome_unknown(action) else _NOT_FOUND, "")
                for action in keys.values()
            ]
        ids_by_key: dict[str, list[int]] = defaultdict(list)
        for record_id, key in key_of.items():
            ids_by_key[str(key)].append(int(record_id))
        results = []
        for key, action in keys.items():
            found = sorted(ids_by_key.get(key, []))
            label = field_name or udf
            if len(found) == 1:
                results.append((action, found[0], f"already in Autotask: company {found[0]} has {label} = {key}"))
            elif found:
                results.append(
                    (
                        action,
                        _Refusal(f"several Autotask companies have {label} = {key} ({found}): a person decides"),
                        "",
                    )
                )
            else:
                results.append((action, _NOT_FOUND, ""))
        return results

    def _outcome_unknown(self, action: PlanAction) -> bool:
        row = self.ledger.get(action.idempotency_key)
        return row is not None and row.state in ASK_FIRST

    def _find_services(self, actions: Sequence[PlanAction]) -> Iterable[tuple[PlanAction, Any, str]]:
        by_sku = {action.payload.get("sku"): action for action in actions if action.payload.get("sku")}
        by_name = {action.payload.get("name"): action for action in actions if not action.payload.get("sku")}
        results = []
        for field_name, wanted in (("sku", by_sku), ("name", by_name)):
            if not wanted:
                continue
            records = self._query_in("Services", field_name, list(wanted), ["id", field_name])
            ids: dict[str, list[int]] = defaultdict(list)
            for record in records:
                ids[str(record.get(field_name))].append(int(record["id"]))
            for value, action in wanted.items():
                found = sorted(ids.get(str(value), []))
                if len(found) == 1:
                    results.append(
                        (action, found[0], f"already in Autotask: service {found[0]} has {field_name} {value}")
                    )
                elif found:
                    reason = f"several Autotask services have {field_name} {value!r} ({found}): a person decides"
                    results.append((action, _Refusal(reason), ""))
                else:
                    results.append((action, _NOT_FOUND, ""))
        return results

    def _find_contracts(self, actions: Sequence[PlanAction]) -> Iterable[tuple[PlanAction, Any, str]]:
        wanted = {
            action.payload.get("contractNumber"): action for action in actions if action.payload.get("contractNumber")
        }
        if not wanted:
            return []
        records = self._query_in("Contracts", "contractNumber", list(wanted), ["id", "contractNumber", "companyID"])
        by_number: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            by_number[str(record.get("contractNumber"))].append(record)
        results = []
        for number, action in wanted.items():
            company_id = self._company_of(action)
            numbered = by_number.get(str(number), [])
            own = [
                record for record in numbered if company_id is None or int(record.get("companyID") or 0) == company_id
            ]
            others = [record for record in numbered if record not in own]
            if len(own) == 1:
                contract_id = int(own[0]["id"])
                results.append(
                    (action, contract_id, f"already in Autotask: contract {contract_id} has number {number}")
                )
            elif own or (others and not self._moves_away_from(others, action)):
                described = ", ".join(f"{record['id']} (company {record.get('companyID')})" for record in numbered)
                reason = (
                    f"Autotask already holds contract number {number} as {described}, not one contract under "
                    f"company {company_id}: a person decides"
                )
                results.append((action, _Refusal(reason), ""))
            else:
                results.append((action, _NOT_FOUND, ""))
        return results

    def _find_extensions(self, actions: Sequence[PlanAction]) -> Iterable[tuple[PlanAction, Any, str]]:
        wanted = [(action, int(action.payload["id"])) for action in actions]
        records = self._query_in("Contracts", "id", sorted({pair[1] for pair in wanted}), ["id", "endDate"])
        end_of = {int(record["id"]): api_date(record.get("endDate")) for record in records}
        results = []
        for action, contract_id in wanted:
            end = end_of.get(contract_id)
            # a reversal's row takes an extension back (an earlier end): there when the contract ends by then
            shortens = action.end_date_before is not None and action.end_date_after is not None
            shortens = shortens and action.end_date_after < action.end_date_before
            there = end is not None and action.end_date_after is not None
            there = there and (end <= action.end_date_after if shortens else end >= action.end_date_after)
            if there:
                results.append((action, contract_id, f"already in Autotask: contract {contract_id} ends {end}"))
            else:
                results.append((action, _NOT_FOUND, ""))
        return results

    def _find_contract_services(self, actions: Sequence[PlanAction]) -> Iterable[tuple[PlanAction, Any, str]]:
        pairs = [(action, self._contract_and_service(action)) for action in actions]
        contract_ids = sorted({pair[0] for _, pair in pairs if pair[0] is not None})
        records = self._query_in("ContractServices", "contractID", contract_ids, ["id", "contractID", "serviceID"])
        ids = {(int(record["contractID"]), int(record["serviceID"])): int(record["id"]) for record in records}
        results = []
        for action, pair in pairs:
            found = ids.get(pair) if None not in pair else None
            if found is not None:
                results.append((action, found, f"already in Autotask: contract service {found}"))
            else:
                results.append((action, _NOT_FOUND, ""))
        return results

    def _find_adjustments(self, actions: Sequence[PlanAction]) -> Iterable[tuple[PlanAction, Any, str]]:
        """An adjustment cannot be read back: it was applied when the ContractServiceUnits row covering its
        effective date holds the units it leads to (and, for a cost change, its cost)."""
        located = [(action, self._contract_and_service(action)) for action in actions]
        contract_ids = sorted({pair[0] for _, pair in located if pair[0] is not None})
        days = [action.effective_date for action in actions if action.effective_date]
        rows_by_pair: dict[tuple[int, int], list[dict]] = defaultdict(list)
        if contract_ids and days:
            overlap = [
                {"op": "lte", "field": "startDate", "value": f"{max(days).isoformat()}T00:00:00"},
                {"op": "gte", "field": "endDate", "value": f"{min(days).isoformat()}T00:00:00"},
            ]
            fields = [
                "id",
                "contractID",
                "serviceID",
                "contractServiceID",
                "startDate",
                "endDate",
                "units",
                "cost",
                "price",
            ]
            for record in self._query_in("ContractServiceUnits", "contractID", contract_ids, fields, overlap):
                rows_by_pair[(int(record["contractID"]), int(record["serviceID"]))].append(record)
        results = []
        for action, pair in located:
            row = _row_covering(rows_by_pair.get(pair, []), action.effective_date) if None not in pair else None
            if row is not None and _adjustment_shows(action, row):
                note = f"found applied in Autotask: {row.get('units')} units from {action.effective_date}"
                results.append((action, None, note))
            elif row is not None and not _units_are(row, action.units_before) and action.unit_change:
                reason = (
                    f"Autotask holds {row.get('units')} units on {action.effective_date}, neither the "
                    f"{action.units_before} before nor the {action.units_after} after this change: not sent "
                    "again; a person checks the contract service"
                )
                results.append((action, _Refusal(reason), ""))
            else:
                results.append((action, _NOT_FOUND, ""))
        return results

    # -- sending ---------------------------------------------------------------------------------------

    def _send(self, actions: Sequence[PlanAction]) -> None:
        """Send what is not settled: chains of one contract service in date order, independent chains at once.
        Every write gets its ledger row (pending) before any is sent; the budget gate reads the budget every
        `write_batch_size` writes while the writes already on their way go on (no pause between batches)."""
        # one Autotask slot, one write: a second approved action for a slot (two runs' decisions for it) waits for
        # the next pass, whose recovery sees the slot held by the first and refuses it
        first_of_slot: dict[str, PlanAction] = {}
        for action in actions:
            if not self._settled(action):
                first_of_slot.setdefault(action.idempotency_key, action)
        chains = self._chains(list(first_of_slot.values()))
        if not chains:
            return
        self._record_pending([action for chain in chains for action in chain])
        gate = _BudgetGate(self, sum(len(chain) for chain in chains))
        if len(chains) == 1 or self.load_settings.workers == 1:
            for chain in chains:
                self._send_chain(chain, gate)
            return
        errors: list[BaseException] = []
        with ThreadPoolExecutor(self.load_settings.workers, thread_name_prefix="autotask-load") as pool:
            for future in [pool.submit(self._send_chain, chain, gate) for chain in chains]:
                try:
                    future.result()
                except BaseException as error:  # every chain ends first: nothing is left on the wire
                    errors.append(error)
        if errors:
            raise errors[0]

    def _chains(self, actions: Sequence[PlanAction]) -> list[list[PlanAction]]:
        """One chain per contract service for adjustments (date order), one per action otherwise."""
        chains: dict[str, list[PlanAction]] = defaultdict(list)
        for action in sorted(actions, key=lambda item: (item.target, item.effective_date or date.min)):
            chains[action.target if action.kind in ADJUSTING_KINDS else action.action_id].append(action)
        return [_dependencies_first(chain) for chain in chains.values()]

    def _send_chain(self, chain: Sequence[PlanAction], gate: _BudgetGate) -> None:
        for action in chain:
            if self._settled(action):
                continue
            if not self._dependencies_met(action):
                return  # an earlier one of the chain is failed or unknown: the next pass decides
            gate.take()
            try:
                outcome = self._send_one(action)
            except BudgetExhausted as stop:  # Autotask refused a write for its request limit
                gate.stop(stop)
                raise
            if outcome is not _Outcome.CONFIRMED:
                return

    def _send_one(self, action: PlanAction) -> _Outcome:
        write = self._write_for(action)
        row = self.ledger[write.key]
        resend = row.state != LedgerState.PENDING
        if not self._mark_sent(write, resend):
            return _Outcome.UNKNOWN  # taken by another load; the next load reads what became of it
        try:
            autotask_id = self._call(write)
        except AutotaskOutcomeUnknownError as error:
            self._mark_unknown(write, str(error))
            return _Outcome.UNKNOWN
        except AutotaskRateLimitError as error:
            self._back_to_pending(write, str(error))
            raise self._budget_stop(
                f"Autotask rejected a write for the request limit: {error}", resume_at=getattr(error, "resume_at", None)
            ) from error
        except AutotaskApiError as error:
            if error.status is None and getattr(error, "retryable", False):
                self._back_to_pending(write, str(error))
                raise AutotaskUnreachable(f"Autotask is unreachable, nothing was sent: {error}") from error
            self._fail(write, "; ".join(error.errors) or str(error))
            return _Outcome.FAILED
        self._confirm(action, autotask_id, f"written: Autotask answered itemId {autotask_id}", counter="written")
        return _Outcome.CONFIRMED

    def _call(self, write: _Write) -> int:
        with self.lock:
            self.summary.write_requests += 1
            self.own_requests += 1
        if write.verb == "PATCH":
            return self.writer.update(write.entity, write.body)
        if write.entity == "ContractServices":
            return self.writer.create_child("Contracts", int(write.body["contractID"]), "Services", write.body)
        return self.writer.create(write.entity, write.body)

    def _write_for(self, action: PlanAction) -> _Write:
        entity, verb = _ENTITY_OF[action.kind]
        body = {key: value for key, value in dict(action.payload).items() if value is not None}
        if action.kind is ActionKind.CREATE_CONTRACT:
            body["companyID"] = self._company_of(action)
        elif action.kind is ActionKind.CREATE_CONTRACT_SERVICE:
            body["contractID"], body["serviceID"] = self._contract_and_service(action)
        elif action.kind in ADJUSTING_KINDS:
            contract_id, service_id = self._contract_and_service(action)
            body["contractID"], body["serviceID"] = contract_id, service_id
            cs_action_id = action.contract_service_action_id
            if action.contract_service_id is None and cs_action_id in self.resolved:
                body["contractServiceID"] = self.resolved[cs_action_id]
            if cs_action_id in self.folded and self.folded[cs_action_id].action_id == action.action_id:
                # the contract service this adjustment creates takes its price and cost from the service;
                # the plan's own figures travel on the adjustment
                created = self.plan[cs_action_id].payload
                if created.get("unitPrice") is not None:
                    body.setdefault("adjustedUnitPrice", created["unitPrice"])
                if created.get("unitCost") is not None:
                    body.setdefault("adjustedUnitCost", created["unitCost"])
        missing = [name for name, value in body.items() if value is None]
        if missing:
            raise RuntimeError(f"action {action.action_id}: unresolved references {missing}")
        return _Write(action, entity, verb, _jsonable(body))

    def _moves_away_from(self, contracts: Sequence[dict], action: PlanAction) -> bool:
        """Whether the month's plan moves this subscription off every one of these contracts (a subscription that
        moved to another customer: its old contract keeps the number, and the plan takes its units there to 0 from
        the move date). Then a new contract under the new customer's company is what the plan asked for."""
        if MOVED_SUBSCRIPTION in (action.reason or ""):
            return True  # the plan said so, and a person approved it (the old contract needed no zeroing)
        subscriptions = set(action.subscription_ids)
        leaving = {
            int(other.contract_id)
            for other in self.plan.values()
            if other.kind in ADJUSTING_KINDS
            and other.contract_id is not None
            and subscriptions & set(other.subscription_ids)
        }
        return all(int(record["id"]) in leaving for record in contracts)

    def _company_of(self, action: PlanAction) -> int | None:
        if action.company_id is not None:
            return int(action.company_id)
        return self.resolved.get(action.company_action_id or "")

    def _contract_and_service(self, action: PlanAction) -> tuple[int | None, int | None]:
        contract_id = action.contract_id if action.contract_id is not None else action.payload.get("contractID")
        if contract_id is None:
            contract_id = self.resolved.get(action.contract_action_id or "")
        service_id = action.service_id if action.service_id is not None else action.payload.get("serviceID")
        if service_id is None:
            service_id = self.resolved.get(action.service_action_id or "")
        return (None if contract_id is None else int(contract_id), None if service_id is None else int(service_id))

    # -- the budget ------------------------------------------------------------------------------------

    def _allowance(self, wanted: int) -> int:
        """How many writes the next batch may send, keeping the reserve free; raises BudgetExhausted."""
        try:
            information = self.writer.threshold_information()
        except AutotaskRateLimitError as error:
            raise self._budget_stop(
                f"Autotask refused even the budget read: {error}", resume_at=getattr(error, "resume_at", None)
            ) from error
        with self.lock:
            self.own_requests += 1
        self.checkpoints.append((datetime.now(UTC), self._used()))
        threshold = int(information.get("externalRequestThreshold") or 0)
        if threshold <= 0:
            return wanted
        used_now = int(information.get("currentTimeframeRequestCount") or 0)
        ceiling = math.floor(threshold * (1 - self.load_settings.budget_reserve_share))
        room = ceiling - used_now - self.load_settings.budget_margin
        if room <= 0:
            minutes = int(information.get("requestThresholdTimeframe") or 60)
            raise self._budget_stop(
                f"Autotask's hourly request budget is nearly used up: {used_now:,} of {threshold:,} requests in the "
                f"last {minutes} minutes, and {self.load_settings.budget_reserve_share:.0%} is kept free for other "
                f"integrations",
                needed=used_now + self.load_settings.budget_margin + min(wanted, 1) - ceiling,
                minutes=minutes,
            )
        return min(wanted, room)

    def _budget_stop(
        self, reason: str, needed: int = 1, minutes: int = 60, resume_at: datetime | None = None
    ) -> BudgetExhausted:
        """`resume_at`: when Autotask (or the hook) said requests go on; else estimated from this load's own."""
        resume_at = resume_at or self._resume_at(max(1, needed), minutes)
        return BudgetExhausted(resume_at, self._used(), self._budget_message(reason, resume_at), reason)

    def _budget_message(self, reason: str, resume_at: datetime) -> str:
        self._count_waiting()
        done = self.summary.written + self.summary.found_applied + self.summary.already_applied
        return (
            f"Stopped loading {self.month}: {reason}. This load used {self._used():,} requests and applied "
            f"{done:,} of {self.summary.approved:,} approved changes ({self.summary.written:,} written now); "
            f"nothing is half-done. It will go on at about {resume_at:%Y-%m-%d %H:%M} UTC, when the rolling hour "
            "has freed enough requests; the next load resumes where this one stopped."
        )

    def _resume_at(self, needed: int, minutes: int) -> datetime:
        """When at least `needed` requests have left the rolling window. Only this load's own requests have
        known times: the window frees them `minutes` after they were made; others' are assumed to stay."""
        now = datetime.now(UTC)
        window = timedelta(minutes=minutes)
        for moment, used_by_then in self.checkpoints:
            if used_by_then >= needed:
                return max(now, moment + window).replace(microsecond=0)
        return (now + window).replace(microsecond=0)

    def _requests_sent(self) -> int | None:
        count = getattr(self.writer, "requests_sent", None)
        return int(count) if isinstance(count, int) else None

    def _used(self) -> int:
        now = self._requests_sent()
        if now is None or self.requests_at_start is None:
            return self.own_requests
        return now - self.requests_at_start

    # -- reads -------------------------------------------------------------------------------------------

    def _query(self, entity: str, filters: list[Any], fields: list[str]) -> list[dict]:
        with self.lock:
            self.own_requests += 1
        return self.writer.query(entity, filters, fields)

    def _query_in(
        self, entity: str, field_name: str, values: list[Any], fields: list[str], filters: list[Any] | None = None
    ) -> list[dict]:
        if not values:
            return []
        with self.lock:
            self.own_requests += max(1, math.ceil(len(values) / 500))
        return self.writer.query_in(entity, field_name, values, filters, fields)

    # -- the ledger and the plan rows ------------------------------------------------------------------

    def _record_pending(self, actions: Sequence[PlanAction]) -> None:
        """Every write of a batch gets its ledger row (pending) in one transaction before any is sent."""
        rows = []
        now = utcnow()
        for action in actions:
            if action.idempotency_key in self.ledger:
                continue
            write = self._write_for(action)
            rows.append(
                {
                    "idempotency_key": write.key,
                    "action_id": action.action_id,
                    "month": self.month,
                    "run_id": self.run_id,
                    "load_id": self.load_id,
                    "kind": str(action.kind),
                    "entity": write.entity,
                    "verb": write.verb,
                    "payload": json.dumps(write.body, sort_keys=True),
                    "state": str(LedgerState.PENDING),
                    "attempts": 0,
                    "created_at": now,
                }
            )
            self.ledger[write.key] = _LedgerRow(action.action_id, LedgerState.PENDING, None, write.body, 0)
        if rows:
            with self.warehouse.begin() as conn:
                # a row another load inserted meanwhile stays theirs (the claim in _mark_sent sees it)
                ledger.record_pending(conn, self.warehouse, rows)

    def _move(self, conn: sa.Connection, key: str, after: LedgerState, **values: Any) -> None:
        """Move the slot's ledger row from the state this load holds it in (`include.ledger.move`)."""
        before = self.ledger[key].state
        if not ledger.move(conn, self.tables["load_ledger"], key, before, after, **values):
            log.warning("the ledger row of %s left %s meanwhile: not moved to %s", key, before, after)

    def _mark_sent(self, write: _Write, resend: bool) -> bool:
        """Claim the write: move its row from the state this load last saw to sent (or resent). A row another
        load moved meanwhile is not claimed, so two loads of one month never send the same write."""
        row = self.ledger[write.key]
        state = LedgerState.RESENT if resend else LedgerState.SENT
        if not ledger.allowed(row.state, state):  # a confirmed slot is never sent again
            log.warning("the write %s is %s in the ledger: it is not sent again", write.key, row.state)
            return False
        with self.warehouse.begin() as conn:
            claimed = ledger.move(
                conn,
                self.tables["load_ledger"],
                write.key,
                row.state,
                state,
                seen_attempts=row.attempts,
                action_id=write.action.action_id,
                payload=json.dumps(write.body, sort_keys=True),
                run_id=self.run_id,
                load_id=self.load_id,
                attempts=row.attempts + 1,
                sent_at=utcnow(),
                error=None,
            )
        if not claimed:
            log.warning("another load holds the write %s: this load leaves it alone", write.key)
            return False
        with self.lock:
            row.state, row.attempts, row.payload = state, row.attempts + 1, write.body
            row.action_id = write.action.action_id
        return True

    def _mark_unknown(self, write: _Write, error: str) -> None:
        with self.warehouse.begin() as conn:
            self._move(conn, write.key, LedgerState.UNKNOWN, error=error[:2000], finished_at=utcnow())
        with self.lock:
            self.ledger[write.key].state = LedgerState.UNKNOWN
        log.warning("outcome unknown for %s (%s): Autotask is asked before anything is sent again", write.key, error)

    def _back_to_pending(self, write: _Write, error: str) -> None:
        # rejected before Autotask processed it (request limit, never connected): provably not applied
        with self.warehouse.begin() as conn:
            self._move(conn, write.key, LedgerState.PENDING, error=error[:2000])
        with self.lock:
            self.ledger[write.key].state = LedgerState.PENDING

    def _fail(self, write: _Write, error: str) -> None:
        action = write.action
        with self.warehouse.begin() as conn:
            self._move(
                conn,
                write.key,
                LedgerState.FAILED,
                error=error[:2000],
                response_summary="Autotask refused the write",
                finished_at=utcnow(),
            )
            self._update_plan(conn, action.action_id, ActionStatus.FAILED, None, f"Autotask refused it: {error}")
            if action.contract_service_action_id in self.folded and (
                self.folded[action.contract_service_action_id].action_id == action.action_id
            ):
                reason = f"its first adjustment, which creates it, failed: {error}"
                self._update_plan(conn, action.contract_service_action_id, ActionStatus.FAILED, None, reason)
        with self.lock:
            self.ledger[write.key].state = LedgerState.FAILED
            self.failed[action.action_id] = error
            self.summary.failed += 1
            self.summary.failures.append(_describe(action, error))
        log.warning("Autotask refused %s %s (%s): %s", action.kind, action.target, action.action_id, error)

    def _fail_without_write(self, action: PlanAction, reason: str) -> None:
        with self.warehouse.begin() as conn:
            self._update_plan(conn, action.action_id, ActionStatus.FAILED, None, reason)
        with self.lock:
            self.failed[action.action_id] = reason
            self.summary.failed += 1
            self.summary.failures.append(_describe(action, reason))

    def _confirm(self, action: PlanAction, autotask_id: int | None, note: str, counter: str) -> None:
        key = action.idempotency_key
        now = utcnow()
        with self.warehouse.begin() as conn:
            if key in self.ledger and self.ledger[key].state is not LedgerState.CONFIRMED:
                values: dict[str, Any] = {"finished_at": now, "error": None, "run_id": self.run_id}
                if autotask_id is not None:
                    values["autotask_id"] = autotask_id
                if counter != "already_applied":
                    values["response_summary"] = note
                self._move(conn, key, LedgerState.CONFIRMED, **values)
            elif key in self.ledger:
                pass  # confirmed by an earlier load: the row says so already
            else:  # found in Autotask before this load ever sent it (a create matched by its key)
                write = self._write_for(action)
                ledger.check_move(None, LedgerState.CONFIRMED)
                conn.execute(
                    self.tables["load_ledger"].insert(),
                    [
                        {
                            "idempotency_key": key,
                            "action_id": action.action_id,
                            "month": self.month,
                            "run_id": self.run_id,
                            "load_id": self.load_id,
                            "kind": str(action.kind),
                            "entity": write.entity,
                            "verb": write.verb,
                            "payload": json.dumps(write.body, sort_keys=True),
                            "state": str(LedgerState.CONFIRMED),
                            "autotask_id": autotask_id,
                            "response_summary": note,
                            "attempts": 0,
                            "created_at": now,
                            "finished_at": now,
                        }
                    ],
                )
            self._update_plan(conn, action.action_id, ActionStatus.APPLIED, autotask_id, None)
            folded_here = action.contract_service_action_id in self.folded and (
                self.folded[action.contract_service_action_id].action_id == action.action_id
            )
            if folded_here:
                self._update_plan(conn, action.contract_service_action_id, ActionStatus.APPLIED, None, None)
        with self.lock:
            row = self.ledger.get(key)
            if row is None:
                self.ledger[key] = _LedgerRow(action.action_id, LedgerState.CONFIRMED, autotask_id, {}, 0)
            else:
                row.state = LedgerState.CONFIRMED
                row.autotask_id = autotask_id if autotask_id is not None else row.autotask_id
            self.applied.add(action.action_id)
            if autotask_id is not None:
                self.resolved[action.action_id] = autotask_id
            if folded_here:
                self.applied.add(action.contract_service_action_id)
                self.summary.folded += 1
            setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        self._remember_created(action, autotask_id)

    def _remember_created(self, action: PlanAction, autotask_id: int | None) -> None:
        """A record this product created (or found by its key) is the source's link from now on, so next month
        links it without asking (a person's manual link in the meantime is kept)."""
        source = {
            ActionKind.CREATE_COMPANY: ("company", action.account_id),
            ActionKind.CREATE_CONTRACT: ("contract", action.subscription_ids[0] if action.subscription_ids else None),
            ActionKind.CREATE_SERVICE: ("service", action.product_id),
        }.get(action.kind)
        if source is None or source[1] is None or autotask_id is None:
            return
        record_created_link(self.warehouse, source[0], source[1], autotask_id, by=f"loader {self.load_id}")

    def _update_plan(
        self, conn: sa.Connection, action_id: str, status: ActionStatus, entity_id: int | None, error: str | None
    ) -> None:
        """Move an approved plan row to applied / failed; who approved it and when stay as they were."""
        table = self.tables["plan_actions"]
        values: dict[str, Any] = {"status": str(status), "error": None if error is None else error[:4000]}
        if entity_id is not None:
            values["applied_entity_id"] = entity_id
        conn.execute(
            table.update()
            .where(table.c.action_id == action_id, table.c.status == str(ActionStatus.APPROVED))
            .values(**values)
        )

    def _resolve_folded_contract_services(self) -> None:
        """The ids of contract services created by their first adjustment: one batched read, for the plan rows
        and the verification (an adjustment's answer names the adjustment, not the contract service)."""
        missing = {
            cs_action_id: self._contract_and_service(self.plan[cs_action_id])
            for cs_action_id in self.folded
            if self._mine(self.folded[cs_action_id])
            and cs_action_id in self.applied
            and cs_action_id not in self.resolved
            and cs_action_id in self.plan
        }
        missing = {key: pair for key, pair in missing.items() if None not in pair}
        if not missing:
            return
        contract_ids = sorted({pair[0] for pair in missing.values()})
        records = self._query_in("ContractServices", "contractID", contract_ids, ["id", "contractID", "serviceID"])
        ids = {(int(record["contractID"]), int(record["serviceID"])): int(record["id"]) for record in records}
        table = self.tables["plan_actions"]
        with self.warehouse.begin() as conn:
            for cs_action_id, pair in missing.items():
                if pair in ids:
                    self.resolved[cs_action_id] = ids[pair]
                    conn.execute(
                        table.update().where(table.c.action_id == cs_action_id).values(applied_entity_id=ids[pair])
                    )

    def _count_waiting(self) -> None:
        waiting = []
        for action in self.plan.values():
            if action.status != ActionStatus.APPROVED or action.kind not in WRITING_KINDS or self._settled(action):
                continue
            if not self._mine(action):
                continue
            row = self.ledger.get(action.idempotency_key)
            if row is not None and row.state in ASK_FIRST:
                why = f"the outcome of its write is not known yet ({row.state}): the next load asks Autotask first"
            else:
                blocking = [d for d in action.depends_on if not self._done(d)]
                states = [
                    f"{self.plan[d].kind} {d} ({self.plan[d].status})" if d in self.plan else f"{d} (not in the plan)"
                    for d in blocking
                ]
                why = "waits for " + ", ".join(states) if states else "not sent yet"
            waiting.append(_describe(action, why))
        self.summary.waiting = len(waiting)
        self.summary.waits = waiting[:50]

    # -- load_runs -------------------------------------------------------------------------------------

    def _start_load_run(self) -> None:
        table = self.tables["load_runs"]
        with self.warehouse.begin() as conn:
            if self.load_settings.shares == 1:  # shares run side by side: only a whole-month load runs alone
                conn.execute(
                    table.update()
                    .where(table.c.month == self.month, table.c.status == "running")
                    .values(status="interrupted", message="a later load found it still running: the process stopped")
                )
            conn.execute(
                table.insert(),
                [
                    {
                        "load_id": self.load_id,
                        "month": self.month,
                        "run_id": self.run_id,
                        "started_at": utcnow(),
                        "status": "running",
                        "writes": 0,
                        "requests_used": 0,
                    }
                ],
            )

    def _finish_load_run(self, started: float, message: str | None, resume_at: datetime | None = None) -> None:
        self.summary.seconds = round(time.monotonic() - started, 3)
        self.summary.requests_used = self._used()
        table = self.tables["load_runs"]
        with self.warehouse.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.load_id == self.load_id)
                .values(
                    finished_at=utcnow(),
                    status=self.summary.status,
                    writes=self.summary.write_requests,
                    requests_used=self.summary.requests_used,
                    counts=json.dumps(self._counts()),
                    resume_at=None if resume_at is None else resume_at.replace(tzinfo=None),
                    message=message,
                )
            )

    def _counts(self) -> dict[str, Any]:
        values = self.summary.as_dict()
        values.pop("failures")
        values.pop("waits")
        return values


# -- helpers ---------------------------------------------------------------------------------------------


# Warehouse.table() reflects into a shared MetaData on first use; two threads reflecting at once can see a
# table without its columns. Loads running side by side in one process reflect one at a time.
_REFLECTING = threading.Lock()


def _reflected(warehouse: Warehouse, names: Sequence[str]) -> dict[str, sa.Table]:
    with _REFLECTING:
        return {name: warehouse.table(name) for name in names}


class _BudgetGate:
    """Grants writes as the budget allows: a ThresholdInformation read per `write_batch_size` writes, taken
    by one thread while the writes already granted go on; once the budget is low, every chain stops."""

    def __init__(self, loader: _Loader, wanted: int) -> None:
        self.loader = loader
        self.wanted = wanted
        self.granted = 0
        self.stopped: BudgetExhausted | None = None
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            if self.stopped is not None:
                raise self.stopped
            if self.granted <= 0:
                batch = min(max(1, self.wanted), self.loader.load_settings.write_batch_size)
                try:
                    self.granted = self.loader._allowance(batch)
                except BudgetExhausted as stop:
                    self.stopped = stop
                    raise
            self.granted -= 1
            self.wanted -= 1

    def stop(self, stop: BudgetExhausted) -> None:
        with self.lock:
            self.stopped = self.stopped or stop


class _Refusal:
    """Autotask holds something under the key that this action must not take over: a person decides."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_NOT_FOUND = object()

_FINDERS: dict[ActionKind, Callable[[_Loader, Sequence[PlanAction]], Iterable[tuple[PlanAction, Any, str]]]] = {
    ActionKind.CREATE_COMPANY: _Loader._find_companies,
    ActionKind.CREATE_SERVICE: _Loader._find_services,
    ActionKind.CREATE_CONTRACT: _Loader._find_contracts,
    ActionKind.EXTEND_CONTRACT: _Loader._find_extensions,
    ActionKind.CREATE_CONTRACT_SERVICE: _Loader._find_contract_services,
    ActionKind.ADJUST_UNITS: _Loader._find_adjustments,
    ActionKind.CHANGE_COST: _Loader._find_adjustments,
    ActionKind.CHANGE_PRICE: _Loader._find_adjustments,
}


def _dependencies_first(chain: list[PlanAction]) -> list[PlanAction]:
    """A chain in date order, except that an action goes after what it depends on within the chain (a
    reversal's adjustments that remove units wait for those that add units, whatever their dates)."""
    if len(chain) < 2:
        return chain
    ids = {action.action_id for action in chain}
    placed: set[str] = set()
    ordered: list[PlanAction] = []
    waiting = list(chain)
    while waiting:
        ready = next(
            (action for action in waiting if placed.issuperset(ids.intersection(action.depends_on))), waiting[0]
        )
        waiting.remove(ready)
        placed.add(ready.action_id)
        ordered.append(ready)
    return ordered


def _row_covering(rows: Sequence[Mapping[str, Any]], day: date | None) -> Mapping[str, Any] | None:
    if day is None:
        return None
    for row in rows:
        start, end = api_date(row.get("startDate")), api_date(row.get("endDate"))
        if start is not None and start <= day and (end is None or day <= end):
            return row
    return None


def _units_are(row: Mapping[str, Any], units: Any) -> bool:
    return units is not None and row.get("units") is not None and abs(float(row["units"]) - float(units)) <= 1e-6


def _adjustment_shows(action: PlanAction, row: Mapping[str, Any]) -> bool:
    """The units row on the effective date shows this adjustment: the units it leads to and, when the
    units do not change (a cost or price change), its cost and price on a row that starts that day."""
    if not _units_are(row, action.units_after):
        return False
    if action.unit_change is not None and action.unit_change != 0:
        return True
    figures = [(name, value) for name, value in (("cost", action.unit_cost_after), ("price", action.unit_price_after))]
    figures = [(name, value) for name, value in figures if value is not None]
    if not figures or any(row.get(name) is None for name, _ in figures):
        return False
    starts_here = api_date(row.get("startDate")) == action.effective_date
    return starts_here and all(abs(float(row[name]) - float(value)) <= 0.00005 for name, value in figures)


def _describe(action: PlanAction, why: str) -> dict[str, Any]:
    return {
        "action_id": action.action_id,
        "kind": str(action.kind),
        "target": action.target,
        "subscription_ids": list(action.subscription_ids),
        "effective_date": None if action.effective_date is None else action.effective_date.isoformat(),
        "reason": why,
    }


def _jsonable(body: Mapping[str, Any]) -> dict[str, Any]:
    return to_api_value(dict(body))
