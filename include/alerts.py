"""Alerts: the billing events a person must hear about, sent with Airflow's notifiers.

Events (`AlertEvent`, each owning its title): a month waiting for approval (with the review link), a failed run,
verification differences after a load, a load paused on Autotask's hourly budget for longer than
`budget_pause_alert_minutes`, leakage above `audit_alert_threshold` in a posted month, and a BSS month still open
past `close_deadline_day`.

Channels, each configured by an Airflow connection and **off while that connection is not set**:
- e-mail: Airflow's `SmtpNotifier` (apache-airflow-providers-smtp) on the connection `alert_email_conn_id`
  (default `billing_alerts_smtp`: host, port, login, password; extra `from_email`, `disable_tls`, `disable_ssl`),
  to `alert_email_to` (or the connection's extra `to`);
- webhook: `WebhookNotifier` POSTs one JSON object (`text` for Slack, Mattermost or a Teams workflow, plus the
  event as data) to the connection `alert_webhook_conn_id` (default `billing_alerts_webhook`: conn type http,
  host, schema, port; extra `endpoint` for the path).

`alert(event, month, summary, ...)` sends one alert on every configured channel and returns the channels that
took it; a channel that fails is logged and never fails the billing task that raised the alert. The DAGs call it
from their tasks and callbacks (`BillingAlertNotifier` is the same as an Airflow notifier, for HITL `notifiers=`
and `on_failure_callback=`). Texts carry no secret: only months, counts, amounts and links.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)


class AlertEvent(StrEnum):
    """What happened; each event owns the title a person reads first."""

    APPROVAL_WAITING = "approval_waiting"
    RUN_FAILED = "run_failed"
    VERIFY_DIFFERENCES = "verify_differences"
    BUDGET_PAUSE = "budget_pause"
    LEAKAGE = "leakage"
    CLOSE_DEADLINE = "close_deadline"

    @property
    def title(self) -> str:
        return {
            AlertEvent.APPROVAL_WAITING: "Billing month waiting for approval",
            AlertEvent.RUN_FAILED: "Billing run failed",
            AlertEvent.VERIFY_DIFFERENCES: "Autotask differs from the approved plan after the load",
            AlertEvent.BUDGET_PAUSE: "Load paused on Autotask's hourly request budget",
            AlertEvent.LEAKAGE: "Billing leakage found after invoicing",
            AlertEvent.CLOSE_DEADLINE: "BSS month not closed by the deadline",
        }[self]


@dataclass(frozen=True)
class Alert:
    event: AlertEvent
    month: str | None
    summary: str
    link: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"[billing] {self.event.title}" + (f": {self.month}" if self.month else "")

    def text(self) -> str:
        lines = [self.subject, self.summary]
        if self.link:
            lines.append(self.link)
        return "\n".join(lines)

    def html(self) -> str:
        rows = "".join(
            f"<tr><th align='left'>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
            for key, value in self.details.items()
        )
        link = (
            f"<p><a href='{html.escape(self.link, quote=True)}'>{html.escape(self.link)}</a></p>" if self.link else ""
        )
        table = f"<table>{rows}</table>" if rows else ""
        return f"<h2>{html.escape(self.event.title)}</h2><p>{html.escape(self.summary)}</p>{link}{table}"

    def payload(self) -> dict[str, Any]:
        return {
            "text": self.text(),
            "event": str(self.event),
            "title": self.event.title,
            "month": self.month,
            "summary": self.summary,
            "link": self.link,
            "details": {str(key): _json_value(value) for key, value in self.details.items()},
        }


class WebhookNotifier(BaseNotifier):
    """POST one JSON object to the webhook connection (HttpHook: host, schema, port; extra `endpoint`)."""

    template_fields = ()

    def __init__(self, payload: Mapping[str, Any], http_conn_id: str) -> None:
        super().__init__()
        self.payload = dict(payload)
        self.http_conn_id = http_conn_id

    def notify(self, context: Any) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="POST", http_conn_id=self.http_conn_id)
        endpoint = hook.get_connection(self.http_conn_id).extra_dejson.get("endpoint", "")
        hook.run(
            endpoint, json=self.payload, headers={"Content-Type": "application/json"}, extra_options={"timeout": 10}
        )


def alert(
    event: AlertEvent,
    month: str | None,
    summary: str,
    *,
    link: str | None = None,
    details: Mapping[str, Any] | None = None,
    settings: Any = None,
) -> list[str]:
    """Send one alert on every configured channel; returns the channels that took it ("email", "webhook")."""
    from include.sync_settings import SyncSettings

    settings = settings or SyncSettings.from_env()
    message = Alert(event, month, summary, link, dict(details or {}))
    sent = []
    email = _email_notifier(message, settings)
    if email is not None and _delivered("email", message, email):
        sent.append("email")
    webhook = WebhookNotifier(message.payload(), settings.alert_webhook_conn_id)
    if _connection(settings.alert_webhook_conn_id) is not None and _delivered("webhook", message, webhook):
        sent.append("webhook")
    if not sent:
        log.info("alert %s (%s) not sent: no alert channel is configured or none took it", event, month)
    return sent


class BillingAlertNotifier(BaseNotifier):
    """An Airflow notifier (HITL `notifiers=`, `on_failure_callback=`) sending one billing alert of its event for the
    run in the context: its month (the resolve_month task's result) and its review page."""

    template_fields = ()

    def __init__(self, event: AlertEvent | str) -> None:
        super().__init__()
        self.event = AlertEvent(event)

    def notify(self, context: Any) -> None:
        dag_run = context.get("dag_run")
        run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
        dag_id = getattr(context.get("dag"), "dag_id", None) or getattr(dag_run, "dag_id", None)
        month = _month_of(context)
        link = _review_link(dag_id, run_id) if dag_id and run_id else None
        if self.event is AlertEvent.APPROVAL_WAITING:
            summary = f"The change plan of {month or 'the month'} waits for a person's approval (run {run_id})."
        else:
            failed = context.get("task_instance") or context.get("ti")
            task = getattr(failed, "task_id", None)
            reason = context.get("reason") or context.get("exception")
            summary = (
                f"Run {run_id} of {dag_id} failed"
                + (f" at {task}" if task else "")
                + (f": {reason}" if reason else ".")
            )
        try:
            alert(self.event, month, summary, link=link, details={"dag": dag_id, "run": run_id})
        except Exception:  # an alert must never fail the run it reports on
            log.exception("could not send the %s alert", self.event)


# -- channels --------------------------------------------------------------------------------------------------


def _email_notifier(message: Alert, settings: Any) -> Any:
    connection = _connection(settings.alert_email_conn_id)
    if connection is None:
        return None
    recipients = settings.alert_email_to or connection.extra_dejson.get("to")
    if not recipients:
        log.warning("alert e-mail off: connection %s has no recipients (alert_email_to)", settings.alert_email_conn_id)
        return None
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to=[address.strip() for address in str(recipients).split(",") if address.strip()],
        subject=message.subject,
        html_content=message.html(),
        smtp_conn_id=settings.alert_email_conn_id,
    )


def _delivered(channel: str, message: Alert, notifier: BaseNotifier) -> bool:
    try:
        notifier.notify({})  # the texts are ours, already rendered: no templating of customer names
    except Exception as error:
        log.error("alert %s for %s not sent by %s: %s", message.event, message.month, channel, error)
        return False
    log.info("alert %s for %s sent by %s", message.event, message.month, channel)
    return True


def _connection(conn_id: str | None) -> Any:
    if not conn_id:
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _month_of(context: Any) -> str | None:
    params = context.get("params") or {}
    ti = context.get("ti") or context.get("task_instance")
    try:
        month = ti.xcom_pull(task_ids="resolve_month") if ti is not None else None
    except Exception:  # a callback outside a task may have no XCom access
        month = None
    return month or params.get("month")


def _review_link(dag_id: str, run_id: str) -> str:
    from include.review import review_url

    try:
        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="") or ""
    except Exception:
        base = ""
    return review_url(dag_id, run_id, base)


def _json_value(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)
