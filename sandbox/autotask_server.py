"""A local stand-in for the Autotask PSA REST API (the parts the billing sync touches).

Run: `python -m sandbox.autotask_server --port 8090 [--state-file var/autotask.json ...]`.
Behaves like Autotask for zones, header auth, envelopes, the query grammar and paging, billing rules,
the hourly request budget and the per-endpoint thread limit; `/_admin/*` adds fault injection, stats
and state dumps for tests (no auth, not counted), and Autotask's "Approve and Post" of a month with switches that
plant billing leaks (`POST /_admin/approve-and-post`, `POST /_admin/unpost`; see `sandbox/autotask_posting.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sandbox.autotask_errors import ApiError, method_not_allowed, not_found
from sandbox.autotask_posting import PostingSwitches, approve_and_post, unpost
from sandbox.autotask_query import parse_query, project
from sandbox.autotask_schema import (
    CHILD_ROUTES,
    ENTITIES,
    EntitySpec,
    entity_fields,
    entity_information,
    entity_named,
    user_defined_fields,
)
from sandbox.autotask_seed import seed_state
from sandbox.autotask_store import STATE_FORMAT, Store

log = logging.getLogger("sandbox.autotask_server")

API_VERSION = "v1.0"
THRESHOLD_TIMEFRAME_MINUTES = 60
SAVE_INTERVAL_S = 0.2


@dataclass
class Faults:
    """Runtime-adjustable behaviour (CLI defaults, `POST /_admin/faults`)."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    lost_response_rate: float = 0.0
    thread_limit: int = 3
    thread_limit_status: int = 429
    hourly_limit: int = 10000
    # A stand-in Autotask that takes a second adjustment of one contract service on one date (the real one refuses
    # it): a write sent twice then lands twice, as a duplicate a customer is billed for, instead of a refusal.
    accept_duplicate_adjustments: bool = False
    # Only writes of this kind lose their answer ("POST Contracts", "PATCH Contracts", or an endpoint for every verb:
    # "ContractServiceAdjustments"); empty: every request may (`lost_response_rate`).
    lost_response_only: str = ""


@dataclass
class Settings:
    port: int = 8090
    host: str = "127.0.0.1"
    state_file: str | None = None
    seed_customers: int = 50
    seed_subscriptions_per_customer: int = 3
    seed: int = 42
    seed_month: str = "2026-10"
    username: str = "api-user@demo.example"
    secret: str = "demo-secret"
    integration_code: str = "DEMOINTEGRATION"
    faults: Faults | None = None


@dataclass
class KillSwitch:
    """A crash test's trigger (`POST /_admin/kill-switch`): SIGKILL the client process `pid` when the `after_writes`-th
    write it arms for reaches the sandbox, at a `moment` that matters to a ledger: "before" Autotask processes it
    (the request left, nothing applied), or "after" (applied, the answer never leaves). `entity` counts only writes to
    that endpoint; `chained` counts only adjustments of a contract service that already took one since arming (the
    middle of its date-ordered chain). Fires once."""

    pid: int
    after_writes: int = 1
    moment: str = "before"
    entity: str | None = None
    chained: bool = False
    seen: int = 0
    adjusted: set = None  # type: ignore[assignment]
    fired_at: int | None = None

    def counts(self, endpoint: str, body: Any) -> bool:
        """Whether this write counts towards the trigger (and remember an adjusted contract service)."""
        if self.entity and endpoint.lower() != self.entity.lower():
            return False
        if not self.chained:
            return True
        if endpoint.lower() != "contractserviceadjustments" or not isinstance(body, dict):
            return False
        slot = (body.get("contractServiceID"), body.get("contractID"), body.get("serviceID"))
        seen_before = slot in self.adjusted
        self.adjusted.add(slot)
        return seen_before


