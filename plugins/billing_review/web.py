"""The "Billing review" web layer: a FastAPI app the Airflow api-server mounts at /billing (see
`billing_review_plugin.py`). The domain (grid, decisions, months) is `include.review`; exports are
`include.review_export`.

Security:
- every route depends on `requires_access_dag` (GET for reads, PUT for decisions) for the billing DAG in the
  path, or for the monthly sync DAG where there is none: an unauthenticated request gets 401, a user the auth
  manager denies 403. Airflow's `get_user` takes the UI's `_token` cookie or a Bearer token. A run is served only
  under the DAG it is a run of (`include.review.run_state`): a sync run under the reversal DAG's path is a 404;
- a request body over `MAX_BODY_BYTES` gets 413 before it is read; a body that is not JSON, or JSON nested deeper
  than `MAX_JSON_DEPTH`, gets 422 (never a 500);
- a decision runs off the event loop: a worker thread waits for it while the re-plan runs in a process of its own
  (`_decide_in_decision_process`), so the api-server keeps answering, undisturbed by the re-plan's CPU work. After a
  decision the run's approval form is refreshed (`refresh_approval_form`): what each answer loads, its fingerprint;
- a decision (POST) also needs the CSRF token of its user (`X-Billing-CSRF`: an HMAC of the user's id and name
  under the api-server's secret key, given to the page) and, when the browser sends one, an Origin of this
  server: a cross-site page cannot forge it;
- pages are Jinja2 templates with autoescape, a strict Content-Security-Policy (scripts only from this app, no
  inline script) and the JS sets text with `textContent` only;
- files (Data Docs, run reports) are served from `$BILLING_DATA_DOCS_DIR` only: the path is resolved and must
  stay inside that directory. They are served sandboxed (`FILE_CSP`: no script runs, the page has an origin of its
  own, so nothing in a report or a Data Docs page can act in Airflow), with `nosniff`; exports are `no-store`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from billing_review.asgi_body import read_body, replaying
from include.identifiers import APPROVAL_TASK_IDS, BILLING_DAG_IDS, FORM_FINGERPRINT_PARAM, SYNC_DAG_ID

log = logging.getLogger(__name__)

CSRF_HEADER = "X-Billing-CSRF"
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
HERE = Path(__file__).resolve().parent
STATIC_FILES = {
    "review.js": "application/javascript",
    "review.css": "text/css",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'self'; base-uri 'none'; object-src 'none'"
)
# Data Docs and run reports: a sandbox of their own (no script, an opaque origin), their own styles and images only
FILE_CSP = (
    "sandbox; default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
_SERVED_SUFFIXES = {".html", ".htm", ".css", ".js", ".json", ".png", ".svg", ".ico", ".xlsx", ".csv", ".woff", ".woff2"}


def _requires(method: str, fixed_dag: bool = False) -> Any:
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method, param_dag_id=SYNC_DAG_ID if fixed_dag else None))


def _user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def create_app() -> FastAPI:
    """The plugin's app; everything Airflow and the domain need is imported lazily (plugins load everywhere)."""
    app = FastAPI(title="Billing review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    read_run = APIRouter(dependencies=[_requires("GET")])
    change_run = APIRouter(dependencies=[_requires("PUT")])
    read_any = APIRouter(dependencies=[_requires("GET", fixed_dag=True)])
    user_dep = _user_dependency()

    @app.exception_handler(_ReviewHTTPError)
    async def _review_error(_request: Request, error: _ReviewHTTPError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    # -- pages ------------------------------------------------------------------------------------------------

    @read_any.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("months", status_code=307)

    @read_any.get("/months", response_class=HTMLResponse)
    def months_page(request: Request, user: Any = user_dep) -> HTMLResponse:
        return _page(request, "months.html", {"months": _months(), "user": user.get_name()})

    @read_run.get("/run/{dag_id}/{run_id}", response_class=HTMLResponse)
    def review_page(request: Request, dag_id: str, run_id: str, user: Any = user_dep) -> HTMLResponse:
        from include.review import GridQuery, grid_page, run_state

        _check_dag(dag_id)
        warehouse = _warehouse()
        state = _call(run_state, warehouse, run_id, dag_id)
        if state.pending:
            start_decision_process()
        query = _call(GridQuery.parse, dict(request.query_params))
        page = _call(grid_page, warehouse, run_id, query)
        api = f"{_prefix(request)}/api/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"
        context = {
            "dag_id": dag_id,
            "run": state.as_dict(),
            "page": page,
            "query": query,
            "user": user.get_name(),
            "csrf_token": csrf_token(user),
            "api": api,
            "files": _run_files(state.month, run_id),
            "export_query": urlencode(query.as_params()),
            "months_href": f"{_prefix(request)}/months",
        }
        return _page(request, "review.html", context)

    @read_any.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(
            (HERE / "static" / name).read_bytes(),
            media_type=STATIC_FILES[name],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )

    @read_any.get("/files/{month}/{run_dir}/{file_path:path}")
    def run_file(month: str, run_dir: str, file_path: str) -> FileResponse:
        path = _safe_file(month, run_dir, file_path)
        return FileResponse(
            path,
            headers={
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": FILE_CSP,
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "private, no-cache",
            },
        )

    # -- JSON -------------------------------------------------------------------------------------------------

    @read_any.get("/api/csrf")
    def csrf(user: Any = user_dep) -> dict[str, str]:
        return {"token": csrf_token(user), "header": CSRF_HEADER}

    @read_any.get("/api/months")
    def months_json() -> dict[str, Any]:
        return {"months": _months()}

    @read_run.get("/api/runs/{dag_id}/{run_id}")
    def run_json(dag_id: str, run_id: str) -> dict[str, Any]:
        from include.review import run_state

        _check_dag(dag_id)
        return _call(run_state, _warehouse(), run_id, dag_id).as_dict()

    @read_run.get("/api/runs/{dag_id}/{run_id}/lines")
    def lines_json(request: Request, dag_id: str, run_id: str) -> JSONResponse:
        from include.review import GridQuery, grid_page, run_state

        _check_dag(dag_id)
        started = time.perf_counter()
        warehouse = _warehouse()
        _call(run_state, warehouse, run_id, dag_id)
        query = _call(GridQuery.parse, dict(request.query_params))
        page = _call(grid_page, warehouse, run_id, query)
        elapsed = f"grid;dur={(time.perf_counter() - started) * 1000:.1f}"
        return JSONResponse(page, headers={"Server-Timing": elapsed, "Cache-Control": "no-store"})

    @read_run.get("/api/runs/{dag_id}/{run_id}/lines/{action_id}")
    def line_json(dag_id: str, run_id: str, action_id: str) -> dict[str, Any]:
        from include.review import line_detail, run_state

        _check_dag(dag_id)
        warehouse = _warehouse()
        _call(run_state, warehouse, run_id, dag_id)
        return _call(line_detail, warehouse, run_id, action_id)

    @read_run.get("/api/runs/{dag_id}/{run_id}/targets")
    def targets_json(dag_id: str, run_id: str, kind: str, q: str = "", company_id: int | None = None) -> dict:
        from include.review import run_state, search_targets

        _check_dag(dag_id)
        warehouse = _warehouse()
        _call(run_state, warehouse, run_id, dag_id)
        return {"targets": _call(search_targets, warehouse, run_id, kind, q, company_id)}

    @read_run.get("/api/runs/{dag_id}/{run_id}/decisions")
    def decisions_json(dag_id: str, run_id: str) -> dict[str, Any]:
        from include.review import decisions_of, run_state

        _check_dag(dag_id)
        warehouse = _warehouse()
        _call(run_state, warehouse, run_id, dag_id)
        return {"decisions": decisions_of(warehouse, run_id)}

    @change_run.post("/api/runs/{dag_id}/{run_id}/decisions")
    async def decide_json(request: Request, dag_id: str, run_id: str, user: Any = user_dep) -> dict[str, Any]:
        _check_dag(dag_id)
        check_csrf(request, user)
        body = parse_json(await request.body())
        # the re-plan reads and writes the warehouse for a while: a worker thread, never the event loop
        return await run_in_threadpool(_decide, dag_id, run_id, body, user.get_name())

    @read_run.get("/api/runs/{dag_id}/{run_id}/export.csv")
    def export_csv(request: Request, dag_id: str, run_id: str) -> Response:
        from include.review_export import to_csv

        rows, _totals, state = _export_rows(request, dag_id, run_id)
        return Response(
            to_csv(rows).encode("utf-8-sig"),  # what a person exports is theirs: never kept by a cache
            media_type="text/csv; charset=utf-8",
            headers=_download_headers(f"billing-review-{state.month}.csv"),
        )

    @read_run.get("/api/runs/{dag_id}/{run_id}/export.xlsx")
    def export_xlsx(request: Request, dag_id: str, run_id: str) -> Response:
        from include.review_export import to_xlsx

        rows, totals, state = _export_rows(request, dag_id, run_id)
        title = f"Billing review of {state.month}, run {run_id}"
        return Response(
            to_xlsx(rows, totals, title),
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers=_download_headers(f"billing-review-{state.month}.xlsx"),
        )

    app.include_router(read_any)
    app.include_router(read_run)
    app.include_router(change_run)
    return app


# -- helpers --------------------------------------------------------------------------------------------------


class _ReviewHTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _call(function: Any, *args: Any) -> Any:
    """Run a domain call; its ReviewError becomes the HTTP answer (4xx with the message)."""
    from include.review import ReviewError

    try:
        return function(*args)
    except ReviewError as error:
        raise _ReviewHTTPError(error.status, error.message) from None


def _decide(dag_id: str, run_id: str, body: Any, by: str) -> dict[str, Any]:
    """One decision, in a worker thread: the run must be a run of `dag_id`, still running in Airflow and pending;
    then the decision, the refreshed approval form and the new totals."""
    from include.review import GridQuery, grid_totals
    from include.runs import billing_run

    warehouse = _warehouse()
    run = billing_run(warehouse, run_id)
    if run is None or run.dag_id != dag_id:  # said before Airflow is asked anything about the run
        from include.review import run_state

        _call(run_state, warehouse, run_id, dag_id)
    airflow_state = _airflow_run_state(dag_id, run_id)
    if airflow_state in _ENDED_RUN_STATES:
        raise _ReviewHTTPError(409, f"run {run_id!r} has ended in Airflow ({airflow_state}): decisions are closed")
    settings = None if run is not None and run.settings is not None else _legacy_settings(dag_id, run_id)
    result = _call(_decide_in_decision_process, warehouse, run_id, body, by, settings, dag_id)
    form = refresh_approval_form(warehouse, dag_id, run_id)
    # the grid's stored lines were refreshed with the decision: the totals read them as they are
    return {**result, "totals": grid_totals(warehouse, run_id, GridQuery(), ensure=False), "approval_form": form}


# A decision's re-plan is CPU work in Python (pandas): run in a thread of the api-server it would hold the
# interpreter's lock and slow every other request. It runs in a process of its own, one per api-server process,
# started with the first review page or decision; the api-server's thread only waits for it.
_DECISION_PROCESS: Any = None
_DECISION_PROCESS_LOCK = threading.Lock()
_DECISION_TIMEOUT_S = 600


def _decision_process() -> Any:
    global _DECISION_PROCESS
    with _DECISION_PROCESS_LOCK:
        if _DECISION_PROCESS is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            _DECISION_PROCESS = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _DECISION_PROCESS


def start_decision_process() -> None:
    """Start the decision process ahead of the first decision (it imports the domain once: a few seconds)."""
    _decision_process().submit(_ready)


def _decide_in_decision_process(warehouse: Any, run_id: str, body: Any, by: str, settings: Any, dag_id: str) -> Any:
    from concurrent.futures.process import BrokenProcessPool

    global _DECISION_PROCESS
    url = warehouse.engine.url.render_as_string(hide_password=False)
    try:
        return (
            _decision_process()
            .submit(_decide_there, url, run_id, body, by, settings, dag_id)
            .result(timeout=_DECISION_TIMEOUT_S)
        )
    except BrokenProcessPool:  # the process died (killed, out of memory): a new one next time
        with _DECISION_PROCESS_LOCK:
            _DECISION_PROCESS = None
        raise _ReviewHTTPError(503, "the decision could not be taken (its process stopped): try again") from None


def _ready() -> bool:
    import include.review  # noqa: F401  (the domain and pandas, imported once)

    return True


_DECISION_WAREHOUSES: dict[str, Any] = {}


def _decide_there(url: str, run_id: str, body: Any, by: str, settings: Any, dag_id: str) -> Any:
    """In the decision process: the decision (`include.review.decide`), on one warehouse handle per database."""
    from include.review import decide
    from include.warehouse import Warehouse

    if url not in _DECISION_WAREHOUSES:
        _DECISION_WAREHOUSES[url] = Warehouse(url)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = decide(_DECISION_WAREHOUSES[url], run_id, body, by, settings, dag_id)
    took = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}
    return {**result, "took": {key: round(value, 3) for key, value in took.items()}}


def _months() -> list[dict[str, Any]]:
    """The months overview with each run's review link and files."""
    from include.review import months_overview

    months = months_overview(_warehouse())
    for month in months:
        for run in (month["latest"], *month["earlier"]):
            run["review_href"] = _review_href(run["dag_id"], run["run_id"])
            run["files"] = _run_files(run["month"], run["run_id"])
            run["files"]["audit_html"] = _audit_file(run["month"])
    return months


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads it (declared or streamed)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        body = await read_body(receive, self.limit)
        if body is None:
            await _too_large(self.limit)(scope, receive, send)
            return
        await self.app(scope, replaying(body, receive), send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the request body is larger than {limit // 1024} KB: nothing was done"}, 413)


def parse_json(raw: bytes) -> Any:
    """The request body as JSON: 422 (naming what is wrong) for text that is not JSON or nested deeper than
    `MAX_JSON_DEPTH` (checked before parsing: a deep enough document would exhaust the parser's recursion)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _ReviewHTTPError(422, "the request body must be JSON in UTF-8") from None
    depth, deepest, in_string, escaped = 0, 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise _ReviewHTTPError(422, f"the request body is JSON nested deeper than {MAX_JSON_DEPTH} levels")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as error:
        raise _ReviewHTTPError(422, f"the request body must be JSON: {error}") from None


def refresh_approval_form(warehouse: Any, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """Keep the run's pending approval form current after a decision: its text (what each answer loads) and its
    fingerprint are computed in the decision process and written into Airflow's record of the request as soon as they
    are ready (the decision's answer does not wait for them), so the form a person opens next shows what approving
    loads now. An answer to the form as it was before is refused meanwhile (`include.approval.check_answer`).
    Returns whether a refresh is on its way (None when no form is pending)."""
    try:
        from include.runs import billing_run

        run = billing_run(warehouse, run_id)
        if run is None or _pending_form(dag_id, run_id) is None:
            return None
        url = warehouse.engine.url.render_as_string(hide_password=False)
        form = _decision_process().submit(_form_there, url, run.month, run_id, dag_id, run.sync_settings())
        form.add_done_callback(lambda done: _write_form(dag_id, run_id, done))
        return {"refreshing": True}
    except Exception as error:  # the decision stands; the stale form is refused when answered
        log.warning("billing review: could not refresh the approval form of %s: %s", run_id, error)
        return None


def _pending_form(dag_id: str, run_id: str) -> Any:
    """The id of the run's approval task instance while its form waits for an answer, else None."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.execute(
            select(TaskInstance.id, HITLDetail.responded_at)
            .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
            .where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == APPROVAL_TASK_IDS[dag_id],
                TaskInstance.map_index == -1,
            )
        ).first()
    return found[0] if found is not None and found[1] is None else None


def _form_there(url: str, month: str, run_id: str, dag_id: str, settings: Any) -> tuple[str, str] | None:
    """In the decision process: the run's approval form now (text, fingerprint); None when no person is asked."""
    from billing_approval.gate import approval_form

    from include.approval import AskPerson
    from include.warehouse import Warehouse

    if url not in _DECISION_WAREHOUSES:
        _DECISION_WAREHOUSES[url] = Warehouse(url)
    form = approval_form(_DECISION_WAREHOUSES[url], month, run_id, dag_id, settings)
    return (form.body, form.form_fingerprint) if isinstance(form, AskPerson) else None


def _write_form(dag_id: str, run_id: str, done: Any) -> None:
    """Write the refreshed form into Airflow's record of the request, unless it was answered meanwhile."""
    try:
        form = done.result()
        if form is None:
            return
        body, fingerprint = form
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        instance_id = _pending_form(dag_id, run_id)
        if instance_id is None:
            return
        with create_session() as session:
            # the answer route's lock order: the task instance, then its request
            session.get(TaskInstance, instance_id, with_for_update={"of": TaskInstance})
            detail = session.scalar(
                select(HITLDetail).where(HITLDetail.ti_id == instance_id).with_for_update(of=HITLDetail)
            )
            if detail is None or detail.response_received:
                return
            params = dict(detail.params or {})
            params[FORM_FINGERPRINT_PARAM] = {**dict(params.get(FORM_FINGERPRINT_PARAM) or {}), "value": fingerprint}
            detail.body = body
            detail.params = params
        log.info("billing review: the approval form of %s now shows form %s", run_id, fingerprint[:12])
    except Exception as error:  # the decision stands; the stale form is refused when answered
        log.warning("billing review: could not refresh the approval form of %s: %s", run_id, error)


def _check_dag(dag_id: str) -> None:
    if dag_id not in BILLING_DAG_IDS:
        raise _ReviewHTTPError(404, f"{dag_id!r} is not a billing DAG; the review serves {sorted(BILLING_DAG_IDS)}")


def _warehouse() -> Any:
    """The `billing_warehouse` connection's warehouse, one handle per process (migrated once)."""
    global _WAREHOUSE
    if _WAREHOUSE is None:
        from connectors.warehouse_connection import get_warehouse

        _WAREHOUSE = get_warehouse()
    return _WAREHOUSE


_WAREHOUSE: Any = None


def _secret() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("api", "secret_key", fallback=None) or conf.get("api_auth", "jwt_secret", fallback=None)
    if not secret:
        raise _ReviewHTTPError(500, "the api-server has no [api] secret_key: CSRF tokens cannot be made")
    return secret.encode()


def csrf_token(user: Any) -> str:
    """The user's CSRF token: an HMAC of their id and name under the api-server's secret key."""
    message = f"billing-review-csrf|{user.get_id()}|{user.get_name()}".encode()
    return hmac.new(_secret(), message, hashlib.sha256).hexdigest()


def check_csrf(request: Request, user: Any) -> None:
    """403 unless the request carries the user's CSRF token and (when the browser sends one) this server's Origin."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent:
        raise _ReviewHTTPError(403, f"CSRF token missing: send the page's token in the {CSRF_HEADER} header")
    if not hmac.compare_digest(sent, csrf_token(user)):
        raise _ReviewHTTPError(403, f"CSRF token invalid for user {user.get_name()!r}: reload the review page")
    origin = request.headers.get("origin")
    if origin is None:
        return
    allowed = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="") or ""
    if base_url:
        allowed.add(urlsplit(base_url).netloc)
    if urlsplit(origin).netloc not in allowed - {None, ""}:
        raise _ReviewHTTPError(403, f"request from origin {origin!r} refused: decisions come from this server's pages")


_ENDED_RUN_STATES = frozenset({"success", "failed"})


def _airflow_run(dag_id: str, run_id: str) -> tuple[Any, str | None]:
    """The run's conf and state in Airflow (None, None when Airflow does not know the run: a month planned from a
    script)."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            found = session.execute(
                select(DagRun.conf, DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            ).first()
    except Exception as error:  # the metadata database is the api-server's own; a failure keeps the default
        log.warning("billing review: could not read run %s in Airflow: %s", run_id, error)
        return None, None
    return (found[0], str(found[1]) if found[1] is not None else None) if found else (None, None)


def _airflow_run_state(dag_id: str, run_id: str) -> str | None:
    return _airflow_run(dag_id, run_id)[1]


def _legacy_settings(dag_id: str, run_id: str) -> Any:
    """For a run planned before runs stored their settings: the environment's, with the run's effective-date
    policy from its Airflow conf."""
    from dataclasses import replace

    from include.sync_settings import EffectiveDatePolicy, SyncSettings

    settings = SyncSettings.from_env()
    conf, _state = _airflow_run(dag_id, run_id)
    policy = os.environ.get("BILLING_SYNC_EFFECTIVE_DATE_POLICY")
    if isinstance(conf, dict) and conf.get("effective_date_policy"):
        policy = str(conf["effective_date_policy"])
    return replace(settings, effective_date_policy=EffectiveDatePolicy(policy)) if policy else settings


def _export_rows(request: Request, dag_id: str, run_id: str) -> tuple[list[dict], dict, Any]:
    from include.review import GridQuery, grid_export, run_state

    _check_dag(dag_id)
    warehouse = _warehouse()
    state = _call(run_state, warehouse, run_id, dag_id)
    params = {key: value for key, value in request.query_params.items() if key not in ("page", "page_size")}
    query = _call(GridQuery.parse, params)
    rows, totals = _call(grid_export, warehouse, run_id, query)
    return rows, totals, state


def _download_headers(filename: str) -> dict[str, str]:
    safe = "".join(char for char in filename if char.isalnum() or char in "-._")
    return {
        "Content-Disposition": f'attachment; filename="{safe}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


def _data_docs_root() -> Path:
    from include.quality import DATA_DOCS_DIR_ENV, DEFAULT_DATA_DOCS_DIR

    return Path(os.environ.get(DATA_DOCS_DIR_ENV) or DEFAULT_DATA_DOCS_DIR).resolve()


def _safe_file(month: str, run_dir: str, file_path: str) -> Path:
    """A file of a run's Data Docs directory; anything outside `$BILLING_DATA_DOCS_DIR` is a 404."""
    root = _data_docs_root()
    parts = [month, run_dir, *file_path.split("/")]
    if any(part in ("", ".", "..") or "\\" in part or "\x00" in part for part in parts):
        raise _ReviewHTTPError(404, "no such file")
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in _SERVED_SUFFIXES:
        raise _ReviewHTTPError(404, "no such file")
    return path


def _run_files(month: str, run_id: str) -> dict[str, str | None]:
    """Links to the run's Data Docs and report, when they were written."""
    from include.quality import data_docs_dir

    directory = data_docs_dir(month, run_id)
    base = f"/billing/files/{quote(directory.parent.name)}/{quote(directory.name)}"
    found = {}
    for key, name in (("data_docs", "index.html"), ("report_html", "report.html"), ("report_xlsx", "report.xlsx")):
        found[key] = f"{base}/{name}" if (directory / name).is_file() else None
    return found


def _audit_file(month: str) -> str | None:
    """The month's leakage audit report (include/audit.py), when one was written."""
    from include.audit import AUDIT_DIR_NAME, HTML_NAME

    found = _data_docs_root() / month / AUDIT_DIR_NAME / HTML_NAME
    return f"/billing/files/{quote(month)}/{AUDIT_DIR_NAME}/{HTML_NAME}" if found.is_file() else None


def _review_href(dag_id: str, run_id: str) -> str:
    from include.review import review_path

    return review_path(dag_id, run_id)


def _prefix(request: Request) -> str:
    """Where the app is mounted (/billing), from the request's root path."""
    return request.scope.get("root_path", "").rstrip("/") or "/billing"


_TEMPLATES: Any = None


def _page(request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
    global _TEMPLATES
    if _TEMPLATES is None:
        from jinja2 import Environment, FileSystemLoader

        from include.review_words import plain_number

        _TEMPLATES = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=True,
        )
        _TEMPLATES.filters["plain_number"] = plain_number  # units as people write them: 668, not 668.0
    html = _TEMPLATES.get_template(template).render(prefix=_prefix(request), **context)
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )
