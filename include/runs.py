"""A run in the warehouse: the DAG it is a run of, its month, the settings it was planned with, and whether a later
run of its month has replaced its open lines.

A run is a snapshot. Its plan, its review, its exports and its row on the months page never change because of what a
later run does. Two things used to break that, and this module holds the answer to both:

- `billing_runs` names the DAG of every run that wrote a plan (`register_run`). The review routes serve a run only
  under the DAG it belongs to (a reversal run's review and approval are its own), and a run id one DAG already uses
  is refused to the other (everything in the warehouse is keyed by run id).
- A later run of a month replaces the month's open plan lines (`include.plan.replace_plan`: one current plan per
  month, which the loader and the quality suites read). The earlier run's open lines are not lost:
  `supersede_open_lines` keeps what its review shows of them (status, reason) in `superseded_plan_actions`, and
  `run_lines_source` gives the review a plan source that reads both.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from include.identifiers import BILLING_DAG_IDS, REVERSAL_DAG_ID, SYNC_DAG_ID
from include.sync_settings import SyncSettings
from include.warehouse import Warehouse, utcnow


class RunConflictError(ValueError):
    """A run id that another DAG's run (or another month) already holds in the warehouse."""


@dataclass(frozen=True)
class BillingRun:
    run_id: str
    dag_id: str
    month: str
    settings: Mapping[str, Any] | None
    planned_at: datetime | None
    reverses_run_id: str | None = None
    superseded_by: str | None = None
    superseded_at: datetime | None = None

    @property
    def is_reversal(self) -> bool:
        return self.dag_id == REVERSAL_DAG_ID

    @property
    def superseded(self) -> bool:
        return self.superseded_by is not None

    def sync_settings(self, fallback: SyncSettings | None = None) -> SyncSettings:
        """The settings the run was planned with (a re-plan uses these, never today's environment)."""
        if self.settings is None:
            return fallback or SyncSettings.from_env()
        return SyncSettings.from_mapping(self.settings)


def register_run(
    warehouse: Warehouse,
    run_id: str,
    dag_id: str,
    month: str,
    settings: SyncSettings | None = None,
    reverses_run_id: str | None = None,
) -> BillingRun:
    """Record that `run_id` is a run of `dag_id` for `month`, planned with `settings`. Registering the same run again
    (a retried task) refreshes its settings; a run id another DAG or another month holds is refused."""
    if dag_id not in BILLING_DAG_IDS:
        raise ValueError(f"{dag_id!r} is not a billing DAG ({', '.join(BILLING_DAG_IDS)})")
    table = warehouse.table("billing_runs")
    stored_settings = json.dumps(settings.as_dict(), sort_keys=True) if settings is not None else None
    with warehouse.begin() as conn:
        existing = conn.execute(sa.select(table).where(table.c.run_id == run_id)).mappings().first()
        if existing is not None and (existing["dag_id"] != dag_id or existing["month"] != month):
            raise RunConflictError(
                f"run id {run_id!r} is already a run of {existing['dag_id']} for {existing['month']} in the warehouse: "
                f"a run of {dag_id} for {month} cannot share it (trigger it with another run id)"
            )
        if existing is None:
            values = {
                "run_id": run_id,
                "dag_id": dag_id,
                "month": month,
                "settings": stored_settings,
                "planned_at": utcnow(),
                "reverses_run_id": reverses_run_id,
                "superseded_by": None,
                "superseded_at": None,
            }
            warehouse.insert(conn, "billing_runs", [values])
        elif stored_settings is not None:
            conn.execute(table.update().where(table.c.run_id == run_id).values(settings=stored_settings))
    found = billing_run(warehouse, run_id)
    assert found is not None
    return found


def billing_run(warehouse: Warehouse, run_id: str) -> BillingRun | None:
    """The run as the warehouse knows it; None for a run that never wrote a plan."""
    rows = warehouse.query("SELECT * FROM billing_runs WHERE run_id = :run_id", {"run_id": run_id})
    return _run(rows[0]) if rows else None


def runs_of_month(warehouse: Warehouse, month: str | None = None) -> list[BillingRun]:
    """The runs of a month (of every month without one), oldest first."""
    where, params = ("WHERE month = :month", {"month": month}) if month else ("", {})
    rows = warehouse.query(f"SELECT * FROM billing_runs {where} ORDER BY month, planned_at, run_id", params)
    return [_run(row) for row in rows]


