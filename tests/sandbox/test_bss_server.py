"""The BSS sandbox over real HTTP: auth, version header, paging, filters, errors, fault knobs, overrides."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.servers import RunningServer, start_server

CLIENT = ("demo-client", "demo-client-secret")
USER = {"grant_type": "password", "username": "demo-user", "password": "demo-password"}
OCTOBER = "chargeStartDate ge 2026-10-01 and chargeStartDate le 2026-10-31"


@pytest.fixture
def client(bss_sandbox: RunningServer):
    """A client of the session's BSS sandbox (what `python -m sandbox.bss_server` serves without flags), reset
    before and after."""
    httpx.post(bss_sandbox.url + "/_admin/reset").raise_for_status()
    with httpx.Client(base_url=bss_sandbox.url, timeout=10) as http:
        yield http
    httpx.post(bss_sandbox.url + "/_admin/reset").raise_for_status()


def get_token(http: httpx.Client) -> str:
    response = http.post("/oauth/token", auth=CLIENT, data=USER)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def api_headers(token: str, version: str = "3.0") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Api-Version": version}


def get_charges(http: httpx.Client, token: str, **params) -> httpx.Response:
    return http.get("/api/charges", headers=api_headers(token), params=params)


def fetch_all(http: httpx.Client, token: str, path: str, page_size: int = 200, **params) -> list[dict]:
    records: list[dict] = []
    page = 1
    while True:
        response = http.get(path, headers=api_headers(token), params={**params, "page": page, "pageSize": page_size})
        assert response.status_code == 200, response.text
        records.extend(response.json())
        if page >= json.loads(response.headers["X-Pagination"])["totalPages"]:
            return records
        page += 1


# --- health and auth --------------------------------------------------------------------------------


def test_healthz_answers_without_authentication(client):
    assert client.get("/healthz").status_code == 200


def test_token_is_issued_for_the_right_client_and_user(client):
    response = client.post("/oauth/token", auth=CLIENT, data=USER)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) >= 20


@pytest.mark.parametrize(
    ("auth", "form", "status", "error"),
    [
        (("demo-client", "wrong-secret"), USER, 401, "invalid_client"),
        (None, USER, 401, "invalid_client"),
        (CLIENT, {**USER, "password": "wrong-password"}, 401, "invalid_grant"),
        (CLIENT, {**USER, "username": "someone-else"}, 401, "invalid_grant"),
        (CLIENT, {**USER, "grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
    ],
)
def test_token_endpoint_rejects_bad_credentials_and_grants(client, auth, form, status, error):
    response = client.post("/oauth/token", auth=auth, data=form)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error
    assert "wrong-secret" not in response.text and "wrong-password" not in response.text


def test_api_needs_a_bearer_token(client):
    response = client.get("/api/charges", headers={"X-Api-Version": "3.0"})
    assert response.status_code == 401
    assert "token" in response.json()["message"]
    unknown = client.get("/api/charges", headers=api_headers("not-a-token"))
    assert unknown.status_code == 401
    assert "unknown token" in unknown.json()["message"]


def test_api_needs_a_supported_version_header(client):
    token = get_token(client)
    missing = client.get("/api/charges", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == 400
    assert "X-Api-Version" in missing.json()["message"]
    unsupported = client.get("/api/charges", headers=api_headers(token, "4.0"))
    assert unsupported.status_code == 400
    assert "4.0" in unsupported.json()["message"]
    for version in ("1", "2", "2.1", "2.2", "3.0"):
        assert client.get("/api/accounts", headers=api_headers(token, version)).status_code == 200


# --- charges, paging and filters -------------------------------------------------------------------


def test_month_extract_in_pages_returns_exactly_the_universe_month(client, universe):
    token = get_token(client)
    lines = fetch_all(client, token, "/api/charges", page_size=40, **{"$filter": OCTOBER, "$orderby": "id asc"})
    # ids are strings: `id asc` is their text order (CHG-2026-10-10 before CHG-2026-10-9), not the BSS's order
    assert lines == sorted(universe.charges_for_month("2026-10"), key=lambda line: line["id"])
    assert fetch_all(client, token, "/api/charges", page_size=40, **{"$filter": OCTOBER}) == (
        universe.charges_for_month("2026-10")
    )


def test_pagination_header_describes_the_result(client, universe):
    token = get_token(client)
    total = len(universe.charges_for_month("2026-10"))
    response = get_charges(client, token, **{"$filter": OCTOBER, "page": 2, "pageSize": 25})
    assert json.loads(response.headers["X-Pagination"]) == {
        "totalCount": total,
        "pageSize": 25,
        "currentPage": 2,
        "totalPages": -(-total // 25),
    }
    assert [line["id"] for line in response.json()] == [
        line["id"] for line in universe.charges_for_month("2026-10")[25:50]
    ]
    beyond = get_charges(client, token, **{"$filter": OCTOBER, "page": 999, "pageSize": 25})
    assert beyond.status_code == 200 and beyond.json() == []


@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": 201},
        {"pageSize": 0},
        {"pageSize": "ten"},
        {"page": 0},
        {"page": "first"},
    ],
)
def test_bad_paging_parameters_are_rejected(client, params):
    response = get_charges(client, get_token(client), **params)
    assert response.status_code == 400
    name = next(iter(params))
    assert name in response.json()["message"]


def test_page_size_bounds_are_inclusive(client, universe):
    token = get_token(client)
    october = len(universe.charges_for_month("2026-10"))
    assert october < 200
    assert len(get_charges(client, token, **{"$filter": OCTOBER, "pageSize": 200}).json()) == october
    assert len(get_charges(client, token, **{"$filter": OCTOBER, "pageSize": 1}).json()) == 1


def test_filters_on_dotted_fields_numbers_and_quoted_strings(client, universe):
    token = get_token(client)
    october = universe.charges_for_month("2026-10")
    expected = [
        line
        for line in october
        if line["account"]["name"] == "O'Brien & Sons Ltd" and line["quantity"] <= -1 and line["action"] != "Renewal"
    ]
    assert expected
    found = fetch_all(
        client,
        token,
        "/api/charges",
        **{
            "$filter": f"{OCTOBER} and account.name eq 'O''Brien & Sons Ltd' and quantity le -1 and action ne 'Renewal'"
        },
    )
    assert found == expected


def test_negative_numbers_and_null_compare(client, universe):
    token = get_token(client)
    found = fetch_all(
        client, token, "/api/charges", **{"$filter": f"{OCTOBER} and quantity lt 0 and invoiceId eq null"}
    )
    assert found == [line for line in universe.charges_for_month("2026-10") if line["quantity"] < 0]


def test_date_filters_select_across_months(client, universe):
    token = get_token(client)
    found = fetch_all(
        client, token, "/api/charges", **{"$filter": "effectiveDate gt 2026-10-15 and effectiveDate lt 2026-11-03"}
    )
    expected = [
        line
        for month in ("2026-10", "2026-11")
        for line in universe.charges_for_month(month)
        if "2026-10-15" < line["effectiveDate"] < "2026-11-03"
    ]
    assert found == expected
    assert {line["chargeStartDate"][:7] for line in found} == {"2026-10", "2026-11"}


def test_a_charge_period_running_past_its_month_is_found_by_its_end_date(client, universe):
    """Quarterly, semi-annual and annual plans and renewals charge to the end of their period: a filter on the
    end date must still find them in the month they start."""
    token = get_token(client)
    found = fetch_all(
        client, token, "/api/charges", **{"$filter": "chargeEndDate ge 2027-01-01 and chargeStartDate le 2026-10-31"}
    )
    october = [line for line in universe.charges_for_month("2026-10") if line["chargeEndDate"] >= "2027-01-01"]
    assert october and {line["action"] for line in october} >= {"Renewal"}
    assert [line for line in found if line["chargeStartDate"][:7] == "2026-10"] == october


def test_orderby_sorts_descending_and_by_several_fields(client, universe):
    token = get_token(client)
    found = fetch_all(
        client, token, "/api/charges", **{"$filter": OCTOBER, "$orderby": "subscriptionQuantity desc, id asc"}
    )
    keys = [(-line["subscriptionQuantity"], line["id"]) for line in found]
    assert keys == sorted(keys)
    assert len(found) == len(universe.charges_for_month("2026-10"))


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("chargeDate ge 2026-10-01", "chargeDate"),
        ("quantity eq 'three'", "quantity"),
        ("chargeStartDate ge 2026-13-01", "2026-13-01"),
        ("account eq 'ACC-1001'", "account"),
        ("id eq 'CHG' or id eq 'X'", "or"),
        ("id like 'CHG%'", "like"),
        ("id eq", "incomplete"),
        ("id eq 'unterminated", "unterminated"),
        ("action eq Cycle", "Cycle"),
    ],
)
def test_malformed_filters_are_rejected_naming_the_problem(client, expression, named):
    response = get_charges(client, get_token(client), **{"$filter": expression})
    assert response.status_code == 400
    assert named in response.json()["message"]


def test_bad_orderby_is_rejected(client):
    token = get_token(client)
    assert get_charges(client, token, **{"$orderby": "id sideways"}).status_code == 400
    unknown = get_charges(client, token, **{"$orderby": "amount desc"})
    assert unknown.status_code == 400 and "amount" in unknown.json()["message"]


# --- accounts ----------------------------------------------------------------------------------------


def test_accounts_are_paged_filtered_and_shaped_as_documented(client, universe):
    token = get_token(client)
    everyone = fetch_all(client, token, "/api/accounts", page_size=7)
    assert [account["id"] for account in everyone] == [account.id for account in universe.accounts]
    british = fetch_all(client, token, "/api/accounts", **{"$filter": "address.country eq 'GB'"})
    assert british and all(account["address"]["country"] == "GB" for account in british)
    assert len(british) == sum(1 for account in universe.accounts if account.country == "GB")
    one = client.get("/api/accounts/ACC-1004", headers=api_headers(token)).json()
    assert one == {
        "id": "ACC-1004",
        "name": "Müller GmbH",
        "code": one["code"],
        "status": "Active",
        "phone": one["phone"],
        "email": one["email"],
        "vatNumber": one["vatNumber"],
        "address": {
            "street": one["address"]["street"],
            "city": one["address"]["city"],
            "postalCode": one["address"]["postalCode"],
            "country": "DE",
        },
    }
    assert one["phone"].startswith("+49")


def test_unknown_account_is_a_404_with_a_message(client):
    response = client.get("/api/accounts/ACC-9999", headers=api_headers(get_token(client)))
    assert response.status_code == 404
    assert "ACC-9999" in response.json()["message"]


# --- fault knobs -------------------------------------------------------------------------------------


def set_faults(http: httpx.Client, **knobs) -> dict:
    response = http.post("/_admin/faults", json=knobs)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_nth_request_is_rate_limited_with_retry_after(client):
    token = get_token(client)
    set_faults(client, rate_limit_every=3, retry_after_s=5)
    statuses = [get_charges(client, token, pageSize=1) for _ in range(6)]
    assert [response.status_code for response in statuses] == [200, 200, 429, 200, 200, 429]
    assert statuses[2].headers["Retry-After"] == "5"
    assert "retry" in statuses[2].json()["message"].lower()


def test_error_rate_injects_server_errors_deterministically(client):
    token = get_token(client)
    set_faults(client, error_rate=1.0)
    response = get_charges(client, token, pageSize=1)
    assert response.status_code == 503 and response.json()["message"]
    set_faults(client, error_rate=0.5)
    first = [get_charges(client, token, pageSize=1).status_code for _ in range(20)]
    set_faults(client, error_rate=0.5)
    second = [get_charges(client, token, pageSize=1).status_code for _ in range(20)]
    assert first == second
    assert set(first) == {200, 503}


def test_latency_slows_every_api_call(client):
    token = get_token(client)
    set_faults(client, latency_ms=300)
    started = time.perf_counter()
    delayed = get_charges(client, token, pageSize=1)
    assert delayed.status_code == 200 and delayed.headers["X-Sandbox-Latency-Ms"] == "300"
    assert time.perf_counter() - started >= 0.3  # a lower bound: the answer cannot come before the latency
    assert client.post("/oauth/token", auth=CLIENT, data=USER).headers["X-Sandbox-Latency-Ms"] == "300"
    assert "X-Sandbox-Latency-Ms" not in client.get("/_admin/stats").headers
    set_faults(client, latency_ms=0)
    prompt = get_charges(client, token, pageSize=1)
    assert prompt.status_code == 200 and "X-Sandbox-Latency-Ms" not in prompt.headers


def advance_clock(http: httpx.Client, seconds: float) -> httpx.Response:
    """Move the sandbox's clock forward: token lifetimes pass without waiting for them."""
    return http.post("/_admin/clock", json={"advance_s": seconds})


