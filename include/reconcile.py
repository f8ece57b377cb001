"""Step 5: compare the BSS units in force with Autotask's ContractServiceUnits, per contract service, and
derive the change plan.

The comparison, per contract service (all subscriptions linked to one contract and one service add up):
- BSS units are a step function: each subscription holds the `subscriptionQuantity` of its last line of an
  effective date from that date on. Same-date lines are ordered as the BSS ordered them (its timestamp, then
  the numeric sequence of the charge id), never by the text of the id.
- Before its first line of the month a subscription holds: nothing for a `New` line; else its previous
  total from the warehouse's earlier months (`subscription_history.sql`); else, for a change line, what the
  line itself states (`subscriptionQuantity - quantity`); else (a restating `Cycle`/`Renewal` line and
  nothing known) the BSS says nothing about the days before the line, so the plan proposes no change there:
  the unknown part is what Autotask holds beyond the known subscriptions.
- The effective-date policy moves each BSS date to the Autotask date it is posted at.
- Autotask units at a date are those of the ContractServiceUnits row starting on or before it (a row that
  ended still tells the units a renewal carries on with). Autotask's own period starts inside the month are
  compared too, so a change made only in Autotask is corrected as well.
- An adjustment changes the units from its date on, so the signed `unitChange` at each compared date is the
  change of (BSS - Autotask) since the previous compared date: same-date changes are netted by construction.
- The unit cost is decided once per contract service and date, from the subscriptions in force there; when
  they disagree no cost change is proposed and a person is asked.

What a reviewer sees held back: `needs-mapping` (a link waits for a person), `flagged` (a person approves:
decreases inside commitments, inactive or missing links, a subscription that moved to another customer, a
contract service the BSS no longer bills, a first change inside a billing period over a units difference
Autotask held before it: corrected from the change's date only, the days before are left to the person),
`blocked` (never loads as it stands: Autotask already has an adjustment on that date, the BSS line is in
another currency than the company's Autotask currency, or a data-quality check holds one of the subscription's
lines: `quality_holds`, the check's reason and what a person can do; the month's other lines go on).
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

from include.extract import ensure_run_reads_own_lines
from include.field_mapping import (
    COMMITMENT_MONTHS,
    autotask_effective_date,
    commitment_term,
    renewed_end_date,
)
from include.models import RECURRING_PRICE_CHARGE_TYPES, BillingMonth, ChargeAction
from include.names import LOOK_ALIKES_NOTE
from include.plan import (
    ADJUSTMENT_KINDS,
    MOVED_SUBSCRIPTION,
    ActionKind,
    ActionStatus,
    Hold,
    PlanAction,
    PlanScope,
    PlanSummary,
    held_back,
    order_actions,
    replace_plan,
    sql_in,
)
from include.prices import PricePolicy, PriceRule, policy_of, price_policy_overrides
from include.review_words import units_text
from include.sync_settings import RECURRING_SERVICE_CONTRACT_TYPE, SyncSettings
from include.warehouse import Warehouse, sql

log = logging.getLogger(__name__)

_UNITS_EPSILON = 1e-9
_MONEY_EPSILON = 0.00005
_FOUR_PLACES = Decimal("0.0001")
_DATETIME = "datetime64[ns]"
# months per Autotask Services.periodType (2 Monthly, 3 Quarterly, 4 Semi-Annual, 5 Yearly)
_PERIOD_MONTHS = {2: 1, 3: 3, 4: 6, 5: 12}
# the mapping part's flag for a contract that belongs to another company than the account's
OTHER_COMPANY_FLAG = "other_company"
_RESTATING = (ChargeAction.CYCLE, ChargeAction.RENEWAL)
_CHANGES = (ChargeAction.QUANTITY_INCREASE, ChargeAction.QUANTITY_DECREASE, ChargeAction.CANCELLATION)


@dataclass(frozen=True)
class SnapshotState:
    """The parts of a run's Autotask snapshot reconciliation reads."""

    contracts: pd.DataFrame  # contract_id, company_id, contract_number, status, start_date, end_date
    services: pd.DataFrame  # service_id, is_active, unit_cost, period_type
    contract_services: pd.DataFrame  # contract_service_id, contract_id, service_id, unit_cost
    units: pd.DataFrame  # contract_service_id, start_date, end_date, units, cost, price
    companies: pd.DataFrame  # company_id, company_name, currency (ISO code; None when unknown)
    internal_currency: str | None = None  # the tenant's (a catalogue Service's price is in it); None when unknown

    @classmethod
    def load(
        cls,
        warehouse: Warehouse,
        run_id: str,
        contracts_of: tuple[set[int], set[int], set[str]] | None = None,
    ) -> SnapshotState:
        """The run's snapshot; with `contracts_of` (contract ids, company ids, subscription ids: a scope's), only the
        contracts with those ids, of those companies or numbered with those subscriptions, and what hangs on them."""
        params: dict[str, Any] = {"run_id": run_id}
        only_contracts = ""
        if contracts_of is not None:
            ids, companies, numbers = contracts_of
            by_id, id_params = sql_in("contract_id", ids, "cid")
            by_company, company_params = sql_in("company_id", companies, "co")
            by_number, number_params = sql_in("contract_number", numbers, "num")
            only_contracts = f" AND ({by_id} OR {by_company} OR {by_number})"
            params = {**params, **id_params, **company_params, **number_params}
        contracts = warehouse.read_frame(
            "SELECT contract_id, company_id, contract_number, status, start_date, end_date FROM at_contracts"
            " WHERE run_id = :run_id" + only_contracts,
            params,
        )
        params = {"run_id": run_id}
        services = warehouse.read_frame(
            "SELECT service_id, is_active, unit_cost, period_type FROM at_services WHERE run_id = :run_id", params
        )
        only_services = ""
        if contracts_of is not None:
            only_services, service_params = sql_in("contract_id", contracts["contract_id"].tolist(), "cid")
            only_services = f" AND {only_services}"
            params = {**params, **service_params}
        contract_services = warehouse.read_frame(
            "SELECT contract_service_id, contract_id, service_id, unit_cost FROM at_contract_services"
            " WHERE run_id = :run_id" + only_services + " ORDER BY contract_service_id",
            params,
        )
        if contracts_of is None:
            units = warehouse.read_frame("snapshot_units", params)
        else:
            held, held_params = sql_in("contract_service_id", contract_services["contract_service_id"].tolist(), "cs")
            units = warehouse.read_frame(
                f"SELECT * FROM ({sql('snapshot_units')}) units WHERE {held}", {"run_id": run_id, **held_params}
            )
        params = {"run_id": run_id}
        companies = warehouse.read_frame(
            "SELECT company_id, company_name, currency FROM at_companies WHERE run_id = :run_id", params
        )
        internal = warehouse.query("SELECT internal_currency FROM at_snapshots WHERE run_id = :run_id", params)
        internal_currency = internal[0]["internal_currency"] if internal else None
        return cls(contracts, services, contract_services, units, companies, internal_currency).typed()

    def typed(self) -> SnapshotState:
        """The same frames with the column types the comparison relies on (dates, floats)."""
        for frame, columns in ((self.contracts, ("start_date", "end_date")), (self.units, ("start_date", "end_date"))):
            for column in columns:
                frame[column] = pd.to_datetime(frame[column]).astype(_DATETIME)
        for frame, columns in (
            (self.services, ("unit_cost",)),
            (self.contract_services, ("unit_cost",)),
            (self.units, ("units", "cost", "price")),
        ):
            for column in columns:
                if column not in frame:
                    frame[column] = np.nan
                frame[column] = frame[column].astype("float64")
        return self


def reconcile_month(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    settings: SyncSettings | None = None,
    scope: PlanScope | None = None,
) -> PlanSummary:
    """Compute the month's change plan from the run's lines, links and snapshot, and store it. With `scope` (a review
    decision's), only the scope's customers' lines are compared and only their plan lines replaced."""
    started = time.monotonic()
    settings = settings or SyncSettings()
    billing_month = BillingMonth.parse(month)
    params = {"month": billing_month.key, "run_id": run_id}
    if scope is None:  # a scope's caller (a review decision) checked it under the month's hold
        ensure_run_reads_own_lines(warehouse, billing_month.key, run_id)
    if scope is None:
        lines = warehouse.read_frame("reconcile_lines", params)
        history = warehouse.read_frame("subscription_history", {"month": billing_month.key})
        contract_links = warehouse.read_frame("reconcile_contract_links", {"run_id": run_id})
        snapshot = SnapshotState.load(warehouse, run_id)
    else:
        of_scope, scope_params = sql_in("account_id", scope.accounts, "acc")
        lines = warehouse.read_frame(
            f"SELECT * FROM ({sql('reconcile_lines')}) lines WHERE {of_scope}", {**params, **scope_params}
        )
        history = warehouse.read_frame(
            f"SELECT * FROM ({sql('subscription_history')}) history WHERE {of_scope}",
            {"month": billing_month.key, **scope_params},
        )
        subscriptions = set(lines["subscription_id"]) | set(history["subscription_id"])
        of_subscriptions, subscription_params = sql_in("subscription_id", subscriptions, "sub")
        contract_links = warehouse.read_frame(
            f"SELECT * FROM ({sql('reconcile_contract_links')}) links WHERE {of_subscriptions}",
            {"run_id": run_id, **subscription_params},
        )
        contract_ids = {int(value) for value in lines["contract_id"].dropna()} | {
            int(value) for value in contract_links["contract_id"].dropna()
        }
        company_ids = {int(value) for value in lines["company_id"].dropna()}
        snapshot = SnapshotState.load(warehouse, run_id, (contract_ids, company_ids, subscriptions))
    if scope is None:
        accounts = {row["account_id"]: row for row in warehouse.query("reconcile_accounts", params)}
    else:
        of_accounts, account_params = sql_in("account_id", scope.accounts, "acc")
        accounts = {
            row["account_id"]: row
            for row in warehouse.query(
                f"SELECT * FROM ({sql('reconcile_accounts')}) accounts WHERE {of_accounts}",
                {**params, **account_params},
            )
        }
    earlier_approved = warehouse.read_frame("earlier_approved_actions", {"month": billing_month.key})
    summary = PlanSummary(run_id=run_id, month=billing_month.key)
    actions = compute_plan(
        lines,
        snapshot,
        accounts,
        billing_month,
        settings,
        summary,
        history,
        contract_links,
        earlier_approved,
        price_policy_overrides(warehouse),
        held_subscriptions(warehouse, billing_month.key, run_id),
    )
    if scope is None:
        replace_plan(warehouse, billing_month.key, run_id, actions, summary)
    else:
        # a contract reconciled from another customer's lines is not unbilled (the whole month's plan knows it)
        unbilled = {action.contract_id for action in actions if action.kind is ActionKind.REVIEW_UNBILLED}
        of_unbilled, unbilled_params = sql_in("target_id", unbilled, "con")
        billed = (
            {
                int(row["target_id"])
                for row in warehouse.query(
                    "SELECT DISTINCT target_id FROM month_links WHERE run_id = :run_id AND kind = 'contract'"
                    f" AND {of_unbilled} AND source_key IN (SELECT subscription_id FROM charge_lines"
                    " WHERE month = :month AND charge_type IN ('Recurring', 'Prorated', 'Credit') AND action IN"
                    " ('Cycle', 'New', 'Renewal', 'QuantityIncrease', 'QuantityDecrease', 'Cancellation'))",
                    {**params, **unbilled_params},
                )
            }
            if unbilled
            else set()
        )
        actions = [
            action
            for action in actions
            if not (action.kind is ActionKind.REVIEW_UNBILLED and action.contract_id in billed)
        ]
        scope_contracts = {int(value) for value in lines["contract_id"].dropna()}
        replace_plan(warehouse, billing_month.key, run_id, actions, summary, scope, scope_contracts)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info("reconcile %s for %s: %s", run_id, billing_month, summary.as_dict())
    return summary


