"""Airflow hook for the interworks.cloud BSS API: authentication, retries and paging.

The hook returns the API's records as plain dicts and knows nothing of our model; `include.bss_adapter`
turns them into ours. What the hook assumes about the API (paths, paging, the period filter) is kept in
the block of constants below; see docs/bss-api.md.

Connection (`bss_default`): host/port/schema give the base URL, login/password the application user;
extra: `client_id`, `client_secret`, `api_version` ("3.0"), `page_size` (200), optional `timeout_s` (30)
and `max_retries` (4, i.e. 5 attempts per request).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import requests
from airflow.providers.common.compat.sdk import mask_secret
from airflow.providers.http.hooks.http import HttpHook
from requests import Response, Session
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from connectors.retry_after import retry_after_seconds

# --- The API as this hook assumes it [assumed: docs/bss-api.md] --------------------------------------
TOKEN_PATH = "/oauth/token"
CHARGES_PATH = "/api/charges"
ACCOUNTS_PATH = "/api/accounts"
INVOICES_PATH = "/api/invoices"
API_VERSION_HEADER = "X-Api-Version"
PAGINATION_HEADER = "X-Pagination"
PAGINATION_TOTAL_PAGES = "totalPages"
PAGE_PARAM = "page"
PAGE_SIZE_PARAM = "pageSize"
MAX_PAGE_SIZE = 200
CHARGE_PERIOD_FILTER = "chargeStartDate ge {start} and chargeStartDate le {end}"
ORDER_BY_ID = "id asc"
INVOICE_PERIOD_FILTER = "periodStart eq {start}"

DEFAULT_API_VERSION = "3.0"
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_MAX_PAGES = 10_000
# Extra keys that configure this hook; HttpHook would otherwise send every extra key as a request header,
# which would put the client secret on the wire to every endpoint.
_HOOK_EXTRA_KEYS = frozenset({"client_id", "client_secret", "api_version", "page_size", "timeout_s", "max_retries"})
_EXCERPT_CHARS = 120
_MIN_REDACTED_CHARS = 4
# A token is renewed this long before the server says it expires, so a page request never races expiry.
_TOKEN_EXPIRY_MARGIN_S = 30.0
_TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class BssApiError(Exception):
    """A BSS request failed; the message names the request (method, path, query) and the server's reason.

    `status` is the HTTP status, or None when no answer arrived (connection refused, reset, timeout).
    """

    def __init__(self, status: int | None, method: str, path: str, message: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.message = message
        answered = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"BSS {method} {path} failed ({answered}): {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.method, self.path, self.message))


class BssAuthError(BssApiError):
    """The BSS refused our credentials or kept rejecting a fresh access token."""


class BssTransientError(BssApiError):
    """A failure worth retrying: 429, 5xx, or no answer at all. Raised only after the last attempt."""

    def __init__(
        self, status: int | None, method: str, path: str, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(status, method, path, message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.method, self.path, self.message, self.retry_after_s))


class _Secret:
    """Holds a secret so that no repr, log line or traceback local shows it by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


@dataclass(frozen=True)
class BssSettings:
    """The non-secret settings read from the Airflow connection."""

    base_url: str
    username: str
    client_id: str
    api_version: str
    page_size: int
    timeout_s: float
    max_retries: int

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1


@dataclass
class _Token:
    value: _Secret
    renew_at: float  # the hook's clock time after which the token is fetched again


def request_target(path: str, params: Mapping[str, Any] | None = None) -> str:
    """`/api/charges?$filter=…&page=2`: how errors and logs name a request (never carries secrets)."""
    if not params:
        return path
    return f"{path}?" + "&".join(f"{key}={value}" for key, value in params.items())


def _excerpt(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "…")