def test_tokens_expire_after_their_ttl_and_on_demand(client):
    set_faults(client, token_ttl_s=60)
    token = client.post("/oauth/token", auth=CLIENT, data=USER).json()
    assert token["expires_in"] == 60
    assert get_charges(client, token["access_token"], pageSize=1).status_code == 200
    advance_clock(client, 50).raise_for_status()
    assert get_charges(client, token["access_token"], pageSize=1).status_code == 200  # 10 s of its life left
    assert advance_clock(client, 10).json()["advanced_s"] >= 60
    expired = get_charges(client, token["access_token"], pageSize=1)
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    fresh = get_token(client)
    set_faults(client, expire_tokens_now=True)
    assert get_charges(client, fresh, pageSize=1).status_code == 401
    assert get_charges(client, get_token(client), pageSize=1).status_code == 200
    for wrong in (-1, "soon", True):
        refused = advance_clock(client, wrong)
        assert refused.status_code == 400 and "advance_s" in refused.json()["message"]


@pytest.mark.parametrize("knobs", [{"error_rate": 2}, {"latency_ms": -1}, {"speed": 3}, {"rate_limit_every": "x"}])
def test_invalid_fault_settings_are_rejected(client, knobs):
    response = client.post("/_admin/faults", json=knobs)
    assert response.status_code == 400
    assert response.json()["message"]
    assert client.get("/_admin/faults").json()["error_rate"] == 0.0


def test_stats_count_requests_by_path_and_status_and_reset(client):
    client.post("/_admin/stats/reset")
    token = get_token(client)
    get_charges(client, token, pageSize=1)
    get_charges(client, token, pageSize=500)
    client.get("/api/accounts/ACC-1001", headers=api_headers(token))
    stats = client.get("/_admin/stats").json()
    assert stats["by_path"]["/api/charges"] == {"200": 1, "400": 1}
    assert stats["by_path"]["/api/accounts/{id}"] == {"200": 1}
    assert stats["by_path"]["/oauth/token"] == {"200": 1}
    assert stats["total"] == 4
    client.post("/_admin/stats/reset")
    assert client.get("/_admin/stats").json() == {"total": 0, "by_path": {}}


def test_reset_restores_the_start_up_faults(client):
    set_faults(client, rate_limit_every=1)
    token = get_token(client)
    assert get_charges(client, token).status_code == 429
    client.post("/_admin/reset")
    assert get_charges(client, token).status_code == 200


# --- overrides ---------------------------------------------------------------------------------------


def test_overrides_replace_add_and_remove_lines_of_a_month(client, universe):
    token = get_token(client)
    october = universe.charges_for_month("2026-10")
    replaced_id, removed_id = october[3]["id"], october[4]["id"]
    broken = {**october[3], "quantity": "three", "unitPrice": None}
    extra = {"id": "CHG-2026-10-999999", "account": {"id": "ACC-0000"}}
    response = client.post(
        "/_admin/overrides",
        json={"month": "2026-10", "replace": {replaced_id: broken}, "add": [extra, 42], "remove": [removed_id]},
    )
    assert response.status_code == 200
    lines = fetch_all(client, token, "/api/charges", **{"$filter": OCTOBER, "$orderby": "id asc"})
    ids = [line["id"] if isinstance(line, dict) else line for line in lines]
    assert removed_id not in ids
    assert broken in lines and october[3] not in lines
    assert extra in lines and 42 in lines
    assert len(lines) == len(october) + 1
    # other months are untouched
    november = fetch_all(
        client, token, "/api/charges", **{"$filter": "chargeStartDate ge 2026-11-01 and chargeStartDate le 2026-11-30"}
    )
    assert november == universe.charges_for_month("2026-11")
    client.post("/_admin/reset")
    assert fetch_all(client, token, "/api/charges", **{"$filter": OCTOBER}) == october