class Stats:
    def __init__(self) -> None:
        self.requests: dict[str, Counter] = defaultdict(Counter)
        self.max_concurrency: Counter = Counter()
        self.rejected: Counter = Counter()
        self.faults: Counter = Counter()
        self.write_attempts: Counter = Counter()  # writes that reached processing, by entity (refused ones too)
        self.refused_writes: Counter = Counter()  # of those, the ones Autotask refused, by entity
        self.writes_at_reset = 0

    def as_dict(self, writes: int) -> dict:
        return {
            "requests": {entity: dict(verbs) for entity, verbs in self.requests.items()},
            "total": sum(sum(verbs.values()) for verbs in self.requests.values()),
            "writes": writes - self.writes_at_reset,
            "max_concurrency": dict(self.max_concurrency),
            "rejected": dict(self.rejected),
            "faults": dict(self.faults),
            "write_attempts": dict(self.write_attempts),
            "refused_writes": dict(self.refused_writes),
        }


class Sandbox:
    """The server's state and request pipeline; one per process, used from the event loop only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.faults = settings.faults or Faults()
        self.state_path = Path(settings.state_file) if settings.state_file else None
        self.stats = Stats()
        self.window: deque[float] = deque()  # times of counted requests in the rolling hour
        self.in_flight: Counter = Counter()
        self.random = random.Random(settings.seed)
        self.kill_switch: KillSwitch | None = None
        self._facts: list[dict] | None = None
        self.store = Store()
        self._last_save = 0.0
        self._save_cost = 0.0
        saved = None
        if self.state_path is not None and self.state_path.exists():
            saved = json.loads(self.state_path.read_text(encoding="utf-8"))
        if saved is not None and saved.get("format") == STATE_FORMAT:
            self.store.load(saved)
        else:
            self.reset()  # no state yet, or one an older sandbox saved: start from the seed

    @property
    def facts(self) -> list[dict]:
        """What the seed decided per BSS key (computed again after a restart from a state file)."""
        if self._facts is None:
            self._facts = self._seed()["SeedFacts"]
        return self._facts

    def _seed(self) -> dict[str, list[dict]]:
        from sandbox.dataset import build_universe  # the teammate's generator; imported when seeding

        universe = build_universe(
            self.settings.seed_customers, self.settings.seed_subscriptions_per_customer, self.settings.seed
        )
        return seed_state(universe, self.settings.seed_month)

    def reset(self) -> None:
        state = self._seed()
        self._facts = state.pop("SeedFacts", [])
        self.store.load(state)
        self.window.clear()
        self.store.dirty = True
        self.save_now()

    # --- persistence -------------------------------------------------------------------------------------

    def save_now(self) -> None:
        if self.state_path is None:
            self.store.dirty = False
            return
        started = time.monotonic()
        self.store.save(self.state_path)
        self._last_save = time.monotonic()
        self._save_cost = self._last_save - started

    async def save_loop(self) -> None:
        """Batch saves: at most every 0.2 s, and never more than a fifth of the time spent saving."""
        while True:
            await asyncio.sleep(SAVE_INTERVAL_S)
            due = self._last_save + max(SAVE_INTERVAL_S, 4 * self._save_cost)
            if self.store.dirty and time.monotonic() >= due:
                try:
                    self.save_now()
                except OSError:
                    log.exception("could not save the state file")

    # --- pipeline ----------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> JSONResponse:
        verb = request.method.upper()
        segments = [segment for segment in request.url.path.split("/") if segment]
        try:
            route = _Route.parse(segments, request.url.path)
        except ApiError as error:
            return _error_response(error)
        self.stats.requests[route.endpoint][verb] += 1
        if route.kind in ("zone", "version"):
            try:
                return JSONResponse(self._open_endpoint(route, verb, request))
            except ApiError as error:
                return _error_response(error)
        try:
            self._authenticate(request)
            self._spend_budget()
        except ApiError as error:
            return _error_response(error)
        slot = (request.headers.get("ApiIntegrationCode", ""), route.endpoint)
        if self.in_flight[slot] >= self.faults.thread_limit:
            self.stats.rejected["thread_limit"] += 1
            return _error_response(
                ApiError(
                    f"Itgenatr005: The request could not be processed because the thread threshold of "
                    f"{self.faults.thread_limit} threads has been exceeded for this integration and endpoint "
                    f"({route.endpoint}).",
                    self.faults.thread_limit_status,
                )
            )
        self.in_flight[slot] += 1
        self.stats.max_concurrency[route.endpoint] = max(
            self.stats.max_concurrency[route.endpoint], self.in_flight[slot]
        )
        try:
            if self.faults.latency_ms > 0:
                await asyncio.sleep(self.faults.latency_ms / 1000)
            # Faults hit entity endpoints only: a client's budget probe stays a clean measurement.
            faulty = route.kind != "threshold"
            if faulty and self.faults.error_rate > 0 and self.random.random() < self.faults.error_rate:
                self.stats.faults["errors"] += 1
                return _error_response(ApiError("Service Unavailable (injected fault); nothing was applied.", 503))
            body = await _json_body(request) if verb in ("POST", "PATCH", "PUT") else None
            writing = verb in ("POST", "PATCH", "PUT", "DELETE") and route.kind in ("root", "record", "child")
            kill_after = False
            if writing:
                self.stats.write_attempts[route.endpoint] += 1
                self.store.accept_duplicate_adjustments = self.faults.accept_duplicate_adjustments
                kill_at = self._kill_switch_fires(route.endpoint, body)
                if kill_at == "before":  # the client dies with its request on the wire: nothing is applied
                    self.stats.write_attempts[route.endpoint] -= 1  # it never reached processing
                    self._kill_client()
                    return _error_response(ApiError("The client was killed before the write was processed.", 503))
                kill_after = kill_at == "after"
            try:
                payload = self._dispatch(route, verb, request, body)
            except ApiError as error:
                if writing:
                    self.stats.refused_writes[route.endpoint] += 1
                return _error_response(error)
            finally:
                if kill_after:
                    self._kill_client()
            if self._loses_answer(faulty, verb, route) and self.random.random() < self.faults.lost_response_rate:
                # The work is done (a write is applied and will be saved); only the answer goes missing.
                self.stats.faults["lost_responses"] += 1
                return _error_response(ApiError("Gateway Timeout: the upstream response was lost.", 504))
            return JSONResponse(payload)
        finally:
            self.in_flight[slot] -= 1

    def _loses_answer(self, faulty: bool, verb: str, route: _Route) -> bool:
        only = self.faults.lost_response_only.strip()
        if not faulty or self.faults.lost_response_rate <= 0:
            return False
        if not only:
            return True
        wanted_verb, _, endpoint = only.rpartition(" ")
        writing = verb in ("POST", "PATCH", "PUT", "DELETE") and route.kind in ("root", "record", "child")
        return writing and endpoint == route.endpoint and (not wanted_verb or wanted_verb == verb)

    def _kill_switch_fires(self, endpoint: str, body: Any) -> str | None:
        """Counts a write for an armed kill switch; the moment to kill the client at when this write fires it."""
        switch = self.kill_switch
        if switch is None or switch.fired_at is not None or not switch.counts(endpoint, body):
            return None
        switch.seen += 1
        if switch.seen < switch.after_writes:
            return None
        switch.fired_at = sum(self.stats.write_attempts.values())
        return switch.moment

    def _kill_client(self) -> None:
        switch = self.kill_switch
        if switch is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(switch.pid, signal.SIGKILL)
        self.stats.faults["killed"] += 1

    def _open_endpoint(self, route: _Route, verb: str, request: Request) -> dict:
        if verb != "GET":
            raise method_not_allowed(verb)
        if route.kind == "version":
            return {"apiVersions": ["1.0"]}
        user = request.query_params.get("user", "").strip()
        if not user or user.lower() != self.settings.username.lower():
            raise ApiError("Zone information could not be determined")
        base = _base_url(request)
        return {"zoneName": "Sandbox (localhost)", "url": f"{base}/ATServicesRest/", "webUrl": f"{base}/", "ci": 0}

    def _authenticate(self, request: Request) -> None:
        headers = request.headers
        valid = (
            headers.get("UserName", "").lower() == self.settings.username.lower()
            and headers.get("Secret", "") == self.settings.secret
            and headers.get("ApiIntegrationCode", "") == self.settings.integration_code
        )
        if not valid:
            self.stats.rejected["auth"] += 1
            raise ApiError(
                "Authorization has been denied for this request: invalid UserName, Secret or ApiIntegrationCode.", 401
            )
        impersonated = headers.get("ImpersonationResourceId")
        if impersonated:
            resource = self.store.tables["Resources"].get(int(impersonated)) if impersonated.isdigit() else None
            if resource is None or not resource.get("isActive"):
                raise ApiError("The impersonated Resource does not exist or is inactive.", 500)

    def _spend_budget(self) -> None:
        now = time.monotonic()
        while self.window and self.window[0] <= now - THRESHOLD_TIMEFRAME_MINUTES * 60:
            self.window.popleft()
        if len(self.window) >= self.faults.hourly_limit:
            self.stats.rejected["hourly_limit"] += 1
            retry = max(1, math.ceil(self.window[0] + THRESHOLD_TIMEFRAME_MINUTES * 60 - now)) if self.window else 1
            raise ApiError(
                f"The request threshold of {self.faults.hourly_limit} requests per "
                f"{THRESHOLD_TIMEFRAME_MINUTES} minutes has been exceeded; requests are rejected until the "
                "rolling hour frees capacity.",
                429,
                headers={"Retry-After": str(retry)},
            )
        self.window.append(now)

    def _dispatch(self, route: _Route, verb: str, request: Request, body: Any) -> dict:
        store = self.store
        if route.kind == "threshold":
            if verb != "GET":
                raise method_not_allowed(verb)
            return {
                "externalRequestThreshold": self.faults.hourly_limit,
                "requestThresholdTimeframe": THRESHOLD_TIMEFRAME_MINUTES,
                "currentTimeframeRequestCount": len(self.window),
            }
        spec = route.spec
        if route.kind == "info":
            if verb != "GET":
                raise method_not_allowed(verb)
            if route.info == "fields":
                return entity_fields(spec)
            if route.info == "userdefinedfields":
                return user_defined_fields(spec)
            return entity_information(spec)
        if route.kind in ("query", "count", "next"):
            if not spec.can_query or verb not in ("GET", "POST") or (route.kind == "next" and verb != "POST"):
                raise method_not_allowed(verb)
            search = self._search_body(request, body, verb)
            query = parse_query(spec, search)
            if route.kind == "count":
                return {"queryCount": store.count(spec.name, query)}
            after, before = _paging(request) if route.kind == "next" else (None, None)
            page = store.page(spec.name, query, after=after, before=before)
            return self._page_payload(request, spec, search, query, page)
        if route.kind == "record":
            if verb == "GET" and spec.can_query:
                item = store.get(spec.name, route.record_id)
                return {"item": project(_public(item), None) if item is not None else None}
            if verb == "DELETE" and spec.can_delete:
                return {"itemId": store.delete(spec.name, route.record_id)}
            raise method_not_allowed(verb)
        if route.kind == "root":
            return {"itemId": self._write_root(spec, verb, body)}
        if route.kind == "child":
            return self._child(route, verb, body)
        raise not_found(request.url.path)

    def _write_root(self, spec: EntitySpec, verb: str, body: Any) -> int:
        if spec.name == "ContractServiceAdjustments" and verb == "POST":
            return self.store.create_adjustment(body)
        if (
            spec.child_write_only
            or (verb == "POST" and not spec.can_create)
            or (verb in ("PATCH", "PUT") and not spec.can_update)
            or verb not in ("POST", "PATCH", "PUT")
        ):
            raise method_not_allowed(verb)
        if verb == "POST":
            return self.store.create(spec.name, body)
        return self.store.update(spec.name, body, replace=verb == "PUT")

    def _child(self, route: _Route, verb: str, body: Any) -> dict:
        store = self.store
        parent = store.tables["Contracts"].get(route.record_id)
        child = route.spec.name
        if verb == "GET":
            if not route.spec.can_query:
                raise method_not_allowed(verb)
            if parent is None:
                return {"items": [], "pageDetails": _page_details(0, 500, None, None)}
            items = [_public(item) for item in store.children(child, route.record_id)][:500]
            return {"items": items, "pageDetails": _page_details(len(items), 500, None, None)}
        if parent is None and verb in ("POST", "PATCH", "PUT"):
            raise ApiError(f"Unable to find the Contracts record with id {route.record_id}.")
        if child == "ContractServices" and verb == "POST":
            return {"itemId": store.create_contract_service(body, route.record_id)}
        if child == "ContractServices" and verb in ("PATCH", "PUT"):
            return {"itemId": store.update_contract_service(body, route.record_id)}
        if child == "ContractServiceAdjustments" and verb == "POST":
            return {"itemId": store.create_adjustment(body, route.record_id)}
        if child == "ContractCharges" and verb == "POST":
            data = body if isinstance(body, dict) else {}
            return {"itemId": store.create(child, {**data, "contractID": store._route_contract(data, route.record_id)})}
        raise method_not_allowed(verb)

    @staticmethod
    def _search_body(request: Request, body: Any, verb: str) -> dict:
        if verb == "POST" and isinstance(body, dict) and body:
            return body
        raw = request.query_params.get("search")
        if not raw:
            raise ApiError("A query must contain at least one filter.")
        try:
            search = json.loads(raw)
        except json.JSONDecodeError:
            raise ApiError("The search parameter is not valid JSON.") from None
        return search

    def _page_payload(self, request: Request, spec: EntitySpec, search: dict, query: Any, page: Any) -> dict:
        include = query.include_fields
        if include is None:
            items = [_public(record) for record in page.records]
        else:  # included names are schema fields (never "_..."), so no need to drop private keys first
            items = [{name: record.get(name) for name in include} for record in page.records]
        size = query.max_records
        next_url = prev_url = None
        if items:
            base = f"{_base_url(request)}/ATServicesRest/V1.0/{spec.name}/query/next"
            encoded_search = quote(json.dumps(search, separators=(",", ":")), safe="")
            first_id, last_id = page.records[0]["id"], page.records[-1]["id"]
            if page.has_more:
                paging = {"pageSize": size, "previousIds": [first_id], "nextIds": [last_id]}
                next_url = f"{base}?paging={quote(json.dumps(paging), safe='')}&search={encoded_search}"
            if page.has_previous:
                paging = {"pageSize": size, "previousIds": [first_id], "nextIds": []}
                prev_url = f"{base}?paging={quote(json.dumps(paging), safe='')}&search={encoded_search}"
        return {"items": items, "pageDetails": _page_details(len(items), size, prev_url, next_url)}


@dataclass
class _Route:
    kind: str  # zone version threshold info query count next record root child
    endpoint: str
    spec: EntitySpec | None = None
    record_id: int | None = None
    info: str | None = None

    @classmethod
    def parse(cls, segments: list[str], path: str) -> _Route:
        lowered = [segment.lower() for segment in segments]
        if not lowered or lowered[0] != "atservicesrest":
            raise not_found(path)
        rest, lowered = segments[1:], lowered[1:]
        if lowered == ["versioninformation"]:
            return cls("version", "versionInformation")
        if not lowered or lowered[0] != API_VERSION:
            raise not_found(path)
        rest, lowered = rest[1:], lowered[1:]
        if lowered == ["zoneinformation"]:
            return cls("zone", "zoneInformation")
        if lowered == ["versioninformation"]:
            return cls("version", "versionInformation")
        if lowered == ["thresholdinformation"]:
            return cls("threshold", "ThresholdInformation")
        if not rest:
            raise not_found(path)
        spec = entity_named(rest[0])
        if spec is None:
            raise not_found(path)
        tail = lowered[1:]
        if not tail:
            return cls("root", spec.name, spec)
        if tail == ["query"]:
            return cls("query", spec.name, spec)
        if tail == ["query", "count"]:
            return cls("count", spec.name, spec)
        if tail == ["query", "next"]:
            return cls("next", spec.name, spec)
        if tail[0] == "entityinformation" and len(tail) <= 2:
            info = tail[1] if len(tail) == 2 else None
            if info not in (None, "fields", "userdefinedfields"):
                raise not_found(path)
            return cls("info", spec.name, spec, info=info)
        if not tail[0].isdigit():
            raise not_found(path)
        record_id = int(tail[0])
        if len(tail) == 1:
            return cls("record", spec.name, spec, record_id)
        child_name = CHILD_ROUTES.get((spec.name, tail[1]))
        if child_name is None or len(tail) != 2:
            raise not_found(path)
        return cls("child", child_name, ENTITIES[child_name], record_id)


def _paging(request: Request) -> tuple[int | None, int | None]:
    try:
        paging = json.loads(request.query_params.get("paging") or "{}")
        next_ids = [int(value) for value in paging.get("nextIds") or []]
        previous_ids = [int(value) for value in paging.get("previousIds") or []]
    except (ValueError, TypeError, AttributeError):
        raise ApiError("The paging parameter is not valid.") from None
    if next_ids:
        return max(next_ids), None
    if previous_ids:
        return None, min(previous_ids)
    return None, None


def _page_details(count: int, request_count: int, prev_url: str | None, next_url: str | None) -> dict:
    return {"count": count, "requestCount": request_count, "prevPageUrl": prev_url, "nextPageUrl": next_url}


def _public(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("_")}


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError("The request body is not valid JSON.") from None


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# --- app ---------------------------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    sandbox = Sandbox(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        saver = asyncio.create_task(sandbox.save_loop())
        try:
            yield
        finally:
            saver.cancel()
            if sandbox.store.dirty:
                sandbox.save_now()  # an acknowledged write survives a clean shutdown

    app = FastAPI(title="Autotask PSA sandbox", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = sandbox

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/_admin/faults")
    async def get_faults() -> dict:
        return asdict(sandbox.faults)

    @app.post("/_admin/faults")
    async def set_faults(request: Request) -> JSONResponse:
        changes = await _json_body(request)
        known = {item.name: item.type for item in fields(Faults)}
        for name, value in (changes or {}).items():
            if name not in known:
                return JSONResponse({"errors": [f"unknown fault {name!r}"]}, status_code=400)
            setattr(sandbox.faults, name, type(getattr(sandbox.faults, name))(value))
        return JSONResponse(asdict(sandbox.faults))

    @app.get("/_admin/stats")
    async def get_stats() -> dict:
        return sandbox.stats.as_dict(sandbox.store.writes)

    @app.post("/_admin/stats/reset")
    async def reset_stats() -> dict:
        sandbox.stats = Stats()
        sandbox.stats.writes_at_reset = sandbox.store.writes
        return sandbox.stats.as_dict(sandbox.store.writes)

    @app.post("/_admin/kill-switch")
    async def arm_kill_switch(request: Request) -> JSONResponse:
        """Arm (or, with {}, disarm) the crash tests' SIGKILL of a client process (`KillSwitch`)."""
        body = await _json_body(request) or {}
        if not body:
            sandbox.kill_switch = None
            return JSONResponse({"armed": False})
        if body.get("moment", "before") not in ("before", "after"):
            return JSONResponse({"errors": ["moment is before or after"]}, status_code=400)
        sandbox.kill_switch = KillSwitch(
            pid=int(body["pid"]),
            after_writes=max(1, int(body.get("after_writes", 1))),
            moment=body.get("moment", "before"),
            entity=body.get("entity"),
            chained=bool(body.get("chained", False)),
            adjusted=set(),
        )
        return JSONResponse({"armed": True})

    @app.get("/_admin/kill-switch")
    async def kill_switch_state() -> dict:
        switch = sandbox.kill_switch
        return {"armed": switch is not None, "fired_at": None if switch is None else switch.fired_at}

    @app.post("/_admin/reset")
    async def reset() -> dict:
        sandbox.reset()
        sandbox.kill_switch = None
        return {"status": "reset"}

    @app.post("/_admin/save")
    async def save() -> dict:
        sandbox.save_now()
        return {"status": "saved"}

    @app.get("/_admin/seed-facts")
    async def seed_facts() -> dict:
        return {"items": sandbox.facts}

    @app.post("/_admin/approve-and-post")
    async def post_month(request: Request) -> JSONResponse:
        """Autotask's Approve and Post for a month (`sandbox/autotask_posting.py`), with the leak switches."""
        payload = await _json_body(request)
        try:
            if not isinstance(payload, dict):
                raise ApiError("The body must be a JSON object.", 400)
            unknown = set(payload) - {"month", "postedDate"} - {f.name for f in fields(PostingSwitches)}
            if unknown:
                raise ApiError(f"unknown posting setting(s): {', '.join(sorted(unknown))}", 400)
            result = approve_and_post(
                sandbox.store, payload.get("month"), PostingSwitches.from_payload(payload), payload.get("postedDate")
            )
        except ApiError as error:
            return _error_response(error)
        return JSONResponse(result)

    @app.post("/_admin/unpost")
    async def unpost_month(request: Request) -> JSONResponse:
        payload = await _json_body(request)
        try:
            return JSONResponse(unpost(sandbox.store, (payload or {}).get("month")))
        except ApiError as error:
            return _error_response(error)

    @app.get("/_admin/state/{entity}")
    async def state(entity: str) -> JSONResponse:
        spec = entity_named(entity)
        if spec is None:
            return JSONResponse({"errors": [f"unknown entity {entity!r}"]}, status_code=404)
        return JSONResponse({"items": sandbox.store.all_records(spec.name)})

    @app.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    async def api(request: Request) -> JSONResponse:
        return await sandbox.handle(request)

    return app


