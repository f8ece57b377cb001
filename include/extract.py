"""Extract: one month of BSS charges (and the accounts behind them) into the staging warehouse.

All or nothing per month: the typed lines of a month are replaced in one transaction, and only when every
record could be typed. Raw payloads are kept per run, with the reason for any record that could not be typed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, Protocol

import sqlalchemy as sa

from include.bss_adapter import ChargeLineError, charge_id_of, to_account, to_charge_line
from include.models import BillingMonth, BssAccount, ChargeLine
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

_MAX_REJECTS_IN_MESSAGE = 20


class BssChargeSource(Protocol):
    """What the extract needs from the BSS: the BSS hook satisfies it."""

    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]: ...

    def list_accounts(self) -> Iterator[list[dict]]: ...


@dataclass(frozen=True)
class Reject:
    """A record that could not become a typed charge line."""

    seq: int
    charge_id: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        return f"charge {self.charge_id or f'#{self.seq} (no id)'}: field {self.field!r}: {self.reason}"


class ExtractRejectedError(ValueError):
    """Some BSS records could not be typed: the month was not loaded. Lists each record and field."""

    def __init__(self, month: str, run_id: str, rejects: list[Reject], total: int) -> None:
        self.month, self.run_id, self.rejects = month, run_id, rejects
        shown = "\n".join(f"  - {reject}" for reject in rejects[:_MAX_REJECTS_IN_MESSAGE])
        more = len(rejects) - _MAX_REJECTS_IN_MESSAGE
        super().__init__(
            f"{len(rejects)} of {total} BSS charge records for {month} could not be typed; nothing was loaded "
            f"for the month (raw records kept with their reasons under run {run_id!r}):\n{shown}"
            + (f"\n  … and {more} more" if more > 0 else "")
        )


@dataclass
class ExtractResult:
    run_id: str
    month: str
    raw_count: int
    line_count: int
    account_count: int
    seconds: float
    actions: dict[str, int] = field(default_factory=dict)
    attempt: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract_month(source: BssChargeSource, warehouse: Warehouse, month: str, run_id: str) -> ExtractResult:
    """Pull `month` from the BSS into the warehouse. Raises before writing any typed line if a record is bad.

    Every attempt ends in a final status in `extract_runs` (succeeded, rejected or failed, with the reason),
    whatever fails, the warehouse included. Writers of one month queue: the month always holds one
    complete extract's lines.
    """
    billing_month = BillingMonth.parse(month)
    started = time.monotonic()
    attempt = _record_run_start(warehouse, run_id, billing_month.key)
    try:
        return _extract_attempt(source, warehouse, billing_month, run_id, attempt, started)
    except ExtractRejectedError:
        raise  # recorded as rejected with the raw records
    except BaseException as error:
        _record_run_end(warehouse, run_id, attempt, "failed", f"{type(error).__name__}: {error}")
        raise


def _extract_attempt(
    source: BssChargeSource,
    warehouse: Warehouse,
    billing_month: BillingMonth,
    run_id: str,
    attempt: int,
    started: float,
) -> ExtractResult:
    records = _collect(source.iter_charges(billing_month.first_day, billing_month.last_day), "charges")
    account_records = _collect(source.list_accounts(), "accounts")

    lines, rejects = type_records(records, warehouse.text_lengths("charge_lines"))
    accounts, account_rejects = _type_accounts(account_records, warehouse.text_lengths("bss_accounts"))
    raw_rows = _raw_rows(records, rejects, run_id, attempt, billing_month.key)

    with warehouse.begin() as conn:
        warehouse.insert(conn, "bss_charges_raw", raw_rows)
        if rejects:
            _update_run(conn, warehouse, run_id, attempt, "rejected", len(records), 0, len(rejects), str(rejects[0]))
    if rejects:
        raise ExtractRejectedError(billing_month.key, run_id, rejects, len(records))

    with warehouse.begin() as conn:
        warehouse.lock_month(conn, billing_month.key)
        charge_lines = warehouse.table("charge_lines")
        conn.execute(sa.delete(charge_lines).where(charge_lines.c.month == billing_month.key))
        warehouse.insert(conn, "charge_lines", (_line_row(line, billing_month.key, run_id) for line in lines))
        _upsert_accounts(conn, warehouse, accounts, run_id)
        _update_run(conn, warehouse, run_id, attempt, "succeeded", len(records), len(lines), 0, None)

    if account_rejects:
        # An unreadable account does not block billing lines; it only matters if a company must be created.
        log.warning("extract: %d BSS accounts could not be read: %s", len(account_rejects), account_rejects[:5])
    result = ExtractResult(
        run_id=run_id,
        month=billing_month.key,
        raw_count=len(records),
        line_count=len(lines),
        account_count=len(accounts),
        seconds=round(time.monotonic() - started, 3),
        actions=dict(Counter(line.action.value for line in lines)),
        attempt=attempt,
    )
    log.info(
        "extract: %s (attempt %d): %d charge lines (%s), %d accounts stored in %.1fs",
        result.month,
        attempt,
        result.line_count,
        ", ".join(f"{count} {action}" for action, count in sorted(result.actions.items())),
        result.account_count,
        result.seconds,
    )
    return result


def ensure_run_reads_own_lines(warehouse: Warehouse, month: str, run_id: str) -> None:
    """Stop a run whose month now holds another run's charge lines (a newer extract replaced them).

    A later step of a run (validation, linking, reconciliation) must read the lines its own extract stored;
    re-running an older run's step against a newer run's lines would mix the two runs' inputs and replace
    the newer run's results. Does nothing when this run never extracted the month (lines stored another way).
    """
    billing_month = BillingMonth.parse(month)
    own = warehouse.query(
        "SELECT MAX(finished_at) AS finished_at FROM extract_runs"
        " WHERE run_id = :run_id AND month = :month AND status = 'succeeded'",
        {"run_id": run_id, "month": billing_month.key},
    )
    if not own or own[0]["finished_at"] is None:
        return
    holders = warehouse.query(
        "SELECT DISTINCT run_id FROM charge_lines WHERE month = :month ORDER BY run_id", {"month": billing_month.key}
    )
    holder_ids = [row["run_id"] for row in holders]
    if holder_ids == [run_id]:
        return
    if not holder_ids:
        # An empty month holds no run's lines: the newest succeeded extract is the one that emptied it.
        newest = warehouse.query(
            "SELECT run_id FROM extract_runs WHERE month = :month AND status = 'succeeded'"
            " ORDER BY finished_at DESC, run_id DESC LIMIT 1",
            {"month": billing_month.key},
        )
        holder_ids = [row["run_id"] for row in newest]
        if holder_ids in ([], [run_id]):
            return
    extracted = warehouse.query(
        "SELECT run_id, MAX(finished_at) AS finished_at FROM extract_runs"
        " WHERE month = :month AND status = 'succeeded' GROUP BY run_id",
        {"month": billing_month.key},
    )
    extracted_at = {row["run_id"]: row["finished_at"] for row in extracted}
    holders = {holder: extracted_at.get(holder) for holder in holder_ids}
    raise StaleRunError(billing_month.key, run_id, holders, own[0]["finished_at"])


class StaleRunError(RuntimeError):
    """The month's charge lines now come from another run's extract: this run's later steps must not run.

    `holders`: the run(s) whose lines the month holds, each with when its extract finished.
    """

    def __init__(self, month: str, run_id: str, holders: Mapping[str, Any], own_extract_at: Any) -> None:
        self.month, self.run_id, self.holders, self.own_extract_at = month, run_id, dict(holders), own_extract_at
        named = ", ".join(f"run {holder!r} (extracted {_when(at)})" for holder, at in self.holders.items())
        super().__init__(
            f"{month} now holds the charge lines of {named}, not those run {run_id!r} extracted "
            f"{_when(own_extract_at)}; nothing was read or changed for run {run_id!r}. To bring this run up to "
            f"date, re-run it from its extract task (clear extract and everything after it); to act on the "
            f"newer lines, review the newer run instead."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable despite the custom signature (XCom, multiprocessing).
        return (type(self), (self.month, self.run_id, self.holders, self.own_extract_at))


def _when(moment: Any) -> str:
    if moment is None:
        return "at an unknown time"
    text = moment.isoformat(sep=" ", timespec="seconds") if hasattr(moment, "isoformat") else str(moment)[:19]
    return f"at {text} UTC"


def type_records(
    records: list[object], max_lengths: Mapping[str, int] | None = None
) -> tuple[list[ChargeLine], list[Reject]]:
    """Type every record; a duplicate charge id is a reject too (both records are named).

    `max_lengths` (column -> characters, `Warehouse.text_lengths("charge_lines")`) rejects text the
    warehouse cannot keep, by charge and field.
    """
    lines: list[ChargeLine] = []
    rejects: list[Reject] = []
    for seq, record in enumerate(records):
        try:
            lines.append(to_charge_line(record, max_lengths))
        except ChargeLineError as error:
            rejects.append(Reject(seq, error.charge_id, error.field, error.reason))
    seen = Counter(line.charge_id for line in lines)
    duplicated = {charge_id for charge_id, count in seen.items() if count > 1}
    if duplicated:
        for seq, record in enumerate(records):
            charge_id = charge_id_of(record)
            if charge_id in duplicated:
                rejects.append(Reject(seq, charge_id, "id", f"charge id appears {seen[charge_id]} times"))
        rejects.sort(key=lambda reject: reject.seq)
    return lines, rejects


def _collect(pages: Iterable[list[dict]], what: str) -> list[Any]:
    records: list[Any] = []
    for page in pages:
        records.extend(page)
    log.info("extract: received %d %s records from the BSS", len(records), what)
    return records


def _type_accounts(
    records: list[object], max_lengths: Mapping[str, int] | None = None
) -> tuple[list[BssAccount], list[str]]:
    # BssAccount's attributes are named like the bss_accounts columns, so the column sizes apply as they are.
    accounts, problems = [], []
    for record in records:
        try:
            accounts.append(to_account(record, max_lengths))
        except ValueError as error:
            problems.append(str(error))
    return accounts, problems


def _raw_rows(records: list[object], rejects: list[Reject], run_id: str, attempt: int, month: str) -> Iterator[dict]:
    reject_by_seq: dict[int, Reject] = {}
    for reject in rejects:
        reject_by_seq.setdefault(reject.seq, reject)
    for seq, record in enumerate(records):
        reject = reject_by_seq.get(seq)
        charge_id = charge_id_of(record)
        yield {
            "run_id": run_id,
            "attempt": attempt,
            "seq": seq,
            "month": month,
            "charge_id": charge_id[:100] if charge_id else None,
            "payload": json.dumps(record, ensure_ascii=False, separators=(",", ":")),
            "reject_field": reject.field[:100] if reject else None,
            "reject_reason": reject.reason if reject else None,
        }


def _line_row(line: ChargeLine, month: str, run_id: str) -> dict[str, Any]:
    return {
        "month": month,
        "charge_id": line.charge_id,
        "account_id": line.account_id,
        "account_name": line.account_name,
        "account_code": line.account_code,
        "subscription_id": line.subscription_id,
        "subscription_status": line.subscription_status,
        "product_id": line.product_id,
        "product_sku": line.product_sku,
        "product_name": line.product_name,
        "billing_plan_id": line.billing_plan_id,
        "billing_plan_name": line.billing_plan_name,
        "billing_period": line.billing_period.value,
        "billing_cycle": line.billing_cycle.value,
        "charge_type": line.charge_type.value,
        "action": line.action.value,
        "quantity": line.quantity,
        "subscription_quantity": line.subscription_quantity,
        "unit_cost": line.unit_cost,
        "unit_price": line.unit_price,
        "currency": line.currency,
        "charge_start_date": line.charge_start_date,
        "charge_end_date": line.charge_end_date,
        "effective_date": line.effective_date,
        "invoice_id": line.invoice_id,
        "charged_at": line.charged_at,
        "charge_sequence": line.charge_sequence,
        "run_id": run_id,
    }


def _upsert_accounts(conn: sa.Connection, warehouse: Warehouse, accounts: list[BssAccount], run_id: str) -> None:
    table = warehouse.table("bss_accounts")
    ids = [account.account_id for account in accounts]
    for start in range(0, len(ids), 500):
        conn.execute(sa.delete(table).where(table.c.account_id.in_(ids[start : start + 500])))
    now = utcnow()
    warehouse.insert(
        conn,
        "bss_accounts",
        ({**asdict(account), "run_id": run_id, "fetched_at": now} for account in accounts),
    )


def _record_run_start(warehouse: Warehouse, run_id: str, month: str) -> int:
    """A new attempt of this run (a retried task reuses its run id): earlier attempts keep their rows."""
    runs = warehouse.table("extract_runs")
    with warehouse.begin() as conn:
        warehouse.lock_month(conn, month)
        previous = conn.execute(sa.select(sa.func.max(runs.c.attempt)).where(runs.c.run_id == run_id)).scalar()
        attempt = int(previous or 0) + 1
        conn.execute(
            runs.insert().values(run_id=run_id, attempt=attempt, month=month, status="running", started_at=utcnow())
        )
    return attempt


def _update_run(
    conn: sa.Connection,
    warehouse: Warehouse,
    run_id: str,
    attempt: int,
    status: str,
    raw_count: int,
    line_count: int,
    rejected_count: int,
    message: str | None,
) -> None:
    runs = warehouse.table("extract_runs")
    conn.execute(
        runs.update()
        .where(runs.c.run_id == run_id, runs.c.attempt == attempt)
        .values(
            status=status,
            finished_at=utcnow(),
            raw_count=raw_count,
            line_count=line_count,
            rejected_count=rejected_count,
            message=message,
        )
    )


def _record_run_end(warehouse: Warehouse, run_id: str, attempt: int, status: str, message: str) -> None:
    """Record how the attempt ended; if even that fails (the warehouse is gone), say so in the log."""
    try:
        with warehouse.begin() as conn:
            _update_run(conn, warehouse, run_id, attempt, status, 0, 0, 0, message[:2000])
    except Exception:
        log.exception("extract: could not record that run %s attempt %d %s: %s", run_id, attempt, status, message)
