"""The BSS hook against the running BSS sandbox: paging, token renewal, retries, clear errors, no leaks."""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from connectors.bss_hook import BssApiError, BssAuthError, BssHook, BssTransientError
from connectors.retry_after import retry_after_seconds
from tests.servers import RunningServer, start_server

CUSTOMERS = 50  # the session's BSS sandbox (tests/conftest.py: `bss_sandbox`, serving `universe`)
OCTOBER = (date(2026, 10, 1), date(2026, 10, 31))
PASSWORD = "demo-password"
CLIENT_SECRET = "demo-client-secret"


@pytest.fixture(scope="module")
def october_ids(universe) -> list[str]:
    """The truth: the ids the sandbox's data set holds for October 2026, in id order."""
    return sorted(line["id"] for line in universe.charges_for_month("2026-10"))


class Admin:
    """The sandbox's fault and statistics surface."""

    def __init__(self, server: RunningServer) -> None:
        self.url = server.url

    def post(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(self.url + path, json=payload or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def faults(self, **changes: Any) -> None:
        self.post("/_admin/faults", changes)

    def count(self, path: str, status: int) -> int:
        stats = httpx.get(self.url + "/_admin/stats", timeout=10).json()
        return stats["by_path"].get(path, {}).get(str(status), 0)


@pytest.fixture
def admin(bss_sandbox: RunningServer) -> Iterator[Admin]:
    """The session's BSS sandbox (50 customers x 3, seed 42), reset before and after: faults never outlive a test."""
    handle = Admin(bss_sandbox)
    handle.post("/_admin/reset")
    yield handle
    handle.post("/_admin/reset")


def _connection(port: int, **changes: Any) -> str:
    extra = {"client_id": "demo-client", "client_secret": CLIENT_SECRET}
    extra.update(changes.pop("extra", {}))
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": port,
        "schema": "http",
        "login": "demo-user",
        "password": PASSWORD,
        "extra": extra,
    }
    connection.update(changes)
    return json.dumps(connection)


HookFactory = Callable[..., BssHook]


@pytest.fixture
def make_hook(bss_sandbox: RunningServer, admin: Admin, monkeypatch: pytest.MonkeyPatch) -> Iterator[HookFactory]:
    """Build a hook on `bss_default`; keyword `connection=` changes the connection, the rest go to the hook."""
    hooks: list[BssHook] = []

    def make(connection: dict[str, Any] | None = None, port: int | None = None, **hook_kwargs: Any) -> BssHook:
        monkeypatch.setenv("AIRFLOW_CONN_BSS_DEFAULT", _connection(port or bss_sandbox.port, **(connection or {})))
        hook_kwargs.setdefault("retry_wait_initial_s", 0.01)
        hook = BssHook(**hook_kwargs)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def _logged(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Everything logged so far: Airflow 3 hooks log through structlog to stdout, not only to stdlib logging."""
    captured = capfd.readouterr()
    return "\n".join([caplog.text, captured.out, captured.err])


def _ids(pages: Iterator[list[dict]]) -> list[str]:
    return [record["id"] for page in pages for record in page]


# --- paging ---------------------------------------------------------------------------------------


def test_small_pages_return_every_charge_of_the_month_exactly_once_in_id_order(
    make_hook: HookFactory, admin: Admin, october_ids: list[str]
) -> None:
    hook = make_hook(page_size=7)
    pages = list(hook.iter_charges(*OCTOBER))
    assert [record["id"] for page in pages for record in page] == october_ids
    assert len(pages) == math.ceil(len(october_ids) / 7) > 10
    assert all(len(page) == 7 for page in pages[:-1])
    # one request per page and no extra "is there more?" request after the last page
    assert admin.count("/api/charges", 200) == len(pages)
    assert admin.count("/oauth/token", 200) == 1


def test_the_connection_page_size_is_used_when_the_hook_does_not_override_it(
    make_hook: HookFactory, october_ids: list[str]
) -> None:
    hook = make_hook(connection={"extra": {"page_size": 25}})
    pages = list(hook.iter_charges(*OCTOBER))
    assert [len(page) for page in pages[:-1]] == [25] * (len(pages) - 1)
    assert sum(len(page) for page in pages) == len(october_ids)


def test_a_period_without_charges_yields_no_pages(make_hook: HookFactory) -> None:
    assert list(make_hook().iter_charges(date(2030, 1, 1), date(2030, 1, 31))) == []


def test_progress_is_logged_per_page_at_info(
    make_hook: HookFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    hook = make_hook(page_size=50)
    with caplog.at_level(logging.INFO):
        total = len(_ids(hook.iter_charges(*OCTOBER)))
    pages = math.ceil(total / 50)
    logged = _logged(caplog, capfd)
    assert f"/api/charges: page 1 of {pages}, 50 records so far" in logged
    assert f"/api/charges: page {pages} of {pages}, {total} records so far" in logged


def test_paging_stops_at_max_pages_instead_of_running_forever(make_hook: HookFactory) -> None:
    hook = make_hook(page_size=7, max_pages=3)
    received: list[str] = []
    with pytest.raises(BssApiError, match="still paging after 3 pages"):
        for page in hook.iter_charges(*OCTOBER):
            received.extend(record["id"] for record in page)
    assert len(received) == 21


def test_accounts_are_listed_once_each_and_read_one_by_one(make_hook: HookFactory) -> None:
    hook = make_hook(page_size=20)
    accounts = [record for page in hook.list_accounts() for record in page]
    assert len(accounts) == CUSTOMERS
    assert len({account["id"] for account in accounts}) == CUSTOMERS
    assert [account["id"] for account in accounts] == sorted(account["id"] for account in accounts)
    assert hook.get_account(accounts[7]["id"]) == accounts[7]


def test_a_page_size_over_the_api_limit_is_refused_before_any_request(make_hook: HookFactory) -> None:
    with pytest.raises(ValueError, match="page_size must be between 1 and 200"):
        make_hook(page_size=500).settings  # noqa: B018 - reading the settings validates them


def test_the_configured_api_version_is_sent_with_every_request(make_hook: HookFactory) -> None:
    hook = make_hook(connection={"extra": {"api_version": "9.9"}})
    with pytest.raises(BssApiError) as caught:
        list(hook.list_accounts())
    assert caught.value.status == 400
    assert "Unsupported X-Api-Version '9.9'" in str(caught.value)


# --- tokens ---------------------------------------------------------------------------------------


def test_a_token_expiring_between_pages_is_renewed_and_paging_continues(
    make_hook: HookFactory, admin: Admin, october_ids: list[str]
) -> None:
    hook = make_hook(page_size=20)
    received: list[str] = []
    for number, page in enumerate(hook.iter_charges(*OCTOBER), start=1):
        received.extend(record["id"] for record in page)
        if number in (2, 4):
            admin.faults(expire_tokens_now=True)
    assert received == october_ids and len(october_ids) > 5 * 20
    assert admin.count("/api/charges", 401) == 2
    assert admin.count("/oauth/token", 200) == 3


def test_a_token_is_renewed_before_the_server_says_it_expires(make_hook: HookFactory, admin: Admin) -> None:
    admin.faults(token_ttl_s=60)
    clock = [1000.0]  # the hook's clock: moves only when the test moves it
    hook = make_hook(page_size=100, clock=lambda: clock[0])
    pages = hook.iter_charges(*OCTOBER)
    next(pages)
    # a minute passes for both: the hook's clock, and the sandbox's (which refuses the first token from now on)
    clock[0] += 60
    admin.post("/_admin/clock", {"advance_s": 60})
    rest = list(pages)
    assert rest
    assert admin.count("/api/charges", 401) == 0  # renewed ahead of expiry, not after a refusal
    assert admin.count("/oauth/token", 200) == 2


def test_a_fresh_token_that_is_rejected_again_fails_with_a_clear_error(make_hook: HookFactory, admin: Admin) -> None:
    admin.faults(token_ttl_s=0.001)  # every token is dead on arrival
    hook = make_hook()
    with pytest.raises(BssAuthError) as caught:
        list(hook.iter_charges(*OCTOBER))
    assert caught.value.status == 401
    assert "GET /api/charges?$filter=chargeStartDate ge 2026-10-01" in str(caught.value)
    assert "freshly granted access token was rejected too" in str(caught.value)
    assert admin.count("/oauth/token", 200) == 2  # asked once more, not in a loop


@pytest.mark.parametrize(
    ("connection", "server_reason"),
    [
        ({"password": "wrong-password-123"}, "The user name or password is incorrect"),
        ({"extra": {"client_secret": "wrong-client-secret-456"}}, "Unknown client or wrong client secret"),
    ],
)
def test_wrong_credentials_fail_at_once_naming_the_user_but_not_the_secret(
    make_hook: HookFactory,
    admin: Admin,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    connection: dict[str, Any],
    server_reason: str,
) -> None:
    hook = make_hook(connection=connection)
    with caplog.at_level(logging.DEBUG), pytest.raises(BssAuthError) as caught:
        list(hook.iter_charges(*OCTOBER))
    message = str(caught.value)
    logged = _logged(caplog, capfd)
    assert caught.value.status == 401
    assert "POST /oauth/token" in message and "'demo-user'" in message and server_reason in message
    for secret in ("wrong-password-123", "wrong-client-secret-456", PASSWORD, CLIENT_SECRET):
        assert secret not in message
        assert secret not in logged
        assert secret not in repr(caught.value.__reduce__())
    assert admin.count("/oauth/token", 401) == 1  # a refusal is not retried


def test_a_connection_without_client_credentials_names_what_is_missing(make_hook: HookFactory) -> None:
    hook = make_hook(connection={"extra": {"client_secret": ""}, "login": None})
    with pytest.raises(ValueError, match=r"lacks login, extra\.client_secret"):
        list(hook.list_accounts())


# --- retries --------------------------------------------------------------------------------------


def test_rate_limits_are_retried_after_the_servers_retry_after(make_hook: HookFactory, admin: Admin) -> None:
    admin.faults(rate_limit_every=2, retry_after_s=1)  # every second API request is refused with 429
    hook = make_hook(page_size=50, retry_wait_initial_s=0.01)
    started = time.monotonic()
    pages = list(hook.iter_charges(*OCTOBER))
    elapsed = time.monotonic() - started
    refusals = admin.count("/api/charges", 429)
    assert refusals == len(pages) - 1 >= 2
    # the backoff alone would wait ~0.01 s; Retry-After: 1 must be honoured for each refusal
    assert refusals * 1.0 <= elapsed < refusals * 1.0 + 3.0
    assert admin.count("/api/charges", 200) == len(pages)


def test_server_errors_are_retried_until_the_page_arrives(
    make_hook: HookFactory,
    admin: Admin,
    october_ids: list[str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    admin.faults(error_rate=0.4)
    hook = make_hook(page_size=20, max_retries=12)
    with caplog.at_level(logging.WARNING):
        received = _ids(hook.iter_charges(*OCTOBER))
    assert received == october_ids
    failures = admin.count("/api/charges", 503)
    assert failures > 0
    assert admin.count("/api/charges", 200) == math.ceil(len(october_ids) / 20)
    logged = _logged(caplog, capfd)
    assert "HTTP 503" in logged and "retrying in" in logged


def test_a_server_that_keeps_failing_is_given_up_after_the_configured_attempts(
    make_hook: HookFactory, admin: Admin
) -> None:
    admin.faults(error_rate=1.0)
    hook = make_hook(connection={"extra": {"max_retries": 2}})
    with pytest.raises(BssTransientError) as caught:
        list(hook.iter_charges(*OCTOBER))
    assert caught.value.status == 503
    assert "gave up after 3 attempts" in str(caught.value)
    assert "GET /api/charges?$filter=chargeStartDate ge 2026-10-01 and chargeStartDate le 2026-10-31" in str(
        caught.value
    )
    assert "Service temporarily unavailable" in str(caught.value)
    assert admin.count("/api/charges", 503) == 3


def test_a_server_that_does_not_answer_in_time_is_retried_then_reported(make_hook: HookFactory, admin: Admin) -> None:
    admin.faults(latency_ms=400)
    hook = make_hook(connection={"extra": {"timeout_s": 0.1}}, max_retries=1)
    started = time.monotonic()
    with pytest.raises(BssTransientError) as caught:
        hook.get_account("ACC-0001")
    assert caught.value.status is None
    assert "gave up after 2 attempts" in str(caught.value) and "Timeout" in str(caught.value)
    assert time.monotonic() - started < 3


def test_a_server_that_is_not_there_is_retried_then_reported(make_hook: HookFactory) -> None:
    gone = start_server(["sandbox.bss_server", "--customers", "1"])
    gone.stop()
    hook = make_hook(port=gone.port, max_retries=2)
    with pytest.raises(BssTransientError) as caught:
        list(hook.list_accounts())
    assert caught.value.status is None
    assert "POST /oauth/token" in str(caught.value) or "GET /api/accounts" in str(caught.value)
    assert "gave up after 3 attempts" in str(caught.value)
    assert "ConnectionError" in str(caught.value)


# --- errors that are not retried -----------------------------------------------------------------


def test_a_bad_filter_fails_at_once_naming_the_request_and_the_servers_reason(
    make_hook: HookFactory, admin: Admin
) -> None:
    hook = make_hook(page_size=10)
    with pytest.raises(BssApiError) as caught:
        list(hook.iter_pages("/api/charges", {"$filter": "chargeStartDate gt and", "$orderby": "id asc"}))
    error = caught.value
    assert not isinstance(error, BssTransientError)
    assert error.status == 400
    assert str(error).startswith(
        "BSS GET /api/charges?$filter=chargeStartDate gt and&$orderby=id asc&page=1&pageSize=10 failed (HTTP 400): "
    )
    assert error.message and "body:" not in error.message  # the server's JSON `message`, not a raw dump
    assert admin.count("/api/charges", 400) == 1  # not retried


def test_an_unknown_account_is_a_404_naming_the_account(make_hook: HookFactory, admin: Admin) -> None:
    with pytest.raises(BssApiError) as caught:
        make_hook().get_account("ACC-NOPE")
    assert caught.value.status == 404
    assert str(caught.value) == ("BSS GET /api/accounts/ACC-NOPE failed (HTTP 404): Account 'ACC-NOPE' was not found")
    assert admin.count("/api/accounts/{id}", 404) == 1


def test_a_body_that_is_not_json_is_reported_with_an_excerpt(make_hook: HookFactory, admin: Admin) -> None:
    admin.post("/_admin/overrides", {"month": "2026-10", "raw_body": "<html><body>Gateway says hello</body>"})
    with pytest.raises(BssApiError) as caught:
        list(make_hook().iter_charges(*OCTOBER))
    message = str(caught.value)
    assert "GET /api/charges?$filter=chargeStartDate ge 2026-10-01" in message
    assert "response body is not JSON" in message
    assert "<html><body>Gateway says hello" in message
    assert admin.count("/api/charges", 200) == 1  # not retried


# --- secrets --------------------------------------------------------------------------------------


def test_secrets_never_reach_logs_errors_reprs_or_request_headers(
    make_hook: HookFactory, admin: Admin, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    hook = make_hook(page_size=50, max_retries=1)
    tokens: set[str] = set()
    with caplog.at_level(logging.DEBUG):
        admin.faults(rate_limit_every=3, retry_after_s=0)
        for number, page in enumerate(hook.iter_charges(*OCTOBER), start=1):
            assert page
            tokens.add(hook._token.value.reveal())  # the test peeks to know what must not leak
            if number == 1:
                admin.faults(expire_tokens_now=True)
        admin.faults(error_rate=1.0)
        with pytest.raises(BssApiError) as caught:
            hook.get_account("ACC-0001")
    assert len(tokens) == 2
    # HttpHook would turn every connection extra into a header and send the user's password as Basic auth
    assert hook.session.auth is None
    assert not {"client_id", "client_secret", "api_version"} & {key.lower() for key in hook.session.headers}
    captured = capfd.readouterr()
    exposed = "\n".join(
        [
            caplog.text,
            captured.out,
            captured.err,
            str(caught.value),
            repr(caught.value),
            repr(hook.settings),
            repr(vars(hook)),
            repr(hook._token),
        ]
    )
    for secret in (PASSWORD, CLIENT_SECRET, *tokens):
        assert secret not in exposed


# --- small parts ----------------------------------------------------------------------------------


def test_test_connection_reports_success_and_the_reason_of_a_failure(make_hook: HookFactory) -> None:
    assert make_hook().test_connection() == (True, "Token granted and accounts readable")
    ok, reason = make_hook(connection={"password": "not-the-password"}).test_connection()
    assert not ok
    assert "The user name or password is incorrect" in reason and "not-the-password" not in reason


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("-5") == 0.0
    in_ten_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.0 <= (retry_after_seconds(in_ten_seconds) or 0.0) <= 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_api_errors_survive_pickling_with_their_fields(make_hook: HookFactory) -> None:
    with pytest.raises(BssApiError) as caught:
        make_hook().get_account("ACC-NOPE")
    copy_of_error = pickle.loads(pickle.dumps(caught.value))
    assert (copy_of_error.status, copy_of_error.method, copy_of_error.path) == (404, "GET", "/api/accounts/ACC-NOPE")
    assert str(copy_of_error) == str(caught.value)
