"""The guard in front of Airflow's answer to a billing run's approval form (`PATCH …/hitlDetails`).

Airflow records any answer of a user it lets write to the DAG, and the task only sees it afterwards. For the billing
DAGs' approval tasks this root middleware asks `include.approval.check_answer` first, before Airflow records a thing:
- someone who is not an approver (`BILLING_SYNC_APPROVERS`, or a role below `BILLING_SYNC_APPROVER_ROLE`) gets 403
  with a message that says who may;
- with the two-person rule (`BILLING_SYNC_FOUR_EYES=1`), an approval by someone who took review decisions on the run
  gets 403;
- an approval without the form's fingerprint, or with the fingerprint of a form the plan no longer matches (review
  decisions were taken after it was shown), gets 409: reload the form, it shows what approving loads now.
Everything else goes on to Airflow unchanged (its own checks: login, permissions, an answer given already). The
approval task checks the same again under the month's lock when it records the answer.

Answers to one approval go to Airflow one after the other: a double-click on "Approve proposed" sends two answers at
once, and Airflow, which checks "answered already" before it writes, would take both. One after the other, the second
finds the first recorded and Airflow refuses it (409): one answer is recorded. (The lock is one api-server
process's: with several api-server workers two answers may still reach Airflow together; the approval task then
records the first.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import unquote

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from billing_review.asgi_body import read_body, replaying
from include.identifiers import APPROVAL_TASK_IDS, FORM_FINGERPRINT_PARAM

log = logging.getLogger(__name__)

_ANSWER_PATH = re.compile(r"^/api/v2/dags/([^/]+)/dagRuns/([^/]+)/taskInstances/([^/]+)/(-?\d+)/hitlDetails/?$")
_MAX_ANSWER_BYTES = 64 * 1024
_ANSWERING: dict[tuple[str, str, str], asyncio.Lock] = {}


class ApprovalAnswerGuard:
    """ASGI middleware on Airflow's root app (`fastapi_root_middlewares` of the billing review plugin)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = _ANSWER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if scope["type"] != "http" or scope.get("method") != "PATCH" or match is None:
            await self.app(scope, receive, send)
            return
        dag_id, run_id, task_id = (unquote(part) for part in match.groups()[:3])
        if APPROVAL_TASK_IDS.get(dag_id) != task_id:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, _MAX_ANSWER_BYTES)
        if body is None:
            await JSONResponse({"detail": "the answer is larger than 64 KB"}, 413)(scope, receive, send)
            return
        refusal = await self._refusal(scope, dag_id, run_id, body)
        if refusal is not None:
            status, message = refusal
            log.warning("billing approval of %s refused (%s): %s", run_id, status, message)
            await JSONResponse({"detail": message}, status)(scope, receive, send)
            return
        lock = _ANSWERING.setdefault((dag_id, run_id, task_id), asyncio.Lock())
        async with lock:  # a second answer (a double-click) finds the first one recorded: Airflow answers 409
            await self.app(scope, replaying(body, receive), send)

    async def _refusal(self, scope: Any, dag_id: str, run_id: str, body: bytes) -> tuple[int, str] | None:
        user = await _user_of(scope)
        if user is None:
            return None  # Airflow answers an unauthenticated request itself (401/403)
        try:
            answer = json.loads(body or b"{}")
        except ValueError:
            return None  # Airflow refuses a malformed answer itself (422)
        if not isinstance(answer, dict):
            return None
        return await run_in_threadpool(_check, dag_id, run_id, user, answer)


async def _user_of(scope: Any) -> Any:
    """The Airflow user of the request (Bearer token, else the UI's cookie), as Airflow's `get_user` finds it."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from starlette.requests import Request

    request = Request(scope)
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        return None
    try:
        return await resolve_user_from_token(token)
    except Exception:  # an invalid or expired token: Airflow refuses it itself
        return None


def _check(dag_id: str, run_id: str, user: Any, answer: dict[str, Any]) -> tuple[int, str] | None:
    from billing_approval.gate import known_users

    from billing_review.web import _warehouse
    from include.approval import check_answer
    from include.runs import billing_run

    warehouse = _warehouse()
    run = billing_run(warehouse, run_id)
    if run is None or run.dag_id != dag_id:
        return None  # not a run this product planned: Airflow's rules only
    known = known_users()
    user_id = str(user.get_id())
    role = getattr(user, "role", None) or dict(known).get(user_id)
    params = answer.get("params_input") if isinstance(answer.get("params_input"), dict) else {}
    chosen = answer.get("chosen_options") if isinstance(answer.get("chosen_options"), list) else []
    refusal = check_answer(
        warehouse,
        run.month,
        run_id,
        user_id=user_id,
        role=role,
        chosen_options=[str(option) for option in chosen],
        form_fingerprint=str(params.get(FORM_FINGERPRINT_PARAM) or "") or None,
        settings=run.sync_settings(),
        known_users=known,
    )
    return None if refusal is None else (refusal.status, refusal.message)
