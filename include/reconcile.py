"""Step 5: compare the BSS units in force with Autotask's ContractServiceUnits, per contract service, and
derive the change plan.

The comparison, per contract service (all subscriptions linked to one contract and one service add up):
- BSS units are a step function: each subscription holds the `subscriptionQuantity` of its last line of an
  effective date from that date on (before its first line, `subscriptionQuantity - quantity`: 0 for a new
  subscription). The effective-date policy moves each BSS date to the Autotask date it is posted at.
- Autotask units at a date are those of the ContractServiceUnits row starting on or before it (a row that
  ended still tells the units a renewal carries on with). Autotask's own period starts inside the month are
  compared too, so a change made only in Autotask is corrected as well.
- An adjustment changes the units from its date on, so the signed `unitChange` at each compared date is the
  change of (BSS - Autotask) since the previous compared date: same-date changes are netted by construction.
Everything that is a set operation over lines runs in pandas; Python loops only over the actions.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from include.field_mapping import (
    COMMITMENT_MONTHS,
    autotask_effective_date,
    commitment_term,
    renewed_end_date,
)
from include.models import BillingMonth, ChargeAction
from include.plan import ActionKind, ActionStatus, PlanAction, PlanSummary, order_actions, replace_plan
from include.sync_settings import RECURRING_SERVICE_CONTRACT_TYPE, SyncSettings
from include.warehouse import Warehouse

log = logging.getLogger(__name__)

_UNITS_EPSILON = 1e-9
_MONEY_EPSILON = 0.00005
_FOUR_PLACES = Decimal("0.0001")
_DATETIME = "datetime64[ns]"


@dataclass(frozen=True)
class SnapshotState:
    """The parts of a run's Autotask snapshot reconciliation reads."""

    contracts: pd.DataFrame  # contract_id, company_id, status, start_date, end_date
    services: pd.DataFrame  # service_id, is_active, unit_cost
    contract_services: pd.DataFrame  # contract_service_id, contract_id, service_id, unit_cost
    units: pd.DataFrame  # contract_service_id, start_date, end_date, units, cost

    @classmethod
    def load(cls, warehouse: Warehouse, run_id: str) -> SnapshotState:
        params = {"run_id": run_id}
        contracts = warehouse.read_frame(
            "SELECT contract_id, company_id, status, start_date, end_date FROM at_contracts WHERE run_id = :run_id",
            params,
        )
        services = warehouse.read_frame(
            "SELECT service_id, is_active, unit_cost FROM at_services WHERE run_id = :run_id", params
        )
        contract_services = warehouse.read_frame(
            "SELECT contract_service_id, contract_id, service_id, unit_cost FROM at_contract_services"
            " WHERE run_id = :run_id ORDER BY contract_service_id",
            params,
        )
        units = warehouse.read_frame("snapshot_units", params)
        for frame, columns in ((contracts, ("start_date", "end_date")), (units, ("start_date", "end_date"))):
            for column in columns:
                frame[column] = pd.to_datetime(frame[column]).astype(_DATETIME)
        for frame, columns in (
            (services, ("unit_cost",)),
            (contract_services, ("unit_cost",)),
            (units, ("units", "cost")),
        ):
            for column in columns:
                frame[column] = frame[column].astype("float64")
        return cls(contracts, services, contract_services, units)


def reconcile_month(warehouse: Warehouse, month: str, run_id: str, settings: SyncSettings | None = None) -> PlanSummary:
    """Compute the month's change plan from the run's lines, links and snapshot, and store it."""
    started = time.monotonic()
    settings = settings or SyncSettings()
    billing_month = BillingMonth.parse(month)
    params = {"month": billing_month.key, "run_id": run_id}
    lines = warehouse.read_frame("reconcile_lines", params)
    accounts = {row["account_id"]: row for row in warehouse.query("reconcile_accounts", params)}
    snapshot = SnapshotState.load(warehouse, run_id)
    summary = PlanSummary(run_id=run_id, month=billing_month.key)
    actions = compute_plan(lines, snapshot, accounts, billing_month, settings, summary)
    replace_plan(warehouse, billing_month.key, run_id, actions, summary)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("reconcile %s for %s: %s", run_id, billing_month, summary.as_dict())
    return summary


