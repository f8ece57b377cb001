"""Step 5¾: review a run's change plan before its approval — the grid, the decisions, the exports' rows.

The grid (`grid_page`) shows one row per plan line of a run with names, not only ids (customer, subscription,
product and SKU, billing period and commitment, BSS and Autotask units, the proposed change, the effective date,
unit price and cost with the currency, the mapping state, status and reason). Paging, sorting, filtering,
search and the totals of the filter run on the server, in SQL: the names are gathered once per plan, when it is
written or re-planned (`build_grid` stores the lines in `review_grid_lines`, keyed by the plan's fingerprint), and
every request joins them with the plan's current statuses, so a decision, the approval or the load shows at once.

Decisions (`decide`) are taken only while the run is pending: its plan exists, the month still holds its own
charge lines, and nobody has answered its approval (`month_approvals`). Each is validated before anything is
written (a 4xx `ReviewError` otherwise, nothing changed), stored, and audited in `review_decisions` (who, when,
what, before and after):

- mapping: confirm or reject a suggestion, link a source to an Autotask record of the run's snapshot (a manual
  link: remembered for next months and never replaced by auto-linking), or choose "create in Autotask" (the
  source's open suggestions are rejected, so the plan creates the record). The run is then re-planned at once
  (`link_month` + `reconcile_month`): rows a person owns (excluded, approved) survive, as `replace_plan` keeps
  them;
- lines: exclude a line from this month (status `excluded`; never loaded) or include it again (its status before
  the exclusion). The open lines that depend on an excluded line (`depends_on`: the later changes of its contract
  service, or what needs the contract service, contract or service it creates or the extension it makes) go with
  it, each audited with `excluded_with` and a reason naming the line; including that line brings back those and
  no line a person excluded on its own (a line that went with another is included only with it). Otherwise the
  loader would hold them back as waiting and the month would end half loaded. Re-planning keeps exclusions and
  excludes any new line that depends on an excluded one. Approve a flagged line (`review_line_approvals`: the
  month's approval then approves it with the proposed lines, see `include.approval.record_decision`) or take that
  back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from include.extract import StaleRunError, ensure_run_reads_own_lines
from include.identifiers import SYNC_DAG_ID
from include.money import (
    ADJUSTING_KINDS as MONEY_KINDS,
)
from include.money import (
    BUCKETS,
    ONE_OFF_CHARGE_TYPE,
    UNKNOWN_CURRENCY,
    MoneyTotals,
    PriceBook,
    bucket_sql,
    line_money,
    money_text,
    one_off_charges,
    one_off_totals,
    unit_amount_text,
    units_text,
)
from include.plan import PlanScope, sql_in
from include.reconcile import OTHER_COMPANY_FLAG
from include.report import ADJUSTING_KINDS, KIND_LABELS, _Names
from include.runs import billing_run, run_lines_source, runs_of_month
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
SEARCH_LIMIT = 25
_CENT = Decimal("0.01")

# Mapping states a line can show, the one needing most attention first; a line shows the first that applies.
MAPPING_STATES = ("suggestion", "create", "manual", "confirmed suggestion", "exact name", "key", "remembered")
_RESOLUTION_STATE = {
    "remembered": "remembered",
    "key": "key",
    "name": "exact name",
    "manual": "manual",
    "confirmed_suggestion": "confirmed suggestion",
    "created": "remembered",
}
SOURCE_NOUN = {"company": "account", "contract": "subscription", "service": "product"}
TARGET_NOUN = {"company": "company", "contract": "contract", "service": "service"}

# The columns a grid can be sorted by (and how each sorts), and the decisions the page takes.
SORTABLE = (
    "seq",
    "customer",
    "subscription",
    "product",
    "sku",
    "billing_period",
    "commitment",
    "kind",
    "status",
    "mapping",
    "effective_date",
    "bss_units",
    "autotask_units",
    "unit_change",
    "unit_price",
    "unit_cost",
    "currency",
    "cost_change",
    "bss_unit_price",
    "bss_unit_cost",
    "autotask_unit_price",
    "autotask_unit_cost",
    "billed_change",
    "margin_change",
    "reason",
)
MAPPING_DECISIONS = ("confirm_suggestion", "reject_suggestion", "link", "create")
LINE_DECISIONS = ("exclude", "include", "approve_line", "unapprove_line")
DECISIONS = MAPPING_DECISIONS + LINE_DECISIONS


class ReviewError(ValueError):
    """A request the review cannot carry out; `status` is the HTTP status that says why (nothing changed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[Any, tuple[int, str]]:  # crosses from the decision process intact
        return ReviewError, (self.status, self.message)


# -- the run and whether it can still be decided on -------------------------------------------------------------


@dataclass(frozen=True)
class RunState:
    run_id: str
    month: str
    lines: int
    approval: dict[str, Any] | None
    stale_reason: str | None
    dag_id: str | None = None
    superseded_by: str | None = None

    @property
    def pending(self) -> bool:
        return self.approval is None and self.stale_reason is None and self.superseded_by is None

    @property
    def why_not_pending(self) -> str | None:
        if self.approval is not None:
            who = self.approval.get("decided_by") or "the approval timeout"
            return f"the month's approval was answered ({self.approval['decision']} by {who}): decisions are closed"
        if self.superseded_by is not None:
            return (
                f"a later run ({self.superseded_by}) planned {self.month} again: this run's review stays as it was "
                "and takes no more decisions"
            )
        return self.stale_reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dag_id": self.dag_id,
            "month": self.month,
            "lines": self.lines,
            "pending": self.pending,
            "why_not_pending": self.why_not_pending,
            "approval": self.approval,
            "superseded_by": self.superseded_by,
        }


def run_state(warehouse: Warehouse, run_id: str, dag_id: str | None = None) -> RunState:
    """The run's month and whether decisions are still open; 404 when the run has no plan, or (with `dag_id`) is not
    a run of that DAG: a route serves a run only under the DAG it belongs to."""
    run = billing_run(warehouse, run_id)
    if dag_id is not None and (run is None or run.dag_id != dag_id):
        owner = f"it is a run of {run.dag_id}" if run is not None else "no billing DAG planned it"
        raise ReviewError(404, f"run {run_id!r} is not a run of {dag_id}: {owner}")
    source = run_lines_source(warehouse, run_id)
    rows = _rows(
        warehouse, f"SELECT MIN(month), COUNT(*) FROM {_plan_of(source)} WHERE run_id = :run_id", {"run_id": run_id}
    )
    if not rows or not rows[0][1]:
        raise ReviewError(404, f"run {run_id!r} has no change plan in the warehouse")
    month = rows[0][0]
    approvals = warehouse.query(
        "SELECT decision, decided_by, decided_at, note FROM month_approvals WHERE run_id = :run_id"
        " ORDER BY decided_at DESC",
        {"run_id": run_id},
    )
    approval = None
    if approvals:
        approval = {key: _jsonable(value) for key, value in approvals[0].items()}
    stale = None
    try:
        ensure_run_reads_own_lines(warehouse, month, run_id)
    except StaleRunError as error:
        stale = f"a newer run extracted {month} again: {error}"
    return RunState(
        run_id,
        month,
        int(rows[0][1]),
        approval,
        stale,
        run.dag_id if run is not None else None,
        run.superseded_by if run is not None else None,
    )


def _plan_of(source: str) -> str:
    """A plan source (`include.runs.run_lines_source`) to select from: the table, or its subquery with an alias."""
    return source if source == "plan_actions" else f"{source} run_lines"


# -- the grid ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridQuery:
    """What a grid request asks for: filters, search, sort and page (validated by `GridQuery.parse`)."""

    status: str | None = None
    kind: str | None = None
    customer: str | None = None
    mapping: str | None = None
    flagged_only: bool = False
    needs_mapping_only: bool = False
    search: str | None = None
    sort: str = "seq"
    descending: bool = False
    page: int = 1
    page_size: int = PAGE_SIZE_DEFAULT

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> GridQuery:
        """From query parameters; a wrong value is a 422 naming the parameter."""

        def text(name: str) -> str | None:
            value = params.get(name)
            value = None if value is None else str(value).strip()
            return value or None

        def flag(name: str) -> bool:
            value = (text(name) or "false").lower()
            if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ReviewError(422, f"parameter {name} must be true or false, not {value!r}")
            return value in ("1", "true", "yes", "on")

        def number(name: str, default: int, low: int, high: int) -> int:
            value = text(name)
            if value is None:
                return default
            try:
                parsed = int(value)
            except ValueError:
                raise ReviewError(422, f"parameter {name} must be a whole number, not {value!r}") from None
            if not low <= parsed <= high:
                raise ReviewError(422, f"parameter {name} must be between {low} and {high}, not {parsed}")
            return parsed

        sort = text("sort") or "seq"
        descending = False
        if sort.startswith("-"):
            sort, descending = sort[1:], True
        if sort not in SORTABLE:
            raise ReviewError(422, f"cannot sort by {sort!r}; sortable columns: {', '.join(SORTABLE)}")
        direction = text("dir")
        if direction is not None:
            if direction not in ("asc", "desc"):
                raise ReviewError(422, f"parameter dir must be asc or desc, not {direction!r}")
            descending = direction == "desc"
        mapping = text("mapping")
        if mapping is not None and mapping not in MAPPING_STATES:
            raise ReviewError(422, f"unknown mapping state {mapping!r}; one of: {', '.join(MAPPING_STATES)}")
        kind = text("kind")
        if kind is not None and kind not in KIND_LABELS:
            raise ReviewError(422, f"unknown kind {kind!r}; one of: {', '.join(KIND_LABELS)}")
        return cls(
            status=text("status"),
            kind=kind,
            customer=text("customer"),
            mapping=mapping,
            flagged_only=flag("flagged"),
            needs_mapping_only=flag("needs_mapping"),
            search=text("q"),
            sort=sort,
            descending=descending,
            page=number("page", 1, 1, 1_000_000),
            page_size=number("page_size", PAGE_SIZE_DEFAULT, 1, PAGE_SIZE_MAX),
        )

    def as_params(self) -> dict[str, str]:
        """The query as URL parameters (for the export links of the same filter)."""
        params = {
            "status": self.status,
            "kind": self.kind,
            "customer": self.customer,
            "mapping": self.mapping,
            "q": self.search,
            "flagged": "true" if self.flagged_only else None,
            "needs_mapping": "true" if self.needs_mapping_only else None,
            "sort": self.sort,
            "dir": "desc" if self.descending else "asc",
        }
        return {key: value for key, value in params.items() if value}


# Scaled integers keep the totals exact (4 decimal places, as the warehouse stores them).
_SCALE = 10_000
_BUILDING = threading.Lock()  # one build of a run's grid lines at a time in this process


def _fingerprint(warehouse: Warehouse, run_id: str) -> tuple[Any, ...]:
    """Changes whenever the run's plan is re-planned (rows replaced) or its links change; not when a later run
    supersedes the run's open lines (they are kept, `include.runs`)."""
    plan = _plan_of(run_lines_source(warehouse, run_id))
    rows = _rows(
        warehouse,
        f"SELECT COUNT(*), MAX(created_at) FROM {plan} WHERE run_id = :run_id",
        {"run_id": run_id},
    )
    links = _rows(
        warehouse,
        "SELECT COUNT(*), SUM(suggestions) FROM month_links WHERE run_id = :run_id",
        {"run_id": run_id},
    )
    return (*rows[0], *links[0])


