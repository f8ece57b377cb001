"""The Autotask PSA REST client as an Airflow hook: zones, auth headers, paging, batching, limits, retries.

It returns Autotask's records as dicts and knows nothing of the billing model; `include/` calls it
through a small Protocol (`query`, `query_in`, `count`, `get`, `create`, `update`, `create_child`,
`contract_service_units`, `threshold_information`, `entity_fields`).

Connection (`autotask_default`): login = API user, password = secret; extra:
`integration_code` (required), `impersonation_resource_id`, `zone_discovery_url`,
`max_concurrent_per_endpoint` (3), `budget_slowdown_ratio` (0.75), `budget_pause_ratio` (0.9), and the
tuning knobs of `AutotaskSettings`. A host on the connection skips zone discovery.

Safety rules that shape the code:
- Autotask rejects a 4th concurrent request per endpoint (Itgenatr005), so every request holds a slot
  of a per-endpoint semaphore shared by all threads of the hook.
- A write whose response was lost may have been applied; it is never retried here
  (`AutotaskOutcomeUnknownError`), only writes that provably did not happen are.
- The hourly request budget is shared by every integration of the customer; above a ratio we slow
  down, and once it is spent (above a higher ratio, or Autotask answers 429 for it) every request stops at
  once with `AutotaskBudgetExhaustedError`, saying how much is used and when requests go on — never sleeping
  minutes inside a request. The caller (the loader) stops cleanly and resumes later. The budget read itself
  is never retried on a 429: its 429 is the budget's answer.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import tenacity
from airflow.providers.http.hooks.http import HttpHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError

from connectors.autotask_errors import (
    AutotaskApiError,
    AutotaskAuthError,
    AutotaskBudgetExhaustedError,
    AutotaskNotAllowedError,
    AutotaskOutcomeUnknownError,
    AutotaskRateLimitError,
    AutotaskZoneError,
)
from connectors.autotask_query import (
    MAX_IN_VALUES,
    MAX_PAGE_SIZE,
    Filter,
    FilterLike,
    Group,
    Query,
    clamp_page_size,
    format_api_date,
    to_api_value,
    to_filter_objects,
)
from connectors.retry_after import retry_after_seconds

log = logging.getLogger(__name__)

DEFAULT_ZONE_DISCOVERY_URL = "https://webservices.autotask.net/atservicesrest/v1.0/zoneInformation"
API_VERSION_PATH = "v1.0/"
THREAD_LIMIT_CODE = "itgenatr005"
_ENTITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
# Gateways answering instead of Autotask: the write may or may not have reached the database.
_OUTCOME_UNKNOWN_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class AutotaskSettings:
    """Tuning read from the connection extra (every field can be set there under the same name)."""

    integration_code: str = field(repr=False)
    impersonation_resource_id: int | None = None
    zone_discovery_url: str = DEFAULT_ZONE_DISCOVERY_URL
    max_concurrent_per_endpoint: int = 3
    # from 75 % of the hourly budget on, each request waits a little (the loader keeps 20 % free by default)
    budget_slowdown_ratio: float = 0.75
    budget_pause_ratio: float = 0.9  # from here on the budget counts as spent: requests stop (typed error)
    budget_check_every: int = 100  # requests between two ThresholdInformation reads
    budget_check_interval_s: float = 60.0  # ...or this long, whichever comes first
    budget_refresh_in_background: bool = True  # read the budget without holding up the request
    budget_max_delay_s: float = 1.0  # added per request when just below the pause ratio
    budget_retry_after_s: float = 60.0  # a 429 asking to wait longer is the hourly budget, not a passing limit
    max_attempts: int = 8  # for 429 / thread-limit rejections
    read_attempts: int = 4  # for 5xx and connection errors on reads
    retry_wait_s: float = 0.5  # base of the jittered exponential backoff
    retry_max_wait_s: float = 30.0
    max_retry_after_s: float = 300.0  # cap on a server's Retry-After
    timeout_s: float = 120.0
    in_batch_size: int = MAX_IN_VALUES

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> AutotaskSettings:
        integration_code = str(extra.get("integration_code") or "").strip()
        if not integration_code:
            raise ValueError("the Autotask connection needs extra.integration_code")
        values: dict[str, Any] = {"integration_code": integration_code}
        for spec in fields(cls):
            if spec.name == "integration_code" or extra.get(spec.name) in (None, ""):
                continue
            raw = extra[spec.name]
            if spec.name == "zone_discovery_url":
                values[spec.name] = str(raw)
            elif spec.name == "budget_refresh_in_background":
                values[spec.name] = str(raw).strip().lower() in ("1", "true", "yes", "on")
            elif spec.name in (
                "impersonation_resource_id",
                "max_concurrent_per_endpoint",
                "budget_check_every",
                "max_attempts",
                "read_attempts",
                "in_batch_size",
            ):
                values[spec.name] = int(raw)
            else:
                values[spec.name] = float(raw)
        settings = cls(**values)
        if settings.max_concurrent_per_endpoint < 1:
            raise ValueError("max_concurrent_per_endpoint must be at least 1")
        if not 0 < settings.budget_slowdown_ratio <= settings.budget_pause_ratio:
            raise ValueError("need 0 < budget_slowdown_ratio <= budget_pause_ratio")
        if not 1 <= settings.in_batch_size <= MAX_IN_VALUES:
            raise ValueError(f"in_batch_size must be 1..{MAX_IN_VALUES}")
        return settings


@dataclass(frozen=True)
class _Credentials:
    username: str
    secret: str = field(repr=False)


class ZoneCache:
    """Process-wide cache of discovered zone base URLs, keyed by (user, discovery URL)."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, str], str] = {}
        self.lock = threading.RLock()  # held while discovering, so concurrent 401s re-discover once

    def get(self, username: str, discovery_url: str) -> str | None:
        with self.lock:
            return self._bases.get((username, discovery_url))

    def put(self, username: str, discovery_url: str, base_url: str) -> None:
        with self.lock:
            self._bases[(username, discovery_url)] = base_url

    def invalidate(self, username: str, discovery_url: str, stale_base_url: str | None = None) -> None:
        """Forget a zone; with `stale_base_url`, only if nobody has re-discovered it meanwhile."""
        with self.lock:
            key = (username, discovery_url)
            if stale_base_url is None or self._bases.get(key) == stale_base_url:
                self._bases.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self._bases.clear()