def compute_plan(
    lines: pd.DataFrame,
    snapshot: SnapshotState,
    accounts: Mapping[str, Mapping[str, Any]],
    month: BillingMonth,
    settings: SyncSettings,
    summary: PlanSummary | None = None,
) -> list[PlanAction]:
    """The plan for `lines` (rows of `reconcile_lines.sql`) against `snapshot`, in apply order. Pure."""
    summary = summary or PlanSummary(run_id="", month=month.key)
    if lines.empty:
        return []
    lines = _prepare_lines(lines, settings)
    groups = _groups(lines, snapshot)
    points = _compare(lines, groups, snapshot, month)
    summary.contract_services = len(groups)
    builder = _PlanBuilder(month, settings, lines, groups, points, snapshot, accounts)
    actions = builder.build()
    summary.contract_services_in_sync = len(groups) - len(builder.groups_with_actions)
    return order_actions(actions)


# -- the comparison, as set operations -------------------------------------------------------------------


def _prepare_lines(lines: pd.DataFrame, settings: SyncSettings) -> pd.DataFrame:
    lines = lines.copy()
    # one resolution for every date column: merge_asof refuses to compare s with us
    lines["effective_date"] = pd.to_datetime(lines["effective_date"]).astype(_DATETIME)
    for column in ("quantity", "subscription_quantity", "unit_cost", "unit_price"):
        lines[column] = lines[column].astype("float64")
    for column in ("company_id", "contract_id", "service_id"):
        lines[column] = lines[column].astype("Int64")
    for column in ("company_suggestions", "contract_suggestions", "service_suggestions"):
        lines[column] = lines[column].fillna(0).astype("int64")
    lines["contract_ref"] = np.where(
        lines["contract_id"].notna(), "C" + lines["contract_id"].astype(str), "S:" + lines["subscription_id"]
    )
    lines["service_ref"] = np.where(
        lines["service_id"].notna(), "V" + lines["service_id"].astype(str), "P:" + lines["product_id"]
    )
    lines["group"] = lines["contract_ref"] + "/" + lines["service_ref"]
    # One numeric sort serves every step: per group by date then charge id (the SQL returns charge id
    # order, so the row number is that rank). A subscription lives in one group, so its lines are in
    # (date, charge id) order too.
    lines["charge_rank"] = np.arange(len(lines))
    lines["group_code"] = pd.factorize(lines["group"], sort=True)[0]
    lines = lines.sort_values(["group_code", "effective_date", "charge_rank"], kind="stable", ignore_index=True)
    # the policy is defined once, on dates (field_mapping); a month has at most ~31 distinct ones
    distinct = {
        day: pd.Timestamp(autotask_effective_date(day.date(), settings.effective_date_policy))
        for day in lines["effective_date"].unique()
    }
    lines["point"] = lines["effective_date"].map(distinct).astype(_DATETIME)
    lines["commitment_months"] = lines["billing_cycle"].map(COMMITMENT_MONTHS).fillna(1).astype("int64")
    lines["ends_term"] = lines["action"] == ChargeAction.CANCELLATION
    lines["starts_term"] = lines["action"].isin([ChargeAction.NEW, ChargeAction.RENEWAL])
    return lines


def _groups(lines: pd.DataFrame, snapshot: SnapshotState) -> pd.DataFrame:
    """One row per contract service of the month (existing or to be created), indexed by group."""
    first = lines.drop_duplicates("group")
    groups = first[
        [
            "group",
            "contract_ref",
            "service_ref",
            "contract_id",
            "service_id",
            "account_id",
            "product_id",
            "product_name",
            "product_sku",
            "billing_period",
            "company_id",
            "company_flag",
            "contract_flag",
            "service_flag",
            "company_suggestions",
            "contract_suggestions",
            "service_suggestions",
        ]
    ].set_index("group")
    by_group = lines.groupby("group", sort=False)
    members: dict[str, list[str]] = defaultdict(list)
    pairs = lines[["group", "subscription_id"]].drop_duplicates().sort_values(["group", "subscription_id"])
    for group, subscription_id in zip(pairs["group"].tolist(), pairs["subscription_id"].tolist(), strict=True):
        members[group].append(subscription_id)
    groups["subscriptions"] = pd.Series({group: tuple(values) for group, values in members.items()}, dtype=object)
    groups["commitment_months"] = by_group["commitment_months"].max()
    groups["billing_cycle"] = lines.sort_values("commitment_months").groupby("group")["billing_cycle"].last()
    last_line = lines.groupby("group", sort=False)[["unit_price", "unit_cost"]].last()
    groups["unit_price"] = last_line["unit_price"]
    groups["unit_cost"] = last_line["unit_cost"]
    groups["first_point"] = by_group["point"].min()
    groups["last_point"] = by_group["point"].max()
    pairs = snapshot.contract_services.drop_duplicates(["contract_id", "service_id"], keep="first")
    pairs = pairs.astype({"contract_id": "Int64", "service_id": "Int64"})
    groups = (
        groups.reset_index()
        .merge(pairs.rename(columns={"unit_cost": "cs_unit_cost"}), on=["contract_id", "service_id"], how="left")
        .set_index("group")
    )
    groups["contract_service_id"] = groups["contract_service_id"].astype("Int64")
    return groups


