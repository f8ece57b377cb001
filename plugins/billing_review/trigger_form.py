"""The billing DAGs' trigger form in Airflow's UI (`POST /api/v2/dags/{dag_id}/dagRuns`), made to speak billing.

Airflow validates a trigger's params with JSON Schema and shows its raw message ("'2026-13' does not match
'^\\d{4}-…' Failed validating 'pattern' in schema: {…}"). This root middleware of the billing plugin reads the
trigger of a billing DAG first (`include.month_input` decides):
- a month that is not `YYYY-MM` ("2026-13", "Nov 2026") is refused with 400 and a sentence that says how to write
  it (and the month it probably meant), for a signed-in user (a request without a login goes on to Airflow, which
  answers 401);
- a sync run without a month gets the month it bills written into its conf (the last closed month of its run
  date), a run id that starts with that month when none was given (so the runs list shows the month), and the
  note "Billing month YYYY-MM" when it has none.
Everything else goes on to Airflow unchanged: its own validation, permissions and run creation.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from starlette.responses import JSONResponse

from billing_review.approval_guard import _user_of
from billing_review.asgi_body import read_body, replaying
from include.identifiers import AUDIT_DAG_ID, REVERSAL_DAG_ID, SYNC_DAG_ID
from include.month_input import default_month, month_problem, month_run_id

log = logging.getLogger(__name__)

_TRIGGER_PATH = re.compile(r"^/api/v2/dags/([^/]+)/dagRuns/?$")
_MONTH_DAGS = (SYNC_DAG_ID, REVERSAL_DAG_ID, AUDIT_DAG_ID)
_MAX_TRIGGER_BYTES = 256 * 1024


class BillingTriggerForm:
    """ASGI middleware on Airflow's root app (`fastapi_root_middlewares` of the billing review plugin)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = _TRIGGER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        dag_id = unquote(match.group(1)) if match else None
        if scope.get("method") != "POST" or dag_id not in _MONTH_DAGS:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, _MAX_TRIGGER_BYTES)
        if body is None:
            await JSONResponse({"detail": "the trigger request is larger than 256 KB"}, 413)(scope, receive, send)
            return
        trigger = _json_object(body)
        if trigger is not None:
            conf = trigger.get("conf") if isinstance(trigger.get("conf"), dict) else {}
            problem = month_problem(conf.get("month"))
            if problem is not None and await _user_of(scope) is not None:
                log.info("trigger of %s refused: month %r", dag_id, conf.get("month"))
                await JSONResponse({"detail": problem}, 400)(scope, receive, send)
                return
            if problem is None and dag_id == SYNC_DAG_ID:
                body = json.dumps(named_after_its_month(trigger, datetime.now(UTC))).encode()
        await self.app(_with_length(scope, body), replaying(body, receive), send)


def named_after_its_month(trigger: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The sync trigger with its month in the conf (the last closed month when none was given), a run id that starts
    with the month when none was given, and a note naming the month when it has none."""
    conf = dict(trigger.get("conf") or {})
    run_date = _datetime(trigger.get("logical_date")) or _datetime(trigger.get("run_after")) or now
    month = (conf.get("month") or "").strip() or default_month(run_date).key
    conf["month"] = month
    named = {**trigger, "conf": conf}
    if not trigger.get("dag_run_id"):
        named["dag_run_id"] = month_run_id(month, "manual", now)
    if not trigger.get("note"):
        named["note"] = f"Billing month {month}"
    return named


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return None  # Airflow refuses a malformed request itself (422)
    return parsed if isinstance(parsed, dict) else None


def _with_length(scope: Any, body: bytes) -> Any:
    """The request's headers with the content length of the (possibly rewritten) body."""
    headers = [(name, value) for name, value in scope.get("headers", []) if name.lower() != b"content-length"]
    scope["headers"] = [*headers, (b"content-length", str(len(body)).encode())]
    return scope
