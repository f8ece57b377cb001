"""The BSS sandbox's invoices and the month's close over HTTP: paged and filtered like every collection,
Draft while the month is open (following restated lines), Issued and frozen once closed, withheld accounts,
void and reissue, and the same faults as the other collections."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.sandbox.test_bss_server import CLIENT, USER, api_headers, fetch_all
from tests.servers import RunningServer, start_server

OCTOBER, NOVEMBER = "2026-10", "2026-11"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(["sandbox.bss_server", "--customers", "12", "--open-month", NOVEMBER])
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    httpx.post(server.url + "/_admin/reset").raise_for_status()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        token = http.post("/oauth/token", auth=CLIENT, data=USER).json()["access_token"]
        http.headers.update(api_headers(token))
        yield http


def invoices(http: httpx.Client, month: str, **filters: str) -> list[dict]:
    clauses = [f"periodStart eq {month}-01", *(f"{field} eq '{value}'" for field, value in filters.items())]
    return fetch_all(http, http.headers["Authorization"][7:], "/api/invoices", 5, **{"$filter": " and ".join(clauses)})


def charges(http: httpx.Client, month: str) -> dict[str, dict]:
    period = f"chargeStartDate ge {month}-01 and chargeStartDate le {month}-30"
    return {
        line["id"]: line
        for line in fetch_all(http, http.headers["Authorization"][7:], "/api/charges", **{"$filter": period})
    }


def test_a_closed_month_has_one_issued_invoice_per_account_and_currency_billing_every_line(client) -> None:
    found = invoices(client, OCTOBER)
    lines = charges(client, OCTOBER)
    assert found and all(invoice["status"] == "Issued" for invoice in found)
    assert all(invoice["issuedAt"] == "2026-11-05T06:00:00Z" for invoice in found)
    assert sorted(charge for invoice in found for charge in invoice["chargeIds"]) == sorted(lines)
    for invoice in found:
        billed = {(lines[charge]["account"]["id"], lines[charge]["currency"]) for charge in invoice["chargeIds"]}
        assert billed == {(invoice["account"]["id"], invoice["currency"])}
        assert (invoice["periodStart"], invoice["periodEnd"]) == ("2026-10-01", "2026-10-31")
        assert invoice["totalCost"] < invoice["totalPrice"]
    assert len({(invoice["account"]["id"], invoice["currency"]) for invoice in found}) == len(found)


def test_invoices_page_filter_and_order_like_every_collection(client) -> None:
    response = client.get(
        "/api/invoices",
        params={"$filter": "periodStart eq 2026-10-01", "pageSize": 4, "page": 2, "$orderby": "id desc"},
    )
    pagination = json.loads(response.headers["X-Pagination"])
    assert response.status_code == 200 and pagination["pageSize"] == 4 and pagination["currentPage"] == 2
    page = response.json()
    assert len(page) == 4 and [invoice["id"] for invoice in page] == sorted(
        (invoice["id"] for invoice in page), reverse=True
    )
    one = invoices(client, OCTOBER)[0]["account"]["id"]
    assert [invoice["account"]["id"] for invoice in invoices(client, OCTOBER, **{"account.id": one})] == [one]
    bad = client.get("/api/invoices", params={"$filter": "dueDate eq 2026-10-01"})
    assert bad.status_code == 400 and "Unknown field 'dueDate'" in bad.json()["message"]
    assert client.get("/api/invoices", params={"pageSize": 500}).status_code == 400
    assert httpx.get(str(client.base_url) + "/api/invoices").status_code == 401


def test_an_open_month_is_draft_follows_restated_lines_and_closes_frozen(client, server) -> None:
    drafts = invoices(client, NOVEMBER)
    assert drafts and {invoice["status"] for invoice in drafts} == {"Draft"} and drafts[0]["issuedAt"] is None
    first = drafts[0]
    line_id = first["chargeIds"][0]
    restated = {**charges(client, NOVEMBER)[line_id], "quantity": 1000}
    httpx.post(
        server.url + "/_admin/overrides", json={"month": NOVEMBER, "replace": {line_id: restated}}
    ).raise_for_status()
    again = next(invoice for invoice in invoices(client, NOVEMBER) if invoice["id"] == first["id"])
    assert again["totalCost"] > first["totalCost"]  # the draft follows the restated line

    closed = httpx.post(
        server.url + f"/_admin/months/{NOVEMBER}/close", json={"issuedAt": "2026-12-06T07:00:00Z"}
    ).json()
    assert closed["closed"] and closed["invoices"] == {"Issued": len(drafts)}
    issued = invoices(client, NOVEMBER, status="Issued")
    assert len(issued) == len(drafts) and {invoice["issuedAt"] for invoice in issued} == {"2026-12-06T07:00:00Z"}
    # after the close a changed line changes no invoice (corrections come as new lines)
    httpx.post(
        server.url + "/_admin/overrides", json={"month": NOVEMBER, "replace": {line_id: {**restated, "quantity": 1}}}
    )
    assert next(i for i in invoices(client, NOVEMBER) if i["id"] == first["id"])["totalCost"] == again["totalCost"]
    refused = httpx.post(server.url + f"/_admin/months/{NOVEMBER}/close", json={})
    assert refused.status_code == 409 and "already closed" in refused.json()["message"]


def test_a_withheld_account_has_no_invoice_until_it_is_released(client, server) -> None:
    account = invoices(client, NOVEMBER)[0]["account"]["id"]
    withheld = httpx.post(server.url + f"/_admin/months/{NOVEMBER}/withhold", json={"accounts": [account]}).json()
    assert withheld["withheld"] == [account]
    assert account not in {invoice["account"]["id"] for invoice in invoices(client, NOVEMBER)}
    httpx.post(server.url + f"/_admin/months/{NOVEMBER}/withhold", json={"accounts": [account], "withheld": False})
    assert account in {invoice["account"]["id"] for invoice in invoices(client, NOVEMBER)}
    closed_month = httpx.post(server.url + f"/_admin/months/{OCTOBER}/withhold", json={"accounts": [account]})
    assert closed_month.status_code == 409


def test_void_and_reissue_replaces_an_invoice_of_the_same_account_and_period(client, server) -> None:
    old = invoices(client, OCTOBER)[2]
    answer = httpx.post(server.url + f"/_admin/invoices/{old['id']}/reissue", json={"status": "Draft"}).json()
    new = answer["invoice"]
    assert answer["voided"] == old["id"] and new["id"] != old["id"] and new["status"] == "Draft"
    assert (new["account"], new["chargeIds"], new["totalCost"]) == (old["account"], old["chargeIds"], old["totalCost"])
    by_id = {invoice["id"]: invoice for invoice in invoices(client, OCTOBER)}
    assert by_id[old["id"]]["status"] == "Void" and by_id[new["id"]]["status"] == "Draft"
    assert httpx.get(server.url + f"/_admin/months/{OCTOBER}").json()["invoices"] == {
        "Issued": len(by_id) - 2,
        "Void": 1,
        "Draft": 1,
    }
    again = httpx.post(server.url + f"/_admin/invoices/{old['id']}/reissue", json={})
    assert again.status_code == 409 and "already void" in again.json()["message"]
    assert httpx.post(server.url + "/_admin/months/2031-01/open").status_code == 404


def test_invoices_get_the_same_faults_as_the_other_collections(client, server) -> None:
    httpx.post(server.url + "/_admin/faults", json={"rate_limit_every": 2, "retry_after_s": 3}).raise_for_status()
    statuses = [client.get("/api/invoices", params={"$filter": "periodStart eq 2026-10-01"}) for _ in range(2)]
    assert [response.status_code for response in statuses] == [200, 429]
    assert statuses[1].headers["Retry-After"] == "3"
    httpx.post(server.url + "/_admin/faults", json={"rate_limit_every": 0, "error_rate": 1.0}).raise_for_status()
    assert client.get("/api/invoices").status_code == 503