def _compare(lines: pd.DataFrame, groups: pd.DataFrame, snapshot: SnapshotState, month: BillingMonth) -> pd.DataFrame:
    """One row per (group, compared date): BSS target units and cost, Autotask units and cost, the change."""
    # per subscription: the units in force before its first line, and the change at each of its dates
    first = lines.drop_duplicates("subscription_id", keep="first")
    base = (first["subscription_quantity"] - first["quantity"]).groupby(first["group"]).sum()
    last = lines.drop_duplicates(["subscription_id", "effective_date"], keep="last")
    previous = last.groupby("subscription_id", sort=False)["subscription_quantity"].shift()
    before_first = last["subscription_id"].map(
        (first["subscription_quantity"] - first["quantity"]).set_axis(first["subscription_id"])
    )
    last = last.assign(delta=last["subscription_quantity"] - previous.fillna(before_first))

    bss = lines.groupby(["group", "point"], sort=False).agg(
        bss_cost=("unit_cost", "last"), ends_term=("ends_term", "max"), starts_term=("starts_term", "max")
    )
    bss["delta"] = last.groupby(["group", "point"])["delta"].sum()
    bss["delta"] = bss["delta"].fillna(0.0)
    bss["bss_point"] = True

    # Autotask's own period starts inside the month are compared too
    known = groups["contract_service_id"].dropna()
    group_of_cs = pd.Series(known.index, index=known.astype("int64").to_numpy())
    units = snapshot.units.sort_values(["contract_service_id", "start_date"], kind="stable")
    # a row whose units differ from the previous row's starts with an adjustment (made in Autotask);
    # otherwise it is a plain period start, where an adjustment may go
    previous_units = units.groupby("contract_service_id")["units"].shift()
    units = units.assign(adjusted_here=previous_units.notna() & (previous_units != units["units"]))
    in_month = units[
        (units["start_date"] >= pd.Timestamp(month.first_day))
        & (units["start_date"] <= pd.Timestamp(month.last_day))
        & units["contract_service_id"].isin(group_of_cs.index)
    ]
    autotask_points = (
        pd.DataFrame(
            {
                "group": in_month["contract_service_id"].map(group_of_cs).to_numpy(),
                "point": in_month["start_date"].to_numpy(),
                "autotask_adjusted": in_month["adjusted_here"].to_numpy(),
            }
        )
        .drop_duplicates(["group", "point"])
        .set_index(["group", "point"])
    )
    points = bss.join(autotask_points, how="outer") if len(autotask_points) else bss
    points = points.reset_index().sort_values(["group", "point"], kind="stable").reset_index(drop=True)
    points["delta"] = points["delta"].fillna(0.0)
    points["bss_point"] = points["bss_point"].fillna(False).astype(bool)
    if "autotask_adjusted" not in points:
        points["autotask_adjusted"] = False
    points["autotask_adjusted"] = points["autotask_adjusted"].fillna(False).astype(bool)
    points["ends_term"] = points["ends_term"].fillna(False).astype(bool)
    points["starts_term"] = points["starts_term"].fillna(False).astype(bool)
    points["target"] = points["group"].map(base).fillna(0.0) + points.groupby("group")["delta"].cumsum()
    points["bss_cost"] = points.groupby("group")["bss_cost"].ffill()
    points["contract_service_id"] = points["group"].map(groups["contract_service_id"])

    # Autotask units and cost at each compared date: the row starting on or before it
    points["at_units"] = np.nan
    points["at_cost"] = np.nan
    existing = points["contract_service_id"].notna()
    if existing.any() and len(units):
        left = points.loc[existing, ["point", "contract_service_id"]].astype({"contract_service_id": "int64"})
        left = left.reset_index().sort_values("point")
        right = (
            units[["contract_service_id", "start_date", "units", "cost"]]
            .astype({"contract_service_id": "int64"})
            .sort_values("start_date")
        )
        found = pd.merge_asof(
            left, right, left_on="point", right_on="start_date", by="contract_service_id", direction="backward"
        ).set_index("index")
        points.loc[found.index, "at_units"] = found["units"]
        points.loc[found.index, "at_cost"] = found["cost"]
    units_known = points["contract_service_id"].isin(set(units["contract_service_id"].astype("int64")))
    points["units_unknown"] = existing & ~units_known
    points["at_units"] = points["at_units"].fillna(0.0)
    fallback_cost = points["group"].map(groups["cs_unit_cost"])
    service_cost = snapshot.services.set_index("service_id")["unit_cost"]
    fallback_cost = fallback_cost.fillna(points["group"].map(groups["service_id"]).map(service_cost))
    points["at_cost"] = points["at_cost"].fillna(fallback_cost.where(existing))

    difference = points["target"] - points["at_units"]
    previous_difference = difference.groupby(points["group"]).shift().fillna(0.0)
    points["unit_change"] = (difference - previous_difference).round(4)
    points["units_before"] = (points["at_units"] + previous_difference).round(4)
    points["cost_change"] = np.nan
    points["cost_before"] = np.nan
    _cost_changes(points)
    return points


