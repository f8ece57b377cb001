"""Alerts through a real local SMTP server (aiosmtpd) and a real local webhook receiver, each seen exactly once;
channels off without their connection; and the wait for the BSS month's close against the BSS sandbox over HTTP
(the trigger's own polling loop, the deadline alert, `wait_for_close=false`)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from include.alerts import AlertEvent, BillingAlertNotifier, alert
from include.month_close import BssMonthClosedTrigger, WaitForMonthCloseOperator, check_month_closed, close_deadline
from include.sync_settings import SyncSettings
from stacks.launcher import free_port
from stacks.local_stack import bss_connection

OPEN_MONTH = "2026-11"


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp(monkeypatch) -> Iterator[_Mailbox]:
    mailbox = _Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    connection = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {"from_email": "billing-sync@msp.example", "disable_tls": True, "disable_ssl": True},
    }
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_ALERTS_SMTP", json.dumps(connection))
    monkeypatch.setenv("BILLING_SYNC_ALERT_EMAIL_TO", "finance@msp.example, ops@msp.example")
    yield mailbox
    controller.stop()


@pytest.fixture
def webhook(monkeypatch) -> Iterator[list[dict]]:
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "body": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    connection = {"conn_type": "http", "host": "127.0.0.1", "port": server.server_port, "schema": "http"}
    connection["extra"] = {"endpoint": "/hooks/billing"}
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_ALERTS_WEBHOOK", json.dumps(connection))
    yield received
    server.shutdown()
    server.server_close()


class _Ti:
    def __init__(self, month: str, task_id: str = "load") -> None:
        self.month, self.task_id = month, task_id

    def xcom_pull(self, task_ids: str) -> str | None:
        return self.month if task_ids == "resolve_month" else None


def _context(month: str, **extra: Any) -> dict:
    from airflow.sdk import DAG

    dag = DAG(dag_id="bss_autotask_billing_sync", schedule=None)
    return {"run_id": "scheduled__2026-11-01", "dag": dag, "ti": _Ti(month), "params": {}, **extra}


def test_every_alert_is_seen_exactly_once_by_email_and_webhook(smtp, webhook) -> None:
    events = [
        (AlertEvent.VERIFY_DIFFERENCES, "3 contract services differ from the plan"),
        (AlertEvent.BUDGET_PAUSE, "The load of 2026-10 waits 75 min for Autotask's hourly budget."),
        (AlertEvent.LEAKAGE, "EUR 1,234.50 not billed"),
        (AlertEvent.CLOSE_DEADLINE, "The BSS month 2026-10 is open past the deadline."),
    ]
    for event, summary in events:
        assert alert(event, "2026-10", summary, details={"run": "r1"}) == ["email", "webhook"]
    BillingAlertNotifier(AlertEvent.APPROVAL_WAITING)(_context("2026-11"))
    BillingAlertNotifier(AlertEvent.RUN_FAILED)(_context("2026-11", reason="task_failure"))

    subjects = [message["Subject"] for _, message in smtp.messages]
    expected = [f"[billing] {event.title}: 2026-10" for event, _ in events] + [
        f"[billing] {AlertEvent.APPROVAL_WAITING.title}: 2026-11",
        f"[billing] {AlertEvent.RUN_FAILED.title}: 2026-11",
    ]
    assert subjects == expected
    assert all(recipients == ["finance@msp.example", "ops@msp.example"] for recipients, _ in smtp.messages)
    assert [item["body"]["event"] for item in webhook] == [str(event) for event, _ in events] + [
        "approval_waiting",
        "run_failed",
    ]
    assert {item["path"] for item in webhook} == {"/hooks/billing"}
    approval = webhook[4]["body"]
    assert approval["link"].endswith("/billing/run/bss_autotask_billing_sync/scheduled__2026-11-01")
    assert approval["link"] in approval["text"] and approval["month"] == "2026-11"
    html_body = smtp.messages[4][1].get_payload()[0].get_payload(decode=True).decode()
    assert "/billing/run/bss_autotask_billing_sync/scheduled__2026-11-01" in html_body


def test_a_customer_name_in_an_alert_stays_text(smtp, webhook) -> None:
    alert(AlertEvent.LEAKAGE, "2026-10", "<script>x</script> {{ 7*7 }} not billed")
    html_body = smtp.messages[0][1].get_payload()[0].get_payload(decode=True).decode()
    assert "&lt;script&gt;x&lt;/script&gt; {{ 7*7 }}" in html_body and "49" not in html_body
    assert webhook[0]["body"]["summary"] == "<script>x</script> {{ 7*7 }} not billed"


def test_channels_are_off_without_their_connection(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_BILLING_ALERTS_SMTP", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_BILLING_ALERTS_WEBHOOK", raising=False)
    assert alert(AlertEvent.RUN_FAILED, "2026-10", "failed") == []


def test_a_channel_that_fails_does_not_stop_the_other(webhook, monkeypatch) -> None:
    dead = {"conn_type": "smtp", "host": "127.0.0.1", "port": free_port(), "extra": {"from_email": "a@b.example"}}
    monkeypatch.setenv(
        "AIRFLOW_CONN_BILLING_ALERTS_SMTP", json.dumps({**dead, "extra": {**dead["extra"], "timeout": 2}})
    )
    monkeypatch.setenv("BILLING_SYNC_ALERT_EMAIL_TO", "finance@msp.example")
    assert alert(AlertEvent.LEAKAGE, "2026-10", "leak") == ["webhook"] and len(webhook) == 1


# -- the month's close ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bss_server(tmp_path_factory) -> Iterator[Any]:
    from tests.servers import start_server

    server = start_server(
        ["sandbox.bss_server", "--customers", "8", "--open-month", OPEN_MONTH], log_dir=tmp_path_factory.mktemp("bss")
    )
    yield server
    server.stop()


@pytest.fixture
def bss(bss_server, monkeypatch):
    from connectors.bss_hook import BssHook

    httpx.post(bss_server.url + "/_admin/reset").raise_for_status()
    monkeypatch.setenv("AIRFLOW_CONN_BSS_DEFAULT", json.dumps(bss_connection(bss_server.url)))
    return BssHook()


def test_a_month_is_closed_only_when_every_billed_account_has_an_issued_invoice(bss, bss_server) -> None:
    assert check_month_closed(bss, "2026-10").closed
    state = check_month_closed(bss, OPEN_MONTH)
    assert not state.closed and state.drafts and "Draft" in state.describe()
    httpx.post(f"{bss_server.url}/_admin/months/{OPEN_MONTH}/withhold", json={"accounts": ["ACC-1002"]})
    httpx.post(f"{bss_server.url}/_admin/months/{OPEN_MONTH}/close", json={}).raise_for_status()
    withheld = check_month_closed(bss, OPEN_MONTH)
    assert not withheld.closed and withheld.accounts_without_issued == ("ACC-1002",) and not withheld.drafts


def test_the_trigger_polls_until_the_sandbox_closes_the_month(bss, bss_server) -> None:
    async def scenario() -> dict:
        trigger = BssMonthClosedTrigger(OPEN_MONTH, poll_seconds=0.2)
        events = trigger.run()
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.8)
        assert not waiting.done()  # still open: the trigger keeps asking
        await asyncio.to_thread(httpx.post, f"{bss_server.url}/_admin/months/{OPEN_MONTH}/close", json={})
        event = await asyncio.wait_for(waiting, timeout=10)
        return event.payload

    payload = asyncio.run(scenario())
    assert payload["status"] == "closed" and payload["closed"] and payload["invoices"] > 0
    served = httpx.get(bss_server.url + "/_admin/stats").json()["by_path"]["/api/invoices"]["200"]
    assert served >= 3  # it polled more than once before the close


def test_past_the_deadline_the_trigger_fires_once_and_the_task_alerts_and_waits_on(
    bss, bss_server, smtp, webhook
) -> None:
    passed = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()

    async def first_event() -> dict:
        return (await BssMonthClosedTrigger(OPEN_MONTH, poll_seconds=0.1, deadline=passed).run().__anext__()).payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "deadline" and "is open" in payload["state"]

    from airflow.exceptions import TaskDeferred

    operator = WaitForMonthCloseOperator(task_id="wait_for_close", month=OPEN_MONTH)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute_complete(_context(OPEN_MONTH, params={"wait_for_close": True}), payload)
    assert deferred.value.trigger.deadline is None  # waits on without a deadline: the alert is not repeated
    assert [message["Subject"] for _, message in smtp.messages] == [
        f"[billing] {AlertEvent.CLOSE_DEADLINE.title}: {OPEN_MONTH}"
    ]
    assert len(webhook) == 1 and "wait_for_close=false" in webhook[0]["body"]["summary"]


def test_the_task_goes_on_at_once_for_a_closed_month_or_when_a_person_says_so(bss) -> None:
    from airflow.exceptions import TaskDeferred

    operator = WaitForMonthCloseOperator(task_id="wait_for_close", month="2026-10")
    assert operator.execute(_context("2026-10", params={"wait_for_close": True}))["closed"] is True
    open_month = WaitForMonthCloseOperator(task_id="wait_for_close", month=OPEN_MONTH)
    assert open_month.execute(_context(OPEN_MONTH, params={"wait_for_close": False}))["waited"] is False
    with pytest.raises(TaskDeferred) as deferred:
        open_month.execute(_context(OPEN_MONTH, params={"wait_for_close": True}))
    trigger = deferred.value.trigger
    assert trigger.poll_seconds == SyncSettings().close_poll_minutes * 60
    assert trigger.deadline == close_deadline(OPEN_MONTH, 10).isoformat() == "2026-12-11T00:00:00+00:00"
    assert trigger.serialize()[0] == "include.month_close.BssMonthClosedTrigger"