def held_subscriptions(warehouse: Warehouse, month: str, run_id: str) -> dict[str, str]:
    """The subscriptions a data-quality check of the run holds (`quality_holds`), each with why: the held lines
    and the checks' reasons. All of a held subscription's plan lines are blocked; the month goes on."""
    rows = warehouse.query(
        "SELECT h.charge_id, h.reason, l.subscription_id FROM quality_holds h"
        " JOIN charge_lines l ON l.month = h.month AND l.charge_id = h.charge_id"
        " WHERE h.run_id = :run_id AND h.month = :month ORDER BY l.subscription_id, h.charge_id, h.expectation",
        {"run_id": run_id, "month": month},
    )
    lines: dict[str, list[str]] = defaultdict(list)
    reasons: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        subscription = row["subscription_id"]
        if row["charge_id"] not in lines[subscription]:
            lines[subscription].append(row["charge_id"])
        if row["reason"] not in reasons[subscription]:
            reasons[subscription].append(row["reason"])
    return {
        subscription: f"line {', '.join(lines[subscription])} of subscription {subscription} is "
        + "; ".join(reasons[subscription])
        for subscription in lines
    }


def compute_plan(
    lines: pd.DataFrame,
    snapshot: SnapshotState,
    accounts: Mapping[str, Mapping[str, Any]],
    month: BillingMonth,
    settings: SyncSettings,
    summary: PlanSummary | None = None,
    history: pd.DataFrame | None = None,
    contract_links: pd.DataFrame | None = None,
    earlier_approved: pd.DataFrame | None = None,
    price_policies: Mapping[str, PricePolicy] | None = None,
    held: Mapping[str, str] | None = None,
) -> list[PlanAction]:
    """The plan for `lines` (rows of `reconcile_lines.sql`) against `snapshot`, in apply order. Pure.

    `history` (rows of `subscription_history.sql`) tells what each subscription held before the month;
    `contract_links` (rows of `reconcile_contract_links.sql`) find the contracts of subscriptions without a
    line this month; `earlier_approved` (rows of `earlier_approved_actions.sql`) are earlier months' approved
    changes not loaded yet, counted as if Autotask held them. `price_policies` are customers' own price policies (BSS
    account -> policy, include/prices.py); every other customer is priced by `settings.price_policy`. `held`
    (`held_subscriptions`) the subscriptions a data-quality check holds: every plan line of theirs is blocked with
    the check's reason."""
    summary = summary or PlanSummary(run_id="", month=month.key)
    snapshot = with_earlier_approved(snapshot, earlier_approved)
    history = history if history is not None else _empty_history()
    actions: list[PlanAction] = []
    groups = pd.DataFrame()
    if not lines.empty:
        lines = lines.assign(quality_hold=lines["subscription_id"].map(dict(held or {})))
        lines = _prepare_lines(lines, settings, history, snapshot)
        groups = _groups(lines, snapshot)
        _price_policies(groups, settings.default_price_policy, price_policies or {})
        points = _compare(lines, groups, snapshot, month)
        builder = _PlanBuilder(month, settings, lines, groups, points, snapshot, accounts)
        actions = builder.build()
        summary.contract_services = len(groups)
        summary.contract_services_in_sync = len(groups) - len(builder.groups_with_actions)
    billed = set(lines["subscription_id"]) if not lines.empty else set()
    # a contract with lines this month is reconciled from them
    reconciled = set(groups["contract_id"].dropna().astype("int64")) if not groups.empty else set()
    actions += _unbilled_reviews(month, history, contract_links, snapshot, billed, reconciled)
    return order_actions(held_for_earlier_creates(actions, earlier_approved))


# -- the comparison, as set operations -------------------------------------------------------------------


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame(
        columns=[
            "subscription_id",
            "last_month",
            "last_effective_date",
            "previous_total",
            "account_id",
            "product_id",
            "billing_period",
            "billing_cycle",
            "last_charge_end_date",
            "last_action",
        ]
    )


def _charge_order(lines: pd.DataFrame) -> pd.DataFrame:
    """The BSS's own order of a subscription's same-date lines: its timestamp (missing ones first, as
    `subscription_history.sql` reads them), then the charge id's numeric sequence (its trailing digits
    where the warehouse has none), then the id."""
    charged_at = pd.to_datetime(lines["charged_at"], errors="coerce") if "charged_at" in lines else pd.NaT
    sequence = lines["charge_sequence"] if "charge_sequence" in lines else pd.Series(np.nan, index=lines.index)
    sequence = pd.to_numeric(sequence, errors="coerce")
    # the trailing digits are read only from the ids of lines without a sequence
    without_sequence = lines.loc[sequence.isna(), "charge_id"]
    tail = pd.to_numeric(without_sequence.str.extract(r"(\d+)\D*$")[0], errors="coerce")
    return lines.assign(charged_at=charged_at, charge_sequence=sequence.fillna(tail).fillna(-1).astype("float64"))


def _prepare_lines(
    lines: pd.DataFrame, settings: SyncSettings, history: pd.DataFrame, snapshot: SnapshotState
) -> pd.DataFrame:
    """The lines typed, grouped by contract service, in BSS order, each with the Autotask date it posts at;
    a moved subscription's lines regrouped under a contract of its own plus a zeroing line for the old one."""
    lines = lines.copy()
    # one resolution for every date column: merge_asof refuses to compare s with us
    lines["effective_date"] = pd.to_datetime(lines["effective_date"]).astype(_DATETIME)
    lines["charge_end_date"] = pd.to_datetime(lines["charge_end_date"]).astype(_DATETIME)
    for column in ("quantity", "subscription_quantity", "unit_cost", "unit_price"):
        lines[column] = lines[column].astype("float64")
    for column in ("company_id", "contract_id", "service_id"):
        lines[column] = lines[column].astype("Int64")
    for column in ("company_suggestions", "contract_suggestions", "service_suggestions"):
        lines[column] = lines[column].fillna(0).astype("int64")
    for column in ("contract_detail", "company_detail", "company_currency", "currency"):
        if column not in lines:
            lines[column] = None
    lines = _charge_order(lines)
    lines = _regroup_moved(lines, snapshot)

    # what each subscription held before its first line of the month
    lines = lines.sort_values(
        ["subscription_id", "effective_date", "charged_at", "charge_sequence", "charge_id"],
        kind="stable",
        na_position="first",
        ignore_index=True,
    )
    previous_total = history.set_index("subscription_id")["previous_total"].astype("float64")
    # (read on the lines that stay on the subscription's contract when it has some: a moved line starts from
    # nothing on its new contract, and the zeroing of the old one starts from this)
    first = lines.sort_values("moved", kind="stable").drop_duplicates("subscription_id")
    from_history = first["subscription_id"].map(previous_total)
    stated = (first["subscription_quantity"] - first["quantity"]).where(first["action"].isin(_CHANGES))
    before = from_history.fillna(stated).where(first["action"] != ChargeAction.NEW, 0.0)
    lines["units_before_month"] = lines["subscription_id"].map(pd.Series(before.to_numpy(), first["subscription_id"]))

    lines = _add_zeroing_lines(lines, snapshot)
    lines["contract_ref"] = np.where(
        lines["contract_id"].notna(), "C" + lines["contract_id"].astype(str), "S:" + lines["subscription_id"]
    )
    lines["service_ref"] = np.where(
        lines["service_id"].notna(), "V" + lines["service_id"].astype(str), "P:" + lines["product_id"]
    )
    lines["group"] = lines["contract_ref"] + "/" + lines["service_ref"]
    # a subscription's part in one contract service (a moved subscription has a part in two)
    lines["holding"] = lines["group"] + "|" + lines["subscription_id"]
    lines["group_code"] = pd.factorize(lines["group"], sort=True)[0]
    # one sort serves every step: each group's lines are one block, each holding's lines in BSS order
    lines = lines.sort_values(
        ["group_code", "subscription_id", "effective_date", "charged_at", "charge_sequence", "charge_id"],
        kind="stable",
        na_position="first",
        ignore_index=True,
    )
    # the policy is defined once, on dates (field_mapping); a month has at most ~31 distinct ones
    posted_at = {
        day: pd.Timestamp(autotask_effective_date(day.date(), settings.effective_date_policy))
        for day in lines["effective_date"].unique()
    }
    lines["point"] = lines["effective_date"].map(posted_at).astype(_DATETIME)
    lines["commitment_months"] = lines["billing_cycle"].map(COMMITMENT_MONTHS).fillna(1).astype("int64")
    lines["ends_term"] = lines["action"] == ChargeAction.CANCELLATION
    lines["starts_term"] = lines["action"].isin([ChargeAction.NEW, ChargeAction.RENEWAL])
    lines["currency_mismatch"] = (
        lines["company_currency"].notna()
        & lines["currency"].notna()
        & (lines["currency"].astype(str).str.upper() != lines["company_currency"].astype(str).str.upper())
    )
    return lines


