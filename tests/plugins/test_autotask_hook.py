"""Contract tests of the Autotask hook against the running Autotask sandbox (a real HTTP server).

Every behaviour of `connectors.autotask_hook` the loader relies on: zones, the query grammar, paging,
`in` batching, reads and writes, error mapping, the thread limit, retries, outcome-unknown writes,
budget pacing, and that the secret never leaks.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from connectors.autotask_errors import (
    AutotaskApiError,
    AutotaskAuthError,
    AutotaskBudgetExhaustedError,
    AutotaskNotAllowedError,
    AutotaskOutcomeUnknownError,
    AutotaskZoneError,
)
from connectors.autotask_hook import ZONE_CACHE, AutotaskHook
from connectors.autotask_query import Filter, Query, and_, format_api_date, or_
from tests.servers import RunningServer, free_port, start_server

USER = "api-user@demo.example"
SECRET = "Zebra-s3cr3t-7f1c9"  # distinctive, so a leak is unmistakable in logs and messages
INTEGRATION = "DEMOINTEGRATION"
MONTH_START, MONTH_END = date(2026, 10, 1), date(2026, 10, 31)
FAULTS_OFF = {"latency_ms": 0, "error_rate": 0.0, "lost_response_rate": 0.0, "thread_limit": 3, "hourly_limit": 10000}


def _sandbox_args(*extra: str) -> list[str]:
    return ["sandbox.autotask_server", "--secret", SECRET, "--seed", "42", "--seed-month", "2026-10", *extra]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningServer]:
    server = start_server(_sandbox_args("--seed-customers", "20", "--seed-subscriptions-per-customer", "3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def big_sandbox() -> Iterator[RunningServer]:
    """Enough contract services (>1,200) for paging and `in` batching."""
    server = start_server(_sandbox_args("--seed-customers", "800", "--seed-subscriptions-per-customer", "3"))
    yield server
    server.stop()


class Admin:
    """The sandbox's admin API (no auth, not counted)."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=30)

    def faults(self, **faults: Any) -> None:
        self.client.post("/_admin/faults", json=faults).raise_for_status()

    def stats(self) -> dict:
        return self.client.get("/_admin/stats").raise_for_status().json()

    def reset_stats(self) -> None:
        self.client.post("/_admin/stats/reset").raise_for_status()

    def reset(self) -> None:
        self.client.post("/_admin/reset").raise_for_status()

    def state(self, entity: str) -> list[dict]:
        payload = self.client.get(f"/_admin/state/{entity}").raise_for_status().json()
        return payload if isinstance(payload, list) else payload.get("items", payload.get("records", []))

    def calls(self, entity: str, verb: str | None = None) -> int:
        return count_calls(self.stats(), entity, verb)

    def max_concurrency(self) -> int:
        return max_concurrency(self.stats())


def count_calls(stats: dict, entity: str, verb: str | None = None) -> int:
    """Requests to an entity (optionally one verb) from `/_admin/stats`, tolerant of its nesting."""
    by_entity = stats.get("requests") or stats.get("requests_by_entity") or stats.get("by_entity") or {}
    counts = by_entity.get(entity, {})
    if isinstance(counts, int):
        return counts
    if verb is None:
        return sum(value for value in counts.values() if isinstance(value, int))
    return sum(value for key, value in counts.items() if key.upper().startswith(verb.upper()))


def max_concurrency(stats: dict) -> int:
    per_endpoint = stats.get("max_concurrency") or stats.get("max_concurrency_by_endpoint") or {}
    return max(per_endpoint.values(), default=0) if isinstance(per_endpoint, dict) else int(per_endpoint)


def _admin_without_faults(server: RunningServer) -> Iterator[Admin]:
    handle = Admin(server)
    handle.faults(**FAULTS_OFF)
    handle.reset_stats()
    yield handle
    handle.faults(**FAULTS_OFF)


@pytest.fixture
def admin(sandbox: RunningServer) -> Iterator[Admin]:
    yield from _admin_without_faults(sandbox)


@pytest.fixture
def big_admin(big_sandbox: RunningServer) -> Iterator[Admin]:
    yield from _admin_without_faults(big_sandbox)