def test_raw_body_override_serves_non_json_text(client):
    token = get_token(client)
    client.post("/_admin/overrides", json={"month": "2026-10", "raw_body": "<html>Gateway says hi</html>"})
    response = get_charges(client, token, **{"$filter": OCTOBER})
    assert response.status_code == 200
    assert response.text == "<html>Gateway says hi</html>"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    september = get_charges(
        client, token, **{"$filter": "chargeStartDate ge 2026-09-01 and chargeStartDate le 2026-09-30"}
    )
    assert september.status_code == 200 and isinstance(september.json(), list)


@pytest.mark.parametrize("payload", [{"month": "2030-01"}, {"month": "2026-10", "replace": []}, {"add": []}])
def test_bad_overrides_are_rejected(client, payload):
    response = client.post("/_admin/overrides", json=payload)
    assert response.status_code == 400
    assert response.json()["message"]


# --- configuration -----------------------------------------------------------------------------------


def test_flags_and_environment_configure_the_sandbox():
    running = start_server(
        ["sandbox.bss_server", "--customers", "5", "--subscriptions-per-customer", "2", "--seed", "7"],
        env={"BSS_SANDBOX_CLIENT_SECRET": "s3cret-from-env", "BSS_SANDBOX_RATE_LIMIT_EVERY": "2"},
    )
    try:
        with httpx.Client(base_url=running.url, timeout=10) as http:
            assert http.post("/oauth/token", auth=CLIENT, data=USER).status_code == 401
            token = http.post("/oauth/token", auth=("demo-client", "s3cret-from-env"), data=USER).json()
            headers = api_headers(token["access_token"])
            first = http.get("/api/accounts", headers=headers)
            assert first.status_code == 200
            assert json.loads(first.headers["X-Pagination"])["totalCount"] == 5
            assert http.get("/api/accounts", headers=headers).status_code == 429
        assert "s3cret-from-env" not in running.log()
        assert "demo-password" not in running.log()
    finally:
        running.stop()