ZONE_CACHE = ZoneCache()

_ENDPOINT_SLOTS: dict[tuple[str, str, int, str], threading.BoundedSemaphore] = {}
_ENDPOINT_SLOTS_LOCK = threading.Lock()


def zone_api_base(zone_url: str) -> str:
    """`https://webservices15.autotask.net/ATServicesRest/` → `.../ATServicesRest/v1.0/`."""
    base = zone_url.rstrip("/") + "/"
    if re.search(r"/v\d+\.\d+/$", base, flags=re.IGNORECASE):
        return base
    return base + API_VERSION_PATH


def _child_entity_name(parent: str, child: str) -> str:
    """The root entity a child path stands for: Contracts/Services → ContractServices."""
    singular = parent[:-3] + "y" if parent.endswith("ies") else parent.removesuffix("s")
    return singular + child


def _is_connect_failure(exc: requests.RequestException) -> bool:
    """True when the request provably never left this process (refused, unresolvable, connect timeout)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # urllib3's NewConnectionError (refused, DNS) derives from ConnectTimeoutError.
    return isinstance(reason, ConnectTimeoutError)


class _RequestBudget:
    """Paces the hook against Autotask's shared hourly request threshold, and knows when it is spent.

    Spent means: the last budget read showed `budget_pause_ratio` or more used, or Autotask answered 429 for
    the threshold. Until the time it goes on, every request raises `AutotaskBudgetExhaustedError` at once
    (nothing is sent); after it, the budget is read again before the next request."""

    def __init__(
        self,
        settings: AutotaskSettings,
        fetch: Callable[[], dict[str, Any]],
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._fetch = fetch
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._checking = False
        self._requests_since_check = 0
        self._last_check_at: float | None = None
        self.ratio = 0.0
        self.last_information: dict[str, Any] | None = None
        self.slowdown_seconds = 0.0  # total delay added, for the caller's run report
        self.exhausted_until: float | None = None  # clock time from which requests may go on
        self.resume_at: datetime | None = None  # the same, in UTC, for people
        self.exhausted_reason: list[str] = []

    def note_request(self) -> None:
        with self._lock:
            self._requests_since_check += 1

    def before_request(self, entity: str, verb: str) -> None:
        self._raise_if_spent(entity, verb)
        if self._check_due():
            if self._settings.budget_refresh_in_background and self.exhausted_until is None:
                # Pacing information must not sit on the critical path of a request (the first included):
                # until it arrives the last known ratio applies.
                threading.Thread(target=self.refresh, name="autotask-budget", daemon=True).start()
            else:
                self.refresh()
                self._raise_if_spent(entity, verb)
        ratio = self.ratio
        if ratio >= self._settings.budget_pause_ratio:
            self._spent_by_ratio()
            self._raise_if_spent(entity, verb)
        elif ratio >= self._settings.budget_slowdown_ratio:
            delay = self._slowdown_delay(ratio)
            with self._lock:
                self.slowdown_seconds += delay
            self._sleep(delay)

    def _raise_if_spent(self, entity: str, verb: str) -> None:
        with self._lock:
            until = self.exhausted_until
            if until is None:
                return
            if self._clock() >= until:
                # the time has come: read the budget again before the next request
                self.exhausted_until = None
                self.ratio = 0.0
                self._last_check_at = None
                return
            resume_at = self.resume_at
            reason = list(self.exhausted_reason)
        used, limit = self._used_and_limit()
        raise AutotaskBudgetExhaustedError(
            entity, verb, None, reason, resume_at=resume_at or datetime.now(UTC), used=used, limit=limit
        )

    def _used_and_limit(self) -> tuple[int | None, int | None]:
        info = self.last_information or {}
        limit = info.get("externalRequestThreshold")
        used = info.get("currentTimeframeRequestCount")
        return (None if used is None else int(used)), (None if limit is None else int(limit))

    def _check_due(self) -> bool:
        with self._lock:
            if self._checking:
                return False
            due = (
                self._last_check_at is None
                or self._requests_since_check >= self._requests_between_checks()
                or self._clock() - self._last_check_at >= self._settings.budget_check_interval_s
            )
            self._checking = due
            return due

    def _requests_between_checks(self) -> int:
        """`budget_check_every`, or more while the budget is far from the slow-down line: even if the other
        integrations spent as fast as we do, half the headroom cannot take us past it. (The `month` benchmark
        holds the budget reads to its read bound: one per 100 requests was a quarter of a month's reads.)"""
        info = self.last_information or {}
        threshold = float(info.get("externalRequestThreshold") or 0)
        headroom = (self._settings.budget_slowdown_ratio - self.ratio) * threshold / 2
        return max(self._settings.budget_check_every, int(headroom))

    def refresh(self) -> None:
        try:
            information = self._fetch()
        except AutotaskApiError as exc:
            # Not knowing the budget must not stop a load; a 429 here has already marked the budget spent.
            log.warning("Could not read Autotask ThresholdInformation: %s", exc)
            information = None
        finally:
            with self._lock:
                self._checking = False
                self._requests_since_check = 0
                self._last_check_at = self._clock()
        if information:
            self.learn(information)

    def learn(self, information: dict[str, Any], *, counts_as_check: bool = False) -> None:
        """Take in a ThresholdInformation answer (read by the pacing, or by a caller: then it counts as the
        pacing's check too, so the same budget is not read twice)."""
        if counts_as_check:
            with self._lock:
                self._requests_since_check = 0
                self._last_check_at = self._clock()
        threshold = float(information.get("externalRequestThreshold") or 0)
        used = float(information.get("currentTimeframeRequestCount") or 0)
        self.last_information = information
        self.ratio = used / threshold if threshold > 0 else 0.0

    def spent(self, wait_s: float, errors: list[str]) -> datetime:
        """Autotask said the budget is spent (a 429 for the threshold): no request until `wait_s` from now."""
        with self._lock:
            self.exhausted_until = self._clock() + wait_s
            self.resume_at = (datetime.now(UTC) + timedelta(seconds=wait_s)).replace(microsecond=0)
            self.exhausted_reason = list(errors)
            self.ratio = max(self.ratio, 1.0)
            resume_at = self.resume_at
        log.warning("Autotask's hourly request budget is spent; no request before %s UTC", f"{resume_at:%H:%M:%S}")
        return resume_at

    def _spent_by_ratio(self) -> None:
        """The budget read shows the pause ratio reached: requests stop until enough of the rolling window has
        left it (estimated as if the used requests were spread evenly over the timeframe)."""
        info = self.last_information or {}
        threshold = float(info.get("externalRequestThreshold") or 0)
        used = float(info.get("currentTimeframeRequestCount") or 0)
        minutes = float(info.get("requestThresholdTimeframe") or 60)
        over = used - self._settings.budget_pause_ratio * threshold
        wait_s = max(60.0, minutes * 60 * over / used) if used > 0 else 60.0
        self.spent(
            wait_s,
            [
                f"{int(used):,} of {int(threshold):,} requests of the last {int(minutes)} minutes are used, "
                f"{self._settings.budget_pause_ratio:.0%} or more"
            ],
        )

    def _slowdown_delay(self, ratio: float) -> float:
        low, high = self._settings.budget_slowdown_ratio, self._settings.budget_pause_ratio
        share = 1.0 if high <= low else min(1.0, (ratio - low) / (high - low))
        return self._settings.budget_max_delay_s * max(share, 0.05)


class AutotaskHook(HttpHook):
    """Autotask PSA REST API v1.0 (see module docstring for the connection fields)."""

    conn_name_attr = "autotask_conn_id"
    default_conn_name = "autotask_default"
    conn_type = "http"
    hook_name = "Autotask PSA"

    def __init__(
        self,
        autotask_conn_id: str = default_conn_name,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(method="POST", http_conn_id=autotask_conn_id)
        self.autotask_conn_id = autotask_conn_id
        self._sleep = sleep
        self._clock = clock
        self._ready_lock = threading.Lock()
        self._ready = False
        self._settings: AutotaskSettings | None = None
        self._credentials: _Credentials | None = None
        self._session: requests.Session | None = None
        self._api_base: str = ""
        self._zone_discovered = False
        self._budget: _RequestBudget | None = None
        self._count_lock = threading.Lock()
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"AutotaskHook(conn_id={self.autotask_conn_id!r}, api_base={self._api_base or None!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"login": "API user (UserName)", "password": "Secret", "host": "Zone host (optional)"},
            "placeholders": {
                "host": "leave empty to discover the zone",
                "extra": '{"integration_code": "...", "impersonation_resource_id": null}',
            },
        }

    # --- set-up ---------------------------------------------------------------------------------------------

    @property
    def settings(self) -> AutotaskSettings:
        self._ensure_ready()
        assert self._settings is not None
        return self._settings

    @property
    def api_base(self) -> str:
        """`<zone>/atservicesrest/v1.0/` the hook is talking to (after discovery)."""
        self._ensure_ready()
        return self._api_base

    @property
    def budget(self) -> _RequestBudget:
        self._ensure_ready()
        assert self._budget is not None
        return self._budget

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None):
        """The configured requests.Session (HttpHook's version would send the secret as Basic auth)."""
        self._ensure_ready()
        return self._session

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            connection = self.get_connection(self.autotask_conn_id)
            if not connection.login or not connection.password:
                raise ValueError(f"connection {self.autotask_conn_id!r} needs login (API user) and password (secret)")
            settings = AutotaskSettings.from_extra(connection.extra_dejson)
            credentials = _Credentials(connection.login, connection.password)
            session = requests.Session()
            session.trust_env = False  # never let a proxy environment reroute the secret
            pool = max(16, settings.max_concurrent_per_endpoint * 8)
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers.update(
                {
                    "ApiIntegrationCode": settings.integration_code,
                    "UserName": credentials.username,
                    "Secret": credentials.secret,
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                }
            )
            if settings.impersonation_resource_id is not None:
                session.headers["ImpersonationResourceId"] = str(settings.impersonation_resource_id)
            self._settings, self._credentials, self._session = settings, credentials, session
            if connection.host:
                self._api_base = self._explicit_api_base(connection.host, connection.schema, connection.port)
                self._zone_discovered = False
            else:
                self._api_base = self._discover_zone()
                self._zone_discovered = True
            self._budget = _RequestBudget(settings, self._fetch_threshold_information, self._sleep, self._clock)
            self._ready = True

    @staticmethod
    def _explicit_api_base(host: str, schema: str | None, port: int | None) -> str:
        if "://" not in host:
            host = f"{schema or 'https'}://{host}"
        parts = urlsplit(host)
        netloc = parts.netloc if (parts.port or not port) else f"{parts.netloc}:{port}"
        path = parts.path.rstrip("/")
        if "atservicesrest" not in path.lower():
            path += "/atservicesrest"
        return zone_api_base(f"{parts.scheme}://{netloc}{path}")

    def _discover_zone(self) -> str:
        """The zone's API base for this user, from the process cache or zoneInformation (no auth)."""
        assert self._settings is not None and self._credentials is not None
        user, discovery_url = self._credentials.username, self._settings.zone_discovery_url
        with ZONE_CACHE.lock:
            cached = ZONE_CACHE.get(user, discovery_url)
            if cached:
                return cached
            # zoneInformation is a read like any other: retried on connection errors, 5xx and 429 alike.
            response = self._retrying()(self._fetch_zone_information, discovery_url, user)
            try:
                zone_url = response.json().get("url")
            except (ValueError, AttributeError):
                zone_url = None
            if not zone_url:
                raise AutotaskZoneError("zoneInformation", "GET", 200, ["the answer holds no zone url"])
            base = zone_api_base(zone_url)
            ZONE_CACHE.put(user, discovery_url, base)
            log.info("Autotask zone for this API user: %s", base)
            return base

    def _fetch_zone_information(self, discovery_url: str, user: str) -> requests.Response:
        """One zoneInformation call (no auth); a retryable AutotaskZoneError when it may succeed next time."""
        assert self._settings is not None
        try:
            response = requests.get(discovery_url, params={"user": user}, timeout=self._settings.timeout_s)
        except requests.RequestException as exc:
            error = AutotaskZoneError("zoneInformation", "GET", None, [self._describe(exc)])
            error.retryable = True
            raise error from None
        if response.status_code == 200:
            return response
        error = AutotaskZoneError("zoneInformation", "GET", response.status_code, self._error_texts(response))
        if response.status_code == 429:
            error.retryable = True
            error.retry_after_s = retry_after_seconds(response.headers.get("Retry-After"))
        elif response.status_code >= 500:
            error.retryable = True
        raise error

    def _rediscover_zone(self, stale_base: str) -> None:
        assert self._settings is not None and self._credentials is not None
        ZONE_CACHE.invalidate(self._credentials.username, self._settings.zone_discovery_url, stale_base)
        self._api_base = self._discover_zone()

    # --- transport ------------------------------------------------------------------------------------------

    def _slots_for(self, endpoints: Sequence[str]) -> list[threading.BoundedSemaphore]:
        """The endpoint semaphores, shared by every hook of this process talking to the same database
        with the same integration code (Autotask counts threads per integration code and endpoint)."""
        settings = self.settings
        scope = (
            urlsplit(self._api_base).netloc.lower(),
            settings.integration_code,
            settings.max_concurrent_per_endpoint,
        )
        with _ENDPOINT_SLOTS_LOCK:
            return [
                _ENDPOINT_SLOTS.setdefault(
                    (*scope, key), threading.BoundedSemaphore(settings.max_concurrent_per_endpoint)
                )
                for key in sorted({endpoint.lower() for endpoint in endpoints})  # fixed order: no deadlock
            ]

    def _describe(self, exc: BaseException) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")

    def _redact(self, text: str) -> str:
        secret = self._credentials.secret if self._credentials else ""
        return text.replace(secret, "***") if secret else text

    def _error_texts(self, response: requests.Response) -> list[str]:
        """Autotask's own error text: `errors` list, or the 405 `Message`, or the raw body."""
        try:
            payload = response.json()
        except ValueError:
            text = (response.text or "").strip()[:1000]
            return [self._redact(text or response.reason or "")]
        texts: list[str] = []
        if isinstance(payload, dict):
            errors = payload.get("errors")
            if isinstance(errors, list) and errors:
                texts = [e.get("message", str(e)) if isinstance(e, dict) else str(e) for e in errors]
            else:
                for key in ("Message", "message", "error", "detail"):
                    if payload.get(key):
                        texts = [str(payload[key])]
                        break
        if not texts:
            texts = [str(payload)[:1000]]
        return [self._redact(text) for text in texts]

    def _fetch_threshold_information(self) -> dict[str, Any]:
        # never paced and never retried on a 429: its 429 is the budget's answer (it marks the budget spent)
        return self._request("GET", "ThresholdInformation", "ThresholdInformation", paced=False)

    def _request(
        self,
        verb: str,
        entity: str,
        path: str,
        *,
        body: Any = None,
        write: bool = False,
        paced: bool = True,
        endpoints: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """One API call with pacing, endpoint slots, retries and one zone re-discovery on 401."""
        self._ensure_ready()
        rediscovered = False
        while True:
            base = self._api_base
            try:
                return self._request_with_retries(verb, entity, path, body, write, paced, endpoints or [entity])
            except AutotaskAuthError:
                # A wrong (e.g. migrated) zone answers 401: a 401'd write did not happen, so retrying is safe.
                if rediscovered or not self._zone_discovered:
                    raise
                rediscovered = True
                log.warning("Autotask answered 401 at %s; re-discovering the zone once", base)
                self._rediscover_zone(base)

    def _request_with_retries(
        self,
        verb: str,
        entity: str,
        path: str,
        body: Any,
        write: bool,
        paced: bool,
        endpoints: Sequence[str],
    ) -> dict[str, Any]:
        return self._retrying()(self._attempt, verb, entity, path, body, write, paced, endpoints)

    def _retrying(self) -> tenacity.Retrying:
        """The retry policy of every call: errors marked retryable are sent again after a jittered exponential
        backoff (or the server's Retry-After), up to `max_attempts` for rate limits (429, thread limit) and
        `read_attempts` for everything else (5xx on reads, connection errors)."""
        settings = self._settings
        assert settings is not None
        backoff = tenacity.wait_random_exponential(multiplier=settings.retry_wait_s, max=settings.retry_max_wait_s)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is not None:
                return min(retry_after, settings.max_retry_after_s) + random.uniform(0, settings.retry_wait_s)
            return backoff(state)

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            rate_limited = isinstance(exc, AutotaskRateLimitError) or getattr(exc, "status", None) == 429
            limit = settings.max_attempts if rate_limited else settings.read_attempts
            return state.attempt_number >= limit

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s (attempt %d); retrying in %.2fs",
                exc,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: bool(getattr(exc, "retryable", False))),
            wait=wait,
            stop=stop,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def _attempt(
        self,
        verb: str,
        entity: str,
        path: str,
        body: Any,
        write: bool,
        paced: bool,
        endpoints: Sequence[str],
    ) -> dict[str, Any]:
        settings = self.settings
        assert self._session is not None and self._budget is not None
        if paced:
            self._budget.before_request(entity, verb)
        url = urljoin(self._api_base, path)
        slots = self._slots_for(endpoints)
        for slot in slots:
            slot.acquire()
        try:
            self._budget.note_request()
            with self._count_lock:
                self.requests_sent += 1
            started = time.monotonic()
            try:
                response = self._session.request(verb, url, json=body, timeout=settings.timeout_s)
            except requests.RequestException as exc:
                raise self._transport_error(entity, verb, exc, write) from None
        finally:
            for slot in reversed(slots):
                slot.release()
        log.debug("%s %s -> %s in %.3fs", verb, path.split("?")[0], response.status_code, time.monotonic() - started)
        return self._parse(entity, verb, response, write)

    def _transport_error(self, entity: str, verb: str, exc: requests.RequestException, write: bool) -> AutotaskApiError:
        text = self._describe(exc)
        if write and not _is_connect_failure(exc):
            error: AutotaskApiError = AutotaskOutcomeUnknownError(
                entity, verb, None, [f"no answer after the request was sent ({text})"]
            )
            return error
        error = AutotaskApiError(entity, verb, None, [text])
        error.retryable = True  # a read, or a write that was never sent
        return error

    def _parse(self, entity: str, verb: str, response: requests.Response, write: bool) -> dict[str, Any]:
        status = response.status_code
        if status == 200:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                return payload
            errors = ["the answer was not a JSON object"]
            if write:
                raise AutotaskOutcomeUnknownError(entity, verb, status, errors)
            error = AutotaskApiError(entity, verb, status, errors)
            error.retryable = True
            raise error
        errors = self._error_texts(response)
        thread_limit = any(THREAD_LIMIT_CODE in text.lower() for text in errors)
        if status == 429 and not thread_limit:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if self._is_budget_answer(entity, retry_after, errors):
                assert self._budget is not None
                wait_s = retry_after if retry_after is not None else 60.0
                resume_at = self._budget.spent(wait_s, errors)
                used, limit = self._budget._used_and_limit()
                raise AutotaskBudgetExhaustedError(
                    entity, verb, status, errors, resume_at=resume_at, used=limit or used, limit=limit
                )
        if status == 429 or thread_limit:
            # Rejected before processing: safe to retry, writes included.
            limited = AutotaskRateLimitError(
                entity, verb, status, errors, retry_after_seconds(response.headers.get("Retry-After"))
            )
            limited.retryable = True
            raise limited
        if status == 401:
            raise AutotaskAuthError(entity, verb, status, errors)
        if status == 405:
            raise AutotaskNotAllowedError(entity, verb, status, errors)
        if write and status in _OUTCOME_UNKNOWN_STATUSES:
            raise AutotaskOutcomeUnknownError(entity, verb, status, errors)
        error = AutotaskApiError(entity, verb, status, errors)
        # Reads are retried on server errors; a write's 500 is Autotask rejecting it (validation).
        error.retryable = (not write) and status >= 500
        raise error

    def _is_budget_answer(self, entity: str, retry_after: float | None, errors: list[str]) -> bool:
        """A 429 for the hourly threshold (not a passing limit): on the budget read itself, with a long
        Retry-After, or with Autotask's threshold text."""
        if entity == "ThresholdInformation":
            return True
        if retry_after is not None and retry_after > self.settings.budget_retry_after_s:
            return True
        return any("request threshold" in text.lower() or "requests per" in text.lower() for text in errors)

    # --- reads ----------------------------------------------------------------------------------------------

    def query(
        self,
        entity: str,
        filters: list[dict | Filter] | None = None,
        include_fields: list[str] | None = None,
        max_records: int | None = None,
    ) -> list[dict]:
        """Every record matching `filters` (all pages). `max_records` caps the total returned."""
        return [record for page in self.iter_query(entity, filters, include_fields, max_records) for record in page]

    def iter_query(
        self,
        entity: str,
        filters: list[dict | Filter] | None = None,
        include_fields: list[str] | None = None,
        max_records: int | None = None,
    ) -> Iterator[list[dict]]:
        """Page by page: POST `/query`, then POST each `nextPageUrl` with the same body.

        If the nextPageUrl is refused (405/404), continue with the documented alternative, `id gt <last id>`.
        IncludeFields always gets `id`, which that alternative needs.
        """
        _check_entity(entity)
        if include_fields and "id" not in include_fields:
            include_fields = ["id", *include_fields]
        query = Query(entity, filters, include_fields, max_records)
        body = query.body()
        remaining = None if max_records is None else max(1, int(max_records))
        payload = self._request("POST", entity, f"{entity}/query", body=body)
        seen_urls: set[str] = set()
        while True:
            items: list[dict] = list(payload.get("items") or [])
            if remaining is not None:
                items = items[:remaining]
                remaining -= len(items)
            if items:
                yield items
            next_url = (payload.get("pageDetails") or {}).get("nextPageUrl")
            if not items or not next_url or remaining == 0:
                return
            if next_url in seen_urls:
                raise AutotaskApiError(entity, "POST", 200, [f"paging loop: nextPageUrl repeated ({next_url})"])
            seen_urls.add(next_url)
            try:
                payload = self._request("POST", entity, next_url, body=body)
            except AutotaskApiError as exc:
                if exc.status not in (404, 405):
                    raise
                log.info("nextPageUrl refused for %s (HTTP %s); paging by id instead", entity, exc.status)
                yield from self._iter_after_id(query, _max_id(items), remaining)
                return

    def _iter_after_id(self, query: Query, last_id: int, remaining: int | None) -> Iterator[list[dict]]:
        page_size = query.page_size
        while True:
            body = query.body()
            body["filter"] = [*body["filter"], {"op": "gt", "field": "id", "value": last_id}]
            if remaining is not None:
                body["MaxRecords"] = clamp_page_size(min(page_size, remaining))
            payload = self._request("POST", query.entity, f"{query.entity}/query", body=body)
            items: list[dict] = list(payload.get("items") or [])
            if remaining is not None:
                items = items[:remaining]
                remaining -= len(items)
            if items:
                yield items
            if len(items) < body["MaxRecords"] or remaining == 0:
                return
            last_id = _max_id(items)

    def count(self, entity: str, filters: list[dict | Filter] | None = None) -> int:
        _check_entity(entity)
        body = {"filter": Query(entity, filters).filter_body()}
        payload = self._request("POST", entity, f"{entity}/query/count", body=body)
        return int(payload.get("queryCount") or 0)

    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[dict | Filter] | None = None,
        include_fields: list[str] | None = None,
        *,
        rows_per_value: float = 1.0,
    ) -> list[dict]:
        """Records whose `field` is in `values`: deduplicated, split into `in` batches of at most 500,
        run concurrently within the endpoint's slot limit, each batch paged if its records overflow a page.

        When a value matches several records (`rows_per_value`, a first guess, then measured from the
        batches already answered), batches shrink so that their records fit one 500-record page: an
        overflowing batch costs an extra, sequential call.
        """
        # plain ints (ids, the common case) are already API values: skip the encoder's type checks
        pending = deque(dict.fromkeys(value if type(value) is int else to_api_value(value) for value in values))
        if not pending:
            return []
        base_filters: list[FilterLike] = list(to_filter_objects(filters))

        def run(batch: list[Any]) -> list[dict]:
            return self.query(entity, [*base_filters, Filter.in_(field, batch)], include_fields)

        def next_batch() -> list[Any]:
            density = answered_rows / answered_values if answered_values else rows_per_value
            size = self._in_batch_size(len(pending), density)
            return [pending.popleft() for _ in range(size)]

        answered_rows = answered_values = 0
        if len(pending) <= self._in_batch_size(len(pending), rows_per_value):
            return run(list(pending))
        results: dict[int, list[dict]] = {}
        workers = self.settings.max_concurrent_per_endpoint
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"autotask-{entity}") as pool:
            running: dict[Future[list[dict]], tuple[int, int]] = {}
            order = 0
            while pending or running:
                while pending and len(running) < workers:
                    batch = next_batch()
                    running[pool.submit(run, batch)] = (order, len(batch))
                    order += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    position, batch_values = running.pop(future)
                    results[position] = future.result()  # re-raises the batch's error here
                    answered_rows += len(results[position])
                    answered_values += batch_values
        return [record for position in sorted(results) for record in results[position]]

    def _in_batch_size(self, pending: int, rows_per_value: float) -> int:
        """Values per `in` batch: at most 500, fewer when their records would overflow a page; the
        pending values are then spread evenly so the last batch is not a tiny extra call."""
        limit = self.settings.in_batch_size
        if rows_per_value > 1.0:
            # ~6 % headroom: the number of records per value varies from batch to batch.
            limit = min(limit, max(1, int(MAX_PAGE_SIZE / (rows_per_value * 1.06))))
        batches_left = -(-pending // limit)
        return -(-pending // batches_left)

    def get(self, entity: str, record_id: int) -> dict | None:
        """One record, or None when it does not exist (Autotask answers `{"item": null}` or 404)."""
        _check_entity(entity)
        try:
            payload = self._request("GET", entity, f"{entity}/{int(record_id)}")
        except AutotaskApiError as exc:
            if exc.status == 404 and not isinstance(exc, AutotaskNotAllowedError):
                return None
            raise
        item = payload.get("item")
        return item if isinstance(item, dict) else None

    def contract_service_units(
        self,
        contract_service_ids: Iterable[int],
        start: date,
        end: date,
        include_fields: list[str] | None = None,
    ) -> list[dict]:
        """ContractServiceUnits rows overlapping [start, end] (inclusive) for the given contract services.

        The current units of a contract service on a day are those of the row covering that day.
        `include_fields` trims the rows (e.g. contractServiceID, startDate, endDate, units).
        """
        overlap: list[dict | Filter] = [
            Filter.lte("startDate", format_api_date(end)),
            Filter.gte("endDate", format_api_date(start)),
        ]
        ids = [int(value) for value in contract_service_ids]
        # First guess: one row per month of the period (adjustments add more; query_in measures that).
        months = (end.year - start.year) * 12 + end.month - start.month + 1
        return self.query_in(
            "ContractServiceUnits",
            "contractServiceID",
            ids,
            overlap,
            include_fields,
            rows_per_value=float(max(1, months)),
        )

    def billing_items(
        self,
        contract_ids: Iterable[int],
        start: date,
        end: date,
        include_fields: list[str] | None = None,
        *,
        items_per_contract: float = 1.0,
    ) -> list[dict]:
        """BillingItems (what Autotask billed after Approve & Post) of the contracts with itemDate in [start, end]:
        `in` batches of at most 500 contract ids, sized so that their items fit a page (`items_per_contract`, a
        first guess the batches answered then correct)."""
        window: list[dict | Filter] = [
            Filter.gte("itemDate", format_api_date(start)),
            Filter.lte("itemDate", format_api_date(end)),
        ]
        ids = [int(value) for value in contract_ids]
        return self.query_in(
            "BillingItems", "contractID", ids, window, include_fields, rows_per_value=max(1.0, items_per_contract)
        )

    def threshold_information(self) -> dict:
        """`{"externalRequestThreshold", "requestThresholdTimeframe", "currentTimeframeRequestCount"}`."""
        information = self._request("GET", "ThresholdInformation", "ThresholdInformation", paced=False)
        self.budget.learn(information, counts_as_check=True)  # the caller's read paces the hook too
        return information

    def entity_fields(self, entity: str) -> list[dict]:
        """Field metadata (types, lengths, picklists) of an entity."""
        _check_entity(entity)
        payload = self._request("GET", entity, f"{entity}/entityInformation/fields")
        return list(payload.get("fields") or [])

    # --- writes ---------------------------------------------------------------------------------------------

    def create(self, entity: str, body: dict) -> int:
        """POST a new record; returns its id. Raises AutotaskOutcomeUnknownError if it may have been created."""
        _check_entity(entity)
        return self._write("POST", entity, entity, body, [entity])

    def update(self, entity: str, body: dict) -> int:
        """PATCH the fields in `body` (which carries the record's `id`)."""
        _check_entity(entity)
        if body.get("id") is None:
            raise ValueError(f"update of {entity} needs the record id in the body")
        return self._write("PATCH", entity, entity, body, [entity])

    def create_child(self, parent: str, parent_id: int, child: str, body: dict) -> int:
        """POST `/{parent}/{parent_id}/{child}`, e.g. ("Contracts", 12, "ServiceAdjustments", {...})."""
        _check_entity(parent)
        _check_entity(child)
        # The child path works on the child's root entity too: hold a slot of both so neither limit is passed.
        endpoints = [parent, _child_entity_name(parent, child)]
        return self._write(
            "POST", _child_entity_name(parent, child), f"{parent}/{int(parent_id)}/{child}", body, endpoints
        )

    def _write(self, verb: str, entity: str, path: str, body: dict, endpoints: list[str]) -> int:
        payload = self._request(verb, entity, path, body=to_api_value(body), write=True, endpoints=endpoints)
        item_id = payload.get("itemId")
        if item_id is None:
            raise AutotaskOutcomeUnknownError(entity, verb, 200, ["the answer holds no itemId"])
        return int(item_id)

    def test_connection(self) -> tuple[bool, str]:
        try:
            information = self.threshold_information()
        except Exception as exc:  # the UI shows the text; our errors carry no secret
            return False, str(exc)
        return True, f"Connected to {self.api_base}; {information.get('currentTimeframeRequestCount')} requests used"


def _check_entity(entity: str) -> None:
    if not _ENTITY_NAME.match(entity or ""):
        raise ValueError(f"not an Autotask entity name: {entity!r}")


def _max_id(items: list[dict]) -> int:
    return max(int(item["id"]) for item in items)


__all__ = [
    "DEFAULT_ZONE_DISCOVERY_URL",
    "ZONE_CACHE",
    "AutotaskHook",
    "AutotaskSettings",
    "Filter",
    "Group",
    "ZoneCache",
    "zone_api_base",
]
