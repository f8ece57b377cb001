"""Waiting for the BSS month to close before a run reads it.

A billing month is **closed** when every account billed in it has an `Issued` invoice for the period and none is
`Draft` (docs/bss-api.md). Usage lines arrive before the invoices are issued, so a run that reads earlier bills
half a month. `WaitForMonthCloseOperator` (the sync DAG's `wait_for_close` task, before `extract`) checks once;
while the month is open it **defers** to `BssMonthClosedTrigger`, which polls `/api/invoices` on the triggerer
every `close_poll_minutes` without holding a worker slot. Past the deadline (`close_deadline_day` of the next
month, end of that day UTC) it raises one alert and goes on waiting; a person can start the run anyway: the
trigger param `wait_for_close=false`, or mark the waiting task successful.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)

ISSUED, DRAFT, VOID = "Issued", "Draft", "Void"
BSS_CONN_ID = "bss_default"


class BssInvoiceReader(Protocol):
    def iter_invoices(self, period_start: date) -> Iterator[list[dict]]: ...

    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]: ...


@dataclass(frozen=True)
class MonthCloseState:
    """Whether the BSS month is closed, and what keeps it open (data: the sentence is `describe`)."""

    month: str
    invoices: int
    drafts: tuple[str, ...] = ()
    accounts_without_issued: tuple[str, ...] = ()

    @property
    def closed(self) -> bool:
        return self.invoices > 0 and not self.drafts and not self.accounts_without_issued

    def describe(self) -> str:
        if self.closed:
            return f"the BSS month {self.month} is closed: {self.invoices} invoices issued"
        if not self.invoices:
            return f"the BSS month {self.month} has no invoice yet"
        parts = []
        if self.drafts:
            parts.append(f"{len(self.drafts)} invoice(s) still Draft ({', '.join(self.drafts[:5])})")
        if self.accounts_without_issued:
            parts.append(
                f"{len(self.accounts_without_issued)} billed account(s) without an issued invoice "
                f"({', '.join(self.accounts_without_issued[:5])})"
            )
        return f"the BSS month {self.month} is open: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "closed": self.closed,
            "invoices": self.invoices,
            "drafts": list(self.drafts),
            "accounts_without_issued": list(self.accounts_without_issued),
        }


def close_state(
    month: str, invoices: Iterable[Mapping[str, Any]], billed_accounts: Iterable[str] = ()
) -> MonthCloseState:
    """The month's state from its invoices (and, when given, the accounts its charge lines bill)."""
    invoices = list(invoices)
    issued = {str((invoice.get("account") or {}).get("id")) for invoice in invoices if invoice.get("status") == ISSUED}
    invoiced = {str((invoice.get("account") or {}).get("id")) for invoice in invoices}
    drafts = tuple(sorted(str(invoice.get("id")) for invoice in invoices if invoice.get("status") == DRAFT))
    without = sorted((invoiced | set(billed_accounts)) - issued)
    return MonthCloseState(month, len(invoices), drafts, tuple(without))


def check_month_closed(bss: BssInvoiceReader, month: str) -> MonthCloseState:
    """Read the month's invoices; only when they look closed, also the accounts its lines bill (one paged read)."""
    from include.models import BillingMonth

    billing_month = BillingMonth.parse(month)
    invoices = [invoice for page in bss.iter_invoices(billing_month.first_day) for invoice in page]
    state = close_state(billing_month.key, invoices)
    if not state.closed:
        return state
    accounts = {
        str((line.get("account") or {}).get("id"))
        for page in bss.iter_charges(billing_month.first_day, billing_month.last_day)
        for line in page
        if isinstance(line, Mapping)
    }
    return close_state(billing_month.key, invoices, accounts)


def close_deadline(month: str, deadline_day: int) -> datetime:
    """The end (UTC) of `deadline_day` of the month after the billing month."""
    from include.models import BillingMonth

    following = BillingMonth.parse(month).next().first_day
    return datetime(following.year, following.month, deadline_day, tzinfo=UTC) + timedelta(days=1)