def _cost_changes(points: pd.DataFrame) -> None:
    """Mark where an adjustedUnitCost is needed. An adjustment's cost holds from its date on, so once the
    plan sets a cost, later dates compare with that, not with what Autotask had."""
    mismatch = (points["bss_cost"] - points["at_cost"]).abs() > _MONEY_EPSILON
    candidates = points.loc[mismatch & points["at_cost"].notna(), "group"].unique()
    if len(candidates) == 0:
        return
    subset = points[points["group"].isin(candidates)]
    changes: dict[int, tuple[float, float]] = {}
    current_group = None
    override: float | None = None
    for index, group, target, autotask in zip(
        subset.index, subset["group"], subset["bss_cost"], subset["at_cost"], strict=True
    ):
        if group != current_group:
            current_group, override = group, None
        in_force = override if override is not None else autotask
        if np.isnan(target) or (
            in_force is not None and not np.isnan(in_force) and abs(target - in_force) <= _MONEY_EPSILON
        ):
            continue
        changes[index] = (target, in_force)
        override = target
    if changes:
        index = list(changes)
        points.loc[index, "cost_change"] = [value[0] for value in changes.values()]
        points.loc[index, "cost_before"] = [value[1] for value in changes.values()]


# -- from the comparison to actions ----------------------------------------------------------------------


class _AdjustmentRow(NamedTuple):
    """The columns of a compared date `_adjustments` reads, as plain Python values."""

    group: str
    point: pd.Timestamp
    unit_change: float
    cost_change: float  # NaN: no cost change
    cost_before: float
    units_before: float
    target: float
    bss_point: bool
    autotask_adjusted: bool
    units_unknown: bool
    ends_term: bool
    starts_term: bool