def _regroup_moved(lines: pd.DataFrame, snapshot: SnapshotState) -> pd.DataFrame:
    """A subscription's lines billed to another company than the one owning its contract get a contract of their
    own under their account's company; `moved_from` keeps the old contract, `move_reason` says why for the reviewer.

    A line is moved when its contract belongs to another company than its account's (the mapping part flags it
    `other_company`; a company mismatch found here counts the same), or when its subscription is billed to more
    than one account this month (a move in mid-month: a cancellation credit on the old account, a New line on the
    new one) and the line is not of the subscription's first account in the BSS's order: the first account's lines
    stay on the subscription's contract, the later account's never land there, even when its company is not
    linked yet (its contract then waits for the company to be created or linked)."""
    contract_company = snapshot.contracts.set_index("contract_id")["company_id"]
    owner = lines["contract_id"].map(contract_company).astype("Int64")
    mismatch = (owner.notna() & lines["company_id"].notna() & (owner != lines["company_id"])).fillna(False)
    flagged = (lines["contract_flag"] == OTHER_COMPANY_FLAG).fillna(False) & ~(
        owner.notna() & (owner == lines["company_id"])
    ).fillna(False)
    # the subscription's first account: the one billing it from the earliest date; on one date (a cancellation
    # credit and a New line on the move's day, in whatever order the BSS issued them) the one that cancels to 0
    holding = lines.groupby(["subscription_id", "account_id"], sort=False)
    account_from = holding["effective_date"].transform("min")
    cancels = (lines["action"] == ChargeAction.CANCELLATION) & (lines["subscription_quantity"] == 0)
    leaves = cancels.groupby([lines["subscription_id"], lines["account_id"]], sort=False).transform("any")
    in_order = lines.assign(account_from=account_from, stays=~leaves).sort_values(
        ["subscription_id", "account_from", "stays", "effective_date", "charged_at", "charge_sequence", "charge_id"],
        kind="stable",
        na_position="first",
    )
    first_account = in_order.drop_duplicates("subscription_id").set_index("subscription_id")["account_id"]
    previous_account = lines["subscription_id"].map(first_account)
    changed_account = (lines["account_id"] != previous_account).fillna(False)
    moved = flagged | mismatch | changed_account
    # the old account's part of a move in mid-month, when Autotask has no contract for the subscription: nothing
    # there to take to 0, and a contract for a customer who left is a person's decision (the reason says so)
    moved_in_month = lines["subscription_id"].isin(lines.loc[changed_account, "subscription_id"])
    unwritten = moved_in_month & ~moved & lines["contract_id"].isna()
    unwritten_subscriptions = set(lines.loc[unwritten, "subscription_id"])
    names = lines.drop_duplicates("account_id").set_index("account_id")["account_name"]
    lines = lines[~unwritten].copy()
    moved, flagged, changed_account = moved[~unwritten], flagged[~unwritten], changed_account[~unwritten]
    owner, previous_account = owner[~unwritten], previous_account[~unwritten]
    lines["moved"] = moved
    lines["moved_from"] = lines["contract_id"].where(moved).astype("Int64")
    lines["move_reason"] = None
    if moved.any():
        generated = (
            "contract "
            + lines.loc[moved, "contract_id"].astype(str)
            + " belongs to company "
            + owner[moved].astype(str)
            + "; account "
            + lines.loc[moved, "account_id"]
            + " is linked to company "
            + lines.loc[moved, "company_id"].astype(str)
        )
        move_day = lines[moved].groupby("subscription_id")["effective_date"].min()
        from_account = (
            "account "
            + previous_account[moved]
            + ' "'
            + previous_account[moved].map(names).fillna("").astype(str)
            + '" billed it until '
            + lines.loc[moved, "subscription_id"].map(move_day).dt.strftime("%Y-%m-%d")
            + ", account "
            + lines.loc[moved, "account_id"]
            + ' "'
            + lines.loc[moved, "account_name"].fillna("").astype(str)
            + '" from then on: the old contract service goes to 0 from that day, a contract of the new customer '
            "holds the units"
        )
        detail = lines.loc[moved, "contract_detail"]
        detail = detail.where(~changed_account[moved], from_account)
        detail = detail.where(detail.notna(), generated)
        unwritten_note = np.where(
            lines.loc[moved, "subscription_id"].isin(unwritten_subscriptions),
            "; the old customer's lines up to the move are not written (Autotask has no contract of the "
            "subscription for them): bill them by hand if they are due",
            "",
        )
        lines.loc[moved, "move_reason"] = MOVED_SUBSCRIPTION + ": " + detail + unwritten_note
        lines.loc[moved, "contract_id"] = _own_contract_of_moved(lines[moved], snapshot).reindex(lines.index)[moved]
        lines.loc[moved, "contract_flag"] = None
        lines.loc[moved, "contract_suggestions"] = 0
    return lines


def _own_contract_of_moved(moved: pd.DataFrame, snapshot: SnapshotState) -> pd.Series:
    """The contract a moved subscription already has under its account's company: one stamped with its
    subscription id (`contractNumber`), as an earlier plan created it. Without one (NA) the plan creates it;
    with one, re-running a loaded month compares with it instead of creating a second contract."""
    contracts = snapshot.contracts.dropna(subset=["contract_number", "company_id"])
    contracts = contracts.sort_values(["end_date", "contract_id"], kind="stable", na_position="first")
    own = contracts.drop_duplicates(["contract_number", "company_id"], keep="last")
    own = own.assign(company_id=own["company_id"].astype("int64"), contract_number=own["contract_number"].astype(str))
    keys = pd.DataFrame(
        {"contract_number": moved["subscription_id"].astype(str), "company_id": moved["company_id"].astype("Int64")}
    )
    keys = keys.astype({"company_id": "float64"}).merge(
        own[["contract_number", "company_id", "contract_id"]].astype({"company_id": "float64"}),
        on=["contract_number", "company_id"],
        how="left",
    )
    return pd.Series(keys["contract_id"].to_numpy(), index=moved.index).astype("Int64")


def _add_zeroing_lines(lines: pd.DataFrame, snapshot: SnapshotState) -> pd.DataFrame:
    """For each moved subscription, a line on its old contract service that takes its units to 0 from the move
    date (its first line of the month), unless the old contract ended before then (Autotask bills nothing
    after a contract's end, and refuses an adjustment there)."""
    moved = lines[lines["moved_from"].notna()]
    lines["zeroing"] = False
    # the moved subscription's own lines start from nothing on their new contract
    lines.loc[lines["moved"], "units_before_month"] = 0.0
    if moved.empty:
        return lines
    first = moved.drop_duplicates("subscription_id").copy()
    contract_end = snapshot.contracts.set_index("contract_id")["end_date"]
    ends = first["moved_from"].astype("int64").map(contract_end)
    first = first[ends.isna() | (first["effective_date"] <= ends)]
    # only an existing contract service of the old contract is zeroed: nothing is ever created there
    existing = snapshot.contract_services[["contract_id", "service_id"]].astype("int64")
    on_old_contract = (
        first[["moved_from", "service_id"]]
        .astype("Int64")
        .merge(existing.rename(columns={"contract_id": "moved_from"}).astype("Int64"), how="left", indicator=True)
    )
    first = first[(on_old_contract["_merge"] == "both").to_numpy()]
    zeroing = first.assign(
        contract_id=first["moved_from"],
        contract_flag=None,
        contract_suggestions=0,
        action=ChargeAction.CANCELLATION.value,
        quantity=np.nan,
        subscription_quantity=0.0,
        unit_cost=np.nan,
        zeroing=True,
        moved=False,
    )
    return pd.concat([lines, zeroing], ignore_index=True)


def _groups(lines: pd.DataFrame, snapshot: SnapshotState) -> pd.DataFrame:
    """One row per contract service of the month (existing or to be created), indexed by group."""
    billed = lines[~lines["zeroing"]]
    # a group's own subscriptions describe it, before a zeroing line of a subscription that moved away
    first = lines.sort_values("zeroing", kind="stable").drop_duplicates("group")
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
            "company_detail",
            "contract_flag",
            "service_flag",
            "company_suggestions",
            "contract_suggestions",
            "service_suggestions",
        ]
    ].set_index("group")
    by_group = lines.groupby("group", sort=False)
    members = _distinct_per_group(lines, "subscription_id")
    groups["subscriptions"] = pd.Series({group: tuple(ids) for group, ids in members.items()}, dtype=object)
    groups["commitment_months"] = by_group["commitment_months"].max()
    groups["billing_cycle"] = lines.sort_values("commitment_months").groupby("group")["billing_cycle"].last()
    # the money of the recurring line (its latest Recurring or Prorated line), never a cancellation's credit; only
    # a contract service billed by nothing else (a cancellation alone) falls back to its last line
    recurring = (
        billed[billed["charge_type"].isin([str(kind) for kind in RECURRING_PRICE_CHARGE_TYPES])]
        if "charge_type" in billed
        else billed
    )
    last_line = billed.groupby("group", sort=False)[["unit_price", "unit_cost", "currency"]].last()
    last_recurring = recurring.groupby("group", sort=False)[["unit_price", "unit_cost", "currency"]].last()
    last_line = last_recurring.combine_first(last_line)
    groups["unit_price"] = last_line["unit_price"]
    groups["unit_cost"] = last_line["unit_cost"]
    # a contract service only a moved subscription's zeroing line reaches: that subscription's currency
    groups["currency"] = last_line["currency"].reindex(groups.index).fillna(by_group["currency"].last())
    groups["first_point"] = by_group["point"].min()
    groups["last_point"] = billed.groupby("group")["point"].max()
    groups["last_charge_end"] = billed.groupby("group")["charge_end_date"].max()
    groups["currency_mismatch"] = by_group["currency_mismatch"].any()
    mismatched = billed[billed["group"].isin(groups.index[groups["currency_mismatch"]])]
    currencies = _distinct_per_group(mismatched, "currency")
    groups["currencies"] = pd.Series({group: ", ".join(names) for group, names in currencies.items()}, dtype=object)
    groups["company_currency"] = by_group["company_currency"].first()
    moved = lines[lines["move_reason"].notna()]
    groups["move_reason"] = moved.groupby("group")["move_reason"].first()
    held = lines[lines["quality_hold"].notna()] if "quality_hold" in lines else lines.iloc[0:0]
    groups["quality_hold"] = (
        held.drop_duplicates(["group", "quality_hold"]).groupby("group")["quality_hold"].agg("; ".join)
        if not held.empty
        else None
    )
    pairs = snapshot.contract_services.drop_duplicates(["contract_id", "service_id"], keep="first")
    pairs = pairs.astype({"contract_id": "Int64", "service_id": "Int64"})
    groups = (
        groups.reset_index()
        .merge(pairs.rename(columns={"unit_cost": "cs_unit_cost"}), on=["contract_id", "service_id"], how="left")
        .set_index("group")
    )
    groups["contract_service_id"] = groups["contract_service_id"].astype("Int64")
    return groups


