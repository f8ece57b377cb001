"""A local stand-in for the interworks.cloud BSS API (the contract in docs/bss-api.md).

Run: `python -m sandbox.bss_server --port 8081 [--customers 50 --seed 42 ...]`; every flag can also
come from an environment variable `BSS_SANDBOX_<FLAG>` (e.g. `BSS_SANDBOX_ERROR_RATE=0.1`).

Besides the API it offers, without authentication, `/healthz` and an `/_admin` surface for tests:
- `GET|POST /_admin/faults` `{"latency_ms","error_rate","rate_limit_every","retry_after_s","token_ttl_s",
  "expire_tokens_now"}`: latency applies to `/oauth/token` and `/api/*` (an answer that waited says so in
  `X-Sandbox-Latency-Ms`), the 429s and 503s to `/api/*` only; setting `error_rate` or `rate_limit_every`
  restarts its sequence, so patterns repeat.
- `GET /_admin/stats` (`{"total", "by_path": {path: {status: count}}}`), `POST /_admin/stats/reset`.
- `POST /_admin/overrides` `{"month","replace","add","remove","raw_body"}` (cumulative per month):
  injected lines belong to their month whatever their dates say, and a field they lack or carry with
  the wrong type does not hide them from a filter; `raw_body` answers that month's queries with the
  literal text (status 200).
- `POST /_admin/clock` `{"advance_s"}`: moves the sandbox's clock forward (token lifetimes run on it), so a test
  expires a token without waiting; answers `{"advanced_s"}`, the total so far. The clock never goes back.
- `POST /_admin/reset`: start-up faults, no overrides, fresh statistics (issued tokens stay valid, the clock
  stays where it is).
- The month's close (`sandbox/bss_invoices.py`): `GET /_admin/months/{month}`, `POST /_admin/months/{month}/open`,
  `POST /_admin/months/{month}/close` `{"issuedAt"}`, `POST /_admin/months/{month}/withhold` `{"accounts",
  "withheld"}`, `POST /_admin/invoices/{id}/reissue` `{"status": "Issued"|"Draft"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import math
import os
import random
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandbox.bss_invoices import INVOICE_DATE_FIELDS, INVOICE_FIELDS, InvoiceAdminError, Invoicing
from sandbox.dataset import Account, Universe, build_universe
from sandbox.odata_filter import (
    ACCOUNT_FIELDS,
    CHARGE_FIELDS,
    MISSING,
    Clause,
    FilterError,
    OrderBy,
    date_bounds,
    parse_filter,
    parse_orderby,
    resolve,
)

SUPPORTED_API_VERSIONS = ("1", "2", "2.1", "2.2", "3.0")
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
LATENCY_HEADER = "X-Sandbox-Latency-Ms"
CHARGE_DATE_FIELDS = ("chargeStartDate", "chargeEndDate", "effectiveDate")
_QUERY_CACHE_SIZE = 64


@dataclass
class Faults:
    """Misbehaviour the sandbox injects into `/api/*` answers (latency also slows `/oauth/token`)."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_every: int = 0
    retry_after_s: int = 1
    token_ttl_s: float = 3600.0

    def validate(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.rate_limit_every < 0:
            raise ValueError("rate_limit_every must be >= 0 (0 disables it)")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        if self.token_ttl_s <= 0:
            raise ValueError("token_ttl_s must be > 0")


@dataclass
class SandboxConfig:
    customers: int = 50
    subscriptions_per_customer: int = 3
    seed: int = 42
    first_month: str = "2026-01"
    last_month: str = "2027-12"
    client_id: str = "demo-client"
    client_secret: str = field(default="demo-client-secret", repr=False)
    username: str = "demo-user"
    password: str = field(default="demo-password", repr=False)
    faults: Faults = field(default_factory=Faults)
    # account id -> the name it carries instead of the generated one (probe names for escaping tests)
    account_names: dict[str, str] = field(default_factory=dict)
    # months whose invoices are still Draft at start (every other month is closed: its invoices Issued)
    open_months: tuple[str, ...] = ()


@dataclass
class MonthOverride:
    """Bad data injected into one month: replaced, added and removed lines, or a non-JSON body."""

    replace: dict[str, Any] = field(default_factory=dict)
    add: list[Any] = field(default_factory=list)
    remove: set[str] = field(default_factory=set)
    raw_body: str | None = None


@dataclass(frozen=True)
class _Entry:
    """One served record: the key it sorts by, its JSON value and pre-serialised body."""

    sort_id: str
    value: Any
    body: bytes
    injected: bool = False


@dataclass(frozen=True)
class _Selection:
    bodies: list[bytes]
    raw_body: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class BssSandbox:
    """The sandbox's state: data, tokens, faults, statistics and overrides."""

    def __init__(self, config: SandboxConfig) -> None:
        config.faults.validate()
        self.config = config
        self.universe: Universe = build_universe(
            config.customers,
            config.subscriptions_per_customer,
            config.seed,
            (config.first_month, config.last_month),
        )
        if config.account_names:
            self.universe = _renamed(self.universe, config.account_names)
        self._months = _month_starts(config.first_month, config.last_month)
        self._tokens: dict[str, float] = {}  # token -> the sandbox clock's time at which it expires
        self._clock_advanced_s = 0.0
        self._base_months: dict[str, list[_Entry]] = {}
        self._account_entries = [_entry(account.id, account_json(account)) for account in self.universe.accounts]
        self._accounts_by_id = {entry.sort_id: entry for entry in self._account_entries}
        self.invoicing = Invoicing(self._served_lines, config.open_months)
        self.reset()

    # --- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the start-up state (tokens already issued stay valid)."""
        self.faults = Faults(**asdict(self.config.faults))
        self.overrides: dict[str, MonthOverride] = {}
        self._override_version = 0
        self._month_entries: dict[tuple[str, int], list[_Entry]] = {}
        self._query_cache: OrderedDict[tuple, _Selection] = OrderedDict()
        self._error_rng = random.Random(self.config.seed)
        self._api_requests = 0
        self.invoicing.reset()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats: Counter[tuple[str, int]] = Counter()

    def update_faults(self, changes: dict[str, Any]) -> Faults:
        known = {f.name: f.type for f in fields(Faults)}
        unknown = set(changes) - set(known) - {"expire_tokens_now"}
        if unknown:
            raise ApiError(400, f"Unknown fault setting(s): {', '.join(sorted(unknown))}")
        updated = Faults(**asdict(self.faults))
        for name, value in changes.items():
            if name == "expire_tokens_now":
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ApiError(400, f"Fault setting '{name}' must be a number")
            whole = name in ("rate_limit_every", "retry_after_s")
            setattr(updated, name, int(value) if whole else float(value))
        try:
            updated.validate()
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        self.faults = updated
        # restart the sequences so a test sees the same pattern every time it sets a knob
        if "error_rate" in changes:
            self._error_rng = random.Random(self.config.seed)
        if "rate_limit_every" in changes:
            self._api_requests = 0
        if changes.get("expire_tokens_now"):
            self._tokens.clear()
        return self.faults

    def add_override(self, payload: dict[str, Any]) -> MonthOverride:
        month = payload.get("month")
        if not isinstance(month, str) or month not in {m.strftime("%Y-%m") for m in self._months}:
            raise ApiError(400, f"'month' must be a YYYY-MM month of the sandbox window, got {month!r}")
        unknown = set(payload) - {"month", "replace", "add", "remove", "raw_body"}
        if unknown:
            raise ApiError(400, f"Unknown override key(s): {', '.join(sorted(unknown))}")
        replace = payload.get("replace", {})
        add = payload.get("add", [])
        remove = payload.get("remove", [])
        raw_body = payload.get("raw_body")
        if not isinstance(replace, dict) or not isinstance(add, list) or not isinstance(remove, list):
            raise ApiError(400, "'replace' must be an object, 'add' and 'remove' lists")
        if raw_body is not None and not isinstance(raw_body, str):
            raise ApiError(400, "'raw_body' must be a string")
        override = self.overrides.setdefault(month, MonthOverride())
        override.replace.update(replace)
        override.add.extend(add)
        override.remove.update(str(charge_id) for charge_id in remove)
        if raw_body is not None:
            override.raw_body = raw_body
        self._override_version += 1
        self._query_cache.clear()
        return override

    # --- the clock -----------------------------------------------------------------------------
    def now(self) -> float:
        """The sandbox's clock (monotonic seconds): the real one, plus what tests moved it forward."""
        return time.monotonic() + self._clock_advanced_s

    def advance_clock(self, seconds: float) -> float:
        """Move the clock `seconds` forward (a token's lifetime passes without waiting for it)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ApiError(400, f"the clock only moves forward: 'advance_s' must be a number >= 0, got {seconds}")
        self._clock_advanced_s += seconds
        return self._clock_advanced_s

    # --- auth ----------------------------------------------------------------------------------
    def issue_token(self) -> tuple[str, int]:
        token = secrets.token_urlsafe(32)
        ttl = self.faults.token_ttl_s
        self._tokens[token] = self.now() + ttl
        return token, max(1, math.ceil(ttl))

    def check_token(self, authorization: str | None) -> None:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(
                401,
                "Authorization has been denied for this request: missing bearer token",
                {"WWW-Authenticate": "Bearer"},
            )
        token = authorization[7:].strip()
        expires_at = self._tokens.get(token)
        if expires_at is None:
            raise ApiError(
                401,
                "Authorization has been denied for this request: unknown token",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if self.now() >= expires_at:
            del self._tokens[token]
            raise ApiError(
                401,
                "Authorization has been denied for this request: token expired",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    def injected_fault(self) -> ApiError | None:
        """The 429 or 5xx this `/api/*` request gets, if any."""
        self._api_requests += 1
        every = self.faults.rate_limit_every
        if every and self._api_requests % every == 0:
            retry = self.faults.retry_after_s
            return ApiError(429, f"Too many requests; retry after {retry} s", {"Retry-After": str(retry)})
        if self.faults.error_rate and self._error_rng.random() < self.faults.error_rate:
            return ApiError(503, "Service temporarily unavailable (injected fault)")
        return None

    # --- data ----------------------------------------------------------------------------------
    def select_charges(self, filter_text: str | None, orderby_text: str | None) -> _Selection:
        clauses = parse_filter(filter_text, CHARGE_FIELDS)
        orders = parse_orderby(orderby_text, CHARGE_FIELDS)
        key = ("charges", tuple(clauses), tuple(orders), self._override_version)
        cached = self._query_cache.get(key)
        if cached is not None:
            self._query_cache.move_to_end(key)
            return cached
        months = self._months_for(clauses)
        raw = next(
            (
                self.overrides[m].raw_body
                for m in months
                if m in self.overrides and self.overrides[m].raw_body is not None
            ),
            None,
        )
        if raw is not None:
            selection = _Selection([], raw)
        else:
            entries = [entry for month in months for entry in self._entries_for_month(month)]
            selection = _Selection(_select(entries, clauses, orders, CHARGE_DATE_FIELDS))
        self._query_cache[key] = selection
        if len(self._query_cache) > _QUERY_CACHE_SIZE:
            self._query_cache.popitem(last=False)
        return selection

    def select_accounts(self, filter_text: str | None, orderby_text: str | None) -> _Selection:
        clauses = parse_filter(filter_text, ACCOUNT_FIELDS)
        orders = parse_orderby(orderby_text, ACCOUNT_FIELDS)
        key = ("accounts", tuple(clauses), tuple(orders))
        cached = self._query_cache.get(key)
        if cached is None:
            cached = _Selection(_select(self._account_entries, clauses, orders, ()))
            self._query_cache[key] = cached
            if len(self._query_cache) > _QUERY_CACHE_SIZE:
                self._query_cache.popitem(last=False)
        return cached

    def select_invoices(self, filter_text: str | None, orderby_text: str | None) -> _Selection:
        """Invoices are never cached: an open month's follow its lines, and the admin closes months."""
        clauses = parse_filter(filter_text, INVOICE_FIELDS)
        orders = parse_orderby(orderby_text, INVOICE_FIELDS)
        lower, upper = date_bounds(clauses, INVOICE_DATE_FIELDS)
        entries = [
            _entry(invoice["id"], invoice)
            for first in self._months
            if (lower is None or lower[:7] <= first.strftime("%Y-%m"))
            and (upper is None or upper[:7] >= first.strftime("%Y-%m"))
            for invoice in self.invoicing.invoices(first.strftime("%Y-%m"))
        ]
        return _Selection(_select(entries, clauses, orders or [OrderBy("id", False)], ()))

    def known_month(self, month: str) -> str:
        if month not in {first.strftime("%Y-%m") for first in self._months}:
            raise ApiError(404, f"{month!r} is not a YYYY-MM month of the sandbox window")
        return month

    def _served_lines(self, month: str) -> list[Any]:
        return [entry.value for entry in self._entries_for_month(month)]

    def account_body(self, account_id: str) -> bytes | None:
        entry = self._accounts_by_id.get(account_id)
        return entry.body if entry else None

    def _months_for(self, clauses: list[Clause]) -> list[str]:
        # a charge's start and effective dates lie in its month; its end date can lie later (a charge
        # period to the end of an annual billing period or a renewed term), so it bounds only from above
        lower, _ = date_bounds(clauses, ("chargeStartDate", "effectiveDate"))
        _, upper = date_bounds(clauses, CHARGE_DATE_FIELDS)
        chosen = []
        for first in self._months:
            month_key = first.strftime("%Y-%m")
            if lower is not None and lower[:7] > month_key:
                continue
            if upper is not None and upper[:7] < month_key:
                continue
            chosen.append(month_key)
        return chosen

    def _entries_for_month(self, month: str) -> list[_Entry]:
        key = (month, self._override_version if month in self.overrides else 0)
        entries = self._month_entries.get(key)
        if entries is not None:
            return entries
        base = self._base_months.get(month)
        if base is None:
            base = [_entry(line["id"], line) for line in self.universe.charges_for_month(month)]
            self._base_months[month] = base
        override = self.overrides.get(month)
        if override is None:
            entries = base
        else:
            entries = []
            for entry in base:
                if entry.sort_id in override.remove:
                    continue
                if entry.sort_id in override.replace:
                    entries.append(_entry(entry.sort_id, override.replace[entry.sort_id], injected=True))
                else:
                    entries.append(entry)
            for number, value in enumerate(override.add, start=1):
                value_id = value.get("id") if isinstance(value, dict) else None
                sort_id = value_id if isinstance(value_id, str) else f"CHG-{month}-~added-{number:06d}"
                entries.append(_entry(sort_id, value, injected=True))
            entries.sort(key=lambda entry: entry.sort_id)
        self._month_entries[key] = entries
        return entries


def account_json(account: Account) -> dict[str, Any]:
    """An account as `GET /api/accounts/{id}` answers it."""
    return {
        "id": account.id,
        "name": account.name,
        "code": account.code,
        "status": account.status,
        "phone": account.phone,
        "email": account.email,
        "vatNumber": account.vat_number,
        "address": {
            "street": account.street,
            "city": account.city,
            "postalCode": account.postal_code,
            "country": account.country,
        },
    }


class UniverseSource:
    """The sandbox's data served in-process, in the BSS API's record shapes: a `BssChargeSource` for
    `include.extract.extract_month` in benchmarks and tests that need no HTTP."""

    def __init__(self, universe: Universe) -> None:
        self.universe = universe

    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]:
        yield self.universe.charges_between(start, end)

    def list_accounts(self) -> Iterator[list[dict]]:
        yield [account_json(account) for account in self.universe.accounts]