def refresh_grid(warehouse: Warehouse, run_id: str, scope: PlanScope, new_lines: Collection[str] = ()) -> int:
    """After a scoped re-plan: rebuild the stored grid lines of the scope's lines (`new_lines`: those the re-plan
    added) and drop those of the scope's lines the plan no longer holds; the rest stay as stored. Returns how many
    lines were built. A run whose grid was never stored is built whole."""
    if _stored_fingerprint(warehouse, run_id) is None:
        return build_grid(warehouse, run_id)
    fingerprint = _fingerprint(warehouse, run_id)
    of_accounts, account_params = sql_in("account_id", scope.accounts, "acc")
    of_products, product_params = sql_in("product_id", scope.products, "prod")
    of_scope = {
        action_id
        for (action_id,) in _rows(
            warehouse,
            f"SELECT action_id FROM plan_actions WHERE run_id = :run_id AND ({of_accounts} OR {of_products})",
            {"run_id": run_id, **account_params, **product_params},
        )
    }
    rebuilt = of_scope | set(new_lines)
    # the scope's stored lines (a customer's, the catalogue's), rebuilt or dropped with their plan lines
    shown, shown_params = sql_in("account_id", scope.accounts, "acc")
    stale = {
        action_id
        for (action_id,) in _rows(
            warehouse,
            f"SELECT action_id FROM review_grid_lines WHERE run_id = :run_id AND ({shown} OR account_id = '')",
            {"run_id": run_id, **shown_params},
        )
    }
    in_plan = _existing(warehouse, run_id, stale - rebuilt)
    dropped = sorted((stale - rebuilt - in_plan) | rebuilt)
    lines = _rows(warehouse, "SELECT COUNT(*) FROM plan_actions WHERE run_id = :run_id", {"run_id": run_id})[0][0]
    rows = _static_rows(warehouse, run_id, rebuilt, scope) if rebuilt else []
    with warehouse.begin() as conn:
        for start in range(0, len(dropped), 500):
            condition, params = sql_in("action_id", dropped[start : start + 500], "id")
            conn.execute(
                sa.text(f"DELETE FROM review_grid_lines WHERE run_id = :run_id AND {condition}"),
                {"run_id": run_id, **params},
            )
        warehouse.insert(
            conn,
            "review_grid_lines",
            ({"run_id": run_id, **{column: row[key] for key, column in _STORED_COLUMNS.items()}} for row in rows),
        )
        conn.execute(
            sa.text(
                "UPDATE review_grids SET plan_fingerprint = :fingerprint, lines = :lines, built_at = :at"
                " WHERE run_id = :run_id"
            ),
            {"fingerprint": _fingerprint_text(fingerprint), "lines": int(lines), "at": utcnow(), "run_id": run_id},
        )
    return len(rows)


def _existing(warehouse: Warehouse, run_id: str, action_ids: Collection[str]) -> set[str]:
    """Which of these lines the run's plan holds."""
    ids = sorted(action_ids)
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        condition, params = sql_in("action_id", ids[start : start + 500], "id")
        found |= {
            action_id
            for (action_id,) in _rows(
                warehouse,
                f"SELECT action_id FROM plan_actions WHERE run_id = :run_id AND {condition}",
                {"run_id": run_id, **params},
            )
        }
    return found


def build_grid(warehouse: Warehouse, run_id: str) -> int:
    """Gather the names of the run's plan lines and store the grid's lines (`review_grid_lines`); returns how many.

    Called when the plan is written (the DAG's reconcile task) and re-planned (`replan`), so that no page request
    gathers names: every request pages, sorts, filters and totals the stored lines in SQL, joined with the plan's
    current statuses. Lines stored for an older plan state are replaced; a request that finds none for the current
    state builds them itself (`_ensure_grid`)."""
    fingerprint = _fingerprint(warehouse, run_id)
    rows = _static_rows(warehouse, run_id)
    _store_grid(warehouse, run_id, fingerprint, rows)
    return len(rows)


def _ensure_grid(warehouse: Warehouse, run_id: str) -> None:
    """The run's stored grid lines match its current plan (else they are built now: a plan written without them)."""
    fingerprint = _fingerprint_text(_fingerprint(warehouse, run_id))
    if _stored_fingerprint(warehouse, run_id) == fingerprint:
        return
    with _BUILDING:
        if _stored_fingerprint(warehouse, run_id) != fingerprint:
            log.info("review grid of run %s: built on request (the plan was written without it)", run_id)
            try:
                build_grid(warehouse, run_id)
            except sa.exc.IntegrityError:
                # another api-server process stored the same lines at the same moment: theirs serve
                if _stored_fingerprint(warehouse, run_id) != fingerprint:
                    raise


def _stored_fingerprint(warehouse: Warehouse, run_id: str) -> str | None:
    stored = _rows(warehouse, "SELECT plan_fingerprint FROM review_grids WHERE run_id = :run_id", {"run_id": run_id})
    return stored[0][0] if stored else None


# grid row key -> review_grid_lines column (the row keys starting with "_" are not shown)
_STORED_COLUMNS = {
    **{
        key: key
        for key in (
            "action_id",
            "seq",
            "kind",
            "kind_label",
            "customer",
            "account_id",
            "subscription",
            "product",
            "sku",
            "contract",
            "billing_period",
            "commitment",
            "bss_units",
            "autotask_units",
            "unit_change",
            "change",
            "effective_date",
            "unit_price",
            "unit_cost",
            "unit_cost_before",
            "currency",
            "cost_change",
            "mapping",
            "mapping_detail",
            "bss_unit_price",
            "bss_unit_cost",
            "autotask_unit_price",
            "autotask_unit_cost",
            "billed_change",
            "margin_change",
        )
    },
    "_units_added": "units_added",
    "_units_removed": "units_removed",
    "_cost_added": "cost_added",
    "_cost_removed": "cost_removed",
    "_billed_added": "billed_added",
    "_billed_removed": "billed_removed",
    "_customer_key": "customer_key",
    "_search": "search_text",
}


def _fingerprint_text(fingerprint: tuple[Any, ...]) -> str:
    return json.dumps([None if value is None else str(value) for value in fingerprint])


def _store_grid(warehouse: Warehouse, run_id: str, fingerprint: tuple[Any, ...], rows: list[dict[str, Any]]) -> None:
    """Replace the run's stored grid lines with `rows`, built from the plan state `fingerprint`."""
    with warehouse.begin() as conn:
        conn.execute(sa.text("DELETE FROM review_grid_lines WHERE run_id = :run_id"), {"run_id": run_id})
        conn.execute(sa.text("DELETE FROM review_grids WHERE run_id = :run_id"), {"run_id": run_id})
        warehouse.insert(
            conn,
            "review_grid_lines",
            ({"run_id": run_id, **{column: row[key] for key, column in _STORED_COLUMNS.items()}} for row in rows),
        )
        warehouse.insert(
            conn,
            "review_grids",
            [
                {
                    "run_id": run_id,
                    "plan_fingerprint": _fingerprint_text(fingerprint),
                    "lines": len(rows),
                    "built_at": utcnow(),
                }
            ],
        )


def _stored_rows(warehouse: Warehouse, run_id: str, fingerprint: tuple[Any, ...]) -> list[dict[str, Any]] | None:
    """The run's stored grid lines if they were built from the plan state `fingerprint`, else None."""
    stored = _rows(warehouse, "SELECT plan_fingerprint FROM review_grids WHERE run_id = :run_id", {"run_id": run_id})
    if not stored or stored[0][0] != _fingerprint_text(fingerprint):
        return None
    keys = list(_STORED_COLUMNS)
    columns = ", ".join(_STORED_COLUMNS.values())
    rows = []
    for values in _rows(
        warehouse,
        f"SELECT {columns} FROM review_grid_lines WHERE run_id = :run_id ORDER BY seq",  # fixed column names
        {"run_id": run_id},
    ):
        rows.append(dict(zip(keys, values, strict=True)))
    return rows


# What a grid row shows: the stored names and figures, then the line's live status, reason, decider, approver.
_SHOWN = [key for key in _STORED_COLUMNS if not key.startswith("_")]
_SHOWN_SQL = ", ".join(f"g.{_STORED_COLUMNS[key]}" for key in _SHOWN) + (
    ", p.status, COALESCE(p.reason, ''), COALESCE(p.decided_by, ''), COALESCE(a.approved_by, '')"
)
_SHOWN_KEYS = [*_SHOWN, "status", "reason", "decided_by", "line_approved_by"]


def _lines_sql(source: str) -> str:
    """The run's grid lines joined with their live plan rows (`source`: `include.runs.run_lines_source`)."""
    return (
        f" FROM review_grid_lines g JOIN {source} p ON p.action_id = g.action_id AND p.run_id = g.run_id"
        " LEFT JOIN review_line_approvals a ON a.run_id = g.run_id AND a.action_id = g.action_id"
        " WHERE g.run_id = :run_id"
    )


def _status_sql(source: str) -> str:
    """The lines with their current status only (what filters, totals and counts need)."""
    return (
        f" FROM review_grid_lines g JOIN {source} p ON p.action_id = g.action_id AND p.run_id = g.run_id"
        " WHERE g.run_id = :run_id"
    )


_NUMERIC = {
    "seq",
    "bss_units",
    "autotask_units",
    "unit_change",
    "unit_price",
    "unit_cost",
    "cost_change",
    "bss_unit_price",
    "bss_unit_cost",
    "autotask_unit_price",
    "autotask_unit_cost",
    "billed_change",
    "margin_change",
}
_LIVE = {"status": "p.status", "reason": "COALESCE(p.reason, '')"}


def _where(warehouse: Warehouse, query: GridQuery) -> tuple[str, dict[str, Any]]:
    """The query's filters and search as SQL conditions (appended to `_LINES_SQL`) and their parameters."""
    contains = "instr({}, {}) > 0" if warehouse.dialect == "sqlite" else "strpos({}, {}) > 0"
    fold = _casefold_sql(warehouse)
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if query.status:
        conditions.append("p.status = :status")
        params["status"] = query.status
    if query.kind:
        conditions.append("g.kind = :kind")
        params["kind"] = query.kind
    if query.mapping:
        conditions.append("g.mapping = :mapping")
        params["mapping"] = query.mapping
    if query.flagged_only:
        conditions.append("p.status = 'flagged'")
    if query.needs_mapping_only:
        conditions.append("p.status = 'needs-mapping'")
    if query.customer:
        conditions.append(f"({fold('g.account_id')} = :customer OR {contains.format('g.customer_key', ':customer')})")
        params["customer"] = query.customer.casefold()
    if query.search:
        conditions.append(
            f"({contains.format('g.search_text', ':needle')} OR {contains.format(fold(_LIVE['reason']), ':needle')})"
        )
        params["needle"] = query.search.casefold()
    return "".join(f" AND {condition}" for condition in conditions), params


def _order_by(warehouse: Warehouse, query: GridQuery) -> str:
    """Sorted by the column (missing values last either way), then by plan order; texts casefolded and compared by
    code point on both warehouses."""
    direction = "DESC" if query.descending else "ASC"
    if query.sort == "seq":
        return f" ORDER BY g.seq {direction}"  # the plan order: read along the (run_id, seq) index
    column = _LIVE.get(query.sort) or f"g.{query.sort}"
    if query.sort in _NUMERIC:
        return f" ORDER BY CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, {column} {direction}, g.seq"
    key = "g.customer_key" if query.sort == "customer" else _casefold_sql(warehouse)(column)
    key += "" if warehouse.dialect == "sqlite" else ' COLLATE "C"'
    return f" ORDER BY CASE WHEN {column} = '' THEN 1 ELSE 0 END, {key} {direction}, g.seq"