def test_a_thousand_customer_month_pages_out_whole(thousand_customers):
    # How fast it starts and streams is `make bench` (bench/bench_bss_server.py), not a test.
    running = start_server(["sandbox.bss_server", "--customers", "1000", "--subscriptions-per-customer", "20"])
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            lines = fetch_all(http, get_token(http), "/api/charges", **{"$filter": OCTOBER, "$orderby": "id asc"})
    finally:
        running.stop()
    ids = [line["id"] for line in lines]
    assert len(ids) > 10_000 and len(set(ids)) == len(ids)
    assert set(ids) == {line["id"] for line in thousand_customers.charges_for_month("2026-10")}


# --- renamed accounts (probe names for escaping tests) ----------------------------------------------


def test_an_account_served_under_another_name_carries_it_in_its_charges_too(universe):
    probe = "<img src=x onerror=alert(1)>"
    running = start_server(["sandbox.bss_server", "--account-name", f"ACC-1045={probe}"])
    try:
        with httpx.Client(base_url=running.url, timeout=10) as http:
            token = get_token(http)
            accounts = {account["id"]: account["name"] for account in fetch_all(http, token, "/api/accounts")}
            charges = fetch_all(http, token, "/api/charges", **{"$filter": OCTOBER})
    finally:
        running.stop()
    original = {account.id: account.name for account in universe.accounts}
    assert accounts["ACC-1045"] == probe
    assert {key: name for key, name in accounts.items() if key != "ACC-1045"} == {
        key: name for key, name in original.items() if key != "ACC-1045"
    }
    names = {charge["account"]["name"] for charge in charges if charge["account"]["id"] == "ACC-1045"}
    assert names == {probe}


def test_renaming_an_unknown_account_is_refused_by_name() -> None:
    from sandbox.bss_server import BssSandbox, SandboxConfig

    with pytest.raises(ValueError, match="no account ACC-9999"):
        BssSandbox(SandboxConfig(customers=5, account_names={"ACC-9999": "x"}))