def _entry(sort_id: str, value: Any, injected: bool = False) -> _Entry:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return _Entry(sort_id, value, body, injected)


def _select(
    entries: list[_Entry], clauses: list[Clause], orders: list[OrderBy], date_fields: tuple[str, ...]
) -> list[bytes]:
    """Filter and order entries; injected (override) entries belong to their month by declaration,
    so date clauses are skipped for them and a missing or mistyped field does not hide them."""
    injected_clauses = [clause for clause in clauses if clause.field not in date_fields]
    chosen = [
        entry
        for entry in entries
        if (
            all(clause.matches(entry.value, lenient=True) for clause in injected_clauses)
            if entry.injected
            else all(clause.matches(entry.value) for clause in clauses)
        )
    ]
    for order in reversed(orders):
        chosen.sort(key=lambda entry, order=order: _sort_key(entry, order.field), reverse=order.descending)
    return [entry.body for entry in chosen]


def _sort_key(entry: _Entry, field_name: str) -> tuple[int, Any]:
    value = resolve(entry.value, field_name)
    if value is MISSING and field_name == "id":
        value = entry.sort_id
    if isinstance(value, bool) or value is None or value is MISSING:
        return (2, "")
    if isinstance(value, int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, "")


def _month_starts(first_month: str, last_month: str) -> list[date]:
    year, month = (int(part) for part in first_month.split("-"))
    last = date(*(int(part) for part in last_month.split("-")), 1)
    months = []
    current = date(year, month, 1)
    while current <= last:
        months.append(current)
        current = date(current.year + current.month // 12, current.month % 12 + 1, 1)
    return months


# --- HTTP ----------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def _page_params(request: Request) -> tuple[int, int]:
    def integer(name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, f"'{name}' must be an integer, got '{raw}'") from None

    page = integer("page", 1)
    page_size = integer("pageSize", DEFAULT_PAGE_SIZE)
    if page < 1:
        raise ApiError(400, f"'page' must be 1 or more, got {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ApiError(400, f"'pageSize' must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    return page, page_size


def _paged_response(selection: _Selection, page: int, page_size: int) -> Response:
    total = len(selection.bodies)
    pagination = {
        "totalCount": total,
        "pageSize": page_size,
        "currentPage": page,
        "totalPages": math.ceil(total / page_size),
    }
    headers = {"X-Pagination": json.dumps(pagination)}
    if selection.raw_body is not None:
        return Response(selection.raw_body, media_type="application/json", headers=headers)
    start = (page - 1) * page_size
    body = b"[" + b",".join(selection.bodies[start : start + page_size]) + b"]"
    return Response(body, media_type="application/json; charset=utf-8", headers=headers)


def _stats_path(path: str) -> str:
    if path.startswith("/api/accounts/"):
        return "/api/accounts/{id}"
    return path


def create_app(config: SandboxConfig) -> FastAPI:
    """The sandbox as an ASGI app (the CLI serves it with uvicorn)."""
    sandbox = BssSandbox(config)
    app = FastAPI(title="interworks.cloud BSS sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = sandbox

    @app.middleware("http")
    async def count_and_guard(request: Request, call_next):
        path = request.url.path
        delayed_ms = sandbox.faults.latency_ms if path.startswith("/api/") or path == "/oauth/token" else 0
        try:
            if delayed_ms:
                await asyncio.sleep(delayed_ms / 1000)
            if path.startswith("/api/"):
                fault = sandbox.injected_fault()
                if fault is not None:
                    raise fault
                sandbox.check_token(request.headers.get("authorization"))
                version = request.headers.get("x-api-version")
                if version is None:
                    raise ApiError(
                        400, f"Missing X-Api-Version header (supported: {', '.join(SUPPORTED_API_VERSIONS)})"
                    )
                if version.strip() not in SUPPORTED_API_VERSIONS:
                    raise ApiError(
                        400, f"Unsupported X-Api-Version '{version}' (supported: {', '.join(SUPPORTED_API_VERSIONS)})"
                    )
            response = await call_next(request)
        except ApiError as error:
            response = _error(error.status, error.message, error.headers)
        if not path.startswith("/_admin"):
            sandbox.stats[(_stats_path(path), response.status_code)] += 1
        if delayed_ms:
            response.headers[LATENCY_HEADER] = f"{delayed_ms:g}"  # the injected latency this answer waited
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(FilterError)
    async def filter_error(_: Request, error: FilterError) -> JSONResponse:
        return _error(400, str(error))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/oauth/token")
    async def token(request: Request) -> JSONResponse:
        client = _basic_credentials(request.headers.get("authorization"))
        if client is None:
            return _oauth_error(401, "invalid_client", "Client authentication (HTTP Basic) is required")
        client_id, client_secret = client
        if not (
            secrets.compare_digest(client_id, config.client_id)
            and secrets.compare_digest(client_secret, config.client_secret)
        ):
            return _oauth_error(401, "invalid_client", "Unknown client or wrong client secret")
        body = (await request.body()).decode("utf-8", "replace")
        form = {key: values[0] for key, values in parse_qs(body).items()}
        grant_type = form.get("grant_type")
        if grant_type != "password":
            return _oauth_error(400, "unsupported_grant_type", f"grant_type must be 'password', got {grant_type!r}")
        username, password = form.get("username"), form.get("password")
        if not username or not password:
            return _oauth_error(400, "invalid_request", "username and password are required")
        if not (
            secrets.compare_digest(username, config.username) and secrets.compare_digest(password, config.password)
        ):
            return _oauth_error(401, "invalid_grant", "The user name or password is incorrect")
        access_token, expires_in = sandbox.issue_token()
        return JSONResponse(
            {"access_token": access_token, "token_type": "bearer", "expires_in": expires_in},
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/api/charges")
    async def charges(request: Request) -> Response:
        page, page_size = _page_params(request)
        selection = sandbox.select_charges(request.query_params.get("$filter"), request.query_params.get("$orderby"))
        return _paged_response(selection, page, page_size)

    @app.get("/api/accounts")
    async def accounts(request: Request) -> Response:
        page, page_size = _page_params(request)
        selection = sandbox.select_accounts(request.query_params.get("$filter"), request.query_params.get("$orderby"))
        return _paged_response(selection, page, page_size)

    @app.get("/api/invoices")
    async def invoices(request: Request) -> Response:
        page, page_size = _page_params(request)
        selection = sandbox.select_invoices(request.query_params.get("$filter"), request.query_params.get("$orderby"))
        return _paged_response(selection, page, page_size)

    @app.get("/api/accounts/{account_id}")
    async def account(account_id: str) -> Response:
        body = sandbox.account_body(account_id)
        if body is None:
            raise ApiError(404, f"Account '{account_id}' was not found")
        return Response(body, media_type="application/json; charset=utf-8")

    @app.get("/_admin/faults")
    async def get_faults() -> dict[str, Any]:
        return asdict(sandbox.faults)

    @app.post("/_admin/faults")
    async def set_faults(request: Request) -> dict[str, Any]:
        return asdict(sandbox.update_faults(await _json_object(request)))

    @app.get("/_admin/stats")
    async def get_stats() -> dict[str, Any]:
        by_path: dict[str, dict[str, int]] = {}
        for (path, status), count in sorted(sandbox.stats.items()):
            by_path.setdefault(path, {})[str(status)] = count
        return {"total": sum(sandbox.stats.values()), "by_path": by_path}

    @app.post("/_admin/stats/reset")
    async def reset_stats() -> dict[str, str]:
        sandbox.reset_stats()
        return {"status": "ok"}

    @app.post("/_admin/overrides")
    async def add_override(request: Request) -> dict[str, Any]:
        payload = await _json_object(request)
        override = sandbox.add_override(payload)
        return {
            "month": payload["month"],
            "replaced": len(override.replace),
            "added": len(override.add),
            "removed": len(override.remove),
            "raw_body": override.raw_body is not None,
        }

    @app.exception_handler(InvoiceAdminError)
    async def invoice_admin_error(_: Request, error: InvoiceAdminError) -> JSONResponse:
        return _error(409, str(error))

    @app.get("/_admin/months/{month}")
    async def month_state(month: str) -> dict[str, Any]:
        return sandbox.invoicing.summary(sandbox.known_month(month))

    @app.post("/_admin/months/{month}/open")
    async def open_month(month: str) -> dict[str, Any]:
        return sandbox.invoicing.open_month(sandbox.known_month(month))

    @app.post("/_admin/months/{month}/close")
    async def close_month(month: str, request: Request) -> dict[str, Any]:
        payload = await _json_object(request)
        issued_at = payload.get("issuedAt")
        if issued_at is not None and not isinstance(issued_at, str):
            raise ApiError(400, "'issuedAt' must be a string (YYYY-MM-DDThh:mm:ssZ)")
        return sandbox.invoicing.close_month(sandbox.known_month(month), issued_at)

    @app.post("/_admin/months/{month}/withhold")
    async def withhold(month: str, request: Request) -> dict[str, Any]:
        payload = await _json_object(request)
        accounts = payload.get("accounts")
        if not isinstance(accounts, list) or not all(isinstance(item, str) for item in accounts):
            raise ApiError(400, "'accounts' must be a list of account ids")
        return sandbox.invoicing.withhold(sandbox.known_month(month), accounts, bool(payload.get("withheld", True)))

    @app.post("/_admin/invoices/{invoice_id}/reissue")
    async def reissue(invoice_id: str, request: Request) -> dict[str, Any]:
        payload = await _json_object(request)
        return sandbox.invoicing.reissue(invoice_id, str(payload.get("status", "Issued")))

    @app.post("/_admin/clock")
    async def advance_clock(request: Request) -> dict[str, float]:
        advance = (await _json_object(request)).get("advance_s")
        if not isinstance(advance, int | float) or isinstance(advance, bool):
            raise ApiError(400, "'advance_s' must be a number of seconds")
        return {"advanced_s": sandbox.advance_clock(float(advance))}

    @app.post("/_admin/reset")
    async def reset() -> dict[str, str]:
        sandbox.reset()
        return {"status": "ok"}

    return app


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as error:
        raise ApiError(400, f"Body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "Body must be a JSON object")
    return payload


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, separator, client_secret = decoded.partition(":")
    return (client_id, client_secret) if separator else None


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description, "message": description}, status_code=status)


def _renamed(universe: Universe, names: dict[str, str]) -> Universe:
    """The universe with some accounts renamed (their charges carry the new name too)."""
    unknown = sorted(set(names) - {account.id for account in universe.accounts})
    if unknown:
        raise ValueError(f"--account-name: no account {', '.join(unknown)} in this universe")
    accounts = [replace(account, name=names.get(account.id, account.name)) for account in universe.accounts]
    return Universe(
        accounts=accounts, products=universe.products, subscriptions=universe.subscriptions, months=universe.months
    )


# --- command line --------------------------------------------------------------------------------


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    def env(name: str, default: Any) -> Any:
        return os.environ.get(f"BSS_SANDBOX_{name.upper()}", default)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env("host", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("port", 8081)))
    parser.add_argument("--customers", type=int, default=int(env("customers", 50)))
    parser.add_argument("--subscriptions-per-customer", type=int, default=int(env("subscriptions_per_customer", 3)))
    parser.add_argument("--seed", type=int, default=int(env("seed", 42)))
    parser.add_argument("--first-month", default=env("first_month", "2026-01"))
    parser.add_argument("--last-month", default=env("last_month", "2027-12"))
    parser.add_argument("--latency-ms", type=float, default=float(env("latency_ms", 0)))
    parser.add_argument("--error-rate", type=float, default=float(env("error_rate", 0.0)))
    parser.add_argument("--rate-limit-every", type=int, default=int(env("rate_limit_every", 0)))
    parser.add_argument("--retry-after-s", type=int, default=int(env("retry_after_s", 1)))
    parser.add_argument("--token-ttl-s", type=float, default=float(env("token_ttl_s", 3600)))
    parser.add_argument("--client-id", default=env("client_id", "demo-client"))
    parser.add_argument("--client-secret", default=env("client_secret", "demo-client-secret"))
    parser.add_argument("--username", default=env("username", "demo-user"))
    parser.add_argument("--password", default=env("password", "demo-password"))
    parser.add_argument(
        "--account-name",
        action="append",
        default=[],
        metavar="ID=NAME",
        help="serve account ID under NAME (repeatable), e.g. a probe name for escaping tests",
    )
    parser.add_argument(
        "--open-month",
        action="append",
        default=[month for month in str(env("open_months", "")).split(",") if month],
        metavar="YYYY-MM",
        help="a month whose invoices are still Draft at start (repeatable); every other month is closed",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        default=env("access_log", "") == "1",
        help="log every request (off by default: it costs throughput)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = _arguments(argv)
    config = SandboxConfig(
        customers=args.customers,
        subscriptions_per_customer=args.subscriptions_per_customer,
        seed=args.seed,
        first_month=args.first_month,
        last_month=args.last_month,
        client_id=args.client_id,
        client_secret=args.client_secret,
        username=args.username,
        password=args.password,
        faults=Faults(args.latency_ms, args.error_rate, args.rate_limit_every, args.retry_after_s, args.token_ttl_s),
        account_names=dict(pair.split("=", 1) for pair in args.account_name),
        open_months=tuple(args.open_month),
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=args.access_log)


if __name__ == "__main__":
    main()