class _PlanBuilder:
    def __init__(
        self,
        month: BillingMonth,
        settings: SyncSettings,
        lines: pd.DataFrame,
        groups: pd.DataFrame,
        points: pd.DataFrame,
        snapshot: SnapshotState,
        accounts: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.month = month
        self.settings = settings
        self.lines = lines
        self.groups = groups
        self.points = points
        self.accounts = accounts
        self.contracts = snapshot.contracts.set_index("contract_id")
        # numpy datetime64 values (NaT for none): a Timestamp per contract costs more than the lookups
        starts = self.contracts["start_date"]
        self.contract_starts = dict(zip(starts.index.tolist(), starts.to_numpy(), strict=True))
        self.dates: dict[pd.Timestamp, date] = {}
        self.group_charge_ids: dict[str, tuple[str, ...]] = {}
        self.group_info: dict[str, dict[str, Any]] = {}
        self.actions: list[PlanAction] = []
        self.company_actions: dict[str, PlanAction] = {}
        self.service_actions: dict[str, PlanAction] = {}
        self.contract_actions: dict[str, PlanAction] = {}
        self.extend_actions: dict[int, PlanAction] = {}
        self.groups_with_actions: set[str] = set()
        # `_prepare_lines` sorts the lines by group: each group's lines are one block of positions
        codes = lines["group_code"].to_numpy()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(codes)]
        self.charges_of_group = {
            group: np.arange(start, end)
            for group, start, end in zip(
                lines["group"].to_numpy()[starts].tolist(), starts.tolist(), ends.tolist(), strict=True
            )
        }
        self.charge_id_array = lines["charge_id"].to_numpy(dtype=object)
        self.point_array = lines["point"].to_numpy()

    def build(self) -> list[PlanAction]:
        emitted = self.points[(self.points["unit_change"].abs() > _UNITS_EPSILON) | self.points["cost_change"].notna()]
        emitted = emitted.sort_values(["group", "point"], kind="stable")
        self._extensions()
        # plain dicts: a pandas row lookup per group costs more than the whole comparison
        needed = self.groups.loc[emitted["group"].unique()]
        columns = list(needed.columns)
        # column by column (`tolist` boxes the values as iterating the rows would, in bulk)
        values_of = [needed.index.tolist(), *(needed[column].tolist() for column in columns)]
        self.group_info = {
            values[0]: dict(zip(columns, values[1:], strict=True)) for values in zip(*values_of, strict=True)
        }
        # the rows as plain Python values (floats, bools, Timestamps), column by column
        rows = zip(*(emitted[column].tolist() for column in _AdjustmentRow._fields), strict=True)
        by_group: dict[str, list[_AdjustmentRow]] = defaultdict(list)
        for row in map(_AdjustmentRow._make, rows):
            by_group[row.group].append(row)
        for group, group_rows in by_group.items():
            self._adjustments(group, group_rows)
        return self.actions

    # extensions first: an adjustment after the contract's end needs the new end date
    def _extensions(self) -> None:
        linked = self.groups[self.groups["contract_id"].notna()]
        if linked.empty:
            return
        reach = linked.groupby("contract_id").agg(
            last_point=("last_point", "max"), commitment_months=("commitment_months", "max")
        )
        reach = reach.join(self.contracts[["end_date"]], how="inner")
        reach = reach[reach["end_date"].notna() & (reach["last_point"] > reach["end_date"])]
        if reach.empty:
            return
        extended = linked[linked["contract_id"].isin(reach.index)]
        groups_of = extended.groupby("contract_id").groups
        subscriptions_of = dict(zip(extended.index.tolist(), extended["subscriptions"].tolist(), strict=True))
        flag_of = dict(zip(extended.index.tolist(), extended["contract_flag"].tolist(), strict=True))
        for contract_id, end, commitment_months, last_point in zip(
            reach.index, reach["end_date"], reach["commitment_months"], reach["last_point"], strict=True
        ):
            contract_id = int(contract_id)
            cycle = _cycle_of(int(commitment_months))
            new_end = renewed_end_date(end.date(), cycle, last_point.date(), self.settings.minimum_contract_months)
            contract_groups = list(groups_of[contract_id])
            charge_ids = self._charge_ids(contract_groups, after=end)
            action = PlanAction.build(
                kind=ActionKind.EXTEND_CONTRACT,
                month=self.month.key,
                target=f"contract:C{contract_id}",
                effective_date=None,
                contract_id=contract_id,
                subscription_ids=tuple(sorted({s for group in contract_groups for s in subscriptions_of[group]})),
                end_date_before=end.date(),
                end_date_after=new_end,
                payload={"id": contract_id, "endDate": _api_date(new_end)},
                charge_ids=charge_ids,
            )
            action = self._held_by_link(action, flag_of[contract_groups[0]], "contract", contract_id)
            self.extend_actions[contract_id] = action
            self.actions.append(action)
            self.groups_with_actions.update(contract_groups)

    def _adjustments(self, group: str, rows: list[_AdjustmentRow]) -> None:
        info = self.group_info[group]
        self.groups_with_actions.add(group)
        contract_id = _int_or_none(info["contract_id"])
        service_id = _int_or_none(info["service_id"])
        contract_service_id = _int_or_none(info["contract_service_id"])
        contract_action = None if contract_id is not None else self._create_contract(group, info)
        service_action = None if service_id is not None else self._create_service(info)
        cs_action = None
        if contract_service_id is None:
            cs_action = self._create_contract_service(group, info, contract_action, service_action)
        extend = self.extend_actions.get(contract_id) if contract_id is not None else None
        contract_start = self.contract_starts.get(contract_id) if contract_id is not None else None
        contract_start = None if contract_start is None or np.isnat(contract_start) else pd.Timestamp(contract_start)
        # what every adjustment of the group shares
        month_key = self.month.key
        target = f"cs:{group}"
        account_id = info["account_id"]
        subscription_ids = info["subscriptions"]
        product_id = info["product_id"]
        contract_action_id = _id_of(contract_action)
        service_action_id = _id_of(service_action)
        cs_action_id = _id_of(cs_action)
        contract_flag = info["contract_flag"]
        service_flag = info["service_flag"]
        review_decreases = info["commitment_months"] >= self.settings.review_decreases_from_months
        base_depends = [action for action in (cs_action, contract_action, service_action) if action]
        previous: PlanAction | None = None
        for row in rows:
            unit_change = _decimal(row.unit_change)
            cost_change = row.cost_change
            cost_after = None if cost_change != cost_change else _decimal(cost_change)  # NaN: no cost change
            kind = ActionKind.ADJUST_UNITS if unit_change != 0 else ActionKind.CHANGE_COST
            effective = self._date_of(row.point)
            payload: dict[str, Any] = {
                "contractID": contract_id,
                "serviceID": service_id,
                "contractServiceID": contract_service_id,
                "effectiveDate": _api_date(effective),
                "unitChange": unit_change,
            }
            if cost_after is not None:
                payload["adjustedUnitCost"] = cost_after
            # each unitChange is relative to the previous one of the same contract service: a chain
            depends = base_depends if previous is None else [*base_depends, previous]
            if extend is not None and effective > extend.end_date_before:
                depends = [*depends, extend]
            cost_before = row.cost_before
            action = PlanAction.build(
                kind=kind,
                month=month_key,
                target=target,
                effective_date=effective,
                account_id=account_id,
                subscription_ids=subscription_ids,
                product_id=product_id,
                contract_id=contract_id,
                contract_action_id=contract_action_id,
                service_id=service_id,
                service_action_id=service_action_id,
                contract_service_id=contract_service_id,
                contract_service_action_id=cs_action_id,
                units_before=_decimal(row.units_before),
                units_after=_decimal(row.target),
                unit_change=unit_change,
                unit_cost_before=None if cost_after is None or cost_before != cost_before else _decimal(cost_before),
                unit_cost_after=cost_after,
                payload=payload,
                charge_ids=self._charge_ids_at(group, row.point),
                depends_on=tuple(sorted([action.action_id for action in depends])),
            )
            action = self._held_by_link(action, contract_flag, "contract", contract_id)
            action = self._held_by_link(action, service_flag, "service", service_id)
            if not row.bss_point and row.autotask_adjusted:
                action = action.held(
                    ActionStatus.FLAGGED,
                    "Autotask's units were adjusted on this date without a "
                    "BSS change (Autotask refuses a second adjustment on one date)",
                )
            if row.units_unknown:
                action = action.held(
                    ActionStatus.FLAGGED,
                    f"no ContractServiceUnits for contract service "
                    f"{contract_service_id} in the snapshot: its current units are unknown",
                )
            if unit_change < 0 and review_decreases and not (row.ends_term or row.starts_term):
                action = action.held(
                    ActionStatus.FLAGGED,
                    f"decrease of {-unit_change} units inside a {info['commitment_months']}-month commitment",
                )
            if contract_start is not None and row.point < contract_start:
                action = action.held(ActionStatus.FLAGGED, "effective date is before the contract's start date")
            for dependency in depends:
                if dependency.status is not ActionStatus.PROPOSED:
                    action = action.held(dependency.status, f"depends on {dependency.kind} ({dependency.status})")
            self.actions.append(action)
            previous = action

    # -- creates -----------------------------------------------------------------------------------------

    def _create_company(self, info: Mapping[str, Any]) -> PlanAction:
        account_id = info["account_id"]
        if account_id in self.company_actions:
            return self.company_actions[account_id]
        account = self.accounts.get(account_id) or {}
        name = str(
            account.get("name") or self.lines.loc[self.lines["account_id"] == account_id, "account_name"].iloc[0]
        )
        payload: dict[str, Any] = {
            "companyName": name[:100],
            "companyType": self.settings.company_type,
            "ownerResourceID": self.settings.owner_resource_id,
            "phone": (account.get("phone") or "")[:25] or None,
            "address1": account.get("street"),
            "city": account.get("city"),
            "postalCode": account.get("postal_code"),
        }
        # the key makes next month link by key instead of by name
        if self.settings.company_key_field:
            payload[self.settings.company_key_field] = account_id
        elif self.settings.company_key_udf:
            payload["userDefinedFields"] = [{"name": self.settings.company_key_udf, "value": account_id}]
        action = PlanAction.build(
            kind=ActionKind.CREATE_COMPANY,
            month=self.month.key,
            target=f"account:{account_id}",
            account_id=account_id,
            payload=payload,
        )
        if info["company_suggestions"]:
            action = action.held(
                ActionStatus.NEEDS_MAPPING,
                f"{info['company_suggestions']} suggested "
                "companies wait for a person: confirm one, or approve creating a new one",
            )
        if self.settings.owner_resource_id is None:
            action = action.held(ActionStatus.FLAGGED, "owner_resource_id is not configured")
        if not payload["phone"]:
            action = action.held(ActionStatus.FLAGGED, "the BSS account has no phone (Autotask requires one)")
        self.company_actions[account_id] = action
        self.actions.append(action)
        return action

    def _create_service(self, info: Mapping[str, Any]) -> PlanAction:
        product_id = info["product_id"]
        if product_id in self.service_actions:
            return self.service_actions[product_id]
        payload = {
            "name": str(info["product_name"])[:100],
            "unitPrice": _decimal(info["unit_price"]),
            "unitCost": _decimal(info["unit_cost"]),
            "periodType": self.settings.period_type(info["billing_period"]),
            "billingCodeID": self.settings.billing_code_id,
            "sku": (info["product_sku"] or None),
            "isActive": True,
        }
        action = PlanAction.build(
            kind=ActionKind.CREATE_SERVICE,
            month=self.month.key,
            target=f"product:{product_id}",
            product_id=product_id,
            payload=payload,
        )
        if info["service_suggestions"]:
            action = action.held(
                ActionStatus.NEEDS_MAPPING,
                f"{info['service_suggestions']} suggested services "
                "wait for a person: confirm one, or approve creating a new one",
            )
        if self.settings.billing_code_id is None:
            action = action.held(ActionStatus.FLAGGED, "billing_code_id is not configured")
        self.service_actions[product_id] = action
        self.actions.append(action)
        return action

    def _create_contract(self, group: str, info: Mapping[str, Any]) -> PlanAction:
        (subscription_id,) = info["subscriptions"]
        if subscription_id in self.contract_actions:
            return self.contract_actions[subscription_id]
        company_id = _int_or_none(info["company_id"])
        company_action = self._create_company(info) if company_id is None else None
        months = self.settings.minimum_contract_months
        start, end = commitment_term(info["billing_cycle"], info["first_point"].date(), months)
        end = renewed_end_date(end, info["billing_cycle"], info["last_point"].date(), months)
        payload = {
            "companyID": company_id,
            "contractName": f"{info['product_name']} ({subscription_id})"[:100],
            "contractType": RECURRING_SERVICE_CONTRACT_TYPE,
            "startDate": _api_date(start),
            "endDate": _api_date(end),
            "status": self.settings.contract_status,
            "timeReportingRequiresStartAndStopTimes": self.settings.time_reporting_requires_start_and_stop_times,
            "contractNumber": subscription_id[:50],
        }
        action = PlanAction.build(
            kind=ActionKind.CREATE_CONTRACT,
            month=self.month.key,
            target=f"subscription:{subscription_id}",
            account_id=info["account_id"],
            subscription_ids=(subscription_id,),
            product_id=info["product_id"],
            company_id=company_id,
            company_action_id=_id_of(company_action),
            end_date_after=end,
            payload=payload,
            charge_ids=self._charge_ids_of(group),
            depends_on=tuple(filter(None, [_id_of(company_action)])),
        )
        if info["contract_suggestions"]:
            action = action.held(
                ActionStatus.NEEDS_MAPPING,
                f"{info['contract_suggestions']} suggested "
                "contracts wait for a person: confirm one, or approve creating a new one",
            )
        action = self._held_by_link(action, info["company_flag"], "company", company_id)
        if company_action is not None and company_action.status is not ActionStatus.PROPOSED:
            action = action.held(company_action.status, f"depends on create_company ({company_action.status})")
        self.contract_actions[subscription_id] = action
        self.actions.append(action)
        return action

    def _create_contract_service(
        self, group: str, info: Mapping[str, Any], contract_action: PlanAction | None, service_action: PlanAction | None
    ) -> PlanAction:
        contract_id = _int_or_none(info["contract_id"])
        service_id = _int_or_none(info["service_id"])
        dependencies = [action for action in (contract_action, service_action) if action]
        action = PlanAction.build(
            kind=ActionKind.CREATE_CONTRACT_SERVICE,
            month=self.month.key,
            target=f"cs:{group}",
            account_id=info["account_id"],
            subscription_ids=info["subscriptions"],
            product_id=info["product_id"],
            contract_id=contract_id,
            contract_action_id=_id_of(contract_action),
            service_id=service_id,
            service_action_id=_id_of(service_action),
            payload={
                "contractID": contract_id,
                "serviceID": service_id,
                "unitPrice": _decimal(info["unit_price"]),
                "unitCost": _decimal(info["unit_cost"]),
            },
            charge_ids=self._charge_ids_of(group),
            depends_on=tuple(sorted(action.action_id for action in dependencies)),
        )
        action = self._held_by_link(action, info["contract_flag"], "contract", contract_id)
        action = self._held_by_link(action, info["service_flag"], "service", service_id)
        for dependency in dependencies:
            if dependency.status is not ActionStatus.PROPOSED:
                action = action.held(dependency.status, f"depends on {dependency.kind} ({dependency.status})")
        self.actions.append(action)
        return action

    # -- helpers -----------------------------------------------------------------------------------------

    @staticmethod
    def _held_by_link(action: PlanAction, flag: Any, kind: str, target_id: int | None) -> PlanAction:
        if flag is None or (isinstance(flag, float) and np.isnan(flag)) or pd.isna(flag):
            return action
        state = "no longer exists" if flag == "target_missing" else "is inactive"
        return action.held(ActionStatus.FLAGGED, f"the linked Autotask {kind} {target_id} {state}")

    def _date_of(self, point: pd.Timestamp) -> date:
        day = self.dates.get(point)
        if day is None:
            day = self.dates[point] = point.date()
        return day

    def _charge_ids_at(self, group: str, point: pd.Timestamp) -> tuple[str, ...]:
        positions = self.charges_of_group.get(group)
        if positions is None:
            return ()
        positions = positions[self.point_array[positions] == point.to_datetime64()]
        return tuple(sorted(self.charge_id_array[positions]))

    def _charge_ids_of(self, group: str) -> tuple[str, ...]:
        """All charge ids of one group (a contract and its contract service both carry them)."""
        found = self.group_charge_ids.get(group)
        if found is None:
            found = self.group_charge_ids[group] = self._charge_ids([group])
        return found

    def _charge_ids(self, groups: Any, after: pd.Timestamp | None = None) -> tuple[str, ...]:
        found: set[str] = set()
        for group in groups:
            positions = self.charges_of_group.get(group)
            if positions is None:
                continue
            if after is not None:
                positions = positions[self.point_array[positions] > after.to_datetime64()]
            found.update(self.charge_id_array[positions])
        return tuple(sorted(found))


def _cycle_of(months: int) -> str:
    by_months = defaultdict(str, {value: key for key, value in COMMITMENT_MONTHS.items()})
    return by_months[months] or "Monthly"


def _id_of(action: PlanAction | None) -> str | None:
    return action.action_id if action is not None else None


def _int_or_none(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _decimal(value: Any) -> Decimal:
    return Decimal(f"{float(value):.4f}").quantize(_FOUR_PLACES)


def _api_date(day: date) -> str:
    return f"{day.isoformat()}T00:00:00"