def _lines(warehouse: Warehouse, run_id: str, query: GridQuery, page: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The matching lines in the query's order (one page of them with `page` = (offset, size)). A page is found in
    two steps: the ordered ids of its lines (the sort handles ids only), then those lines' columns."""
    where, params = _where(warehouse, query)
    params["run_id"] = run_id
    plan = run_lines_source(warehouse, run_id)
    if page is None:
        statement = f"SELECT {_SHOWN_SQL}{_lines_sql(plan)}{where}{_order_by(warehouse, query)}"
        return [
            _with_texts(dict(zip(_SHOWN_KEYS, values, strict=True))) for values in _rows(warehouse, statement, params)
        ]
    live = query.status or query.flagged_only or query.needs_mapping_only or query.search or query.sort in _LIVE
    source = _status_sql(plan) if live else " FROM review_grid_lines g WHERE g.run_id = :run_id"  # names: no join
    ids = [
        action_id
        for (action_id,) in _rows(
            warehouse,
            f"SELECT g.action_id{source}{where}{_order_by(warehouse, query)}"
            f" LIMIT {int(page[1])} OFFSET {int(page[0])}",
            params,
        )
    ]
    if not ids:
        return []
    chosen = {f"id{index}": action_id for index, action_id in enumerate(ids)}
    found = {
        values[0]: _with_texts(dict(zip(_SHOWN_KEYS, values, strict=True)))
        for values in _rows(
            warehouse,
            f"SELECT {_SHOWN_SQL}{_lines_sql(plan)} AND g.action_id IN ({', '.join(':' + name for name in chosen)})",
            {"run_id": run_id, **chosen},
        )
    }
    return [found[action_id] for action_id in ids if action_id in found]


def _totals(warehouse: Warehouse, run_id: str, query: GridQuery) -> dict[str, Any]:
    """Units and money of the matching lines, per currency: amounts in different currencies are never added up.

    `money`: per currency and bucket (`include.money.BUCKETS`: what loads on approval, what waits for a person, what
    is blocked or excluded) the billed, cost and margin added and removed, summed exactly from the lines' own figures
    (`include.money.line_money`, stored with the grid's lines). `cost`, units and `counted_lines`: of the lines that
    are not excluded, as before. One scan, grouped by currency and bucket."""
    where, params = _where(warehouse, query)
    params["run_id"] = run_id
    counted = "p.status <> 'excluded'"
    bucket = bucket_sql("p.status", "a.action_id IS NOT NULL")
    source = run_lines_source(warehouse, run_id)
    lines = counted_lines = units_added = units_removed = 0
    cost: dict[str, dict[str, Any]] = {}
    money = MoneyTotals()
    for (
        currency,
        in_bucket,
        found,
        counting,
        added,
        removed,
        moved,
        cost_added,
        cost_removed,
        billed_added,
        billed_removed,
        bucket_added,
        bucket_removed,
    ) in _rows(
        warehouse,
        f"SELECT CASE WHEN g.currency = '' THEN '{UNKNOWN_CURRENCY}' ELSE g.currency END, {bucket}, COUNT(*),"
        f" SUM(CASE WHEN {counted} THEN 1 ELSE 0 END),"
        f" SUM(CASE WHEN {counted} THEN g.units_added ELSE 0 END),"
        f" SUM(CASE WHEN {counted} THEN g.units_removed ELSE 0 END),"
        " SUM(CASE WHEN g.units_added <> 0 OR g.units_removed <> 0 OR g.cost_added <> 0 OR g.cost_removed <> 0"
        " OR g.billed_added <> 0 OR g.billed_removed <> 0 THEN 1 ELSE 0 END),"
        " SUM(g.cost_added), SUM(g.cost_removed), SUM(g.billed_added), SUM(g.billed_removed),"
        " SUM(g.units_added), SUM(g.units_removed)"
        f" FROM review_grid_lines g JOIN {source} p ON p.action_id = g.action_id AND p.run_id = g.run_id"
        " LEFT JOIN review_line_approvals a ON a.run_id = g.run_id AND a.action_id = g.action_id"
        f" WHERE g.run_id = :run_id{where} GROUP BY 1, 2",
        params,
    ):
        lines += int(found)
        counted_lines += int(counting or 0)
        units_added += int(added or 0)
        units_removed += int(removed or 0)
        if in_bucket != "held" and (cost_added or cost_removed):
            into = cost.setdefault(currency, {"cost_added": 0, "cost_removed": 0})
            into["cost_added"] += int(cost_added or 0)
            into["cost_removed"] += int(cost_removed or 0)
        if moved:
            figures = money.of(currency, in_bucket)
            figures.lines += int(moved)
            figures.units_added += _scaled(bucket_added)
            figures.units_removed += _scaled(bucket_removed)
            figures.cost_added += _scaled(cost_added)
            figures.cost_removed += _scaled(cost_removed)
            figures.billed_added += _scaled(billed_added)
            figures.billed_removed += _scaled(billed_removed)
    return {
        "lines": lines,
        "counted_lines": counted_lines,
        "units_added": units_added / _SCALE,
        "units_removed": units_removed / _SCALE,
        "units_text": {
            "added": units_text(Decimal(units_added) / _SCALE),
            "removed": units_text(Decimal(units_removed) / _SCALE),
        },
        "cost": {
            currency: {"cost_added": figures["cost_added"] / _SCALE, "cost_removed": figures["cost_removed"] / _SCALE}
            for currency, figures in sorted(cost.items())
        },
        "money": money.as_dict(),
        "buckets": BUCKETS,
    }


_UNIT_TEXTS = (
    "unit_price",
    "unit_cost",
    "bss_unit_price",
    "bss_unit_cost",
    "autotask_unit_price",
    "autotask_unit_cost",
)


def _with_texts(row: dict[str, Any]) -> dict[str, Any]:
    """The line with its figures as the page shows them (`text`): money to 2 decimals with thousands separators,
    unit prices and costs to their 4 places, whole units without ".0"; `below_cost` when the unit price it loads is
    under its unit cost."""
    texts = {key: units_text(row.get(key)) for key in ("bss_units", "autotask_units")}
    texts["unit_change"] = units_text(row.get("unit_change"), signed=True)
    texts.update({key: unit_amount_text(row.get(key)) for key in _UNIT_TEXTS})
    texts.update(
        {key: money_text(row.get(key), signed=True) for key in ("cost_change", "billed_change", "margin_change")}
    )
    price, cost = row.get("unit_price"), row.get("unit_cost")
    row["below_cost"] = price is not None and cost is not None and Decimal(str(price)) < Decimal(str(cost))
    row["text"] = texts
    return row


def _scaled(value: Any) -> Decimal:
    """A sum of figures scaled by 10,000 back to an exact Decimal."""
    return Decimal(int(value or 0)) / _SCALE


def grid_rows(warehouse: Warehouse, run_id: str, query: GridQuery | None = None) -> list[dict[str, Any]]:
    """Every line of the run's plan matching the query (all of them by default) as the grid shows it (names,
    mapping, current status), in the query's order (plan order by default)."""
    _ensure_grid(warehouse, run_id)
    return _lines(warehouse, run_id, query or GridQuery(), None)


def grid_export(warehouse: Warehouse, run_id: str, query: GridQuery) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every line matching the query in its order, and their totals (with the month's one-off charges of the
    query's customers, `one_off`): what the CSV and XLSX exports hold."""
    _ensure_grid(warehouse, run_id)
    totals = _totals(warehouse, run_id, query)
    totals["one_off"] = [charge.as_dict() for charge in _one_off(warehouse, run_id, query)]
    return _lines(warehouse, run_id, query, None), totals


def _one_off(warehouse: Warehouse, run_id: str, query: GridQuery) -> list[Any]:
    """The month's one-off (OneTime) charges, of the query's customer when it names one: shown, not posted yet."""
    plan = _plan_of(run_lines_source(warehouse, run_id))
    month = _rows(warehouse, f"SELECT MIN(month) FROM {plan} WHERE run_id = :run_id", {"run_id": run_id})[0][0]
    wanted = (query.customer or "").casefold()
    return [
        charge
        for charge in (one_off_charges(warehouse, month) if month else [])
        if not wanted or wanted == charge.account_id.casefold() or wanted in charge.customer.casefold()
    ]


def grid_totals(warehouse: Warehouse, run_id: str, query: GridQuery, ensure: bool = True) -> dict[str, Any]:
    """The totals of the lines matching the query (what the page shows above the grid). `ensure=False`: the caller
    knows the stored lines are the plan's (a decision just refreshed them)."""
    if ensure:
        _ensure_grid(warehouse, run_id)
    return _totals(warehouse, run_id, query)


def grid_page(warehouse: Warehouse, run_id: str, query: GridQuery) -> dict[str, Any]:
    """One page of the grid with the filter's totals and the counts a reviewer filters by (of all the run's lines)."""
    _ensure_grid(warehouse, run_id)
    totals = _totals(warehouse, run_id, query)
    counts: dict[str, dict[str, int]] = {"status": {}, "kind": {}, "mapping": {}}
    total_lines = 0
    plan = _plan_of(run_lines_source(warehouse, run_id))
    for status, kind, lines in _rows(
        warehouse,
        f"SELECT status, kind, COUNT(*) FROM {plan} WHERE run_id = :run_id GROUP BY status, kind",
        {"run_id": run_id},
    ):
        total_lines += int(lines)
        counts["status"][status] = counts["status"].get(status, 0) + int(lines)
        counts["kind"][kind] = counts["kind"].get(kind, 0) + int(lines)
    for mapping, lines in _rows(
        warehouse,
        "SELECT mapping, COUNT(*) FROM review_grid_lines WHERE run_id = :run_id GROUP BY mapping",
        {"run_id": run_id},
    ):
        counts["mapping"][mapping] = int(lines)
    start = (query.page - 1) * query.page_size
    one_off = _one_off(warehouse, run_id, query)
    return {
        "run_id": run_id,
        "total_lines": total_lines,
        "matching": totals["lines"],
        "page": query.page,
        "page_size": query.page_size,
        "pages": max(1, -(-totals["lines"] // query.page_size)),
        "sort": query.sort,
        "dir": "desc" if query.descending else "asc",
        "totals": totals,
        "counts": {column: dict(sorted(values.items())) for column, values in counts.items()},
        "lines": _lines(warehouse, run_id, query, (start, query.page_size)),
        # OneTime BSS lines (setup fees): shown with the month, not posted to Autotask yet
        "one_off": [charge.as_dict() for charge in one_off],
        "one_off_totals": one_off_totals(one_off),
    }


def _static_rows(
    warehouse: Warehouse, run_id: str, only: Collection[str] | None = None, scope: PlanScope | None = None
) -> list[dict[str, Any]]:
    """The names and figures of the run's lines: what changes only when the run is re-planned. `only` (with the
    `scope` they belong to): just these lines, named from the scope's customers' data alone."""
    if only is None:
        plan_rows = warehouse.query(
            "SELECT * FROM plan_actions WHERE run_id = :run_id ORDER BY seq", {"run_id": run_id}
        )
    else:
        plan_rows = _plan_rows_by_id(warehouse, run_id, only)
    if not plan_rows:
        return []
    month = plan_rows[0]["month"]
    accounts = None
    month_condition, scope_params = "", {}
    if only is not None and scope is not None:
        # the lines a scoped line names (the company, contract or service its customer's lines create)
        named = {row["action_id"] for row in plan_rows}
        referenced = {
            row[column]
            for row in plan_rows
            for column in ("company_action_id", "contract_action_id", "service_action_id", "contract_service_action_id")
            if row[column] and row[column] not in named
        }
        accounts = {row["account_id"] for row in plan_rows if row["account_id"]} | set(scope.accounts)
        month_condition, scope_params = sql_in("account_id", accounts, "acc")
        month_condition = f" AND {month_condition}"
        named_rows = [*plan_rows, *_plan_rows_by_id(warehouse, run_id, referenced)]
        names = _Names(warehouse, month, run_id, named_rows, accounts)
        book = PriceBook(warehouse, month, run_id, named_rows, accounts)
    else:
        names = _Names(warehouse, month, run_id, plan_rows)
        book = PriceBook(warehouse, month, run_id, plan_rows)
    subscriptions: dict[str, tuple[str, str]] = {}
    for sub_id, period, cycle in _rows(
        warehouse,
        "SELECT subscription_id, billing_period, billing_cycle FROM charge_lines WHERE month = :month"
        f" AND charge_type <> '{ONE_OFF_CHARGE_TYPE}'{month_condition} ORDER BY effective_date, charge_id",
        {"month": month, **scope_params},
    ):
        subscriptions[sub_id] = (period, cycle)
    links = {
        (kind, source): (resolution, suggestions, flag)
        for kind, source, resolution, suggestions, flag in _month_links(warehouse, run_id, plan_rows, only is not None)
    }
    rows = []
    for plan_row in plan_rows:
        line = names.line(plan_row, "", "", None)
        subs = _json_list(plan_row["subscription_ids"])
        known = next((subscriptions[sub] for sub in subs if sub in subscriptions), None)
        payload = _json_object(plan_row["payload"])
        money = line_money(plan_row, book)
        sources = _sources_of(plan_row, subs)
        mapping = _mapping_state(sources, links)
        customer = line.customer or ""
        row = {
            "action_id": plan_row["action_id"],
            "seq": int(plan_row["seq"]),
            "kind": plan_row["kind"],
            "kind_label": KIND_LABELS.get(plan_row["kind"], plan_row["kind"]),
            "customer": customer,
            "account_id": line.account_id or "",
            "subscription": line.subscription,
            "product": line.product or "",
            "sku": line.sku or "",
            "contract": line.contract or "",
            "billing_period": known[0] if known else "",
            "commitment": known[1] if known else "",
            "bss_units": _float(line.units_after),
            "autotask_units": _float(line.units_before),
            "unit_change": _float(line.unit_change if line.unit_change is not None else _minus(line)),
            "change": _change_text(plan_row["kind"], line, payload, plan_row),
            "effective_date": line.effective_date.isoformat() if line.effective_date else "",
            "unit_price": _float(money.unit_price),
            "unit_cost": _float(money.unit_cost),
            "unit_cost_before": _float(line.unit_cost_before),
            "currency": money.currency if money.currency != UNKNOWN_CURRENCY else (line.currency or ""),
            "cost_change": _float(money.cost_change) if plan_row["kind"] in MONEY_KINDS else None,
            "mapping": mapping,
            "mapping_detail": _mapping_detail(sources, links),
            "bss_unit_price": _float(money.bss_unit_price),
            "bss_unit_cost": _float(money.bss_unit_cost),
            "autotask_unit_price": _float(money.autotask_unit_price),
            "autotask_unit_cost": _float(money.autotask_unit_cost),
            "billed_change": _float(money.billed_change) if plan_row["kind"] in MONEY_KINDS else None,
            "margin_change": _float(money.margin_change) if plan_row["kind"] in MONEY_KINDS else None,
            "_units_added": int(money.units_added * _SCALE),
            "_units_removed": int(money.units_removed * _SCALE),
            "_cost_added": int(max(money.cost_change, 0) * _SCALE),
            "_cost_removed": int(max(-money.cost_change, 0) * _SCALE),
            "_billed_added": int(max(money.billed_change, 0) * _SCALE),
            "_billed_removed": int(max(-money.billed_change, 0) * _SCALE),
            "_customer_key": customer.casefold(),
            "_search": " ".join(
                str(part)
                for part in (
                    customer,
                    line.account_id,
                    line.subscription,
                    line.product,
                    line.sku,
                    line.contract,
                    plan_row["action_id"],
                    plan_row["kind"],
                )
                if part
            ).casefold(),
        }
        rows.append(row)
    return rows


def _plan_rows_by_id(warehouse: Warehouse, run_id: str, action_ids: Collection[str]) -> list[dict[str, Any]]:
    ids = sorted(action_ids)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), 500):
        condition, params = sql_in("action_id", ids[start : start + 500], "id")
        rows += warehouse.query(
            f"SELECT * FROM plan_actions WHERE run_id = :run_id AND {condition}", {"run_id": run_id, **params}
        )
    return sorted(rows, key=lambda row: row["seq"])


def _month_links(
    warehouse: Warehouse, run_id: str, plan_rows: Sequence[Mapping[str, Any]], only_theirs: bool
) -> list[tuple]:
    """The run's resolutions (kind, source, resolution, suggestions, flag): all, or those of these lines' sources."""
    statement = "SELECT kind, source_key, resolution, suggestions, flag FROM month_links WHERE run_id = :run_id"
    if not only_theirs:
        return _rows(warehouse, statement, {"run_id": run_id})
    found = []
    for kind in TARGET_NOUN:
        keys = {
            key
            for row in plan_rows
            for source_kind, key in _sources_of(row, _json_list(row["subscription_ids"]))
            if source_kind == kind
        }
        keys = sorted(keys)
        for start in range(0, len(keys), 500):
            condition, params = sql_in("source_key", keys[start : start + 500], "key")
            found += _rows(
                warehouse, f"{statement} AND kind = :kind AND {condition}", {"run_id": run_id, "kind": kind, **params}
            )
    return found


def _minus(line: Any) -> Decimal | None:
    if line.units_after is None or line.units_before is None:
        return None
    return line.units_after - line.units_before


def _change_text(kind: str, line: Any, payload: Mapping[str, Any], row: Mapping[str, Any] | None = None) -> str:
    """One phrase per change, the kind included ("+3 units from 18 Oct 2026", "new company X", "extend contract to
    2 Oct 2027"): the grid shows it alone."""
    from include.review_words import day_text, units_text

    if kind == "adjust_units" and line.unit_change is not None:
        sign = "-" if line.unit_change < 0 else "+"
        since = f" from {day_text(line.effective_date)}" if line.effective_date else ""
        return f"{sign}{units_text(line.unit_change)}{since}"
    if kind == "change_cost":
        return f"unit cost {_plain(line.unit_cost_before)} → {_plain(line.unit_cost_after)}"
    if kind == "change_price":
        before = row.get("unit_price_before") if row is not None else None
        return f"unit price {_plain(before)} → {_plain(payload.get('adjustedUnitPrice'))}"
    if kind == "extend_contract":
        return f"extend contract to {day_text(line.end_date_after)}"
    if kind == "create_company":
        return f"new company {payload.get('companyName') or ''}".strip()
    if kind == "create_service":
        return f"new service {payload.get('name') or ''}".strip()
    if kind == "create_contract":
        return f"new contract {payload.get('contractName') or ''}".strip()
    if kind == "create_contract_service":
        return "add the service to the contract"
    if kind == "review_unbilled":
        return "check by hand: the BSS no longer bills this contract service"
    return KIND_LABELS.get(kind, kind)


def _sources_of(plan_row: Mapping[str, Any], subscriptions: Sequence[str]) -> list[tuple[str, str]]:
    sources = []
    if plan_row["account_id"]:
        sources.append(("company", str(plan_row["account_id"])))
    sources += [("contract", sub) for sub in subscriptions]
    if plan_row["product_id"]:
        sources.append(("service", str(plan_row["product_id"])))
    return sources


def _state_of(link: tuple[str, int, Any] | None) -> str | None:
    if link is None:
        return None
    resolution, suggestions, _flag = link
    if resolution == "unlinked":
        return "suggestion" if suggestions else "create"
    return _RESOLUTION_STATE.get(resolution, resolution)


def _mapping_state(sources: Sequence[tuple[str, str]], links: Mapping[tuple[str, str], Any]) -> str:
    states = {_state_of(links.get(source)) for source in sources} - {None}
    return next((state for state in MAPPING_STATES if state in states), "")


def _mapping_detail(sources: Sequence[tuple[str, str]], links: Mapping[tuple[str, str], Any]) -> str:
    parts = []
    for kind, source in sources:
        state = _state_of(links.get((kind, source)))
        if state:
            flag = links[(kind, source)][2]
            parts.append(f"{TARGET_NOUN[kind]}: {state}" + (f" ({flag})" if flag else ""))
    return "; ".join(dict.fromkeys(parts))


# -- a line's detail and the snapshot search --------------------------------------------------------------------


def line_detail(warehouse: Warehouse, run_id: str, action_id: str) -> dict[str, Any]:
    """One line with its mapping sources (resolution, current target, suggestions) and the decisions open to it."""
    _ensure_grid(warehouse, run_id)
    found = _rows(
        warehouse,
        f"SELECT {_SHOWN_SQL}{_lines_sql(run_lines_source(warehouse, run_id))} AND g.action_id = :action_id",
        {"run_id": run_id, "action_id": action_id},
    )
    row = dict(zip(_SHOWN_KEYS, found[0], strict=True)) if found else None
    if row is None:
        raise ReviewError(404, f"line {action_id!r} is not a line of run {run_id!r}")
    plan_rows = warehouse.query(
        "SELECT account_id, subscription_ids, product_id FROM plan_actions WHERE action_id = :id AND run_id = :run_id"
        " UNION ALL SELECT account_id, subscription_ids, product_id FROM superseded_plan_actions"
        " WHERE action_id = :id AND run_id = :run_id",
        {"id": action_id, "run_id": run_id},
    )
    # a line without an account of its own (an extend-contract line) still asks about its customer's company: the
    # decision its reason asks for (confirm the suggested company) is offered on the line itself
    plan_row = {**plan_rows[0], "account_id": plan_rows[0]["account_id"] or row["account_id"] or None}
    sources = []
    for kind, source_key in _sources_of(plan_row, _json_list(plan_row["subscription_ids"])):
        link = warehouse.query(
            "SELECT target_id, resolution, link_method, flag, suggestions FROM month_links"
            " WHERE run_id = :run_id AND kind = :kind AND source_key = :source",
            {"run_id": run_id, "kind": kind, "source": source_key},
        )
        if not link:
            continue
        suggestions = warehouse.query(
            "SELECT target_id, target_name, score, reason, status FROM mapping_suggestions"
            " WHERE kind = :kind AND source_key = :source AND status IN ('open', 'rejected')"
            " ORDER BY status, score DESC, target_id",
            {"kind": kind, "source": source_key},
        )
        target_id = link[0]["target_id"]
        sources.append(
            {
                "kind": kind,
                "source_noun": SOURCE_NOUN[kind],
                "source_key": source_key,
                "source_name": _source_name(warehouse, kind, source_key),
                "resolution": link[0]["resolution"],
                "state": _state_of((link[0]["resolution"], link[0]["suggestions"], link[0]["flag"])),
                "flag": link[0]["flag"],
                "target_id": target_id,
                "target_name": _target_name(warehouse, run_id, kind, target_id) if target_id is not None else None,
                "suggestions": [
                    {
                        "target_id": int(item["target_id"]),
                        "target_name": item["target_name"],
                        "score": float(item["score"]),
                        "reason": item["reason"],
                        "status": item["status"],
                    }
                    for item in suggestions
                ],
            }
        )
    return {"line": row, "sources": sources}


def search_targets(
    warehouse: Warehouse, run_id: str, kind: str, text: str, company_id: int | None = None
) -> list[dict]:
    """Autotask records of the run's snapshot whose name, number/SKU or id contains the text; companies with what
    tells two of one name apart (`_company_particulars`: address, city, active contracts, linked BSS accounts)."""
    if kind not in TARGET_NOUN:
        raise ReviewError(422, f"kind must be one of company, contract, service, not {kind!r}")
    needle = "%" + text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    fold = _casefold_sql(warehouse)

    def contains(*columns: str) -> str:
        return " OR ".join(f"{fold(column)} LIKE {fold(':q')} ESCAPE '\\'" for column in columns)

    if kind == "company":
        statement = (
            "SELECT company_id AS id, company_name AS name, external_key AS number, is_active AS active,"
            " NULL AS company_id FROM at_companies WHERE run_id = :run_id AND ("
            + contains("company_name", "COALESCE(external_key, '')", "CAST(company_id AS VARCHAR(30))")
            + ")"
            " ORDER BY company_name, company_id"
        )
    elif kind == "contract":
        statement = (
            "SELECT contract_id AS id, contract_name AS name, contract_number AS number, status AS active,"
            " company_id FROM at_contracts WHERE run_id = :run_id AND ("
            + contains("contract_name", "COALESCE(contract_number, '')", "CAST(contract_id AS VARCHAR(30))")
            + ")"
            + (" AND company_id = :company" if company_id is not None else "")
            + " ORDER BY contract_name, contract_id"
        )
    else:
        statement = (
            "SELECT service_id AS id, service_name AS name, sku AS number, is_active AS active, NULL AS company_id"
            " FROM at_services WHERE run_id = :run_id AND ("
            + contains("service_name", "COALESCE(sku, '')", "CAST(service_id AS VARCHAR(30))")
            + ")"
            " ORDER BY service_name, service_id"
        )
    with warehouse.engine.connect() as conn:
        if warehouse.dialect == "sqlite":
            _register_casefold(conn)
        rows = [
            dict(row)
            for row in conn.execute(
                sa.text(statement + f" LIMIT {SEARCH_LIMIT}"), {"run_id": run_id, "q": needle, "company": company_id}
            ).mappings()
        ]
    found = [
        {
            "id": int(row["id"]),
            "name": row["name"],
            "number": row["number"],
            "active": bool(row["active"]) if kind != "contract" else row["active"] in (None, 1, True),
            "company_id": None if row["company_id"] is None else int(row["company_id"]),
        }
        for row in rows
    ]
    return _company_particulars(warehouse, run_id, found) if kind == "company" and found else found


def _company_particulars(warehouse: Warehouse, run_id: str, companies: list[dict]) -> list[dict]:
    """Each company with its address and city, its active contracts in the snapshot and the BSS accounts already
    linked to it (remembered links and this run's links): what tells "Hart & Hale Ltd" from "Hart & Hale Ltd"."""
    ids = [company["id"] for company in companies]
    condition, params = sql_in("company_id", ids, "company")
    targets, target_params = sql_in("target_id", ids, "company")
    params = {"run_id": run_id, **params, **target_params}
    places = {
        int(row["company_id"]): row
        for row in warehouse.query(
            f"SELECT company_id, address, city FROM at_companies WHERE run_id = :run_id AND {condition}", params
        )
    }
    contracts = {
        int(row["company_id"]): int(row["contracts"])
        for row in warehouse.query(
            "SELECT company_id, COUNT(*) AS contracts FROM at_contracts WHERE run_id = :run_id"
            f" AND (status IS NULL OR status = 1) AND {condition} GROUP BY company_id",
            params,
        )
    }
    accounts: dict[int, set[str]] = {}
    for row in warehouse.query(
        f"SELECT target_id, source_key FROM month_links WHERE run_id = :run_id AND kind = 'company' AND {targets}"
        f" UNION SELECT target_id, source_key FROM mapping_links WHERE kind = 'company' AND {targets}",
        params,
    ):
        accounts.setdefault(int(row["target_id"]), set()).add(str(row["source_key"]))
    for company in companies:
        place = places.get(company["id"]) or {}
        company["address"] = place.get("address")
        company["city"] = place.get("city")
        company["active_contracts"] = contracts.get(company["id"], 0)
        company["linked_accounts"] = sorted(accounts.get(company["id"], set()))
    return companies


def _casefold_sql(warehouse: Warehouse) -> Any:
    """How the warehouse casefolds a text in SQL, for searches that must match "ü" with "Ü": PostgreSQL's LOWER
    follows the database's (UTF-8) character type; SQLite's LOWER knows ASCII only, so on SQLite `casefold`, a
    function registered on the connection (`_register_casefold`), folds with Python's str.casefold."""
    if warehouse.dialect == "sqlite":
        return lambda expression: f"casefold({expression})"
    return lambda expression: f"LOWER({expression})"


def _register_casefold(conn: sa.Connection) -> None:
    def casefold(value: Any) -> str | None:
        return None if value is None else str(value).casefold()

    conn.connection.driver_connection.create_function("casefold", 1, casefold, deterministic=True)


def _source_name(warehouse: Warehouse, kind: str, source_key: str) -> str:
    column = {"company": "account", "contract": "subscription", "service": "product"}[kind]
    name_column = {"company": "account_name", "contract": "product_name", "service": "product_name"}[kind]
    rows = warehouse.query(
        f"SELECT {name_column} AS name FROM charge_lines WHERE {column}_id = :key LIMIT 1",  # fixed names only
        {"key": source_key},
    )
    return rows[0]["name"] if rows else ""


def _target_name(warehouse: Warehouse, run_id: str, kind: str, target_id: int) -> str | None:
    table, key, name = {
        "company": ("at_companies", "company_id", "company_name"),
        "contract": ("at_contracts", "contract_id", "contract_name"),
        "service": ("at_services", "service_id", "service_name"),
    }[kind]
    rows = warehouse.query(
        f"SELECT {name} AS name FROM {table} WHERE run_id = :run_id AND {key} = :id",  # fixed names only
        {"run_id": run_id, "id": int(target_id)},
    )
    return rows[0]["name"] if rows else None


# -- decisions --------------------------------------------------------------------------------------------------


def decide(
    warehouse: Warehouse,
    run_id: str,
    request: Mapping[str, Any],
    by: str,
    settings: SyncSettings | None = None,
    dag_id: str | None = None,
) -> dict[str, Any]:
    """Carry out one decision of a reviewer (see the module docstring); returns what changed.

    Everything is checked first, and everything a decision writes (the link or the line's status, the re-plan of
    the lines it changes, the grid's lines, the audit row) commits in one transaction that holds the month: a
    decision and the month's approval never interleave, and the run is checked again under that hold. A
    ReviewError (4xx) or any failure leaves the warehouse as it was. `dag_id`: the DAG the request names; the run
    must be one of its runs. `settings`: those the run was planned with, by default (`billing_runs`)."""
    if not isinstance(request, Mapping):
        raise ReviewError(422, "the decision must be a JSON object")
    decision = request.get("decision")
    if decision not in DECISIONS:
        raise ReviewError(422, f"unknown decision {decision!r}; one of: {', '.join(DECISIONS)}")
    if not isinstance(by, str) or not by.strip():
        raise ReviewError(401, "the decision needs the name of the person taking it")
    registered = billing_run(warehouse, run_id)
    if registered is not None and dag_id in (None, registered.dag_id):
        month = registered.month  # the run's state is checked under the month's hold below
    else:
        state = run_state(warehouse, run_id, dag_id)
        if not state.pending:
            raise ReviewError(409, f"run {run_id!r} takes no more decisions: {state.why_not_pending}")
        month = state.month
    with warehouse.begin() as conn:
        warehouse.lock_month(conn, month)
        joined = warehouse.within(conn)
        state = run_state(joined, run_id, dag_id)
        if not state.pending:
            raise ReviewError(409, f"run {run_id!r} takes no more decisions: {state.why_not_pending}")
        if decision in LINE_DECISIONS:
            return _decide_line(joined, state, str(decision), request, by)
        run = billing_run(joined, run_id)
        if run is not None and run.is_reversal:
            raise ReviewError(
                409,
                f"run {run_id!r} reverses run {run.reverses_run_id}: its lines are the opposite adjustments of that "
                "run; a mapping decision does not apply (exclude or include its lines instead)",
            )
        if settings is None:
            settings = run.sync_settings() if run is not None else SyncSettings.from_env()
        return _decide_mapping(joined, state, str(decision), request, by, settings)


def _decide_line(
    warehouse: Warehouse, state: RunState, decision: str, request: Mapping[str, Any], by: str
) -> dict[str, Any]:
    action_id = request.get("action_id")
    if not isinstance(action_id, str) or not action_id:
        raise ReviewError(422, f"{decision} needs action_id (text), got {action_id!r}")
    plan = warehouse.table("plan_actions")
    approvals = warehouse.table("review_line_approvals")
    now = utcnow()
    went_with: list[Mapping[str, Any]] = []
    with warehouse.begin() as conn:
        warehouse.lock_month(conn, state.month)
        row = conn.execute(sa.select(plan).where(plan.c.action_id == action_id)).mappings().first()
        if row is None:
            raise ReviewError(404, f"no plan line {action_id!r}")
        if row["run_id"] != state.run_id:
            raise ReviewError(409, f"line {action_id} belongs to run {row['run_id']!r}, not to {state.run_id!r}")
        status = row["status"]
        line_approval = (
            conn.execute(
                sa.select(approvals).where(approvals.c.run_id == state.run_id, approvals.c.action_id == action_id)
            )
            .mappings()
            .first()
        )
        before = {"status": status, "line_approved_by": line_approval["approved_by"] if line_approval else None}
        after = dict(before)
        if decision == "exclude":
            if status not in ("proposed", "flagged", "needs-mapping", "blocked"):
                raise ReviewError(409, f"line {action_id} is {status}: only an open line can be excluded")
            conn.execute(
                plan.update()
                .where(plan.c.action_id == action_id)
                .values(status="excluded", decided_by=by, decided_at=now)
            )
            conn.execute(
                approvals.delete().where(approvals.c.run_id == state.run_id, approvals.c.action_id == action_id)
            )
            after = {"status": "excluded", "line_approved_by": None}
            went_with = _exclude_dependents(conn, warehouse, state, _with_target(row), by, now)
        elif decision == "include":
            if status != "excluded":
                raise ReviewError(409, f"line {action_id} is {status}, not excluded: nothing to include")
            root = _excluded_with(conn, state.run_id, action_id)
            if root is not None:
                raise ReviewError(
                    409,
                    f"line {action_id} was excluded with line {root}, which it depends on: include line {root} "
                    "to bring both back",
                )
            needed = json.loads(row["depends_on"] or "[]")
            still_out = conn.execute(
                sa.select(plan.c.action_id, plan.c.kind).where(
                    plan.c.run_id == state.run_id, plan.c.action_id.in_(needed), plan.c.status == "excluded"
                )
            ).first()
            if still_out is not None:
                raise ReviewError(
                    409,
                    f"line {action_id} depends on line {still_out[0]} ({still_out[1]}), which is excluded: include "
                    f"line {still_out[0]} first",
                )
            restored = _status_before_exclusion(conn, state.run_id, action_id)
            conn.execute(
                plan.update()
                .where(plan.c.action_id == action_id)
                .values(status=restored, decided_by=None, decided_at=None)
            )
            after = {"status": restored, "line_approved_by": None}
            went_with = _include_dependents(conn, warehouse, state, _with_target(row), by, now)
        elif decision == "approve_line":
            if status != "flagged":
                raise ReviewError(409, f"line {action_id} is {status}: only a flagged line is approved one by one")
            if line_approval is not None:
                raise ReviewError(409, f"line {action_id} was already approved by {line_approval['approved_by']}")
            warehouse.insert(
                conn,
                "review_line_approvals",
                [
                    {
                        "run_id": state.run_id,
                        "action_id": action_id,
                        "month": state.month,
                        "approved_by": by,
                        "approved_at": now,
                    }
                ],
            )
            after = {"status": status, "line_approved_by": by}
        else:  # unapprove_line
            if line_approval is None:
                raise ReviewError(409, f"line {action_id} has no line approval to take back")
            conn.execute(
                approvals.delete().where(approvals.c.run_id == state.run_id, approvals.c.action_id == action_id)
            )
            after = {"status": status, "line_approved_by": None}
        _audit(conn, warehouse, state, decision, by, now, before, after, action_id=action_id, note=request.get("note"))
    message = _cascade_message("excluded" if decision == "exclude" else "included", _with_target(row), went_with)
    log.info("review %s: %s %s by %s (%s -> %s)", state.run_id, decision, action_id, by, before, after)
    result = {"decision": decision, "action_id": action_id, "before": before, "after": after}
    if decision in ("exclude", "include"):
        result["message"] = message
        result["dependents"] = [dependent["action_id"] for dependent in went_with]
    return result


# -- lines that go with an excluded line ------------------------------------------------------------------------

_OPEN_STATUSES = ("proposed", "flagged", "needs-mapping", "blocked")


def _dependents(conn: sa.Connection, run_id: str, action_ids: set[str]) -> list[Mapping[str, Any]]:
    """The run's lines that depend on any of `action_ids`, directly or through another line (`depends_on`: a later
    adjustment of the same contract service needs the earlier one; an adjustment needs the contract service, contract
    or service it writes to be created and the contract extended), in plan order. Found level by level: each level
    reads only the lines whose `depends_on` names a line of the level before (a decision on a 20,000-line month
    reads a few dozen lines, not the month)."""
    found: set[str] = set()
    frontier = set(action_ids)
    while frontier:
        level: set[str] = set()
        for dependent, needs in _lines_needing(conn, run_id, frontier):
            if dependent not in found and dependent not in action_ids and not frontier.isdisjoint(needs):
                level.add(dependent)
        found |= level
        frontier = level
    return _cascade_rows(conn, run_id, found) if found else []


def _lines_needing(conn: sa.Connection, run_id: str, action_ids: set[str]) -> list[tuple[str, set[str]]]:
    """The run's lines whose `depends_on` may name one of `action_ids` (a text match, confirmed by the caller), with
    what each needs."""
    ids = sorted(action_ids)
    found = []
    for start in range(0, len(ids), 200):
        patterns = {f"p{index}": f'%"{action_id}"%' for index, action_id in enumerate(ids[start : start + 200])}
        matches = " OR ".join(f"depends_on LIKE :{name}" for name in patterns)
        for action_id, depends_on in conn.execute(
            sa.text(f"SELECT action_id, depends_on FROM plan_actions WHERE run_id = :run_id AND ({matches})"),
            {"run_id": run_id, **patterns},
        ):
            found.append((action_id, set(json.loads(depends_on or "[]"))))
    return found


def _cascade_rows(
    conn: sa.Connection, run_id: str, action_ids: Collection[str] | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """The run's lines (these only, or those of a status) with what a cascade reads of them (the target is the
    idempotency key's third part), in plan order."""
    statement = (
        "SELECT action_id, kind, idempotency_key, status, effective_date, depends_on, seq FROM plan_actions"
        " WHERE run_id = :run_id"
    )
    if status is not None:
        return [
            _with_target(row)
            for row in conn.execute(
                sa.text(statement + " AND status = :status ORDER BY seq"), {"run_id": run_id, "status": status}
            ).mappings()
        ]
    ids = sorted(action_ids or ())
    rows = []
    for start in range(0, len(ids), 500):
        condition, params = sql_in("action_id", ids[start : start + 500], "id")
        rows += conn.execute(sa.text(f"{statement} AND {condition}"), {"run_id": run_id, **params}).mappings().all()
    return sorted((_with_target(row) for row in rows), key=lambda row: row["seq"])


def _with_target(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, "target": row["idempotency_key"].split("|")[2]}


def _relation(root: Mapping[str, Any], dependent: Mapping[str, Any]) -> str:
    """What `root` is to `dependent`, in words: "its earlier change on 2026-10-05", "the creation of its contract"."""
    kind = str(root["kind"])
    if kind in ADJUSTING_KINDS and root["target"] == dependent["target"]:
        when = root["effective_date"]
        return f"its earlier change on {when.isoformat() if isinstance(when, date) else str(when)[:10]}"
    return {
        "create_company": "the creation of its company",
        "create_service": "the creation of its service",
        "create_contract": "the creation of its contract",
        "create_contract_service": "the creation of its contract service",
        "extend_contract": "the extension of its contract",
    }.get(kind, f"the {KIND_LABELS.get(kind, kind)} it needs")


def _exclude_dependents(
    conn: sa.Connection,
    warehouse: Warehouse,
    state: RunState,
    root: Mapping[str, Any],
    by: str,
    at: datetime,
) -> list[Mapping[str, Any]]:
    """Exclude the open lines that depend on the excluded line `root`: loaded without it, they would wait for it
    and leave the month half loaded. Each is audited with the line it went with (`excluded_with`), so that
    including `root` brings back these lines and no line a person excluded on its own."""
    went: list[Mapping[str, Any]] = []
    for dependent in _dependents(conn, state.run_id, {root["action_id"]}):
        if dependent["status"] in _OPEN_STATUSES:
            _exclude_with(conn, warehouse, state, root, dependent, by, at)
            went.append(dependent)
    return went


def _exclude_with(
    conn: sa.Connection,
    warehouse: Warehouse,
    state: RunState,
    root: Mapping[str, Any],
    dependent: Mapping[str, Any],
    by: str,
    at: datetime,
) -> None:
    """Exclude the open line `dependent` with the excluded line `root` it depends on, audited so."""
    plan = warehouse.table("plan_actions")
    approvals = warehouse.table("review_line_approvals")
    dependent_id = dependent["action_id"]
    approval = conn.execute(
        sa.select(approvals.c.approved_by).where(
            approvals.c.run_id == state.run_id, approvals.c.action_id == dependent_id
        )
    ).first()
    conn.execute(
        plan.update().where(plan.c.action_id == dependent_id).values(status="excluded", decided_by=by, decided_at=at)
    )
    conn.execute(approvals.delete().where(approvals.c.run_id == state.run_id, approvals.c.action_id == dependent_id))
    before = {"status": dependent["status"], "line_approved_by": approval[0] if approval else None}
    after = {
        "status": "excluded",
        "line_approved_by": None,
        "excluded_with": root["action_id"],
        "reason": f"excluded with line {root['action_id']} ({_relation(root, dependent)})",
    }
    _audit(conn, warehouse, state, "exclude", by, at, before, after, action_id=dependent_id)


def _excluded_with(conn: sa.Connection, run_id: str, action_id: str) -> str | None:
    """The line `action_id` was excluded with, when its last exclusion went with another line's, else None."""
    row = conn.execute(
        sa.text(
            "SELECT after_state FROM review_decisions WHERE run_id = :run_id AND action_id = :id"
            " AND decision IN ('exclude', 'include') ORDER BY decided_at DESC LIMIT 1"
        ),
        {"run_id": run_id, "id": action_id},
    ).first()
    return json.loads(row[0]).get("excluded_with") if row else None


def _include_dependents(
    conn: sa.Connection, warehouse: Warehouse, state: RunState, root: Mapping[str, Any], by: str, at: datetime
) -> list[Mapping[str, Any]]:
    """Include again the lines excluded with `root` (each with its status before), not those excluded on their own."""
    plan = warehouse.table("plan_actions")
    back: list[Mapping[str, Any]] = []
    for dependent in _dependents(conn, state.run_id, {root["action_id"]}):
        dependent_id = dependent["action_id"]
        if dependent["status"] != "excluded" or _excluded_with(conn, state.run_id, dependent_id) != root["action_id"]:
            continue
        restored = _status_before_exclusion(conn, state.run_id, dependent_id)
        conn.execute(
            plan.update()
            .where(plan.c.action_id == dependent_id)
            .values(status=restored, decided_by=None, decided_at=None)
        )
        before = {"status": "excluded", "line_approved_by": None, "excluded_with": root["action_id"]}
        after = {"status": restored, "line_approved_by": None, "included_with": root["action_id"]}
        _audit(conn, warehouse, state, "include", by, at, before, after, action_id=dependent_id)
        back.append(dependent)
    return back


def _cascade_message(verb: str, root: Mapping[str, Any], dependents: Sequence[Mapping[str, Any]]) -> str:
    """ "excluded, with 1 later change of the same contract service" (and how many other lines went with it)."""
    if not dependents:
        return verb
    same = sum(1 for line in dependents if line["target"] == root["target"] and str(line["kind"]) in ADJUSTING_KINDS)
    parts = []
    if same:
        noun = "later change" if str(root["kind"]) in ADJUSTING_KINDS else "change"
        parts.append(f"{same} {noun}{'' if same == 1 else 's'} of the same contract service")
    other = len(dependents) - same
    if other:
        parts.append(f"{other} other line{'' if other == 1 else 's'} that depend{'s' if other == 1 else ''} on it")
    return f"{verb}, with " + " and ".join(parts)


def exclude_dependents_of_exclusions(
    warehouse: Warehouse, run_id: str, by: str, candidates: Collection[str] | None = None, month: str | None = None
) -> int:
    """After re-planning: exclude the open lines that depend on an excluded line of the run (a new line the plan
    wrote since, e.g. a later change whose content changed with a mapping), each with the line it goes with (the
    excluded line's own root when that one went with another). `candidates`: only these lines can be new (a scoped
    re-plan's), so only their needs are followed. Returns how many lines were excluded."""
    if candidates is not None and not candidates:
        return 0
    state = run_state(warehouse, run_id) if month is None else RunState(run_id, month, 0, None, None)
    count = 0
    with warehouse.begin() as conn:
        warehouse.lock_month(conn, state.month)
        if candidates is not None:
            return _exclude_candidates_needing_exclusions(conn, warehouse, state, set(candidates), by)
        for row in _cascade_rows(conn, run_id, status="excluded"):
            if _excluded_with(conn, run_id, row["action_id"]) is None:
                count += len(_exclude_dependents(conn, warehouse, state, row, by, utcnow()))
    return count


def _exclude_candidates_needing_exclusions(
    conn: sa.Connection, warehouse: Warehouse, state: RunState, candidates: set[str], by: str
) -> int:
    """Each open candidate line that needs an excluded line, directly or through other lines, is excluded with that
    line's root. Followed forward from the candidates (a few dozen lines), never over the whole month."""
    known: dict[str, dict[str, Any]] = {row["action_id"]: row for row in _cascade_rows(conn, state.run_id, candidates)}
    count = 0
    at = utcnow()
    for candidate in sorted(candidates, key=lambda action_id: known[action_id]["seq"] if action_id in known else 0):
        row = known.get(candidate)
        if row is None or row["status"] not in _OPEN_STATUSES:
            continue
        excluded = _excluded_need(conn, state.run_id, row, known)
        if excluded is None:
            continue
        root_id = _excluded_with(conn, state.run_id, excluded["action_id"]) or excluded["action_id"]
        if root_id not in known:
            known.update({found["action_id"]: found for found in _cascade_rows(conn, state.run_id, {root_id})})
        _exclude_with(conn, warehouse, state, known.get(root_id, excluded), row, by, at)
        row["status"] = "excluded"
        count += 1
    return count


def _excluded_need(
    conn: sa.Connection, run_id: str, row: Mapping[str, Any], known: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The first excluded line `row` needs, directly or through the lines it needs; None when it needs none."""
    seen: set[str] = set()
    frontier = set(json.loads(row["depends_on"] or "[]"))
    while frontier:
        missing = frontier - set(known)
        if missing:
            known.update({found["action_id"]: found for found in _cascade_rows(conn, run_id, missing)})
        seen |= frontier
        needed = [known[action_id] for action_id in sorted(frontier) if action_id in known]
        for line in needed:
            if line["status"] == "excluded":
                return line
        frontier = {need for line in needed for need in json.loads(line["depends_on"] or "[]")} - seen
    return None


def _status_before_exclusion(conn: sa.Connection, run_id: str, action_id: str) -> str:
    """The line's status before its last exclusion (from the audit), else `flagged`: a person looks again."""
    row = conn.execute(
        sa.text(
            "SELECT before_state FROM review_decisions WHERE run_id = :run_id AND action_id = :id"
            " AND decision = 'exclude' ORDER BY decided_at DESC LIMIT 1"
        ),
        {"run_id": run_id, "id": action_id},
    ).first()
    status = json.loads(row[0]).get("status") if row else None
    return status if status in ("proposed", "flagged", "needs-mapping", "blocked") else "flagged"


def _decide_mapping(
    warehouse: Warehouse,
    state: RunState,
    decision: str,
    request: Mapping[str, Any],
    by: str,
    settings: SyncSettings,
) -> dict[str, Any]:
    from include.mapping import confirm_suggestion, reject_suggestion, set_manual_link

    kind = request.get("kind")
    if kind not in TARGET_NOUN:
        raise ReviewError(422, f"{decision} needs kind company, contract or service, got {kind!r}")
    source_key = request.get("source_key")
    if not isinstance(source_key, str) or not source_key:
        raise ReviewError(422, f"{decision} needs source_key (text), got {source_key!r}")
    link = warehouse.query(
        "SELECT target_id, resolution, link_method FROM month_links"
        " WHERE run_id = :run_id AND kind = :kind AND source_key = :source",
        {"run_id": state.run_id, "kind": kind, "source": source_key},
    )
    if not link:
        raise ReviewError(404, f"{SOURCE_NOUN[kind]} {source_key!r} is not a source of run {state.run_id!r}")
    target_id: int | None = None
    if decision != "create":
        raw = request.get("target_id")
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ReviewError(422, f"{decision} needs target_id (a whole number), got {raw!r}")
        target_id = raw
    suggestions = warehouse.query(
        "SELECT target_id, status FROM mapping_suggestions WHERE kind = :kind AND source_key = :source",
        {"kind": kind, "source": source_key},
    )
    open_targets = sorted(int(row["target_id"]) for row in suggestions if row["status"] == "open")
    stored = warehouse.query(
        "SELECT target_id, method FROM mapping_links WHERE kind = :kind AND source_key = :source",
        {"kind": kind, "source": source_key},
    )
    before = {
        "resolution": link[0]["resolution"],
        "target_id": link[0]["target_id"],
        "remembered": {"target_id": stored[0]["target_id"], "method": stored[0]["method"]} if stored else None,
        "open_suggestions": open_targets,
    }
    if decision in ("confirm_suggestion", "reject_suggestion") and target_id not in open_targets:
        raise ReviewError(
            404,
            f"no open suggestion of {TARGET_NOUN[kind]} {target_id} for {SOURCE_NOUN[kind]} {source_key!r}"
            f" (open: {open_targets or 'none'})",
        )
    if decision == "link":
        _check_target(warehouse, state, kind, source_key, int(target_id or 0))
    if decision == "create" and link[0]["target_id"] is not None:
        raise ReviewError(
            409,
            f"{SOURCE_NOUN[kind]} {source_key!r} is linked to {TARGET_NOUN[kind]} {link[0]['target_id']}: "
            "link it to another record instead of creating one",
        )
    # the month must still hold the run's own lines before anything is written: the re-plan reads them
    if state.stale_reason:
        raise ReviewError(409, state.stale_reason)

    if decision == "confirm_suggestion":
        confirm_suggestion(warehouse, kind, source_key, int(target_id or 0), by)
    elif decision == "reject_suggestion":
        reject_suggestion(warehouse, kind, source_key, int(target_id or 0), by)
    elif decision == "link":
        set_manual_link(
            warehouse, kind, source_key, int(target_id or 0), by, note=f"picked on the review page of {state.run_id}"
        )
    else:
        for suggested in open_targets:
            reject_suggestion(warehouse, kind, source_key, suggested, by)
    summary = replan(
        warehouse, state.month, state.run_id, settings, by, scope_of_decision(warehouse, state, kind, source_key)
    )
    after_link = warehouse.query(
        "SELECT target_id, resolution FROM month_links"
        " WHERE run_id = :run_id AND kind = :kind AND source_key = :source",
        {"run_id": state.run_id, "kind": kind, "source": source_key},
    )
    after = {
        "resolution": after_link[0]["resolution"] if after_link else None,
        "target_id": after_link[0]["target_id"] if after_link else None,
        "plan": summary,
    }
    now = utcnow()
    with warehouse.begin() as conn:
        _audit(
            conn,
            warehouse,
            state,
            decision,
            by,
            now,
            before,
            after,
            kind=str(kind),
            source_key=source_key,
            target_id=target_id,
            note=request.get("note"),
        )
    log.info(
        "review %s: %s %s:%s -> %s by %s; re-planned %s",
        state.run_id,
        decision,
        kind,
        source_key,
        target_id,
        by,
        summary,
    )
    return {"decision": decision, "kind": kind, "source_key": source_key, "before": before, "after": after}


def _check_target(warehouse: Warehouse, state: RunState, kind: str, source_key: str, target_id: int) -> None:
    """A picked record must be in the run's snapshot and active; a contract must belong to the account's company."""
    found = search_targets(warehouse, state.run_id, kind, str(target_id))
    record = next((item for item in found if item["id"] == target_id), None)
    if record is None:
        raise ReviewError(
            404, f"{TARGET_NOUN[kind]} {target_id} is not in the Autotask snapshot of run {state.run_id!r}"
        )
    if kind != "contract" and not record["active"]:
        raise ReviewError(409, f"{TARGET_NOUN[kind]} {target_id} ({record['name']}) is inactive in Autotask")
    if kind == "contract":
        accounts = warehouse.query(
            "SELECT DISTINCT account_id FROM charge_lines WHERE month = :month AND subscription_id = :sub",
            {"month": state.month, "sub": source_key},
        )
        for account in accounts:
            company = warehouse.query(
                "SELECT target_id FROM month_links WHERE run_id = :run_id AND kind = 'company' AND source_key = :acc",
                {"run_id": state.run_id, "acc": account["account_id"]},
            )
            company_id = company[0]["target_id"] if company else None
            if company_id is None:
                raise ReviewError(
                    409,
                    f"account {account['account_id']} of subscription {source_key} is not linked to a company yet: "
                    "link the account first, then pick a contract of that company",
                )
            if int(company_id) != int(record["company_id"] or 0):
                raise ReviewError(
                    409,
                    f"contract {target_id} belongs to company {record['company_id']}, but account "
                    f"{account['account_id']} is linked to company {company_id}: billing the wrong customer is refused",
                )


def replan(
    warehouse: Warehouse,
    month: str,
    run_id: str,
    settings: SyncSettings,
    by: str = "re-planning",
    scope: PlanScope | None = None,
) -> dict[str, Any]:
    """Link and reconcile the run's month again (what a mapping decision changes), keeping what people decided:
    the lines a new plan writes that depend on an excluded line are excluded with it (by `by`). With `scope`, only
    the decided customers' lines are linked, compared and replaced (a decision answers in well under a second on a
    20,000-line month: `bench/bench_review_decision.py`); without, the whole month."""
    from include.mapping import link_month
    from include.reconcile import reconcile_month

    last_line = None if scope is None else _last_seq(warehouse, run_id)
    link_month(warehouse, month, run_id, settings, scope)
    summary = reconcile_month(warehouse, month, run_id, settings, scope)
    new_lines = None if last_line is None else _lines_after(warehouse, run_id, last_line)
    excluded_with = exclude_dependents_of_exclusions(warehouse, run_id, by, new_lines, month)
    if scope is None:
        build_grid(warehouse, run_id)
    else:
        refresh_grid(warehouse, run_id, scope, new_lines or ())
    return {
        "actions": summary.actions,
        "by_status": summary.by_status,
        "excluded_with_an_excluded_line": excluded_with,
        "seconds": summary.seconds,
        "scope": None if scope is None else {"accounts": sorted(scope.accounts), "products": sorted(scope.products)},
    }


def _last_seq(warehouse: Warehouse, run_id: str) -> int:
    found = _rows(warehouse, "SELECT MAX(seq) FROM plan_actions WHERE run_id = :run_id", {"run_id": run_id})
    return int(found[0][0] or 0)


def _lines_after(warehouse: Warehouse, run_id: str, seq: int) -> set[str]:
    """The lines a scoped re-plan added (`replace_plan` numbers them after the run's others)."""
    rows = _rows(
        warehouse,
        "SELECT action_id FROM plan_actions WHERE run_id = :run_id AND seq > :seq",
        {"run_id": run_id, "seq": seq},
    )
    return {action_id for (action_id,) in rows}


# a scope re-planning more than this share of the month's customers is re-planned whole
_SCOPE_SHARE_LIMIT = 0.5


def scope_of_decision(warehouse: Warehouse, state: RunState, kind: str, source_key: str) -> PlanScope | None:
    """The customers a mapping decision on `source_key` changes the plan of (an account: its own lines; a
    subscription: its customer's; a product: every customer billed for it, and its catalogue service), or None when
    the whole month must be re-planned: a subscription of the scope moved between customers (its lines touch
    another customer's contract; also a move in mid-month: the subscription billed to two accounts), or the scope is
    most of the month anyway."""
    column = {"company": "account_id", "contract": "subscription_id", "service": "product_id"}[kind]
    accounts = frozenset(
        row["account_id"]
        for row in warehouse.query(
            f"SELECT DISTINCT account_id FROM charge_lines WHERE month = :month AND {column} = :key",  # fixed column
            {"month": state.month, "key": source_key},
        )
    )
    if kind == "company":
        accounts |= {source_key}
    scope = PlanScope(accounts, frozenset({source_key}) if kind == "service" else frozenset())
    of_accounts, params = sql_in("l.account_id", accounts, "acc")
    moved = warehouse.query(
        "SELECT 1 AS moved FROM month_links m JOIN charge_lines l ON l.subscription_id = m.source_key"
        f" AND l.month = :month WHERE m.run_id = :run_id AND m.kind = 'contract' AND m.flag = :flag AND {of_accounts}"
        " LIMIT 1",
        {"month": state.month, "run_id": state.run_id, "flag": OTHER_COMPANY_FLAG, **params},
    )
    # a subscription of the scope billed to another account too this month (a move in mid-month): its lines touch
    # the other customer's contract and plan
    moved = moved or warehouse.query(
        "SELECT 1 AS moved FROM charge_lines l WHERE l.month = :month AND "
        f"{of_accounts} AND EXISTS (SELECT 1 FROM charge_lines o WHERE o.month = l.month"
        " AND o.subscription_id = l.subscription_id AND o.account_id <> l.account_id) LIMIT 1",
        {"month": state.month, **params},
    )
    total = warehouse.query(
        "SELECT COUNT(DISTINCT account_id) AS accounts FROM charge_lines WHERE month = :month", {"month": state.month}
    )[0]["accounts"]
    if moved or len(accounts) > _SCOPE_SHARE_LIMIT * max(int(total or 0), 1):
        return None
    return scope


def _audit(
    conn: sa.Connection,
    warehouse: Warehouse,
    state: RunState,
    decision: str,
    by: str,
    at: datetime,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    action_id: str | None = None,
    kind: str | None = None,
    source_key: str | None = None,
    target_id: int | None = None,
    note: Any = None,
) -> None:
    text = f"{state.run_id}|{decision}|{action_id}|{kind}|{source_key}|{target_id}|{by}|{at.isoformat()}"
    warehouse.insert(
        conn,
        "review_decisions",
        [
            {
                "decision_id": hashlib.sha256(text.encode()).hexdigest()[:40],
                "run_id": state.run_id,
                "month": state.month,
                "decision": decision,
                "action_id": action_id,
                "kind": kind,
                "source_key": source_key,
                "target_id": target_id,
                "before_state": json.dumps(before, default=_jsonable, sort_keys=True),
                "after_state": json.dumps(after, default=_jsonable, sort_keys=True),
                "decided_by": by[:100],
                "decided_at": at,
                "note": str(note)[:2000] if isinstance(note, str) and note.strip() else None,
            }
        ],
    )


def decisions_of(warehouse: Warehouse, run_id: str) -> list[dict[str, Any]]:
    """The run's audit trail, newest first."""
    rows = warehouse.query(
        "SELECT decision, action_id, kind, source_key, target_id, before_state, after_state, decided_by, decided_at,"
        " note FROM review_decisions WHERE run_id = :run_id ORDER BY decided_at DESC",
        {"run_id": run_id},
    )
    decisions = [
        {
            **{key: _jsonable(value) for key, value in row.items() if key not in ("before_state", "after_state")},
            "before": json.loads(row["before_state"]),
            "after": json.loads(row["after_state"]),
        }
        for row in rows
    ]
    return _in_words(warehouse, run_id, decisions)


def _in_words(warehouse: Warehouse, run_id: str, decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audit rows with the words the page shows (`include.review_words.describe_decisions`): the line or the
    link each one changed, named, instead of ids and JSON."""
    from include.review_words import describe_decisions

    action_ids = sorted({str(entry["action_id"]) for entry in decisions if entry.get("action_id")})
    lines: dict[str, dict[str, Any]] = {}
    for start in range(0, len(action_ids), 500):
        condition, params = sql_in("action_id", action_ids[start : start + 500], "line")
        for found in warehouse.query(
            f"SELECT action_id, customer, product, subscription, change FROM review_grid_lines"
            f" WHERE run_id = :run_id AND {condition}",
            {"run_id": run_id, **params},
        ):
            lines[str(found["action_id"])] = dict(found)
    sources = {(str(e["kind"]), str(e["source_key"])) for e in decisions if e.get("kind") and e.get("source_key")}
    names = {(kind, key): _source_name(warehouse, kind, key) for kind, key in sources}
    targets = {
        (str(e["kind"]), int(target)): _target_name(warehouse, run_id, str(e["kind"]), int(target))
        for e in decisions
        if e.get("kind")
        for target in (e.get("target_id"), (e.get("after") or {}).get("target_id"))
        if target is not None
    }
    return describe_decisions(decisions, lines, names, targets)


# -- the months overview ----------------------------------------------------------------------------------------


_OPEN = ("proposed", "flagged", "needs-mapping", "blocked")


def runs_overview(warehouse: Warehouse) -> list[dict[str, Any]]:
    """One row per run with a plan: its DAG, month, line counts by status (its open lines a later run replaced
    included: a run is a snapshot), the approval and who gave it, and its state in words (`_run_status`)."""
    counts: dict[str, dict[str, int]] = {}
    months: dict[str, str] = {}
    started: dict[str, Any] = {}
    for table in ("plan_actions", "superseded_plan_actions"):  # fixed table names
        for month, run_id, status, lines, first in _rows(
            warehouse,
            f"SELECT month, run_id, status, COUNT(*), MIN(created_at) FROM {table} GROUP BY month, run_id, status",
            {},
        ):
            by_status = counts.setdefault(run_id, {})
            by_status[status] = by_status.get(status, 0) + int(lines)
            months[run_id] = month
            first = _jsonable(first)
            started[run_id] = first if run_id not in started else min(started[run_id], first, key=str)
    approvals: dict[str, dict[str, Any]] = {}
    for row in warehouse.query(
        "SELECT run_id, decision, decided_by, decided_at, approved_actions FROM month_approvals ORDER BY decided_at"
    ):
        approvals[row["run_id"]] = {key: _jsonable(value) for key, value in row.items()}
    registered = {run.run_id: run for run in runs_of_month(warehouse)}
    runs = []
    for run_id, by_status in counts.items():
        approval = approvals.get(run_id)
        run = registered.get(run_id)
        runs.append(
            {
                "month": months[run_id],
                "run_id": run_id,
                "dag_id": run.dag_id if run is not None else SYNC_DAG_ID,
                "reverses_run_id": run.reverses_run_id if run is not None else None,
                "superseded_by": run.superseded_by if run is not None else None,
                "planned_at": started.get(run_id),
                "lines": sum(by_status.values()),
                "open_lines": sum(by_status.get(status, 0) for status in _OPEN),
                "by_status": dict(sorted(by_status.items())),
                "approval": approval,
                "status": _run_status(approval, by_status, run.superseded_by if run is not None else None),
            }
        )
    runs.sort(key=lambda run: (run["month"], str(run["planned_at"]), run["run_id"]), reverse=True)
    return runs


def months_overview(warehouse: Warehouse) -> list[dict[str, Any]]:
    """One row per month, newest first: the month's latest run of the monthly sync (its state tells the truth:
    "loaded, 74 lines open", "waiting for approval", "rejected"), and the month's other runs behind it (earlier
    runs, reversals), newest first."""
    by_month: dict[str, list[dict[str, Any]]] = {}
    for run in runs_overview(warehouse):
        by_month.setdefault(run["month"], []).append(run)
    months = []
    for month, runs in sorted(by_month.items(), reverse=True):
        syncs = [run for run in runs if run["dag_id"] == SYNC_DAG_ID] or runs
        latest = syncs[0]
        months.append(
            {
                "month": month,
                # the latest run's billed, cost and margin per currency and part of the month (the review's totals)
                "money": _run_money(warehouse, latest["run_id"]),
                "buckets": BUCKETS,
                "latest": latest,
                "status": latest["status"],
                "earlier": [run for run in runs if run is not latest],
            }
        )
    return months


def _run_money(warehouse: Warehouse, run_id: str) -> dict[str, Any]:
    """A run's money per currency and bucket, as its review page totals it (no filter); {} when it cannot be built."""
    try:
        return grid_totals(warehouse, run_id, GridQuery())["money"]
    except (sa.exc.SQLAlchemyError, StaleRunError, ReviewError) as error:
        log.warning("months page: the money of run %s could not be totalled: %s", run_id, error)
        return {}


def months_with_open_lines(warehouse: Warehouse, before: str | None = None) -> list[dict[str, Any]]:
    """The months (before `before`, when given) whose latest run left lines open after its approval: what a person
    still has to decide or fix (`make ui` names them)."""
    return [
        month
        for month in months_overview(warehouse)
        if (before is None or month["month"] < before)
        and month["latest"]["approval"] is not None
        and month["latest"]["open_lines"]
    ]


def _run_status(approval: Mapping[str, Any] | None, by_status: Mapping[str, int], superseded_by: str | None) -> str:
    """The run's state in words, from its approval and its lines: what it loaded and what it left open."""
    open_lines = sum(by_status.get(status, 0) for status in _OPEN)
    left_open = f", {open_lines} line{'s' if open_lines != 1 else ''} open" if open_lines else ""
    if approval is None:
        if superseded_by is not None:
            return f"not approved: a later run planned the month again ({superseded_by})"
        return "waiting for approval"
    decision = approval["decision"]
    if decision in ("rejected", "timed_out", "dry_run"):
        return {"rejected": "rejected", "timed_out": "timed out (rejected)", "dry_run": "dry run"}[decision]
    if by_status.get("failed"):
        return f"loaded with {by_status['failed']} failed line{'s' if by_status['failed'] != 1 else ''}{left_open}"
    if by_status.get("approved"):
        waiting = by_status["approved"]
        return f"approved, {waiting} line{'s' if waiting != 1 else ''} not loaded yet{left_open}"
    return f"loaded{left_open}"


# -- helpers ----------------------------------------------------------------------------------------------------


def _rows(warehouse: Warehouse, statement: str, params: Mapping[str, Any]) -> list[tuple]:
    """Rows as plain tuples, fetched by the driver in one go (the grid reads every line of a run per request)."""
    with warehouse.engine.connect() as conn:
        if warehouse.dialect == "sqlite":
            _register_casefold(conn)
            cursor = conn.connection.driver_connection.cursor()
            try:
                return cursor.execute(statement, dict(params)).fetchall()
            finally:
                cursor.close()
        return [tuple(row) for row in conn.execute(sa.text(statement), dict(params)).fetchall()]


def _json_list(text: Any) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except (TypeError, ValueError):
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


def _json_object(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _plain(value: Any) -> str:
    if value is None:
        return "?"
    number = Decimal(str(value)).normalize()
    return f"{number:f}"


def _signed(value: Decimal) -> str:
    text = _plain(value)
    return text if text.startswith("-") else f"+{text}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def review_path(dag_id: str, run_id: str) -> str:
    """The review page of a run, relative to the Airflow UI's root (served by plugins/billing_review)."""
    from urllib.parse import quote

    return f"/billing/run/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def run_files_url(month: str, run_id: str, base_url: str | None = None) -> str:
    """Where the review plugin serves the run's Data Docs and report (`/billing/files/<month>/<run folder>`)."""
    from urllib.parse import quote

    from include.quality import data_docs_dir

    folder = data_docs_dir(month, run_id)
    return (base_url or "").rstrip("/") + f"/billing/files/{quote(folder.parent.name)}/{quote(folder.name)}"


def months_url(base_url: str | None = None) -> str:
    return (base_url or "").rstrip("/") + "/billing/months"


def review_url(dag_id: str, run_id: str, base_url: str | None = None) -> str:
    """The review page's address for the approval form: `[api] base_url` + the path (just the path without one)."""
    return (base_url or "").rstrip("/") + review_path(dag_id, run_id)