def supersede_open_lines(
    conn: sa.Connection, warehouse: Warehouse, month: str, run_id: str, open_statuses: Collection[str]
) -> int:
    """Before `run_id`'s plan replaces the month's open lines: keep what the other runs' reviews show of theirs
    (status, reason, what identifies the line) in `superseded_plan_actions`, and mark those runs superseded by this
    one. In the caller's transaction; returns how many lines were kept."""
    plan = warehouse.table("plan_actions")
    statuses = [str(status) for status in open_statuses]
    return supersede_lines(
        conn, warehouse, run_id, sa.and_(plan.c.month == month, plan.c.run_id != run_id, plan.c.status.in_(statuses))
    )


def supersede_lines(conn: sa.Connection, warehouse: Warehouse, run_id: str, which: Any) -> int:
    """Keep what the reviews of the plan lines `which` (a condition on `plan_actions`) show of them in
    `superseded_plan_actions`, superseded by `run_id`, and mark their runs superseded. The caller removes them."""
    plan = warehouse.table("plan_actions")
    others = (which,)
    rows = (
        conn.execute(
            sa.select(
                plan.c.run_id,
                plan.c.action_id,
                plan.c.month,
                plan.c.kind,
                plan.c.status,
                plan.c.reason,
                plan.c.account_id,
                plan.c.subscription_ids,
                plan.c.product_id,
                plan.c.decided_by,
                plan.c.created_at,
            ).where(*others)
        )
        .mappings()
        .all()
    )
    if not rows:
        return 0
    now = utcnow()
    warehouse.insert(
        conn,
        "superseded_plan_actions",
        ({**row, "superseded_by": run_id, "superseded_at": now} for row in rows),
        ignore_conflicts=True,
    )
    runs = warehouse.table("billing_runs")
    conn.execute(
        runs.update()
        .where(runs.c.run_id.in_(sorted({row["run_id"] for row in rows})), runs.c.superseded_by.is_(None))
        .values(superseded_by=run_id, superseded_at=now)
    )
    return len(rows)


def has_superseded_lines(warehouse: Warehouse, run_id: str) -> bool:
    rows = warehouse.query(
        "SELECT 1 AS found FROM superseded_plan_actions WHERE run_id = :run_id LIMIT 1", {"run_id": run_id}
    )
    return bool(rows)


# The columns of a run's plan lines the review reads live (status, reason, decider), from the plan and, for the open
# lines a later run replaced, from what `supersede_open_lines` kept.
_LIVE_COLUMNS = "run_id, action_id, month, kind, status, reason, decided_by, created_at"


def run_lines_source(warehouse: Warehouse, run_id: str) -> str:
    """An SQL table expression of the run's plan lines (`_LIVE_COLUMNS`) to select from or join as an alias: the plan
    table itself for a run with nothing superseded (the usual case, read along its indexes), else the plan's rows
    of the run and the kept ones together. Bind :run_id."""
    if not has_superseded_lines(warehouse, run_id):
        return "plan_actions"
    return (
        f"(SELECT {_LIVE_COLUMNS} FROM plan_actions WHERE run_id = :run_id"
        f" UNION ALL SELECT {_LIVE_COLUMNS} FROM superseded_plan_actions WHERE run_id = :run_id)"
    )


def _run(row: Mapping[str, Any]) -> BillingRun:
    return BillingRun(
        run_id=row["run_id"],
        dag_id=row["dag_id"],
        month=row["month"],
        settings=json.loads(row["settings"]) if row["settings"] else None,
        planned_at=row["planned_at"],
        reverses_run_id=row["reverses_run_id"],
        superseded_by=row["superseded_by"],
        superseded_at=row["superseded_at"],
    )


__all__ = [
    "BILLING_DAG_IDS",
    "REVERSAL_DAG_ID",
    "SYNC_DAG_ID",
    "BillingRun",
    "RunConflictError",
    "billing_run",
    "has_superseded_lines",
    "register_run",
    "run_lines_source",
    "runs_of_month",
    "supersede_open_lines",
]