def _env(name: str, default: Any) -> Any:
    value = os.environ.get(f"AUTOTASK_SANDBOX_{name}")
    return type(default)(value) if value is not None else default


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=_env("PORT", 8090))
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    parser.add_argument("--state-file", default=os.environ.get("AUTOTASK_SANDBOX_STATE_FILE"))
    parser.add_argument("--seed-customers", type=int, default=_env("SEED_CUSTOMERS", 50))
    parser.add_argument(
        "--seed-subscriptions-per-customer", type=int, default=_env("SEED_SUBSCRIPTIONS_PER_CUSTOMER", 3)
    )
    parser.add_argument("--seed", type=int, default=_env("SEED", 42))
    parser.add_argument("--seed-month", default=_env("SEED_MONTH", "2026-10"))
    parser.add_argument("--latency-ms", type=float, default=_env("LATENCY_MS", 0.0))
    parser.add_argument("--error-rate", type=float, default=_env("ERROR_RATE", 0.0))
    parser.add_argument("--lost-response-rate", type=float, default=_env("LOST_RESPONSE_RATE", 0.0))
    parser.add_argument("--thread-limit", type=int, default=_env("THREAD_LIMIT", 3))
    parser.add_argument("--thread-limit-status", type=int, default=_env("THREAD_LIMIT_STATUS", 429))
    parser.add_argument("--hourly-limit", type=int, default=_env("HOURLY_LIMIT", 10000))
    parser.add_argument("--username", default=_env("USERNAME", "api-user@demo.example"))
    parser.add_argument("--secret", default=_env("SECRET", "demo-secret"))
    parser.add_argument("--integration-code", default=_env("INTEGRATION_CODE", "DEMOINTEGRATION"))
    args = parser.parse_args(argv)
    faults = Faults(
        args.latency_ms,
        args.error_rate,
        args.lost_response_rate,
        args.thread_limit,
        args.thread_limit_status,
        args.hourly_limit,
    )
    return Settings(
        port=args.port,
        host=args.host,
        state_file=args.state_file,
        seed_customers=args.seed_customers,
        seed_subscriptions_per_customer=args.seed_subscriptions_per_customer,
        seed=args.seed,
        seed_month=args.seed_month,
        username=args.username,
        secret=args.secret,
        integration_code=args.integration_code,
        faults=faults,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(settings)
    log.info(
        "Autotask sandbox on http://%s:%s (user %s, state file %s)",
        settings.host,
        settings.port,
        settings.username,
        settings.state_file or "none",
    )  # never the secret
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        h11_max_incomplete_event_size=4 * 1024 * 1024,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