class SleepRecorder:
    """Stands in for time.sleep: records each wait (and may act, e.g. lift a fault) instead of waiting."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.waits: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.on_sleep:
            self.on_sleep(seconds)


_CONN_COUNTER = iter(range(1_000_000))


def make_hook(
    monkeypatch: pytest.MonkeyPatch,
    server: RunningServer | None,
    *,
    sleep: Callable[[float], None] | None = None,
    secret: str = SECRET,
    **extra: Any,
) -> AutotaskHook:
    """A hook on a fresh env-var connection; `server=None` leaves the host empty (zone discovery)."""
    conn_id = f"autotask_test_{next(_CONN_COUNTER)}"
    connection: dict[str, Any] = {
        "conn_type": "http",
        "login": USER,
        "password": secret,
        # Budget re-reads in line by default here, so request counts and fault timings are exact.
        "extra": {
            "integration_code": INTEGRATION,
            "retry_wait_s": 0.01,
            "retry_max_wait_s": 0.05,
            "budget_refresh_in_background": False,
            **extra,
        },
    }
    if server is not None:
        connection.update({"host": "127.0.0.1", "port": server.port, "schema": "http"})
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return AutotaskHook(conn_id, sleep=sleep or SleepRecorder())


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin) -> AutotaskHook:
    return make_hook(monkeypatch, sandbox)


def ids(records: list[dict]) -> set[int]:
    return {int(record["id"]) for record in records}


# --- zones ---------------------------------------------------------------------------------------------------


def discovery_url(server: RunningServer) -> str:
    return f"{server.url}/atservicesrest/v1.0/zoneInformation"


def test_zone_discovery_finds_the_zone_and_caches_it_per_user_and_url(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    ZONE_CACHE.clear()
    first = make_hook(monkeypatch, None, zone_discovery_url=discovery_url(sandbox))
    assert first.count("Companies") == len(admin.state("Companies"))
    assert first.api_base.lower() == f"{sandbox.url}/atservicesrest/v1.0/"
    assert ZONE_CACHE.get(USER, discovery_url(sandbox)) == first.api_base

    # Another hook with the same user and discovery URL reuses the zone: with the cache seeded for an
    # unreachable discovery URL, it never calls discovery and still works.
    unreachable = f"http://127.0.0.1:{free_port()}/atservicesrest/v1.0/zoneInformation"
    ZONE_CACHE.put(USER, unreachable, first.api_base)
    cached = make_hook(monkeypatch, None, zone_discovery_url=unreachable)
    assert cached.count("Companies") == len(admin.state("Companies"))
    # ...while an uncached unreachable discovery URL is a zone error, not a hang or a crash.
    ZONE_CACHE.invalidate(USER, unreachable)
    with pytest.raises(AutotaskZoneError):
        make_hook(monkeypatch, None, zone_discovery_url=unreachable).count("Companies")


def test_unknown_user_gets_a_zone_error_with_autotasks_text(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    ZONE_CACHE.clear()
    conn_id = "autotask_unknown_user"
    connection = {
        "conn_type": "http",
        "login": "nobody@nowhere.example",
        "password": SECRET,
        "extra": {"integration_code": INTEGRATION, "zone_discovery_url": discovery_url(sandbox)},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    with pytest.raises(AutotaskZoneError) as caught:
        AutotaskHook(conn_id).count("Companies")
    assert caught.value.status == 500
    assert "Zone information could not be determined" in str(caught.value)


def test_a_401_from_a_stale_cached_zone_rediscovers_once_and_retries(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    # The "old zone" is another Autotask database that does not know this user's secret: it answers 401.
    other = start_server(["sandbox.autotask_server", "--secret", "other-secret", "--seed-customers", "1"])
    try:
        ZONE_CACHE.clear()
        ZONE_CACHE.put(USER, discovery_url(sandbox), f"{other.url}/atservicesrest/v1.0/")
        hook = make_hook(monkeypatch, None, zone_discovery_url=discovery_url(sandbox))
        assert hook.count("Companies") == len(admin.state("Companies"))
        assert hook.api_base.lower() == f"{sandbox.url}/atservicesrest/v1.0/"
        assert ZONE_CACHE.get(USER, discovery_url(sandbox)) == hook.api_base

        # Discovery that keeps pointing at the wrong database: one re-discovery, then the 401 surfaces.
        ZONE_CACHE.clear()
        stubborn = make_hook(monkeypatch, None, zone_discovery_url=discovery_url(other))
        with pytest.raises(AutotaskAuthError) as caught:
            stubborn.count("Companies")
        assert caught.value.status == 401
    finally:
        other.stop()


class FlakyZoneLookup:
    """zoneInformation in front of the sandbox that first answers with the given failures (status, headers)."""

    def __init__(self, target: RunningServer, failures: list[tuple[int, dict[str, str]]]) -> None:
        self.requests = 0
        target_zone = discovery_url(target)
        lookup = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                lookup.requests += 1
                if failures:
                    status, headers = failures.pop(0)
                    content = json.dumps({"Message": f"injected {status}"}).encode()
                else:
                    query = self.path.split("?", 1)[1] if "?" in self.path else ""
                    answer = httpx.get(f"{target_zone}?{query}")
                    status, headers, content = answer.status_code, {}, answer.content
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/atservicesrest/v1.0/zoneInformation"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("failures", "least_wait"),
    [([(503, {})], 0.0), ([(502, {}), (503, {})], 0.0), ([(429, {"Retry-After": "2"})], 2.0)],
    ids=["one-503", "502-then-503", "429-retry-after"],
)
def test_the_zone_lookup_is_retried_on_server_errors_and_rate_limits_like_any_read(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin, failures: list, least_wait: float
) -> None:
    ZONE_CACHE.clear()
    lookup = FlakyZoneLookup(sandbox, list(failures))
    try:
        recorder = SleepRecorder()
        hook = make_hook(monkeypatch, None, sleep=recorder, zone_discovery_url=lookup.url)
        assert hook.count("Companies") == len(admin.state("Companies"))
        assert hook.api_base.lower() == f"{sandbox.url}/atservicesrest/v1.0/"
        assert lookup.requests == len(failures) + 1
        assert len(recorder.waits) == len(failures) and recorder.waits[0] >= least_wait
    finally:
        lookup.close()
        ZONE_CACHE.clear()


def test_a_zone_lookup_that_keeps_failing_gives_up_after_the_read_attempts(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer
) -> None:
    ZONE_CACHE.clear()
    lookup = FlakyZoneLookup(sandbox, [(503, {})] * 10)
    try:
        hook = make_hook(monkeypatch, None, zone_discovery_url=lookup.url, read_attempts=3)
        with pytest.raises(AutotaskZoneError) as caught:
            hook.count("Companies")
        assert caught.value.status == 503 and "injected 503" in str(caught.value)
        assert lookup.requests == 3
    finally:
        lookup.close()


def test_an_explicit_host_skips_zone_discovery(monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer) -> None:
    hook = make_hook(monkeypatch, sandbox, zone_discovery_url=f"http://127.0.0.1:{free_port()}/unreachable")
    assert hook.api_base == f"http://127.0.0.1:{sandbox.port}/atservicesrest/v1.0/"
    assert hook.threshold_information()["externalRequestThreshold"] > 0


# --- the query grammar ---------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).lower()


def test_every_operator_selects_what_autotask_would(hook: AutotaskHook, admin: Admin) -> None:
    companies = admin.state("Companies")
    assert len(companies) >= 10
    by_id = sorted(companies, key=lambda record: record["id"])
    middle = by_id[len(by_id) // 2]
    name = middle["companyName"]
    some_ids = [record["id"] for record in by_id[::3]]
    cases: list[tuple[Filter, Callable[[dict], bool]]] = [
        (Filter.eq("id", middle["id"]), lambda r: r["id"] == middle["id"]),
        (Filter.noteq("id", middle["id"]), lambda r: r["id"] != middle["id"]),
        (Filter.gt("id", middle["id"]), lambda r: r["id"] > middle["id"]),
        (Filter.gte("id", middle["id"]), lambda r: r["id"] >= middle["id"]),
        (Filter.lt("id", middle["id"]), lambda r: r["id"] < middle["id"]),
        (Filter.lte("id", middle["id"]), lambda r: r["id"] <= middle["id"]),
        (Filter.begins_with("companyName", name[:3]), lambda r: _text(r["companyName"]).startswith(_text(name[:3]))),
        (Filter.ends_with("companyName", name[-3:]), lambda r: _text(r["companyName"]).endswith(_text(name[-3:]))),
        (Filter.contains("companyName", name[2:6]), lambda r: _text(name[2:6]) in _text(r["companyName"])),
        (Filter.exist("parentCompanyID"), lambda r: r.get("parentCompanyID") not in (None, "")),
        (Filter.not_exist("parentCompanyID"), lambda r: r.get("parentCompanyID") in (None, "")),
        (Filter.in_("id", some_ids), lambda r: r["id"] in some_ids),
        (Filter.not_in("id", some_ids), lambda r: r["id"] not in some_ids),
    ]
    for condition, predicate in cases:
        expected = {record["id"] for record in companies if predicate(record)}
        assert ids(hook.query("Companies", [condition])) == expected, condition
    # Raw dicts (what include/ passes) mean the same as the builder.
    raw = [{"op": "in", "field": "id", "value": some_ids}]
    assert ids(hook.query("Companies", raw)) == set(some_ids)


def test_nested_groups_combine_like_boolean_logic(hook: AutotaskHook, admin: Admin) -> None:
    companies = admin.state("Companies")
    ordered = sorted(record["id"] for record in companies)
    low, high = ordered[2], ordered[-3]
    pick = ordered[len(ordered) // 2]
    # (id <= low OR (id >= high AND id != ordered[-1])) OR id = pick, ANDed at top level with id != ordered[0]
    filters = [
        or_(
            or_(Filter.lte("id", low), and_(Filter.gte("id", high), Filter.noteq("id", ordered[-1]))),
            Filter.eq("id", pick),
        ),
        Filter.noteq("id", ordered[0]),
    ]
    expected = {i for i in ordered if (i <= low or (i >= high and i != ordered[-1]) or i == pick) and i != ordered[0]}
    assert ids(hook.query("Companies", filters)) == expected
    raw = [
        {"op": "or", "items": [{"op": "eq", "field": "id", "value": low}, {"op": "eq", "field": "id", "value": high}]}
    ]
    assert ids(hook.query("Companies", raw)) == {low, high}


def test_a_udf_filter_is_marked_and_matches(hook: AutotaskHook, admin: Admin) -> None:
    companies = [record for record in admin.state("Companies") if record.get("userDefinedFields")]
    assert companies, "the seed should give companies a UDF"
    udf = next(u for u in companies[0]["userDefinedFields"] if u.get("value"))
    assert Filter.eq(udf["name"], udf["value"], udf=True).to_dict()["udf"] is True
    expected = {
        record["id"]
        for record in companies
        if any(u["name"] == udf["name"] and u.get("value") == udf["value"] for u in record["userDefinedFields"])
    }
    assert ids(hook.query("Companies", [Filter.eq(udf["name"], udf["value"], udf=True)])) == expected
    with pytest.raises(ValueError, match="one user-defined field"):
        Query("Companies", [Filter.eq("A", 1, udf=True), Filter.eq("B", 2, udf=True)])


def test_builder_rejects_what_autotask_would_reject() -> None:
    with pytest.raises(ValueError, match="operator"):
        Filter("startsWith", "companyName", "A")
    with pytest.raises(ValueError, match="at most 500"):
        Filter.in_("id", range(501))
    with pytest.raises(ValueError):
        Filter.in_("id", [])
    body = Query("Companies", None).body()
    assert body["filter"] == [{"op": "gte", "field": "id", "value": 0}] and body["MaxRecords"] == 500
    assert Filter.gte("startDate", date(2026, 10, 1)).to_dict()["value"] == "2026-10-01T00:00:00"
    assert format_api_date(date(2026, 2, 3)) == "2026-02-03T00:00:00"


def test_include_fields_limits_the_returned_fields(hook: AutotaskHook) -> None:
    records = hook.query("Companies", include_fields=["companyName", "phone"])
    assert records
    for record in records:
        assert set(record) - {"userDefinedFields"} == {"id", "companyName", "phone"}


def test_max_records_is_clamped_to_what_autotask_accepts(hook: AutotaskHook, admin: Admin) -> None:
    assert Query("Companies", max_records=0).body()["MaxRecords"] == 1
    assert Query("Companies", max_records=10_000).body()["MaxRecords"] == 500
    assert Query("Companies", max_records=-5).body()["MaxRecords"] == 1
    total = len(admin.state("Companies"))
    assert len(hook.query("Companies", max_records=10_000)) == total  # not a 500 "maxCountOfRecords" error
    assert len(hook.query("Companies", max_records=0)) == 1
    assert len(hook.query("Companies", max_records=5)) == 5


# --- paging and batching -------------------------------------------------------------------------------------


def test_paging_follows_next_page_urls_over_more_than_500_records(
    monkeypatch: pytest.MonkeyPatch, big_sandbox: RunningServer, big_admin: Admin
) -> None:
    expected = {record["id"] for record in big_admin.state("ContractServices")}
    assert len(expected) > 1000
    hook = make_hook(monkeypatch, big_sandbox)
    pages = list(hook.iter_query("ContractServices", include_fields=["contractID"]))
    assert [len(page) for page in pages[:-1]] == [500] * (len(pages) - 1)
    assert len(pages) == math.ceil(len(expected) / 500)
    records = [record for page in pages for record in page]
    assert len(records) == len(expected) and ids(records) == expected
    assert big_admin.calls("ContractServices") == len(pages)
    assert hook.count("ContractServices") == len(expected)
    assert len(hook.query("ContractServices", max_records=700)) == 700


class RefuseNextPageProxy:
    """A forwarding proxy that answers 405 to nextPageUrl requests, as some Autotask zones do for GET."""

    def __init__(self, target: RunningServer) -> None:
        target_url = target.url

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "/query/next" in self.path:
                    payload = json.dumps({"Message": "The requested resource does not support http method 'POST'."})
                    self._answer(405, payload.encode())
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                response = httpx.request(self.command, target_url + self.path, content=body, headers=headers)
                self._answer(response.status_code, response.content)

            def _answer(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_paging_falls_back_to_id_gt_when_next_page_url_is_refused(
    monkeypatch: pytest.MonkeyPatch, big_sandbox: RunningServer, big_admin: Admin
) -> None:
    expected = {record["id"] for record in big_admin.state("ContractServices")}
    proxy = RefuseNextPageProxy(big_sandbox)
    try:
        conn_id = "autotask_proxy"
        connection = {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": proxy.port,
            "schema": "http",
            "login": USER,
            "password": SECRET,
            "extra": {"integration_code": INTEGRATION},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        hook = AutotaskHook(conn_id)
        records = hook.query("ContractServices")
        assert len(records) == len(expected) and ids(records) == expected
        assert len(hook.query("ContractServices", max_records=600)) == 600
    finally:
        proxy.close()


def test_query_in_dedupes_and_batches_1200_ids_into_three_concurrent_calls(
    monkeypatch: pytest.MonkeyPatch, big_sandbox: RunningServer, big_admin: Admin
) -> None:
    all_ids = sorted(record["id"] for record in big_admin.state("ContractServices"))
    wanted = all_ids[:1200]
    big_admin.faults(latency_ms=150)
    big_admin.reset_stats()
    hook = make_hook(monkeypatch, big_sandbox)
    records = hook.query_in("ContractServices", "id", [*wanted, *wanted[:300]], include_fields=["contractID"])
    assert ids(records) == set(wanted) and len(records) == 1200
    stats = big_admin.stats()
    assert count_calls(stats, "ContractServices") == 3
    assert max_concurrency(stats) >= 2  # the batches ran side by side
    assert hook.query_in("ContractServices", "id", []) == []


def test_query_in_pages_overflowing_batches_and_shrinks_the_next_ones(
    monkeypatch: pytest.MonkeyPatch, big_sandbox: RunningServer, big_admin: Admin
) -> None:
    # A whole year of units: several rows per contract service, so 500-id batches would overflow a page.
    start, end = date(2026, 1, 1), date(2026, 12, 31)
    rows = big_admin.state("ContractServiceUnits")
    service_ids = sorted({row["contractServiceID"] for row in rows})[:1200]
    wanted = set(service_ids)
    first, last = format_api_date(start), format_api_date(end)
    expected = {
        row["id"]
        for row in rows
        if row["contractServiceID"] in wanted and row["startDate"][:19] <= last and row["endDate"][:19] >= first
    }
    assert len(expected) > 2 * len(service_ids)
    hook = make_hook(monkeypatch, big_sandbox)
    hook.threshold_information()
    big_admin.reset_stats()
    overlap = [Filter.lte("startDate", end), Filter.gte("endDate", start)]
    got = hook.query_in("ContractServiceUnits", "contractServiceID", service_ids, overlap, rows_per_value=1.0)
    assert ids(got) == expected and len(got) == len(expected)  # paged batches lose and repeat nothing
    calls = big_admin.calls("ContractServiceUnits")
    # The first wave (3 batches of 400) overflows; later batches are sized from what it returned.
    assert calls <= math.ceil(len(expected) / 500) + 3 + 3


# --- reads and writes ----------------------------------------------------------------------------------------


def test_count_matches_the_data(hook: AutotaskHook, admin: Admin) -> None:
    companies = admin.state("Companies")
    assert hook.count("Companies") == len(companies)
    pivot = sorted(record["id"] for record in companies)[5]
    assert hook.count("Companies", [Filter.gt("id", pivot)]) == sum(1 for r in companies if r["id"] > pivot)


def test_get_returns_the_record_or_none_for_a_missing_id(hook: AutotaskHook, admin: Admin) -> None:
    company = admin.state("Companies")[0]
    assert hook.get("Companies", company["id"])["companyName"] == company["companyName"]
    assert hook.get("Companies", 987_654_321) is None


def test_create_update_and_child_create_round_trip(hook: AutotaskHook, admin: Admin) -> None:
    owner = admin.state("Resources")[0]["id"]
    company_id = hook.create(
        "Companies", {"companyName": "Hook Test GmbH", "companyType": 1, "ownerResourceID": owner, "phone": "1"}
    )
    assert hook.get("Companies", company_id)["companyName"] == "Hook Test GmbH"
    assert hook.update("Companies", {"id": company_id, "phone": "+49 30 123"}) == company_id
    assert hook.get("Companies", company_id)["phone"] == "+49 30 123"

    contract_id = hook.create(
        "Contracts",
        {
            "companyID": company_id,
            "contractName": "Hook Test recurring",
            "contractType": 7,
            "startDate": date(2026, 1, 1),
            "endDate": date(2026, 12, 31),
            "status": 1,
            "timeReportingRequiresStartAndStopTimes": 0,
            "contractNumber": "HOOK-TEST-1",
        },
    )
    contract = hook.get("Contracts", contract_id)
    assert contract["startDate"].startswith("2026-01-01") and contract["contractNumber"] == "HOOK-TEST-1"

    service = admin.state("Services")[0]
    contract_service_id = hook.create_child(
        "Contracts", contract_id, "Services", {"contractID": contract_id, "serviceID": service["id"], "unitPrice": 10}
    )
    assert hook.get("ContractServices", contract_service_id)["contractID"] == contract_id

    adjustment_id = hook.create_child(
        "Contracts",
        contract_id,
        "ServiceAdjustments",
        {
            "contractID": contract_id,
            "contractServiceID": contract_service_id,
            "effectiveDate": MONTH_START,
            "unitChange": 7,
        },
    )
    assert adjustment_id > 0
    units = hook.contract_service_units([contract_service_id], MONTH_START, MONTH_END)
    covering = [row for row in units if row["startDate"][:10] <= "2026-10-15" <= row["endDate"][:10]]
    assert [row["units"] for row in covering] == [7]


def test_contract_service_units_returns_the_rows_overlapping_the_period(hook: AutotaskHook, admin: Admin) -> None:
    rows = admin.state("ContractServiceUnits")
    service_ids = sorted({row["contractServiceID"] for row in rows})
    start, end = format_api_date(MONTH_START), format_api_date(MONTH_END)
    expected = {row["id"] for row in rows if row["startDate"][:19] <= end and row["endDate"][:19] >= start}
    assert expected
    got = hook.contract_service_units(service_ids, MONTH_START, MONTH_END)
    assert ids(got) == expected


def test_entity_fields_returns_the_field_metadata(hook: AutotaskHook) -> None:
    fields = {field["name"]: field for field in hook.entity_fields("Contracts")}
    assert fields["contractName"]["isRequired"] is True
    assert fields["id"]["isReadOnly"] is True
    assert any(value.get("value") in (7, "7") for value in fields["contractType"]["picklistValues"])


def test_impersonation_header_is_sent(monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin) -> None:
    active = next(r for r in admin.state("Resources") if r.get("isActive"))
    assert make_hook(monkeypatch, sandbox, impersonation_resource_id=active["id"]).count("Companies") > 0
    with pytest.raises(AutotaskApiError, match="impersonated Resource"):
        make_hook(monkeypatch, sandbox, impersonation_resource_id=987654).count("Companies")


def test_update_needs_the_id_in_the_body(hook: AutotaskHook) -> None:
    with pytest.raises(ValueError, match="id"):
        hook.update("Companies", {"phone": "1"})


def test_a_verb_the_entity_does_not_allow_maps_to_not_allowed_with_the_text(hook: AutotaskHook) -> None:
    with pytest.raises(AutotaskNotAllowedError) as caught:
        hook.query("ContractServiceAdjustments")
    assert caught.value.status == 405
    assert "does not support http method" in str(caught.value)


def test_validation_errors_carry_autotasks_text_and_are_not_retried(hook: AutotaskHook, admin: Admin) -> None:
    with pytest.raises(AutotaskApiError) as caught:
        hook.create("Companies", {"companyName": "Missing everything"})
    error = caught.value
    assert error.status == 500 and error.errors
    assert not isinstance(error, AutotaskOutcomeUnknownError)
    assert any(text in str(error) for text in ("companyType", "ownerResourceID", "phone"))
    assert admin.calls("Companies", "POST") == 1
    with pytest.raises(AutotaskApiError, match="noSuchField"):
        hook.query("Companies", [Filter.eq("noSuchField", 1)])


# --- limits and retries --------------------------------------------------------------------------------------


def test_the_hook_never_exceeds_the_thread_limit(monkeypatch: pytest.MonkeyPatch, sandbox, admin: Admin) -> None:
    admin.faults(latency_ms=120, thread_limit=3)
    hook = make_hook(monkeypatch, sandbox)
    company_ids = [record["id"] for record in admin.state("Companies")]
    admin.reset_stats()
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda i: hook.get("Companies", i), company_ids[:12]))
    assert all(result is not None for result in results)
    assert 1 <= admin.max_concurrency() <= 3
    assert admin.calls("Companies") == 12  # not a single Itgenatr005 rejection to retry


@pytest.mark.parametrize("rejection_status", [429, 500])
def test_thread_limit_rejections_are_retried_even_for_writes(
    monkeypatch: pytest.MonkeyPatch,
    sandbox: RunningServer,
    admin: Admin,
    caplog: pytest.LogCaptureFixture,
    rejection_status: int,
) -> None:
    # A hook that believes it may run 6 at a time meets the server's limit of 3: Itgenatr005 (whatever its
    # HTTP status), then retries.
    admin.faults(latency_ms=150, thread_limit=3, thread_limit_status=rejection_status)
    hook = make_hook(monkeypatch, sandbox, sleep=time.sleep, max_concurrent_per_endpoint=6, max_attempts=20)
    owner = admin.state("Resources")[0]["id"]
    caplog.set_level(logging.WARNING, logger="connectors.autotask_hook")
    with ThreadPoolExecutor(max_workers=6) as pool:
        created = list(
            pool.map(
                lambda i: hook.create(
                    "Companies",
                    {
                        "companyName": f"Thread {i} ({rejection_status})",
                        "companyType": 1,
                        "ownerResourceID": owner,
                        "phone": "1",
                    },
                ),
                range(6),
            )
        )
    assert len(set(created)) == 6
    assert "itgenatr005" in caplog.text.lower()
    admin.faults(thread_limit_status=429)
    assert admin.stats()["rejected"].get("thread_limit", 0) > 0
    names = [record["companyName"] for record in admin.state("Companies")]
    assert all(names.count(f"Thread {i} ({rejection_status})") == 1 for i in range(6))  # retried, never twice


class FakeClock:
    """Stands in for time.monotonic: moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_hourly_budget_429_stops_at_once_says_when_and_holds_later_requests_until_then(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    """Issue 9: an Autotask whose budget ran out made the hook retry each request on Retry-After for minutes,
    then fail with the server's text. Now the first 429 for the threshold raises a typed error in plain words,
    no request waits, and none is sent until the time Autotask named."""
    admin.reset()  # empties the sandbox's rolling-hour window
    recorder = SleepRecorder()
    hook = make_hook(monkeypatch, sandbox, sleep=recorder)
    clock = FakeClock()
    hook._clock = clock
    hook.count("Companies")  # the budget read, then the count
    admin.faults(hourly_limit=3)
    hook.count("Companies")
    started = datetime.now(UTC)

    with pytest.raises(AutotaskBudgetExhaustedError) as caught:
        hook.count("Companies")

    error = caught.value
    assert not error.retryable and error.status == 429
    assert timedelta(minutes=50) < error.resume_at - started <= timedelta(minutes=61)
    text = str(error)
    assert "hourly request budget ran out" in text and "Requests go on at about" in text
    assert f"{error.resume_at:%Y-%m-%d %H:%M:%S}" in text and "The request threshold of 3" in text
    assert not [wait for wait in recorder.waits if wait >= 1], "nothing sleeps inside a request"
    assert admin.stats()["rejected"]["hourly_limit"] == 1, "the 429 is not retried"
    # the next requests stop in the hook: nothing is sent while the budget is spent
    admin.reset_stats()
    with pytest.raises(AutotaskBudgetExhaustedError, match="Requests go on at about"):
        hook.query("Companies", [Filter.eq("id", 1)])
    assert admin.stats()["total"] == 0
    # once the time has come (and the window has room again) requests go on, the budget read first
    admin.faults(hourly_limit=10000)
    clock.now += 3700
    assert hook.count("Companies") > 0
    assert admin.calls("ThresholdInformation") == 1 and hook.budget.exhausted_until is None


def test_the_budget_read_is_never_retried_on_a_429_and_marks_the_budget_spent(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    admin.reset()
    admin.faults(hourly_limit=1)
    recorder = SleepRecorder()
    hook = make_hook(monkeypatch, sandbox, sleep=recorder)
    assert hook.threshold_information()["currentTimeframeRequestCount"] == 1  # the single allowed request

    with pytest.raises(AutotaskBudgetExhaustedError) as caught:
        hook.threshold_information()

    assert admin.stats()["rejected"]["hourly_limit"] == 1 and not recorder.waits
    assert caught.value.limit == 1 and caught.value.used == 1 and "1 of 1 requests" in str(caught.value)
    assert hook.budget.exhausted_until is not None
    with pytest.raises(AutotaskBudgetExhaustedError):
        hook.create("Companies", {"companyName": "Ñandú & Söhne GmbH", "companyType": 1, "phone": "1"})
    assert admin.stats()["rejected"]["hourly_limit"] == 1, "nothing more was sent"
    assert "Ñandú & Söhne GmbH" not in [record["companyName"] for record in admin.state("Companies")]


def test_server_errors_are_retried_for_reads(monkeypatch: pytest.MonkeyPatch, sandbox, admin: Admin) -> None:
    recorder = SleepRecorder(on_sleep=lambda _: admin.faults(error_rate=0.0))
    hook = make_hook(monkeypatch, sandbox, sleep=recorder)
    hook.threshold_information()  # the first budget read happens before the fault
    admin.faults(error_rate=1.0)
    assert hook.count("Companies") == len(admin.state("Companies"))
    assert len(recorder.waits) >= 1
    assert admin.calls("Companies") == 2


def test_server_errors_are_not_retried_for_writes(monkeypatch: pytest.MonkeyPatch, sandbox, admin: Admin) -> None:
    owner = admin.state("Resources")[0]["id"]
    hook = make_hook(monkeypatch, sandbox)
    hook.threshold_information()
    admin.faults(error_rate=1.0)
    admin.reset_stats()
    before = len(admin.state("Companies"))
    with pytest.raises(AutotaskApiError) as caught:
        hook.create("Companies", {"companyName": "Never", "companyType": 1, "ownerResourceID": owner, "phone": "1"})
    assert caught.value.status is not None and caught.value.status >= 500
    assert admin.calls("Companies", "POST") == 1
    admin.faults(error_rate=0.0)
    if isinstance(caught.value, AutotaskOutcomeUnknownError):
        return  # a gateway-style status: the loader must check; nothing more can be asserted
    assert len(admin.state("Companies")) == before


def test_a_lost_response_on_a_write_is_outcome_unknown_and_the_record_exists(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    owner = admin.state("Resources")[0]["id"]
    hook = make_hook(monkeypatch, sandbox, timeout_s=5)
    hook.threshold_information()
    admin.faults(lost_response_rate=1.0)
    admin.reset_stats()
    with pytest.raises(AutotaskOutcomeUnknownError) as caught:
        hook.create(
            "Companies", {"companyName": "Lost Reply AG", "companyType": 1, "ownerResourceID": owner, "phone": "1"}
        )
    assert "may have been applied" in str(caught.value)
    assert admin.calls("Companies", "POST") == 1  # never retried blindly
    admin.faults(lost_response_rate=0.0)
    assert [r["companyName"] for r in hook.query("Companies", [Filter.eq("companyName", "Lost Reply AG")])] == [
        "Lost Reply AG"
    ]


class HangUpServer:
    """A TCP server that reads each request and closes the connection without answering."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                except OSError:
                    continue
                if data:
                    self.requests.append(data.split(b" ", 1)[0].decode())

    def close(self) -> None:
        self.sock.close()


def test_a_dropped_connection_after_sending_a_write_is_outcome_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    server = HangUpServer()
    try:
        conn_id = "autotask_hang_up"
        connection = {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": server.port,
            "schema": "http",
            "login": USER,
            "password": SECRET,
            "extra": {"integration_code": INTEGRATION, "retry_wait_s": 0.01, "budget_refresh_in_background": False},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        hook = AutotaskHook(conn_id, sleep=SleepRecorder())
        with pytest.raises(AutotaskApiError) as read_error:
            hook.count("Companies")  # a read is retried (read_attempts), then reported
        assert read_error.value.status is None and not isinstance(read_error.value, AutotaskOutcomeUnknownError)
        server.requests.clear()
        hook.budget.ratio = 0.0
        with pytest.raises(AutotaskOutcomeUnknownError) as caught:
            hook.create("Companies", {"companyName": "Hung Up"})
        assert caught.value.status is None
        assert "may have been applied" in str(caught.value)
        assert server.requests.count("POST") == 1  # sent once, never repeated blindly
    finally:
        server.close()


def test_a_lost_response_on_a_read_is_retried(monkeypatch: pytest.MonkeyPatch, sandbox, admin: Admin) -> None:
    hook = make_hook(monkeypatch, sandbox, timeout_s=5)
    hook.threshold_information()
    admin.faults(lost_response_rate=1.0)
    recorder = SleepRecorder(on_sleep=lambda _: admin.faults(lost_response_rate=0.0))
    hook._sleep = recorder
    assert hook.count("Companies") > 0
    assert recorder.waits


def test_a_refused_connection_on_a_write_is_retried_because_nothing_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # The database goes down between two calls and is back (fresh) before the write's retry.
    port = free_port()
    servers = [start_server(_sandbox_args("--seed-customers", "2"), port=port)]

    def bring_up(_: float) -> None:
        if servers[-1].process.poll() is not None:
            servers.append(start_server(_sandbox_args("--seed-customers", "2"), port=port))

    hook = make_hook(monkeypatch, servers[0], sleep=SleepRecorder(on_sleep=bring_up))
    try:
        owner = hook.query("Resources", max_records=1)[0]["id"]
        servers[0].stop()
        company_id = hook.create(
            "Companies", {"companyName": "After Outage", "companyType": 1, "ownerResourceID": owner, "phone": "1"}
        )
        assert len(servers) == 2, "the first attempt must have met the refused connection"
        names = [record["companyName"] for record in Admin(servers[-1]).state("Companies")]
        assert names.count("After Outage") == 1
        assert hook.get("Companies", company_id)["companyName"] == "After Outage"
    finally:
        for server in servers:
            server.stop()


# --- budget --------------------------------------------------------------------------------------------------


def test_budget_slows_down_from_three_quarters_and_stops_with_a_typed_error_at_the_pause_ratio(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    admin.reset()  # empties the sandbox's rolling-hour window
    admin.faults(hourly_limit=40)
    recorder = SleepRecorder()
    hook = make_hook(monkeypatch, sandbox, sleep=recorder, budget_check_every=3, budget_max_delay_s=0.2)
    hook._clock = FakeClock()
    counted = 0
    with pytest.raises(AutotaskBudgetExhaustedError) as caught:
        for _ in range(45):
            hook.count("Companies")
            counted += 1
            if hook.budget.ratio < 0.75:
                assert hook.budget.slowdown_seconds == 0, "no slow-down below three quarters of the budget"
    budget = hook.budget
    assert budget.slowdown_seconds > 0, "from 75 % of the hourly limit the hook slows down"
    assert all(wait <= 0.2 for wait in recorder.waits), "it never sleeps longer than one slow-down step"
    # it stopped at 90 % (36 of 40) before Autotask had to refuse anything
    assert admin.stats()["rejected"].get("hourly_limit", 0) == 0
    assert 24 <= counted < 36  # the budget reads count too
    error = caught.value
    assert error.limit == 40 and 36 <= error.used <= 40
    assert "hourly request budget ran out" in str(error) and error.resume_at > datetime.now(UTC)


def test_budget_reads_in_the_background_do_not_hold_up_requests(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin
) -> None:
    hook = make_hook(monkeypatch, sandbox, budget_refresh_in_background=True, budget_check_every=2)
    # The budget read (a real ThresholdInformation request) is held until the request it paces has returned:
    # read in line, it would hold the request up until the test gave up on it.
    read_started, request_done = threading.Event(), threading.Event()
    read_budget = hook._fetch_threshold_information

    def held_budget_read() -> dict[str, Any]:
        read_started.set()
        request_done.wait(timeout=30)
        return read_budget()

    monkeypatch.setattr(hook, "_fetch_threshold_information", held_budget_read)
    assert hook.count("Companies") == len(admin.state("Companies"))
    assert read_started.is_set(), "the first request starts the budget read"
    assert hook.budget.last_information is None and admin.calls("ThresholdInformation") == 0, (
        "the request did not wait for the budget read"
    )
    request_done.set()
    for reader in [thread for thread in threading.enumerate() if thread.name == "autotask-budget"]:
        reader.join(timeout=30)
    assert admin.calls("ThresholdInformation") == 1
    assert hook.budget.last_information["externalRequestThreshold"] == 10000


# --- secrets -------------------------------------------------------------------------------------------------


def test_the_secret_never_reaches_logs_errors_or_reprs(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningServer, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = make_hook(monkeypatch, sandbox, timeout_s=5)
    owner = admin.state("Resources")[0]["id"]
    errors: list[BaseException] = []
    hook.query("Companies", max_records=3)
    for action in (
        lambda: hook.create("Companies", {"companyName": SECRET}),  # Autotask echoes bad values back
        lambda: hook.query("ContractServiceAdjustments"),
        lambda: hook.query("Companies", [Filter.eq(SECRET, 1)]),
    ):
        with pytest.raises(AutotaskApiError) as caught:
            action()
        errors.append(caught.value)
    admin.faults(lost_response_rate=1.0)
    with pytest.raises(AutotaskOutcomeUnknownError) as caught:
        hook.create("Companies", {"companyName": "x", "companyType": 1, "ownerResourceID": owner, "phone": "1"})
    errors.append(caught.value)
    admin.faults(lost_response_rate=0.0)
    wrong = make_hook(monkeypatch, sandbox, secret=SECRET + "-wrong")
    with pytest.raises(AutotaskAuthError) as caught:
        wrong.count("Companies")
    errors.append(caught.value)

    texts = [caplog.text, repr(hook), repr(hook.settings), repr(wrong)]
    texts += [str(e) for e in errors] + [repr(e) for e in errors] + [json.dumps(vars(e), default=str) for e in errors]
    for text in texts:
        assert SECRET not in text