def _distinct_per_group(lines: pd.DataFrame, column: str) -> dict[str, list[Any]]:
    """Each group's distinct values of `column`, sorted (one pass over the sorted pairs: a Python function per
    group in pandas costs more than the rest of `_groups`)."""
    pairs = lines[["group", column]].drop_duplicates().sort_values(["group", column])
    found: dict[str, list[Any]] = defaultdict(list)
    for group, value in zip(pairs["group"].tolist(), pairs[column].tolist(), strict=True):
        found[group].append(value)
    return found


def _holdings(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per (holding, compared date): the subscription's units and unit cost after its last line there,
    and the change since its previous date (from what it held before the month; 0 when that is unknown)."""
    last = lines.drop_duplicates(["holding", "point"], keep="last")
    holdings = last[
        ["group", "holding", "point", "subscription_quantity", "unit_cost", "unit_price", "units_before_month"]
    ]
    previous = holdings.groupby("holding", sort=False)["subscription_quantity"].shift()
    start = holdings["units_before_month"].fillna(0.0)
    return holdings.assign(delta=holdings["subscription_quantity"] - previous.fillna(start))


def _autotask_points(units: pd.DataFrame, groups: pd.DataFrame, month: BillingMonth) -> pd.DataFrame:
    """Autotask's own row starts inside the month, per group, and whether an adjustment already starts there:
    a row that is not a plain billing-period start of its contract, or whose units differ from the row
    before (or from nothing, at the contract's start). Autotask refuses a second adjustment on such a date."""
    known = groups["contract_service_id"].dropna()
    group_of_cs = pd.Series(known.index, index=known.astype("int64").to_numpy())
    in_month = units[
        (units["start_date"] >= pd.Timestamp(month.first_day))
        & (units["start_date"] <= pd.Timestamp(month.last_day))
        & units["contract_service_id"].isin(group_of_cs.index)
    ]
    return pd.DataFrame(
        {
            "group": in_month["contract_service_id"].map(group_of_cs).to_numpy(),
            "point": in_month["start_date"].to_numpy(),
            "autotask_adjusted": in_month["adjusted_here"].to_numpy(),
        }
    ).drop_duplicates(["group", "point"])


def _mark_adjusted_rows(units: pd.DataFrame, snapshot: SnapshotState) -> pd.DataFrame:
    """`adjusted_here`: an adjustment (made in Autotask) starts this ContractServiceUnits row."""
    if units.empty:
        return units.assign(adjusted_here=pd.Series(dtype=bool))
    units = units.sort_values(["contract_service_id", "start_date"], kind="stable", ignore_index=True)
    cs = snapshot.contract_services.drop_duplicates("contract_service_id").set_index("contract_service_id")
    contract_start = cs["contract_id"].map(snapshot.contracts.set_index("contract_id")["start_date"])
    period_type = cs["service_id"].map(snapshot.services.set_index("service_id")["period_type"])
    period_months = period_type.map(_PERIOD_MONTHS).fillna(1).astype("int64")
    term_start = units["contract_service_id"].map(contract_start).astype(_DATETIME)
    months = units["contract_service_id"].map(period_months).fillna(1).astype("int64")
    start = units["start_date"]
    elapsed = (start.dt.year - term_start.dt.year) * 12 + (start.dt.month - term_start.dt.month)
    expected_day = np.minimum(term_start.dt.day, start.dt.days_in_month)
    on_period_start = (elapsed >= 0) & (elapsed % months == 0) & (start.dt.day == expected_day)
    # without the contract's start date, billing months are the periods
    on_period_start = on_period_start.where(term_start.notna(), start.dt.day == 1)
    previous_units = units.groupby("contract_service_id")["units"].shift()
    changed = previous_units.notna() & ((previous_units - units["units"]).abs() > _UNITS_EPSILON)
    opened_with_units = previous_units.isna() & (start == term_start) & (units["units"].abs() > _UNITS_EPSILON)
    return units.assign(adjusted_here=(~on_period_start.astype(bool)) | changed | opened_with_units)


def _compare(lines: pd.DataFrame, groups: pd.DataFrame, snapshot: SnapshotState, month: BillingMonth) -> pd.DataFrame:
    """One row per (group, compared date): BSS target units and cost, Autotask units and cost, the change."""
    holdings = _holdings(lines)
    bss = lines.groupby(["group", "point"], sort=False).agg(
        ends_term=("ends_term", "max"), starts_term=("starts_term", "max")
    )
    bss["delta"] = holdings.groupby(["group", "point"])["delta"].sum()

    units = _mark_adjusted_rows(snapshot.units, snapshot)
    autotask_points = _autotask_points(units, groups, month).set_index(["group", "point"])
    points = bss.join(autotask_points, how="outer") if len(autotask_points) else bss
    points = points.reset_index().sort_values(["group", "point"], kind="stable").reset_index(drop=True)
    points["delta"] = points["delta"].fillna(0.0)
    for column in ("ends_term", "starts_term"):
        points[column] = points[column].fillna(False).astype(bool)
    if "autotask_adjusted" not in points:
        points["autotask_adjusted"] = False
    points["autotask_adjusted"] = points["autotask_adjusted"].fillna(False).astype(bool)
    points["contract_service_id"] = points["group"].map(groups["contract_service_id"])

    _autotask_units_and_cost(points, groups, units, snapshot)
    points["target"] = _bss_target(points, holdings)
    _bss_cost(points, holdings)
    points["cost_change"] = np.nan
    points["cost_before"] = np.nan
    blocked_groups = groups.index[groups["currency_mismatch"]]
    # never a cost change to a figure in another currency
    points.loc[points["group"].isin(blocked_groups), "bss_cost"] = np.nan
    _cost_changes(points)
    _policy_prices(points, groups, holdings)
    points.loc[points["group"].isin(blocked_groups), "policy_price"] = np.nan
    _price_changes(points)
    _unit_changes(points)
    points["folded_difference"] = _folded_differences(points, holdings, units, month)
    return points


def _folded_differences(
    points: pd.DataFrame, holdings: pd.DataFrame, units: pd.DataFrame, month: BillingMonth
) -> pd.Series:
    """Where a contract service's first compared date of the month is a BSS change after the 1st (no
    Autotask period start before it in the month: an annual billing period) and Autotask held other units
    just before it than the BSS states, the adjustment there also corrects that difference, from its date
    only: the days before stay as Autotask billed them. Posting a correction on a date the BSS never named
    would be a proration nobody asked for, so the plan keeps the change and asks a person (the reason).

    Only where the BSS states every subscription's units before the month (history or the line's own
    statement): before a restating line of an unknown subscription the BSS says nothing."""
    reasons = pd.Series(None, index=points.index, dtype=object)
    first = points[~points["group"].duplicated() & points["contract_service_id"].notna() & ~points["units_unknown"]]
    first = first[first["point"] > pd.Timestamp(month.first_day)]
    unknown_groups = set(holdings.loc[holdings["units_before_month"].isna(), "group"])
    first = first[~first["group"].isin(unknown_groups)]
    if first.empty or units.empty:
        return reasons
    # Autotask's units the day before: the row starting strictly before the date
    left = first[["point", "contract_service_id"]].astype({"contract_service_id": "int64"}).reset_index()
    right = units[["contract_service_id", "start_date", "units"]].astype({"contract_service_id": "int64"})
    held = pd.merge_asof(
        left.sort_values("point"),
        right.sort_values("start_date"),
        left_on="point",
        right_on="start_date",
        by="contract_service_id",
        direction="backward",
        allow_exact_matches=False,
    ).set_index("index")["units"]
    held_before = held.reindex(first.index).fillna(0.0)
    stated_before = first["target"] - first["delta"]
    differs = (held_before - stated_before).abs() > _UNITS_EPSILON
    for index in first.index[differs.to_numpy()]:
        day = points.at[index, "point"].date().isoformat()
        autotask = _decimal(held_before[index]).normalize()
        bss = _decimal(stated_before[index]).normalize()
        reasons[index] = (
            f"Autotask held {autotask:f} before {day}, the BSS says {bss:f}: this adjustment also corrects that "
            f"difference from {day}; the days before stay at {autotask:f} — correct them by hand if they were "
            "billed wrong"
        )
    return reasons


def _autotask_units_and_cost(
    points: pd.DataFrame, groups: pd.DataFrame, units: pd.DataFrame, snapshot: SnapshotState
) -> None:
    """Autotask's units and cost at each compared date: the row starting on or before it."""
    points["at_units"] = np.nan
    points["at_cost"] = np.nan
    points["at_price"] = np.nan
    existing = points["contract_service_id"].notna()
    if existing.any() and len(units):
        left = points.loc[existing, ["point", "contract_service_id"]].astype({"contract_service_id": "int64"})
        left = left.reset_index().sort_values("point")
        right = (
            units[["contract_service_id", "start_date", "units", "cost", "price"]]
            .astype({"contract_service_id": "int64"})
            .sort_values("start_date")
        )
        found = pd.merge_asof(
            left, right, left_on="point", right_on="start_date", by="contract_service_id", direction="backward"
        ).set_index("index")
        points.loc[found.index, "at_units"] = found["units"]
        points.loc[found.index, "at_cost"] = found["cost"]
        points.loc[found.index, "at_price"] = found["price"]
    units_known = points["contract_service_id"].isin(set(units["contract_service_id"].astype("int64")))
    points["units_unknown"] = existing & ~units_known
    points["at_units"] = points["at_units"].fillna(0.0)
    fallback_cost = points["group"].map(groups["cs_unit_cost"])
    service_cost = snapshot.services.set_index("service_id")["unit_cost"]
    fallback_cost = fallback_cost.fillna(points["group"].map(groups["service_id"]).map(service_cost))
    points["at_cost"] = points["at_cost"].fillna(fallback_cost.where(existing))


def _bss_target(points: pd.DataFrame, holdings: pd.DataFrame) -> pd.Series:
    """The BSS units of each group at each compared date.

    known part: the subscriptions whose units before the month are known, plus every change since;
    unknown part: before a restating line of a subscription nothing is known about, the BSS says nothing, so
    the target there is what Autotask holds beyond the known subscriptions (not below 0). Each unknown
    subscription, when it restates its total, takes that much of the unknown part."""
    first = holdings.drop_duplicates("holding")
    known = first[first["units_before_month"].notna()]
    unknown = first[first["units_before_month"].isna()]
    known_base = known.groupby("group")["units_before_month"].sum()
    target = points["group"].map(known_base).fillna(0.0) + points.groupby("group")["delta"].cumsum()
    if unknown.empty:
        return target
    # per compared date: how many unknown subscriptions have not restated yet, and what those that have took
    restated = unknown.groupby(["group", "point"]).agg(
        restated=("holding", "size"), restated_units=("subscription_quantity", "sum")
    )
    at_point = points[["group", "point"]].join(restated, on=["group", "point"]).fillna(0.0)
    restated_count = at_point.groupby("group")["restated"].cumsum()
    restated_units = at_point.groupby("group")["restated_units"].cumsum()
    pending = points["group"].map(unknown.groupby("group").size()).fillna(0) - restated_count
    beyond_known = points["at_units"] - points["group"].map(known_base).fillna(0.0) - restated_units
    return target + beyond_known.clip(lower=0.0).where(pending > 0, 0.0)


def _bss_cost(points: pd.DataFrame, holdings: pd.DataFrame) -> None:
    """The unit cost the BSS bills at each compared date, decided once per contract service and date from the
    subscriptions in force there (their latest line at or before the date, with units). `cost_conflict`
    names the costs when those subscriptions disagree; no cost is proposed then."""
    points["bss_cost"], points["cost_conflict"] = _bss_money(points, holdings, "unit_cost", "cost")


def _bss_money(points: pd.DataFrame, holdings: pd.DataFrame, column: str, what: str) -> tuple[pd.Series, pd.Series]:
    """The BSS's figure of `column` (unit cost or unit price) at each compared date, and a reason where the
    subscriptions in force there disagree (no figure then)."""
    # every compared date of a group against every subscription of the group, as of that date
    state = holdings.loc[holdings[column].notna(), ["group", "holding", "point", column]].rename(
        columns={column: "unit_cost"}
    )
    state = state.assign(units_after=holdings["subscription_quantity"])
    grid = (
        points[["group", "point"]]
        .reset_index()
        .merge(state[["group", "holding"]].drop_duplicates(), on="group", how="inner")
    )
    as_of = pd.merge_asof(
        grid.sort_values("point"),
        state.sort_values("point")[["holding", "point", "unit_cost", "units_after"]],
        on="point",
        by="holding",
        direction="backward",
    )
    in_force = as_of[as_of["unit_cost"].notna() & (as_of["units_after"] > _UNITS_EPSILON)]
    costs = in_force.groupby("index")["unit_cost"].agg(["min", "max"])
    agreed = (costs["max"] - costs["min"]) <= _MONEY_EPSILON
    figure = costs["min"].where(agreed).reindex(points.index)
    conflicts = pd.Series(None, index=points.index, dtype=object)
    if (~agreed).any():
        conflicting = in_force[in_force["index"].isin(costs.index[~agreed])]
        for index, rows in conflicting.groupby("index"):
            named = ", ".join(
                f"{holding.split('|', 1)[1]} at {cost:.4f}"
                for holding, cost in sorted(zip(rows["holding"], rows["unit_cost"], strict=True))
            )
            conflicts[index] = (
                f"the subscriptions on this contract service are billed at different unit {what}s ({named}): "
                f"no {what} change is proposed; set the unit {what} in Autotask by hand"
            )
    return figure, conflicts


def _cost_changes(points: pd.DataFrame) -> None:
    """Mark where an adjustedUnitCost is needed. An adjustment's cost holds from its date on, so once the
    plan sets a cost, later dates compare with that, not with what Autotask had."""
    _money_changes(points, "bss_cost", "at_cost", "cost_change", "cost_before")


def _money_changes(points: pd.DataFrame, target_column: str, autotask_column: str, change: str, before: str) -> None:
    """Mark where the figure `target_column` differs from Autotask's `autotask_column` at a compared date: the
    figure to set (`change`) and the one in force before (`before`). Once the plan sets a figure, later dates
    compare with it."""
    mismatch = (points[target_column] - points[autotask_column]).abs() > _MONEY_EPSILON
    candidates = points.loc[mismatch & points[autotask_column].notna(), "group"].unique()
    if len(candidates) == 0:
        return
    subset = points[points["group"].isin(candidates)]
    changes: dict[Any, tuple[float, float]] = {}  # index -> (figure set, figure before)
    for _, group_points in subset.groupby("group", sort=False):
        override: float | None = None
        for index, target, autotask in zip(
            group_points.index, group_points[target_column], group_points[autotask_column], strict=True
        ):
            in_force = override if override is not None else autotask
            if pd.isna(target) or (pd.notna(in_force) and abs(target - in_force) <= _MONEY_EPSILON):
                continue
            changes[index] = (target, in_force)
            override = target
    if changes:
        changed = list(changes)
        points.loc[changed, change] = [figure for figure, _ in changes.values()]
        points.loc[changed, before] = [previous for _, previous in changes.values()]


def _price_policies(groups: pd.DataFrame, default: PricePolicy, overrides: Mapping[str, PricePolicy]) -> None:
    """Each contract service's price policy (its customer's override, else the setting): whether an existing one is
    repriced, and the markup factor of a `markup` policy."""
    # one policy per customer, mapped (a Python call per contract service costs seconds at 60,000 of them); the
    # price of a new one is computed when it is created (`_create_contract_service`)
    accounts = groups["account_id"].dropna().unique().tolist()
    of_account = {account: policy_of(account, default, overrides) for account in accounts}
    policies = groups["account_id"].map(of_account).where(groups["account_id"].notna(), default)
    groups["price_policy"] = policies.astype(object)
    groups["reprices"] = policies.map(lambda policy: policy.reprices_existing).astype(bool)
    groups["markup_factor"] = policies.map(
        lambda policy: float(1 + policy.markup_percent / 100) if policy.rule is PriceRule.MARKUP else np.nan
    ).astype("float64")


def _policy_prices(points: pd.DataFrame, groups: pd.DataFrame, holdings: pd.DataFrame) -> None:
    """The unit price the policy asks for at each compared date of an existing contract service whose policy
    reprices (`bss`: the BSS unit price there; `markup`: the BSS unit cost there plus the markup), NaN elsewhere
    (`keep`: Autotask's price stands). `price_change` / `price_before` mark where an adjustedUnitPrice is needed."""
    points["policy_price"] = np.nan
    points["price_conflict"] = None
    points["price_change"] = np.nan
    points["price_before"] = np.nan
    reprices = (
        points["group"].map(groups["reprices"]).fillna(False).astype(bool) & points["contract_service_id"].notna()
    )
    if not reprices.any():
        return  # every customer keeps its Autotask prices: nothing to compare (the default costs nothing)
    factor = points["group"].map(groups["markup_factor"]).astype("float64")
    by_markup = reprices & factor.notna()
    by_bss = reprices & factor.isna()
    if by_bss.any():
        price, conflict = _bss_money(points[by_bss], holdings, "unit_price", "price")
        points.loc[by_bss, "policy_price"] = price
        points.loc[by_bss, "price_conflict"] = conflict
    if by_markup.any():
        points.loc[by_markup, "policy_price"] = (points.loc[by_markup, "bss_cost"] * factor[by_markup]).round(4)
        points.loc[by_markup, "price_conflict"] = points.loc[by_markup, "cost_conflict"]


def _price_changes(points: pd.DataFrame) -> None:
    _money_changes(points, "policy_price", "at_price", "price_change", "price_before")
    # what the customer pays and what the MSP pays at each date once the plan is loaded: the plan's last figure
    # set on or before it, else Autotask's (carried forward only in the groups the plan sets a figure in)
    points["price_in_force"] = points["at_price"]
    points["cost_in_force"] = points["at_cost"]
    setting = points["group"].isin(points.loc[points["price_change"].notna() | points["cost_change"].notna(), "group"])
    if setting.any():
        subset = points[setting]
        by_group = subset.groupby("group", sort=False)
        points.loc[setting, "price_in_force"] = by_group["price_change"].ffill().fillna(subset["at_price"])
        points.loc[setting, "cost_in_force"] = by_group["cost_change"].ffill().fillna(subset["at_cost"])


def _unit_changes(points: pd.DataFrame) -> None:
    """The signed unitChange at each compared date: the change of (BSS - Autotask) since the previous date
    whose adjustment can be written. Where Autotask already has an adjustment on a date the plan would
    adjust, Autotask refuses a second one: that date is `blocked_here` and its change rolls into the next."""
    difference = points["target"] - points["at_units"]
    previous_difference = difference.groupby(points["group"]).shift().fillna(0.0)
    points["unit_change"] = (difference - previous_difference).round(4)
    points["units_before"] = (points["at_units"] + previous_difference).round(4)
    points["blocked_here"] = False
    adjusted_groups = points.loc[points["autotask_adjusted"], "group"].unique()
    for _, group_points in points[points["group"].isin(adjusted_groups)].groupby("group", sort=False):
        written = 0.0  # the difference the last writable adjustment leaves
        for index, diff, adjusted, cost_change in zip(
            group_points.index,
            difference[group_points.index],
            group_points["autotask_adjusted"],
            group_points["cost_change"],
            strict=True,
        ):
            change = round(diff - written, 4)
            points.at[index, "unit_change"] = change
            points.at[index, "units_before"] = round(points.at[index, "at_units"] + written, 4)
            if adjusted and (abs(change) > _UNITS_EPSILON or pd.notna(cost_change)):
                points.at[index, "blocked_here"] = True
            else:
                written = diff


# -- from the comparison to actions ----------------------------------------------------------------------


class _AdjustmentRow(NamedTuple):
    """The columns of a compared date `_adjustments` reads, as plain Python values."""

    group: str
    point: pd.Timestamp
    unit_change: float
    cost_change: float  # NaN: no cost change
    cost_before: float
    cost_conflict: str | None
    price_change: float  # NaN: no price change
    price_before: float
    price_conflict: str | None
    price_in_force: float  # what the customer pays from this date on once the plan is loaded (NaN: unknown)
    cost_in_force: float
    units_before: float
    target: float
    blocked_here: bool
    units_unknown: bool
    ends_term: bool
    starts_term: bool
    folded_difference: str | None


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
        self.internal_currency = snapshot.internal_currency
        self.contracts = snapshot.contracts.set_index("contract_id")
        self.contract_starts = self.contracts["start_date"].dropna().to_dict()
        self.contract_companies = self.contracts["company_id"].dropna().astype("int64").to_dict()
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
        emitted = self.points[
            (self.points["unit_change"].abs() > _UNITS_EPSILON)
            | self.points["cost_change"].notna()
            | self.points["price_change"].notna()
        ]
        emitted = emitted.sort_values(["group", "point"], kind="stable")
        self._extensions()
        # one dict per group that has something to write: a pandas row lookup per action costs more than
        # the whole comparison
        needed = self.groups.loc[emitted["group"].unique()]
        self.group_info = dict(zip(needed.index, needed.to_dict("records"), strict=True))
        by_group: dict[str, list[_AdjustmentRow]] = defaultdict(list)
        for row in emitted[list(_AdjustmentRow._fields)].itertuples(index=False, name=None):
            adjustment = _AdjustmentRow._make(row)
            by_group[adjustment.group].append(adjustment)
        for group, group_rows in by_group.items():
            self._adjustments(group, group_rows)
        return self.actions

    # extensions first: an adjustment after the contract's end needs the new end date
    def _extensions(self) -> None:
        linked = self.groups[self.groups["contract_id"].notna() & self.groups["last_point"].notna()]
        if linked.empty:
            return
        reach = linked.groupby("contract_id").agg(
            last_point=("last_point", "max"), commitment_months=("commitment_months", "max")
        )
        reach = reach.join(self.contracts[["end_date"]], how="inner")
        reach = reach[reach["end_date"].notna() & (reach["last_point"] > reach["end_date"])]
        if reach.empty:
            return
        # the lines past each contract's end, and how far each one's term reaches
        lines = self.lines[~self.lines["zeroing"] & self.lines["contract_id"].isin(reach.index)]
        lines = lines[lines["point"] > lines["contract_id"].astype("int64").map(reach["end_date"])]
        lines = lines.assign(term_end=self._term_ends(lines), contract_id=lines["contract_id"].astype("int64"))
        term_end = lines.groupby("contract_id")["term_end"].max()
        charge_ids = lines.groupby("contract_id")["charge_id"].agg(lambda ids: tuple(sorted(set(ids))))
        extended = linked[linked["contract_id"].isin(reach.index)]
        groups_of: dict[int, list[str]] = defaultdict(list)
        for group, contract_id in zip(extended.index.tolist(), extended["contract_id"].tolist(), strict=True):
            groups_of[int(contract_id)].append(group)
        # what holds a contract's groups back, read once (a row lookup per contract costs more than all the rest)
        info_of = extended.to_dict("index")
        blocked_groups = extended["currency_mismatch"] | extended["quality_hold"].notna()
        only_blocked_currencies = blocked_groups.groupby(extended["contract_id"].astype("int64")).all()
        for contract_id, end, commitment_months, last_point in zip(
            reach.index, reach["end_date"], reach["commitment_months"], reach["last_point"], strict=True
        ):
            contract_id = int(contract_id)
            contract_groups = groups_of[contract_id]
            cycle = _cycle_of(int(commitment_months))
            covering = renewed_end_date(end.date(), cycle, last_point.date(), self.settings.minimum_contract_months)
            new_end = max(covering, term_end[contract_id].date())
            first_group = info_of[contract_groups[0]]
            holds = [
                *self._link_holds(first_group["contract_flag"], "contract", contract_id),
                *self._company_confirmation_holds(first_group),
            ]
            if only_blocked_currencies[contract_id]:
                # the extension serves only adjustments that are blocked (their currency, a held line)
                holds += self._group_holds(first_group)
            status, reason = held_back(holds)
            action = PlanAction(
                kind=ActionKind.EXTEND_CONTRACT,
                month=self.month.key,
                target=f"contract:C{contract_id}",
                status=status,
                reason=reason,
                contract_id=contract_id,
                subscription_ids=tuple(
                    sorted({s for group in contract_groups for s in info_of[group]["subscriptions"]})
                ),
                end_date_before=end.date(),
                end_date_after=new_end,
                payload={"id": contract_id, "endDate": _api_date(new_end)},
                charge_ids=charge_ids[contract_id],
            )
            self.extend_actions[contract_id] = action
            self.actions.append(action)
            self.groups_with_actions.update(contract_groups)

    def _term_ends(self, lines: pd.DataFrame) -> pd.Series:
        """How far each line's term reaches: its charge period's end; for a line that restates or starts a
        term, its effective date plus the commitment less a day; for a month-to-month commitment, the month
        end `minimum_contract_months` ahead (a rolling subscription would otherwise need a write every month)."""
        effective = lines["effective_date"]
        term_end = lines["charge_end_date"].copy()
        restating = lines["action"].isin([*_RESTATING, ChargeAction.NEW])
        one_day = pd.Timedelta(days=1)
        for months, same_commitment in lines.groupby("commitment_months").groups.items():
            rows = same_commitment[restating[same_commitment].to_numpy()]
            commitment_end = effective[rows] + pd.DateOffset(months=int(months)) - one_day
            term_end[rows] = np.maximum(term_end[rows], commitment_end)
        monthly = lines["commitment_months"] == 1
        minimum = self.settings.minimum_contract_months
        minimum_end = effective[monthly] + pd.DateOffset(months=minimum) - one_day + pd.offsets.MonthEnd(0)
        term_end[monthly] = np.maximum(term_end[monthly], minimum_end)
        return term_end

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
        review_decreases = info["commitment_months"] >= self.settings.review_decreases_from_months
        creates = [action for action in (cs_action, contract_action, service_action) if action]
        group_holds = [*self._group_holds(info), *self._link_holds(info["service_flag"], "service", service_id)]
        previous: PlanAction | None = None  # the last adjustment of this contract service that can be written
        for row in rows:
            unit_change = _decimal(row.unit_change)
            cost_after = None if pd.isna(row.cost_change) else _decimal(row.cost_change)
            price_after = None if pd.isna(row.price_change) else _decimal(row.price_change)
            price_before = None if price_after is None or pd.isna(row.price_before) else _decimal(row.price_before)
            effective = row.point.date()
            payload: dict[str, Any] = {
                "contractID": contract_id,
                "serviceID": service_id,
                "contractServiceID": contract_service_id,
                "effectiveDate": _api_date(effective),
                "unitChange": unit_change,
            }
            if price_after is not None:
                payload["adjustedUnitPrice"] = price_after
            if cost_after is not None:
                payload["adjustedUnitCost"] = cost_after
            # each unitChange is relative to the previous one of the same contract service: a chain
            depends = creates if previous is None else [*creates, previous]
            if extend is not None and effective > extend.end_date_before:
                depends = [*depends, extend]
            holds = list(group_holds)
            if row.blocked_here:
                holds.append(
                    Hold(
                        ActionStatus.BLOCKED,
                        f"Autotask already has an adjustment of contract service {contract_service_id} on "
                        f"{effective.isoformat()} (made in Autotask) and refuses a second one on that date: change "
                        f"the units to {_decimal(row.target).normalize():f} by hand in Autotask, or re-run with "
                        "another effective-date policy",
                    )
                )
            if isinstance(row.cost_conflict, str):
                holds.append(Hold(ActionStatus.FLAGGED, row.cost_conflict))
            if isinstance(row.price_conflict, str) and row.price_conflict != row.cost_conflict:
                holds.append(Hold(ActionStatus.FLAGGED, row.price_conflict))
            holds += _price_holds(
                info,
                price_before,
                price_after,
                row.price_in_force,
                row.cost_in_force,
                sets_money=(price_after is not None or cost_after is not None),
            )
            if isinstance(row.folded_difference, str):
                holds.append(Hold(ActionStatus.FLAGGED, row.folded_difference))
            if row.units_unknown:
                holds.append(
                    Hold(
                        ActionStatus.FLAGGED,
                        f"no ContractServiceUnits for contract service "
                        f"{contract_service_id} in the snapshot: its current units are unknown",
                    )
                )
            if unit_change < 0 and review_decreases and not (row.ends_term or row.starts_term):
                holds.append(
                    Hold(
                        ActionStatus.FLAGGED,
                        f"decrease of {units_text(-unit_change)} inside a {info['commitment_months']}-month commitment",
                    )
                )
            if contract_start is not None and row.point < contract_start:
                holds.append(Hold(ActionStatus.FLAGGED, "effective date is before the contract's start date"))
            holds += self._dependency_holds(depends)
            status, reason = held_back(holds)
            if unit_change != 0:
                kind = ActionKind.ADJUST_UNITS
            else:
                kind = ActionKind.CHANGE_COST if cost_after is not None else ActionKind.CHANGE_PRICE
            action = PlanAction(
                kind=kind,
                month=self.month.key,
                target=f"cs:{group}",
                status=status,
                reason=reason,
                effective_date=effective,
                account_id=info["account_id"],
                subscription_ids=info["subscriptions"],
                product_id=info["product_id"],
                contract_id=contract_id,
                contract_action_id=_id_of(contract_action),
                service_id=service_id,
                service_action_id=_id_of(service_action),
                contract_service_id=contract_service_id,
                contract_service_action_id=_id_of(cs_action),
                units_before=_decimal(row.units_before),
                units_after=_decimal(row.units_before + row.unit_change),
                unit_change=unit_change,
                unit_cost_before=None if cost_after is None or pd.isna(row.cost_before) else _decimal(row.cost_before),
                unit_cost_after=cost_after,
                unit_price_before=price_before,
                unit_price_after=price_after,
                currency=_currency_of(info),
                payload=payload,
                charge_ids=self._charge_ids_at(group, row.point),
                depends_on=tuple(sorted(action.action_id for action in depends)),
            )
            self.actions.append(action)
            if action.status is not ActionStatus.BLOCKED:
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
        holds = []
        if info["company_suggestions"]:
            holds.append(
                Hold(
                    ActionStatus.NEEDS_MAPPING,
                    f"{_suggested(info['company_suggestions'], 'company', 'companies')} for a person: "
                    "confirm one, or approve creating a new one",
                )
            )
        detail = info.get("company_detail")
        if isinstance(detail, str) and detail.startswith(LOOK_ALIKES_NOTE):
            # a new customer whose only look-alikes are other legal entities: proposed, for a person to glance at
            holds.append(Hold(ActionStatus.FLAGGED, detail))
        if self.settings.owner_resource_id is None:
            holds.append(Hold(ActionStatus.FLAGGED, "owner_resource_id is not configured"))
        if not payload["phone"]:
            holds.append(Hold(ActionStatus.FLAGGED, "the BSS account has no phone (Autotask requires one)"))
        status, reason = held_back(holds)
        action = PlanAction(
            kind=ActionKind.CREATE_COMPANY,
            month=self.month.key,
            target=f"account:{account_id}",
            status=status,
            reason=reason,
            account_id=account_id,
            payload=payload,
        )
        self.company_actions[account_id] = action
        self.actions.append(action)
        return action

    def _create_service(self, info: Mapping[str, Any]) -> PlanAction:
        product_id = info["product_id"]
        if product_id in self.service_actions:
            return self.service_actions[product_id]
        price, cost = self._catalogue_money(info)
        payload = {
            "name": str(info["product_name"])[:100],
            "unitPrice": price,
            "unitCost": cost,
            "periodType": self.settings.period_type(info["billing_period"]),
            "billingCodeID": self.settings.billing_code_id,
            "sku": (info["product_sku"] or None),
            "isActive": True,
        }
        holds = []
        if info["service_suggestions"]:
            holds.append(
                Hold(
                    ActionStatus.NEEDS_MAPPING,
                    f"{_suggested(info['service_suggestions'], 'service', 'services')} for a person: "
                    "confirm one, or approve creating a new one",
                )
            )
        if self.settings.billing_code_id is None:
            holds.append(Hold(ActionStatus.FLAGGED, "billing_code_id is not configured"))
        status, reason = held_back(holds)
        action = PlanAction(
            kind=ActionKind.CREATE_SERVICE,
            month=self.month.key,
            target=f"product:{product_id}",
            status=status,
            reason=reason,
            product_id=product_id,
            payload=payload,
        )
        self.service_actions[product_id] = action
        self.actions.append(action)
        return action

    def _catalogue_money(self, info: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
        """A new catalogue Service's price and cost: its own price is in the tenant's internal currency, so they come
        from a month's line of the product in that currency when there is one (the first contract service's
        otherwise; every contract service carries its own money, so no customer pays this figure)."""
        if self.internal_currency:
            same = self.groups[
                (self.groups["product_id"] == info["product_id"])
                & (self.groups["currency"].astype(str).str.upper() == str(self.internal_currency).upper())
                & self.groups["unit_price"].notna()
            ]
            if not same.empty:
                first = same.sort_index().iloc[0]
                return _decimal(first["unit_price"]), _decimal(first["unit_cost"])
        return _decimal(info["unit_price"]), _decimal(info["unit_cost"])

    def _create_contract(self, group: str, info: Mapping[str, Any]) -> PlanAction:
        (subscription_id,) = info["subscriptions"]
        if subscription_id in self.contract_actions:
            return self.contract_actions[subscription_id]
        company_id = _int_or_none(info["company_id"])
        company_action = self._create_company(info) if company_id is None else None
        months = self.settings.minimum_contract_months
        start, end = commitment_term(info["billing_cycle"], info["first_point"].date(), months)
        end = renewed_end_date(end, info["billing_cycle"], info["last_point"].date(), months)
        if pd.notna(info["last_charge_end"]):
            end = max(end, info["last_charge_end"].date())
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
        holds = []
        if info["contract_suggestions"]:
            holds.append(
                Hold(
                    ActionStatus.NEEDS_MAPPING,
                    f"{_suggested(info['contract_suggestions'], 'contract', 'contracts')} for a person: "
                    "confirm one, or approve creating a new one",
                )
            )
        holds += self._group_holds(info)
        holds += self._link_holds(info["company_flag"], "company", company_id)
        if company_action is not None:
            holds += self._dependency_holds([company_action])
        status, reason = held_back(holds)
        action = PlanAction(
            kind=ActionKind.CREATE_CONTRACT,
            month=self.month.key,
            target=f"subscription:{subscription_id}",
            status=status,
            reason=reason,
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
        self.contract_actions[subscription_id] = action
        self.actions.append(action)
        return action

    def _create_contract_service(
        self, group: str, info: Mapping[str, Any], contract_action: PlanAction | None, service_action: PlanAction | None
    ) -> PlanAction:
        contract_id = _int_or_none(info["contract_id"])
        service_id = _int_or_none(info["service_id"])
        dependencies = [action for action in (contract_action, service_action) if action]
        holds = self._group_holds(info)
        if pd.notna(info["service_flag"]):
            # Autotask refuses to add an inactive (or deleted) service to a contract
            holds.append(
                Hold(
                    ActionStatus.BLOCKED,
                    f"the linked Autotask service {service_id} "
                    f"{'no longer exists' if info['service_flag'] == 'target_missing' else 'is inactive'}: "
                    "Autotask refuses to add it to a contract; activate it in Autotask, or link the product to "
                    "another service",
                )
            )
        bss_price, bss_cost = info["unit_price"], info["unit_cost"]
        price = info["price_policy"].price(
            None if pd.isna(bss_price) else bss_price, None if pd.isna(bss_cost) else bss_cost
        )
        cost = None if pd.isna(bss_cost) else _decimal(bss_cost)
        if price is None:
            holds.append(
                Hold(
                    ActionStatus.FLAGGED,
                    f"the {info['price_policy']} price policy has no BSS figure to price this contract service from: "
                    "set its unit price by hand",
                )
            )
        holds += _price_holds(info, None, price, price, cost, sets_money=True)
        holds += self._dependency_holds(dependencies)
        status, reason = held_back(holds)
        action = PlanAction(
            kind=ActionKind.CREATE_CONTRACT_SERVICE,
            month=self.month.key,
            target=f"cs:{group}",
            status=status,
            reason=reason,
            account_id=info["account_id"],
            subscription_ids=info["subscriptions"],
            product_id=info["product_id"],
            contract_id=contract_id,
            contract_action_id=_id_of(contract_action),
            service_id=service_id,
            service_action_id=_id_of(service_action),
            unit_cost_after=cost,
            unit_price_after=price,
            currency=_currency_of(info),
            # explicit money in the customer's currency: never the catalogue Service's (internal currency) price
            payload={
                "contractID": contract_id,
                "serviceID": service_id,
                "unitPrice": price,
                "unitCost": cost,
            },
            charge_ids=self._charge_ids_of(group),
            depends_on=tuple(sorted(action.action_id for action in dependencies)),
        )
        self.actions.append(action)
        return action

    # -- helpers -----------------------------------------------------------------------------------------

    def _group_holds(self, info: Mapping[str, Any]) -> list[Hold]:
        """What holds back every action of one contract service: its contract link, a move to another
        customer, a currency other than the company's."""
        holds = [
            *self._link_holds(info["contract_flag"], "contract", _int_or_none(info["contract_id"])),
            *self._company_confirmation_holds(info),
        ]
        if pd.notna(info["move_reason"]):
            holds.append(Hold(ActionStatus.FLAGGED, info["move_reason"]))
        if isinstance(info.get("quality_hold"), str):
            holds.append(Hold(ActionStatus.BLOCKED, info["quality_hold"]))
        if info["currency_mismatch"]:
            holds.append(
                Hold(
                    ActionStatus.BLOCKED,
                    f"the BSS bills this in {info['currencies']} but the company's Autotask currency is "
                    f"{info['company_currency']}: never written as it stands; convert the price and set the units "
                    "by hand, or change the company's currency in Autotask",
                )
            )
        return holds

    def _company_confirmation_holds(self, info: Mapping[str, Any]) -> list[Hold]:
        """An existing contract whose account is not linked to any company yet: its company is nobody's
        confirmed choice for this customer, so nothing is written on it until a person links the account
        (the contract's company is suggested for it)."""
        contract_id = _int_or_none(info["contract_id"])
        if contract_id is None or _int_or_none(info["company_id"]) is not None:
            return []
        owner = self.contract_companies.get(contract_id)
        return [
            Hold(
                ActionStatus.NEEDS_MAPPING,
                f"account {info['account_id']} is not linked to an Autotask company yet; contract {contract_id} "
                f"belongs to company {owner}: confirm that company for the account (it is suggested), or link "
                "another",
            )
        ]

    @staticmethod
    def _link_holds(flag: Any, kind: str, target_id: int | None) -> list[Hold]:
        if flag is None or pd.isna(flag):
            return []
        state = "no longer exists" if flag == "target_missing" else "is inactive"
        return [Hold(ActionStatus.FLAGGED, f"the linked Autotask {kind} {target_id} {state}")]

    @staticmethod
    def _dependency_holds(dependencies: list[PlanAction]) -> list[Hold]:
        """An action is held back at least as much as each action it needs."""
        return [
            Hold(dependency.status, f"depends on {dependency.kind} ({dependency.status})")
            for dependency in dependencies
            if dependency.status is not ActionStatus.PROPOSED
        ]

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


# -- what earlier months approved and the loader has not applied yet ----------------------------------------

_ADJUSTMENT_KINDS = tuple(sorted(str(kind) for kind in ADJUSTMENT_KINDS))
_CREATE_KINDS = (
    ActionKind.CREATE_COMPANY.value,
    ActionKind.CREATE_SERVICE.value,
    ActionKind.CREATE_CONTRACT.value,
    ActionKind.CREATE_CONTRACT_SERVICE.value,
)


def with_earlier_approved(snapshot: SnapshotState, earlier_approved: pd.DataFrame | None) -> SnapshotState:
    """The snapshot as Autotask will be once earlier months' approved, not yet applied rows are loaded: each
    adjustment of an existing contract service changes its units (and unit cost, when it sets one) from its
    effective date on; each extension moves its contract's end date. The snapshot itself is not changed.
    (An adjustment of a contract service still to be created changes nothing here: `held_for_earlier_creates`
    holds everything that needs that record.)"""
    if earlier_approved is None or earlier_approved.empty:
        return snapshot
    earlier_approved = earlier_approved[~_in_flight(earlier_approved)]
    adjustments = earlier_approved[
        earlier_approved["kind"].isin(_ADJUSTMENT_KINDS) & earlier_approved["contract_service_id"].notna()
    ]
    extensions = earlier_approved[
        (earlier_approved["kind"] == ActionKind.EXTEND_CONTRACT.value)
        & earlier_approved["contract_id"].notna()
        & earlier_approved["end_date_after"].notna()
    ]
    if adjustments.empty and extensions.empty:
        return snapshot
    units = snapshot.units.copy()
    for row in adjustments.sort_values("effective_date", kind="stable").itertuples(index=False):
        units = _units_after_adjustment(
            units,
            int(row.contract_service_id),
            pd.Timestamp(row.effective_date),
            0.0 if pd.isna(row.unit_change) else float(row.unit_change),
            None if pd.isna(row.unit_cost_after) else float(row.unit_cost_after),
            None if pd.isna(getattr(row, "unit_price_after", None)) else float(row.unit_price_after),
        )
    contracts = snapshot.contracts.copy()
    if not extensions.empty:
        new_end = (
            pd.to_datetime(extensions["end_date_after"])
            .astype(_DATETIME)
            .groupby(extensions["contract_id"].astype("int64").to_numpy())
            .max()
        )
        approved_end = contracts["contract_id"].map(new_end).astype(_DATETIME)
        contracts["end_date"] = contracts["end_date"].where(
            approved_end.isna() | (contracts["end_date"] >= approved_end), approved_end
        )
    return SnapshotState(
        contracts, snapshot.services, snapshot.contract_services, units, snapshot.companies, snapshot.internal_currency
    )


def _in_flight(earlier_approved: pd.DataFrame) -> pd.Series:
    """Rows whose write may already have reached Autotask (the loader's ledger says so)."""
    if "in_flight" not in earlier_approved:
        return pd.Series(False, index=earlier_approved.index)
    return earlier_approved["in_flight"].fillna(0).astype("int64") == 1


def _units_after_adjustment(
    units: pd.DataFrame,
    contract_service_id: int,
    day: pd.Timestamp,
    unit_change: float,
    unit_cost: float | None,
    unit_price: float | None = None,
) -> pd.DataFrame:
    """ContractServiceUnits rows of one contract service with an adjustment on `day` added: the row holding
    `day` splits there (as Autotask splits it), and every row from `day` on carries the change (and the cost and
    price it sets)."""
    own = units["contract_service_id"].astype("int64") == contract_service_id
    rows = units[own].sort_values("start_date", kind="stable")
    if rows.empty:
        return units  # its units are unknown; the comparison flags that
    if not (rows["start_date"] == day).any():
        before = rows[rows["start_date"] < day]
        if before.empty:
            # the adjustment precedes every known row: they all carry it
            pass
        else:
            holding = before.iloc[-1]
            split = holding.copy()
            split["start_date"] = day
            if pd.notna(holding["end_date"]) and holding["end_date"] < day:
                split["end_date"] = pd.NaT  # past the known rows: the units it carries on with
            units = units.copy()
            if pd.notna(holding["end_date"]) and holding["end_date"] >= day:
                units.loc[before.index[-1], "end_date"] = day - pd.Timedelta(days=1)
            units = pd.concat([units, split.to_frame().T.astype(units.dtypes.to_dict())], ignore_index=True)
            own = units["contract_service_id"].astype("int64") == contract_service_id
    units = units.copy()
    from_day = own & (units["start_date"] >= day)
    units.loc[from_day, "units"] = units.loc[from_day, "units"] + unit_change
    if unit_cost is not None:
        units.loc[from_day, "cost"] = unit_cost
    if unit_price is not None and "price" in units:
        units.loc[from_day, "price"] = unit_price
    return units.sort_values(["contract_service_id", "start_date"], kind="stable", ignore_index=True)


def held_for_earlier_creates(actions: list[PlanAction], earlier_approved: pd.DataFrame | None) -> list[PlanAction]:
    """A record an earlier month approved creating is not created twice: this month's create of the same
    record (same account, product, subscription or contract service) is blocked, and so is every action that
    needs it, until the earlier run is loaded and this month re-planned (the snapshot then holds the record).
    An adjustment whose load was interrupted (its outcome unknown) blocks this month's adjustments of the same
    contract service the same way: counting it or not could both be wrong."""
    if earlier_approved is None or earlier_approved.empty:
        return actions
    approved_in: dict[tuple[str, str], str] = {}
    in_flight = _in_flight(earlier_approved)
    for kind, key, month, unfinished in zip(
        earlier_approved["kind"], earlier_approved["idempotency_key"], earlier_approved["month"], in_flight, strict=True
    ):
        target = "|".join(str(key).split("|")[2:-1])
        if kind in _CREATE_KINDS:
            approved_in.setdefault((kind, target), f"{month}'s approved {kind} of {target} is not loaded yet")
        elif kind in _ADJUSTMENT_KINDS and unfinished:
            for family_kind in _ADJUSTMENT_KINDS:
                approved_in.setdefault(
                    (family_kind, target),
                    f"{month}'s load of an approved adjustment of {target} did not finish (Autotask may or may "
                    "not hold it)",
                )
    if not approved_in:
        return actions
    reasons: dict[str, str] = {}
    held: list[PlanAction] = []
    for action in order_actions(actions):
        earlier = approved_in.get((str(action.kind), action.target))
        if earlier is not None:
            reason = (
                f"{earlier}: load that run first (make approve / the load task), then re-run this month's "
                "reconciliation"
            )
        else:
            reason = next((reasons[needed] for needed in action.depends_on if needed in reasons), None)
        if reason is not None:
            reasons[action.action_id] = reason
            action = action.held(ActionStatus.BLOCKED, reason)
        held.append(action)
    return held


# -- contract services the BSS no longer bills -------------------------------------------------------------


def _unbilled_reviews(
    month: BillingMonth,
    history: pd.DataFrame,
    contract_links: pd.DataFrame | None,
    snapshot: SnapshotState,
    billed_subscriptions: set[str],
    reconciled_contracts: set[int],
) -> list[PlanAction]:
    """A review line (writes nothing) for each contract service linked to a subscription the warehouse billed
    before but not this month, that still holds units in Autotask: a missed cancellation would be billed
    forever. Only when the absence means something: the subscription is billed monthly, or its last charge
    period or its contract ended before the month. An annually billed subscription between its yearly
    charges is normal and stays quiet."""
    if contract_links is None or contract_links.empty or history.empty:
        return []
    first_day = pd.Timestamp(month.first_day)
    missing = history[~history["subscription_id"].isin(billed_subscriptions)]
    # the remembered link wins over a contractNumber match (the SQL lists it first)
    links = contract_links.drop_duplicates("subscription_id", keep="first")
    missing = missing.merge(links[["subscription_id", "contract_id"]], on="subscription_id", how="inner")
    if missing.empty:
        return []
    contracts = snapshot.contracts.set_index("contract_id")
    missing = missing[missing["contract_id"].isin(contracts.index) & ~missing["contract_id"].isin(reconciled_contracts)]
    missing = missing.assign(contract_end=missing["contract_id"].map(contracts["end_date"]))
    last_charge_end = pd.to_datetime(missing["last_charge_end_date"]).astype(_DATETIME)
    past_term = (last_charge_end < first_day) | (missing["contract_end"] < first_day)
    missing = missing[(missing["billing_period"] == "Monthly") | past_term]
    services = snapshot.contract_services.merge(missing[["subscription_id", "contract_id"]], on="contract_id")
    if services.empty:
        return []
    units = snapshot.units.sort_values("start_date")
    held = pd.merge_asof(
        services.assign(point=first_day).astype({"point": _DATETIME}).sort_values("point"),
        units[["contract_service_id", "start_date", "end_date", "units"]].sort_values("start_date"),
        left_on="point",
        right_on="start_date",
        by="contract_service_id",
        direction="backward",
    )
    held = held[(held["units"].fillna(0.0) > _UNITS_EPSILON) & (held["end_date"] >= first_day)]
    described = history.set_index("subscription_id")
    actions = []
    for row in held.itertuples(index=False):
        past = described.loc[row.subscription_id]
        how = "billed monthly" if past["billing_period"] == "Monthly" else "past its term"
        actions.append(
            PlanAction(
                kind=ActionKind.REVIEW_UNBILLED,
                month=month.key,
                target=f"cs:C{int(row.contract_id)}/V{int(row.service_id)}",
                status=ActionStatus.FLAGGED,
                reason=(
                    f"subscription {row.subscription_id} ({how}, last billed in {past['last_month']}) has no "
                    f"line in {month.key}, but contract service {int(row.contract_service_id)} still holds "
                    f"{_decimal(row.units).normalize():f} units: if it was cancelled, set its units to 0; "
                    "nothing is written unless a person chooses a change"
                ),
                account_id=past["account_id"],
                subscription_ids=(row.subscription_id,),
                product_id=past["product_id"],
                contract_id=int(row.contract_id),
                service_id=int(row.service_id),
                contract_service_id=int(row.contract_service_id),
                units_before=_decimal(row.units),
            )
        )
    return actions


def _price_holds(
    info: Mapping[str, Any],
    price_before: Decimal | None,
    price_after: Decimal | None,
    price_in_force: Any,
    cost_in_force: Any,
    sets_money: bool,
) -> list[Hold]:
    """What a person signs about money: a price that raises what the customer pays (old and new figure), and a
    price below the cost once the action is loaded ("sold below cost", both figures), when the action sets money."""
    currency = _currency_of(info) or ""
    holds = []
    if price_before is not None and price_after is not None and price_after > price_before:
        holds.append(
            Hold(
                ActionStatus.FLAGGED,
                f"raises the unit price the customer pays from {price_before:f} to {price_after:f} {currency}".rstrip(),
            )
        )
    if sets_money and pd.notna(price_in_force) and pd.notna(cost_in_force):
        price, cost = _decimal(price_in_force), _decimal(cost_in_force)
        if price < cost:
            holds.append(
                Hold(
                    ActionStatus.FLAGGED,
                    f"sold below cost: unit price {price:f} {currency} is below unit cost {cost:f} {currency}".replace(
                        "  ", " "
                    ),
                )
            )
    return holds


def _currency_of(info: Mapping[str, Any]) -> str | None:
    currency = info.get("currency")
    return None if currency is None or pd.isna(currency) else str(currency).upper()


def _suggested(count: int, singular: str, plural: str) -> str:
    """ "1 suggested contract waits", "2 suggested contracts wait"."""
    return f"{count} suggested {singular} waits" if count == 1 else f"{count} suggested {plural} wait"


def _cycle_of(months: int) -> str:
    by_months = {value: key for key, value in COMMITMENT_MONTHS.items()}
    return by_months.get(months, "Monthly")


def _id_of(action: PlanAction | None) -> str | None:
    return action.action_id if action is not None else None


def _int_or_none(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _decimal(value: Any) -> Decimal:
    return Decimal(f"{float(value):.4f}").quantize(_FOUR_PLACES)


def _api_date(day: date) -> str:
    return f"{day.isoformat()}T00:00:00"