class BssMonthClosedTrigger(BaseTrigger):
    """Polls the BSS on the triggerer until the month is closed (event `closed`) or, when a deadline is given, the
    deadline passes (event `deadline`, once: the task alerts and waits again without one)."""

    def __init__(self, month: str, poll_seconds: float, deadline: str | None = None, bss_conn_id: str = BSS_CONN_ID):
        super().__init__()
        self.month = month
        self.poll_seconds = float(poll_seconds)
        self.deadline = deadline
        self.bss_conn_id = bss_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "include.month_close.BssMonthClosedTrigger",
            {
                "month": self.month,
                "poll_seconds": self.poll_seconds,
                "deadline": self.deadline,
                "bss_conn_id": self.bss_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline) if self.deadline else None
        while True:
            try:
                state = await asyncio.to_thread(self._check)
            except Exception as error:  # a BSS outage is waited out like an open month, and logged
                log.warning("could not read the BSS month %s (%s); asking again later", self.month, error)
                state = None
            if state is not None and state.closed:
                yield TriggerEvent({"status": "closed", **state.as_dict()})
                return
            if deadline is not None and datetime.now(UTC) >= deadline:
                described = state.describe() if state else f"the BSS month {self.month} could not be read"
                yield TriggerEvent({"status": "deadline", "month": self.month, "state": described})
                return
            if state is not None:
                log.info("%s; asking again in %.0f s", state.describe(), self.poll_seconds)
            await asyncio.sleep(self.poll_seconds)

    def _check(self) -> MonthCloseState:
        from connectors.bss_hook import BssHook

        return check_month_closed(BssHook(self.bss_conn_id), self.month)


class WaitForMonthCloseOperator(BaseOperator):
    """The run waits here, without a worker slot, until the BSS month of `month` is closed (see the module)."""

    template_fields = ("month",)

    def __init__(self, *, month: Any, bss_conn_id: str = BSS_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.month = month
        self.bss_conn_id = bss_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from connectors.bss_hook import BssHook
        from include.sync_settings import SyncSettings

        if not context["params"].get("wait_for_close", True):
            log.warning("%s: started without waiting for the BSS month to close (wait_for_close=false)", self.month)
            return {"month": self.month, "closed": None, "waited": False}
        settings = SyncSettings.from_env()
        state = check_month_closed(BssHook(self.bss_conn_id), self.month)
        if state.closed:
            log.info(state.describe())
            return {**state.as_dict(), "waited": False}
        deadline = close_deadline(self.month, settings.close_deadline_day)
        log.info(
            "%s; waiting (asking every %.0f min, deadline %s)", state.describe(), settings.close_poll_minutes, deadline
        )
        if datetime.now(UTC) >= deadline:
            self._alert_deadline(context, state.describe(), deadline)
            self._wait(settings, None)
        self._wait(settings, deadline)
        return {}  # not reached: defer raises

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from include.sync_settings import SyncSettings

        if event.get("status") == "deadline":
            settings = SyncSettings.from_env()
            self._alert_deadline(
                context, event.get("state", ""), close_deadline(self.month, settings.close_deadline_day)
            )
            self._wait(settings, None)
        log.info("the BSS month %s is closed: the run goes on", self.month)
        return {**event, "waited": True}

    def _wait(self, settings: Any, deadline: datetime | None) -> None:
        self.defer(
            trigger=BssMonthClosedTrigger(
                self.month,
                settings.close_poll_minutes * 60,
                deadline.isoformat() if deadline else None,
                self.bss_conn_id,
            ),
            method_name="execute_complete",
        )

    def _alert_deadline(self, context: Any, state: str, deadline: datetime) -> None:
        from include.alerts import AlertEvent, alert

        run_id = context.get("run_id")
        summary = (
            f"{state[:1].upper()}{state[1:]} past the close deadline ({deadline:%Y-%m-%d %H:%M} UTC). Run {run_id} "
            "goes on waiting; to start it anyway, mark its wait_for_close task successful, or trigger the month "
            "with wait_for_close=false."
        )
        try:
            alert(AlertEvent.CLOSE_DEADLINE, self.month, summary, details={"run": run_id})
        except Exception:
            log.exception("could not send the close-deadline alert")