class BssHook(HttpHook):
    """Reads the interworks.cloud BSS API: OAuth2 password grant, retries with backoff, paging.

    :param bss_conn_id: the Airflow connection (see the module docstring for its fields).
    :param page_size: overrides the connection's `page_size` (1-200).
    :param max_retries: overrides the connection's `max_retries` (retries after the first attempt).
    :param retry_wait_initial_s: first exponential backoff step; doubles per attempt, plus jitter.
    :param retry_wait_max_s: cap of one backoff step (and of an honoured `Retry-After`).
    :param max_pages: a collection still paging after this many pages is an error (a server that never ends).
    """

    conn_name_attr = "bss_conn_id"
    default_conn_name = "bss_default"
    conn_type = "http"
    hook_name = "interworks.cloud BSS"

    def __init__(
        self,
        bss_conn_id: str = default_conn_name,
        *,
        page_size: int | None = None,
        max_retries: int | None = None,
        retry_wait_initial_s: float = 1.0,
        retry_wait_max_s: float = 60.0,
        max_pages: int = DEFAULT_MAX_PAGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(method="GET", http_conn_id=bss_conn_id)
        self.bss_conn_id = bss_conn_id
        self._page_size_override = page_size
        self._max_retries_override = max_retries
        self.retry_wait_initial_s = retry_wait_initial_s
        self.retry_wait_max_s = retry_wait_max_s
        self.max_pages = max_pages
        self._settings: BssSettings | None = None
        self._password: _Secret | None = None
        self._client_secret: _Secret | None = None
        self._session: Session | None = None
        self._token: _Token | None = None
        self._clock = clock  # the seconds tokens are renewed by (a test moves it instead of waiting)

    # --- Airflow UI -----------------------------------------------------------------------------------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"login": "Application user", "password": "Application user password"},
            "placeholders": {
                "host": "tenant.example.com",
                "schema": "https",
                "extra": json.dumps(
                    {"client_id": "", "client_secret": "", "api_version": DEFAULT_API_VERSION, "page_size": 200}
                ),
            },
        }

    def test_connection(self) -> tuple[bool, str]:
        try:
            self._get_json(ACCOUNTS_PATH, {PAGE_PARAM: 1, PAGE_SIZE_PARAM: 1})
        except Exception as error:
            return False, str(error)
        return True, "Token granted and accounts readable"

    # --- connection and session -----------------------------------------------------------------------
    @property
    def settings(self) -> BssSettings:
        if self._settings is None:
            self._load_connection()
        assert self._settings is not None
        return self._settings

    def _load_connection(self) -> None:
        connection = self.get_connection(self.bss_conn_id)
        extra = connection.extra_dejson
        missing = [
            name
            for name, value in (
                ("host", connection.host),
                ("login", connection.login),
                ("password", connection.password),
                ("extra.client_id", extra.get("client_id")),
                ("extra.client_secret", extra.get("client_secret")),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"Airflow connection {self.bss_conn_id!r} lacks {', '.join(missing)}")
        page_size = int(self._page_size_override or extra.get("page_size") or DEFAULT_PAGE_SIZE)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        max_retries = self._max_retries_override
        if max_retries is None:
            max_retries = int(extra.get("max_retries", DEFAULT_MAX_RETRIES))
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self._set_base_url(connection)
        self._settings = BssSettings(
            base_url=self.base_url.rstrip("/"),
            username=connection.login,
            client_id=str(extra["client_id"]),
            api_version=str(extra.get("api_version") or DEFAULT_API_VERSION),
            page_size=page_size,
            timeout_s=float(extra.get("timeout_s") or DEFAULT_TIMEOUT_S),
            max_retries=max_retries,
        )
        self._password = _Secret(connection.password)
        self._client_secret = _Secret(str(extra["client_secret"]))

    def _configure_session_from_auth(self, session: Session, connection: Any) -> Session:
        # API calls carry a bearer token; the user's password only ever goes to the token endpoint.
        session.auth = None
        return session

    def _configure_session_from_extra(
        self, session: Session, connection: Any, extra_options: dict[str, Any]
    ) -> Session:
        # Keep HttpHook's handling of verify/proxies/cert, minus our own keys (it would send them as headers).
        generic_extra = {k: v for k, v in connection.extra_dejson.items() if k not in _HOOK_EXTRA_KEYS}
        view = SimpleNamespace(host=connection.host, extra_dejson=generic_extra)
        return super()._configure_session_from_extra(session, view, extra_options)

    @property
    def session(self) -> Session:
        """One requests.Session per hook, so pages reuse the kept-alive connection."""
        if self._session is None:
            settings = self.settings
            self._session = self.get_conn(
                headers={API_VERSION_HEADER: settings.api_version, "Accept": "application/json"}
            )
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # --- authentication -------------------------------------------------------------------------------
    def _access_token(self) -> str:
        if self._token is None or self._clock() >= self._token.renew_at:
            self._token = self._fetch_token()
        return self._token.value.reveal()

    def _fetch_token(self) -> _Token:
        settings = self.settings
        assert self._password is not None and self._client_secret is not None
        target = request_target(TOKEN_PATH)
        try:
            response = self.session.post(
                settings.base_url + TOKEN_PATH,
                data={
                    "grant_type": "password",
                    "username": settings.username,
                    "password": self._password.reveal(),
                },
                auth=(settings.client_id, self._client_secret.reveal()),
                timeout=settings.timeout_s,
            )
        except _TRANSPORT_ERRORS as error:
            raise self._transport_error("POST", target, error) from error
        if response.status_code in (400, 401, 403):
            raise BssAuthError(
                response.status_code,
                "POST",
                target,
                f"token refused for application user {settings.username!r} with client id "
                f"{settings.client_id!r} (check the connection's login, password, client_id, client_secret): "
                + self._server_message(response),
            )
        self._raise_for_status(response, "POST", target)
        body = self._decode_json(response, "POST", target)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise BssAuthError(response.status_code, "POST", target, "the answer carries no access_token")
        mask_secret(token)
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 3600.0
        margin = min(_TOKEN_EXPIRY_MARGIN_S, lifetime / 10)
        self.log.info("BSS: access token granted for %s (expires in %.0f s)", settings.username, lifetime)
        return _Token(_Secret(token), self._clock() + lifetime - margin)

    # --- one request, with retries -------------------------------------------------------------------
    def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> tuple[Any, Response]:
        """GET `path`, retried on transient failures; returns the decoded body and the response."""
        target = request_target(path, params)
        attempts = self.settings.max_attempts
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=self._retry_wait,
            retry=retry_if_exception_type(BssTransientError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            response = retrying(self._get_once, path, params, target)
        except BssTransientError as error:
            raise BssTransientError(
                error.status,
                "GET",
                target,
                f"gave up after {attempts} attempts; last error: {error.message}",
                error.retry_after_s,
            ) from error
        return self._decode_json(response, "GET", target), response

    def _get_once(self, path: str, params: Mapping[str, Any] | None, target: str) -> Response:
        response = self._send_get(path, params, target)
        if response.status_code == 401:
            # Tokens can expire (or be revoked) mid-extract: ask for a new one once.
            self.log.info("BSS GET %s: access token rejected (401); fetching a new token and retrying", target)
            self._token = None
            response = self._send_get(path, params, target)
            if response.status_code == 401:
                raise BssAuthError(
                    401,
                    "GET",
                    target,
                    "a freshly granted access token was rejected too: " + self._server_message(response),
                )
        self._raise_for_status(response, "GET", target)
        return response

    def _send_get(self, path: str, params: Mapping[str, Any] | None, target: str) -> Response:
        token = self._access_token()
        try:
            return self.session.get(
                self.settings.base_url + path,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.settings.timeout_s,
            )
        except _TRANSPORT_ERRORS as error:
            raise self._transport_error("GET", target, error) from error

    def _transport_error(self, method: str, target: str, error: Exception) -> BssTransientError:
        return BssTransientError(None, method, target, self._redact(f"{type(error).__name__}: {error}")[:300])

    def _raise_for_status(self, response: Response, method: str, target: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = self._server_message(response)
        if status == 429:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise BssTransientError(status, method, target, f"rate limited: {message}", retry_after)
        if status >= 500:
            raise BssTransientError(status, method, target, message)
        if status == 401:
            raise BssAuthError(status, method, target, message)
        raise BssApiError(status, method, target, message)

    def _server_message(self, response: Response) -> str:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            message = body["message"]
        else:
            message = f"{response.reason or 'error'}; body: {_excerpt(response.text)}"
        return self._redact(message)

    def _decode_json(self, response: Response, method: str, target: str) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            content_type = response.headers.get("Content-Type", "none")
            raise BssApiError(
                response.status_code,
                method,
                target,
                self._redact(f"response body is not JSON (Content-Type {content_type}): {_excerpt(response.text)}"),
            ) from None

    def _redact(self, text: str) -> str:
        """Servers sometimes echo what they were sent; never let a secret through into an error."""
        secrets = [self._password, self._client_secret, self._token.value if self._token else None]
        for secret in secrets:
            # Very short values are skipped (as Airflow's masker does): they would garble ordinary words.
            if secret is not None and len(secret.reveal()) >= _MIN_REDACTED_CHARS:
                text = text.replace(secret.reveal(), "***")
        return text

    def _retry_wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, BssTransientError) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.retry_wait_max_s)
        backoff = wait_exponential_jitter(
            initial=self.retry_wait_initial_s, max=self.retry_wait_max_s, jitter=self.retry_wait_initial_s
        )
        return backoff(state)

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning(
            "%s; attempt %d of %d, retrying in %.2f s",
            error,
            state.attempt_number,
            self.settings.max_attempts,
            wait,
        )

    # --- paging ---------------------------------------------------------------------------------------
    def iter_pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[list[dict]]:
        """Yield each page's records in order until `X-Pagination.totalPages` (or an empty/short page)."""
        base_params = {k: v for k, v in (params or {}).items() if k not in (PAGE_PARAM, PAGE_SIZE_PARAM)}
        page_size = self.settings.page_size
        received = 0
        for page in itertools.count(1):
            if page > self.max_pages:
                raise BssApiError(
                    None,
                    "GET",
                    request_target(path, params),
                    f"still paging after {self.max_pages} pages; stopping (raise max_pages if this is real)",
                )
            page_params = {**base_params, PAGE_PARAM: page, PAGE_SIZE_PARAM: page_size}
            body, response = self._get_json(path, page_params)
            if not isinstance(body, list):
                raise BssApiError(
                    response.status_code,
                    "GET",
                    request_target(path, page_params),
                    f"expected a JSON array of records, got {type(body).__name__}",
                )
            total_pages = self._total_pages(response, path)
            if not body:
                self.log.info("BSS %s: page %d is empty; %d records in all", path, page, received)
                return
            received += len(body)
            self.log.info("BSS %s: page %d of %s, %d records so far", path, page, total_pages or "?", received)
            yield body
            if total_pages is not None and page >= total_pages:
                return
            if total_pages is None and len(body) < page_size:
                return

    def _total_pages(self, response: Response, path: str) -> int | None:
        raw = response.headers.get(PAGINATION_HEADER)
        if not raw:
            return None
        try:
            total = json.loads(raw)[PAGINATION_TOTAL_PAGES]
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                return total
        except (ValueError, KeyError, TypeError):
            pass
        self.log.warning(
            "BSS %s: unreadable %s header %s; paging until a short page", path, PAGINATION_HEADER, _excerpt(raw)
        )
        return None

    # --- resources ------------------------------------------------------------------------------------
    def iter_charges(self, start: date, end: date) -> Iterator[list[dict]]:
        """Charge records whose charge start date lies in [start, end], by id, one page at a time."""
        if start > end:
            raise ValueError(f"start {start} is after end {end}")
        period = CHARGE_PERIOD_FILTER.format(start=start.isoformat(), end=end.isoformat())
        return self.iter_pages(CHARGES_PATH, {"$filter": period, "$orderby": ORDER_BY_ID})

    def list_accounts(self) -> Iterator[list[dict]]:
        """All account records, by id, one page at a time."""
        return self.iter_pages(ACCOUNTS_PATH, {"$orderby": ORDER_BY_ID})

    def iter_invoices(self, period_start: date) -> Iterator[list[dict]]:
        """The invoices of the billing period starting on `period_start` (every status), by id, a page at a time."""
        period = INVOICE_PERIOD_FILTER.format(start=period_start.isoformat())
        return self.iter_pages(INVOICES_PATH, {"$filter": period, "$orderby": ORDER_BY_ID})

    def get_account(self, account_id: str) -> dict:
        """One account record."""
        path = f"{ACCOUNTS_PATH}/{quote(account_id, safe='')}"
        body, response = self._get_json(path)
        if not isinstance(body, dict):
            raise BssApiError(response.status_code, "GET", path, f"expected a JSON object, got {type(body).__name__}")
        return body


__all__: list[str] = [
    "BssApiError",
    "BssAuthError",
    "BssHook",
    "BssSettings",
    "BssTransientError",
    "request_target",
]
