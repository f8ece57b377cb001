"""The Autotask sandbox behaves like the Autotask REST API for everything the sync touches.

Every test talks HTTP to a real server subprocess (tests/servers.py), never to the modules directly.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sandbox.dataset import build_universe
from tests.servers import RunningServer, start_server

USER = "api-user@demo.example"
SECRET = "test-secret-3f9a"
CODE = "DEMOINTEGRATION"
HEADERS = {"ApiIntegrationCode": CODE, "UserName": USER, "Secret": SECRET, "Content-Type": "application/json"}
FAULTS_OFF = {
    "latency_ms": 0,
    "error_rate": 0.0,
    "lost_response_rate": 0.0,
    "thread_limit": 3,
    "thread_limit_status": 429,
    "hourly_limit": 10000,
}
MONTH_START = "2026-10-01T00:00:00"


def _args(*extra: str) -> list[str]:
    return ["sandbox.autotask_server", "--secret", SECRET, "--seed", "42", "--seed-month", "2026-10", *extra]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(_args("--seed-customers", "60"))
    yield running
    running.stop()


class Api:
    """An httpx client on the API base plus the admin endpoints."""

    def __init__(self, server: RunningServer) -> None:
        self.base = server.url + "/ATServicesRest/V1.0"
        self.http = httpx.Client(headers=HEADERS, timeout=30)
        self.admin = httpx.Client(base_url=server.url, timeout=60)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.http.get(f"{self.base}/{path}", **kwargs)

    def post(self, path: str, body: object = None) -> httpx.Response:
        return self.http.post(f"{self.base}/{path}", json=body)

    def patch(self, path: str, body: object) -> httpx.Response:
        return self.http.patch(f"{self.base}/{path}", json=body)

    def query(self, entity: str, *filters: dict, **extra: object) -> dict:
        response = self.post(f"{entity}/query", {"filter": list(filters), **extra})
        assert response.status_code == 200, response.text
        return response.json()

    def state(self, entity: str) -> list[dict]:
        return self.admin.get(f"/_admin/state/{entity}").raise_for_status().json()["items"]

    def facts(self, kind: str, match: str | None = None) -> list[dict]:
        items = self.admin.get("/_admin/seed-facts").raise_for_status().json()["items"]
        return [fact for fact in items if fact["kind"] == kind and (match is None or fact["match"] == match)]

    def faults(self, **faults: object) -> dict:
        return self.admin.post("/_admin/faults", json=faults).raise_for_status().json()

    def stats(self) -> dict:
        return self.admin.get("/_admin/stats").raise_for_status().json()


@pytest.fixture
def api(server: RunningServer) -> Iterator[Api]:
    client = Api(server)
    client.admin.post("/_admin/reset").raise_for_status()
    client.faults(**FAULTS_OFF)
    client.admin.post("/_admin/stats/reset").raise_for_status()
    yield client
    client.faults(**FAULTS_OFF)


def errors(response: httpx.Response) -> str:
    return " | ".join(response.json().get("errors") or [response.json().get("Message", "")])


def owner_id(api: Api) -> int:
    return next(r["id"] for r in api.state("Resources") if r["isActive"] and r["resourceType"] == 1)


def new_company(api: Api, name: str) -> int:
    response = api.post(
        "Companies", {"companyName": name, "companyType": 1, "ownerResourceID": owner_id(api), "phone": "+49 89 1234"}
    )
    assert response.status_code == 200, response.text
    return response.json()["itemId"]


def new_recurring_contract(
    api: Api, company_id: int, start: str = "2026-01-01", end: str = "2026-12-31", contract_type: int = 7
) -> int:
    response = api.post(
        "Contracts",
        {
            "companyID": company_id,
            "contractName": "Cloud services",
            "contractType": contract_type,
            "startDate": start,
            "endDate": end,
            "status": 1,
            "timeReportingRequiresStartAndStopTimes": 1,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["itemId"]


def monthly_service_id(api: Api) -> int:
    return next(s["id"] for s in api.state("Services") if s["isActive"] and s["periodType"] == 2)


def units_rows(api: Api, cs_id: int) -> list[dict]:
    return api.query("ContractServiceUnits", {"op": "eq", "field": "contractServiceID", "value": cs_id})["items"]


# --- zones, auth, routing --------------------------------------------------------------------------------


def test_zone_information_needs_no_auth_and_points_back_at_this_server(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/atservicesrest/v1.0/zoneInformation", params={"user": USER})
    assert response.status_code == 200
    zone = response.json()
    assert zone["url"] == f"{server.url}/ATServicesRest/"
    assert set(zone) == {"zoneName", "url", "webUrl", "ci"}
    # the advertised url + v1.0 answers authenticated calls
    threshold = httpx.get(zone["url"] + "v1.0/ThresholdInformation", headers=HEADERS)
    assert threshold.status_code == 200


@pytest.mark.parametrize("user", ["someone@else.example", ""])
def test_zone_information_for_an_unknown_or_blank_user_is_a_500(server: RunningServer, user: str) -> None:
    response = httpx.get(f"{server.url}/atservicesrest/v1.0/zoneInformation", params={"user": user})
    assert response.status_code == 500
    assert response.json() == {"errors": ["Zone information could not be determined"]}


def test_version_information_lists_v1(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/atservicesrest/versionInformation")
    assert response.status_code == 200 and "1.0" in response.json()["apiVersions"]


@pytest.mark.parametrize("prefix", ["ATServicesRest/V1.0", "atservicesrest/v1.0", "AtServicesRest/v1.0"])
def test_path_casing_is_accepted_both_ways(server: RunningServer, prefix: str) -> None:
    response = httpx.get(f"{server.url}/{prefix}/companies/entityInformation", headers=HEADERS)
    assert response.status_code == 200
    assert response.json()["info"]["canCreate"] is True


@pytest.mark.parametrize("missing", ["ApiIntegrationCode", "UserName", "Secret"])
def test_every_entity_call_needs_all_three_auth_headers(api: Api, missing: str) -> None:
    headers = {name: value for name, value in HEADERS.items() if name != missing}
    response = httpx.post(
        f"{api.base}/Companies/query", headers=headers, json={"filter": [{"op": "exist", "field": "id"}]}
    )
    assert response.status_code == 401


def test_a_wrong_secret_is_a_401_and_the_secret_is_never_logged(api: Api, server: RunningServer) -> None:
    response = httpx.get(f"{api.base}/ThresholdInformation", headers={**HEADERS, "Secret": "wrong"})
    assert response.status_code == 401
    api.query("Companies", {"op": "exist", "field": "id"})
    assert SECRET not in server.log()


def test_an_unknown_entity_is_a_404(api: Api) -> None:
    assert api.get("Widgets/query").status_code == 404


# --- verbs and envelopes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "path"),
    [
        ("DELETE", "Companies/10001"),
        ("DELETE", "Contracts/100001"),
        ("POST", "ContractServices"),
        ("PATCH", "ContractServices"),
        ("POST", "ContractServiceAdjustments/query"),
        ("GET", "ContractServiceAdjustments/query"),
        ("GET", "ContractServiceAdjustments/900001"),
        ("PATCH", "ContractServiceAdjustments"),
        ("POST", "ContractServiceUnits"),
        ("POST", "BillingCodes"),
        ("PATCH", "Resources"),
        ("POST", "Currencies"),
        ("PATCH", "Currencies"),
        ("GET", "Companies/query/next"),
    ],
)
def test_verbs_an_entity_does_not_allow_are_405(api: Api, verb: str, path: str) -> None:
    response = api.http.request(verb, f"{api.base}/{path}", json={"id": 1})
    assert response.status_code == 405
    assert response.json() == {"Message": f"The requested resource does not support http method '{verb}'."}


def test_get_by_id_wraps_the_record_in_item_and_a_missing_id_is_null(api: Api) -> None:
    company = api.state("Companies")[0]
    response = api.get(f"Companies/{company['id']}")
    assert response.status_code == 200 and response.json()["item"]["companyName"] == company["companyName"]
    assert api.get("Companies/999999999").json() == {"item": None}


def test_create_answers_item_id_and_patch_changes_only_sent_fields(api: Api) -> None:
    company_id = new_company(api, "Patch Me GmbH")
    response = api.patch("Companies", {"id": company_id, "city": "Köln"})
    assert response.status_code == 200 and response.json() == {"itemId": company_id}
    item = api.get(f"Companies/{company_id}").json()["item"]
    assert (item["companyName"], item["city"], item["phone"]) == ("Patch Me GmbH", "Köln", "+49 89 1234")
    assert item["isActive"] is True  # booleans are literal


def test_put_replaces_the_record_so_unsent_optional_fields_are_cleared(api: Api) -> None:
    company_id = new_company(api, "Put Me Ltd")
    api.patch("Companies", {"id": company_id, "city": "Leeds"})
    body = {
        "id": company_id,
        "companyName": "Put Me Ltd",
        "companyType": 1,
        "ownerResourceID": owner_id(api),
        "phone": "1",
    }
    assert api.http.put(f"{api.base}/Companies", json=body).status_code == 200
    assert api.get(f"Companies/{company_id}").json()["item"]["city"] is None


def test_missing_required_fields_are_named_in_a_500(api: Api) -> None:
    response = api.post("Companies", {"companyName": "Half a Company"})
    assert response.status_code == 500
    text = errors(response)
    assert "companyType" in text and "ownerResourceID" in text and "phone" in text
    assert "companyName" not in text


def test_invalid_picklist_reference_and_length_are_rejected(api: Api) -> None:
    owner = owner_id(api)
    base = {"companyName": "X", "companyType": 1, "ownerResourceID": owner, "phone": "1"}
    assert "picklist" in errors(api.post("Companies", {**base, "companyType": 99}))
    assert "ownerResourceID" in errors(api.post("Companies", {**base, "ownerResourceID": 123}))
    assert "maximum length" in errors(api.post("Companies", {**base, "companyName": "x" * 101}))
    assert api.post("Companies", {**base, "companyType": "abc"}).status_code == 500


def test_entity_fields_carry_picklists(api: Api) -> None:
    fields = {f["name"]: f for f in api.get("Contracts/entityInformation/fields").json()["fields"]}
    contract_types = {v["value"]: v["label"] for v in fields["contractType"]["picklistValues"]}
    assert contract_types["7"] == "Recurring Service"
    assert fields["status"]["isPickList"] and fields["startDate"]["isRequired"]
    service_fields = {f["name"]: f for f in api.get("Services/entityInformation/fields").json()["fields"]}
    assert {v["value"] for v in service_fields["periodType"]["picklistValues"]} >= {"2", "3", "4", "5"}
    company_fields = {f["name"]: f for f in api.get("Companies/entityInformation/fields").json()["fields"]}
    assert "Customer" in [v["label"] for v in company_fields["companyType"]["picklistValues"]]
    udfs = api.get("Companies/entityInformation/userDefinedFields").json()["fields"]
    assert "BSS Account ID" in [u["name"] for u in udfs]


def test_dates_are_returned_as_midnight_datetimes_whatever_form_they_came_in(api: Api) -> None:
    company_id = new_company(api, "Dated Ltd")
    contract_id = new_recurring_contract(api, company_id, start="2026-01-01T00:00:00.000", end="2026-12-31")
    item = api.get(f"Contracts/{contract_id}").json()["item"]
    assert (item["startDate"], item["endDate"]) == ("2026-01-01T00:00:00", "2026-12-31T00:00:00")


# --- queries -----------------------------------------------------------------------------------------------


def test_filter_operators_match_like_autotask(api: Api) -> None:
    companies = api.state("Companies")
    names = [c["companyName"] for c in companies]

    def matched(*filters: dict) -> list[str]:
        return [c["companyName"] for c in api.query("Companies", *filters)["items"]]

    assert matched({"op": "eq", "field": "companyName", "value": "contoso limited"}) == ["Contoso Limited"]
    assert matched({"op": "beginsWith", "field": "companyName", "value": "Contoso"}) == ["Contoso Limited"]
    assert matched({"op": "endsWith", "field": "companyName", "value": "GmbH"}) == [
        n for n in names if n.lower().endswith("gmbh")
    ]
    assert matched({"op": "contains", "field": "companyName", "value": "sons"}) == [
        n for n in names if "sons" in n.lower()
    ]
    assert len(matched({"op": "noteq", "field": "companyName", "value": "Contoso Limited"})) == len(names) - 1
    pivot = companies[10]["id"]
    assert len(matched({"op": "gt", "field": "id", "value": pivot})) == sum(c["id"] > pivot for c in companies)
    assert len(matched({"op": "lte", "field": "id", "value": pivot})) == sum(c["id"] <= pivot for c in companies)
    assert len(matched({"op": "notIn", "field": "id", "value": [pivot]})) == len(names) - 1
    with_city = sum(1 for c in companies if c["city"])
    assert len(matched({"op": "exist", "field": "city"})) == with_city
    assert len(matched({"op": "notExist", "field": "city"})) == len(names) - with_city


def test_nested_and_or_groups(api: Api) -> None:
    companies = api.state("Companies")
    first, second, third = (c["id"] for c in companies[:3])
    found = api.query(
        "Companies",
        {
            "op": "or",
            "items": [
                {"op": "eq", "field": "id", "value": first},
                {
                    "op": "and",
                    "items": [
                        {"op": "gte", "field": "id", "value": second},
                        {"op": "lte", "field": "id", "value": third},
                    ],
                },
            ],
        },
    )["items"]
    assert [c["id"] for c in found] == [first, second, third]


def test_udf_filters_find_companies_by_bss_account_id(api: Api) -> None:
    fact = api.facts("company", "udf")[0]
    found = api.query("Companies", {"op": "eq", "field": "BSS Account ID", "udf": True, "value": fact["bssId"]})
    assert [c["id"] for c in found["items"]] == [fact["autotaskId"]]
    two_udfs = api.post(
        "Companies/query",
        {
            "filter": [
                {"op": "eq", "field": "BSS Account ID", "udf": True, "value": "x"},
                {"op": "eq", "field": "Billing Contact Email", "udf": True, "value": "y"},
            ]
        },
    )
    assert two_udfs.status_code == 500 and "one user-defined field" in errors(two_udfs)


def test_include_fields_limits_the_fields_but_keeps_id(api: Api) -> None:
    items = api.query("Companies", {"op": "exist", "field": "id"}, IncludeFields=["companyName"])["items"]
    assert items and all(set(item) == {"id", "companyName"} for item in items)


@pytest.mark.parametrize("max_records", [0, 501, "ten"])
def test_max_records_outside_1_to_500_is_rejected(api: Api, max_records: object) -> None:
    response = api.post("Companies/query", {"filter": [{"op": "exist", "field": "id"}], "MaxRecords": max_records})
    assert response.status_code == 500
    assert errors(response) == "maxCountOfRecordsToReturn must be between 1 and 500"


def test_more_than_500_in_values_or_or_conditions_are_rejected(api: Api) -> None:
    too_many = api.post("Companies/query", {"filter": [{"op": "in", "field": "id", "value": list(range(501))}]})
    assert too_many.status_code == 500 and "500" in errors(too_many)
    ors = [{"op": "eq", "field": "id", "value": value} for value in range(501)]
    assert api.post("Companies/query", {"filter": [{"op": "or", "items": ors}]}).status_code == 500
    assert (
        api.post("Companies/query", {"filter": [{"op": "in", "field": "id", "value": list(range(500))}]}).status_code
        == 200
    )


def test_unknown_fields_and_operators_are_errors(api: Api) -> None:
    assert api.post("Companies/query", {"filter": [{"op": "eq", "field": "nope", "value": 1}]}).status_code == 500
    bad_op = api.post("Companies/query", {"filter": [{"op": "startsWith", "field": "companyName", "value": "a"}]})
    assert bad_op.status_code == 500 and "startsWith" in errors(bad_op)


def test_get_query_with_search_parameter_and_count(api: Api) -> None:
    search = json.dumps({"filter": [{"op": "beginsWith", "field": "companyName", "value": "M"}]})
    items = api.get("Companies/query", params={"search": search}).json()["items"]
    count = api.get("Companies/query/count", params={"search": search}).json()
    assert count == {"queryCount": len(items)} and items
    post_count = api.post("Companies/query/count", {"filter": [{"op": "exist", "field": "id"}]}).json()
    assert post_count["queryCount"] == len(api.state("Companies"))


def test_paging_follows_next_page_url_posted_with_the_same_body(api: Api) -> None:
    body = {"filter": [{"op": "exist", "field": "id"}], "MaxRecords": 7, "IncludeFields": ["id"]}
    payload = api.post("Companies/query", body).json()
    seen = [item["id"] for item in payload["items"]]
    assert payload["pageDetails"]["prevPageUrl"] is None
    pages = 1
    while payload["pageDetails"]["nextPageUrl"]:
        next_url = payload["pageDetails"]["nextPageUrl"]
        assert next_url.startswith("http") and "/query/next?paging=" in next_url
        assert api.http.get(next_url).status_code == 405
        payload = api.http.post(next_url, json=body).json()
        assert payload["pageDetails"]["count"] == len(payload["items"]) <= 7
        seen += [item["id"] for item in payload["items"]]
        pages += 1
    expected = [c["id"] for c in api.state("Companies")]
    assert seen == sorted(seen) == expected
    assert pages == -(-len(expected) // 7)


def test_an_in_query_answers_exactly_the_asked_ids_in_id_order(api: Api) -> None:
    # How fast a 500-id query over >10,000 records is, is `make bench` (autotask_sandbox_in_query), not a test.
    services = [service["id"] for service in api.state("ContractServices")]
    asked = services[::2]
    assert len(asked) > 50
    items = api.query("ContractServices", {"op": "in", "field": "id", "value": [*reversed(asked), 999_999]})["items"]
    assert [item["id"] for item in items] == sorted(asked)


# --- billing rules -------------------------------------------------------------------------------------------


def test_contract_services_only_on_recurring_contracts_and_hold_no_units(api: Api) -> None:
    company_id = new_company(api, "Rules Inc")
    fixed = new_recurring_contract(api, company_id, contract_type=3)
    service_id = monthly_service_id(api)
    refused = api.post(f"Contracts/{fixed}/Services", {"serviceID": service_id})
    assert refused.status_code == 500 and "Recurring Service" in errors(refused)
    recurring = new_recurring_contract(api, company_id)
    created = api.post(
        f"Contracts/{recurring}/Services",
        {"contractID": recurring, "serviceID": service_id, "unitPrice": 10, "unitCost": 7},
    )
    assert created.status_code == 200
    cs = api.get(f"ContractServices/{created.json()['itemId']}").json()["item"]
    assert "units" not in cs and "adjustedPrice" not in cs
    assert cs["internalCurrencyAdjustedPrice"] == 10
    listed = api.get(f"Contracts/{recurring}/Services").json()["items"]
    assert [item["id"] for item in listed] == [cs["id"]]


def test_contract_service_update_allows_only_adjusted_price_and_invoice_description(api: Api) -> None:
    cs = api.state("ContractServices")[0]
    path = f"Contracts/{cs['contractID']}/Services"
    ok = api.patch(path, {"id": cs["id"], "adjustedPrice": 99.5, "invoiceDescription": "Licences"})
    assert ok.status_code == 200
    item = api.get(f"ContractServices/{cs['id']}").json()["item"]
    assert (item["internalCurrencyAdjustedPrice"], item["invoiceDescription"]) == (99.5, "Licences")
    refused = api.patch(path, {"id": cs["id"], "unitCost": 1.23})
    assert refused.status_code == 500 and "adjustedPrice" in errors(refused)


def test_contract_company_and_type_are_read_only_after_create(api: Api) -> None:
    contract = api.state("Contracts")[0]
    refused = api.patch("Contracts", {"id": contract["id"], "contractType": 1})
    assert refused.status_code == 500 and "contractType" in errors(refused)
    assert api.patch("Contracts", {"id": contract["id"], "endDate": "2030-12-31"}).status_code == 200


def test_seeded_units_match_the_seed_facts_at_the_month_start(api: Api) -> None:
    contract_ends = {f["autotaskId"]: f["endDate"] for f in api.facts("contract") if f["autotaskId"]}
    services = [f for f in api.facts("contractService") if f["autotaskId"]]
    # a subscription renewing on the 1st finds its contract ended the day before: extension needed
    expired = [f for f in services if contract_ends[f["contractId"]] < MONTH_START]
    facts = [f for f in services if f not in expired]
    assert expired and facts
    assert any(f["match"] == "differs" for f in facts) and any(f["match"] == "equal" for f in facts)
    ids = [f["autotaskId"] for f in facts]
    rows = api.query(
        "ContractServiceUnits",
        {"op": "in", "field": "contractServiceID", "value": ids},
        {"op": "lte", "field": "startDate", "value": "2026-10-01"},
        {"op": "gte", "field": "endDate", "value": "2026-10-01"},
    )["items"]
    by_cs = {row["contractServiceID"]: row for row in rows}
    assert set(by_cs) == set(ids)  # exactly one row covers the day
    for fact in facts:
        assert by_cs[fact["autotaskId"]]["units"] == fact["units"]
        assert (fact["units"] == fact["bssUnits"]) == (fact["match"] == "equal")


def test_adjustment_splits_the_period_and_changes_units_from_its_date(api: Api) -> None:
    company_id = new_company(api, "Split Ltd")
    contract_id = new_recurring_contract(api, company_id)
    service_id = monthly_service_id(api)
    # contractID + serviceID of a service not yet on the contract: Autotask adds it
    response = api.post(
        f"Contracts/{contract_id}/ServiceAdjustments",
        {"serviceID": service_id, "effectiveDate": "2026-01-01", "unitChange": 10},
    )
    assert response.status_code == 200, response.text
    cs_id = api.get(f"Contracts/{contract_id}/Services").json()["items"][0]["id"]
    assert (
        api.post(
            "ContractServiceAdjustments",
            {
                "contractServiceID": cs_id,
                "effectiveDate": "2026-10-18T00:00:00",
                "unitChange": -4,
                "adjustedUnitPrice": 12.5,
            },
        ).status_code
        == 200
    )
    rows = units_rows(api, cs_id)
    assert len(rows) == 13  # 12 months, October split in two
    october = [r for r in rows if r["startDate"].startswith("2026-10")]
    assert [(r["startDate"], r["endDate"], r["units"]) for r in october] == [
        ("2026-10-01T00:00:00", "2026-10-17T00:00:00", 10),
        ("2026-10-18T00:00:00", "2026-10-31T00:00:00", 6),
    ]
    assert october[1]["price"] == 12.5
    assert rows[-1]["units"] == 6 and rows[0]["units"] == 10
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert api.get(f"ContractServiceUnits/{october[1]['id']}").json()["item"]["units"] == 6


def test_adjustment_rules_dates_duplicates_and_negative_units(api: Api) -> None:
    company_id = new_company(api, "Strict GmbH")
    contract_id = new_recurring_contract(api, company_id)
    service_id = monthly_service_id(api)
    outside = api.post(
        "ContractServiceAdjustments",
        {"contractID": contract_id, "serviceID": service_id, "effectiveDate": "2027-01-01", "unitChange": 1},
    )
    assert errors(outside) == "effectiveDate must be between the start date and end date of the Contract"
    no_date = api.post(
        "ContractServiceAdjustments", {"contractID": contract_id, "serviceID": service_id, "unitChange": 1}
    )
    assert no_date.status_code == 500 and "effectiveDate" in errors(no_date)
    first = {"contractID": contract_id, "serviceID": service_id, "effectiveDate": "2026-03-01", "unitChange": 3}
    assert api.post("ContractServiceAdjustments", first).status_code == 200
    duplicate = api.post("ContractServiceAdjustments", {**first, "unitChange": 1})
    assert errors(duplicate) == "Attempt to insert duplicate data into contract_service_period"
    negative = api.post("ContractServiceAdjustments", {**first, "effectiveDate": "2026-05-01", "unitChange": -4})
    assert negative.status_code == 500 and "below zero" in errors(negative)
    cs_id = api.get(f"Contracts/{contract_id}/Services").json()["items"][0]["id"]
    assert {row["units"] for row in units_rows(api, cs_id) if row["startDate"] >= "2026-03"} == {3}


def test_extending_the_contract_extends_the_units_rows(api: Api) -> None:
    company_id = new_company(api, "Renewal Ltd")
    contract_id = new_recurring_contract(api, company_id, end="2026-06-30")
    service_id = monthly_service_id(api)
    api.post(
        "ContractServiceAdjustments",
        {"contractID": contract_id, "serviceID": service_id, "effectiveDate": "2026-01-01", "unitChange": 2},
    )
    cs_id = api.get(f"Contracts/{contract_id}/Services").json()["items"][0]["id"]
    assert len(units_rows(api, cs_id)) == 6
    refused = api.post(
        "ContractServiceAdjustments", {"contractServiceID": cs_id, "effectiveDate": "2026-08-01", "unitChange": 1}
    )
    assert refused.status_code == 500
    assert api.patch("Contracts", {"id": contract_id, "endDate": "2026-12-31"}).status_code == 200
    assert len(units_rows(api, cs_id)) == 12
    assert (
        api.post(
            "ContractServiceAdjustments", {"contractServiceID": cs_id, "effectiveDate": "2026-08-01", "unitChange": 1}
        ).status_code
        == 200
    )


def test_services_periods_follow_the_service_period_type(api: Api) -> None:
    company_id = new_company(api, "Quarterly AG")
    contract_id = new_recurring_contract(api, company_id)
    quarterly = next(s["id"] for s in api.state("Services") if s["isActive"] and s["periodType"] == 3)
    api.post(
        "ContractServiceAdjustments",
        {"contractID": contract_id, "serviceID": quarterly, "effectiveDate": "2026-01-01", "unitChange": 5},
    )
    cs_id = api.get(f"Contracts/{contract_id}/Services").json()["items"][0]["id"]
    rows = units_rows(api, cs_id)
    assert [(r["startDate"][:10], r["endDate"][:10]) for r in rows] == [
        ("2026-01-01", "2026-03-31"),
        ("2026-04-01", "2026-06-30"),
        ("2026-07-01", "2026-09-30"),
        ("2026-10-01", "2026-12-31"),
    ]


def test_inactive_services_cannot_join_a_contract(api: Api) -> None:
    company_id = new_company(api, "Inactive Check")
    contract_id = new_recurring_contract(api, company_id)
    inactive = next(s["id"] for s in api.state("Services") if not s["isActive"])
    response = api.post(f"Contracts/{contract_id}/Services", {"serviceID": inactive})
    assert response.status_code == 500 and "inactive" in errors(response)


# --- seed -------------------------------------------------------------------------------------------------------


def test_seed_holds_every_matching_case(api: Api) -> None:
    companies = {c["id"]: c for c in api.state("Companies")}
    names = {c["companyName"] for c in companies.values()}
    assert {"Contoso Limited", "Muller GmbH"} <= names and "Contoso Ltd" not in names and "Müller GmbH" not in names
    company_facts = api.facts("company")
    assert {f["match"] for f in company_facts} == {"udf", "name", "near", "missing"}
    for fact in api.facts("company", "udf"):
        udfs = {u["name"]: u["value"] for u in companies[fact["autotaskId"]]["userDefinedFields"]}
        assert udfs["BSS Account ID"] == fact["bssId"]
    missing = len(api.facts("company", "missing")) / len(company_facts)
    assert 0.03 < missing < 0.25
    contracts = {c["id"]: c for c in api.state("Contracts")}
    assert all(c["contractType"] == 7 for c in contracts.values())
    for fact in api.facts("contract", "number"):
        assert contracts[fact["autotaskId"]]["contractNumber"] == fact["bssId"]
    assert api.facts("contract", "name")
    assert all(contracts[f["autotaskId"]]["contractNumber"] is None for f in api.facts("contract", "name"))
    service_matches = {f["match"] for f in api.facts("service")}
    assert service_matches == {"sku", "name", "inactive", "missing"}
    assert sum(not s["isActive"] for s in api.state("Services")) >= 1


def test_currencies_are_an_entity_and_companies_carry_their_currency(api: Api) -> None:
    info = api.get("Currencies/entityInformation").json()["info"]
    assert info["canQuery"] and not info["canCreate"] and not info["canUpdate"]
    fields = {f["name"]: f for f in api.get("Currencies/entityInformation/fields").json()["fields"]}
    assert {"id", "name", "isInternalCurrency", "isActive"} <= set(fields)
    company_fields = {f["name"]: f for f in api.get("Companies/entityInformation/fields").json()["fields"]}
    assert company_fields["currencyID"]["referenceEntityType"] == "Currencies"

    currencies = api.query("Currencies", {"op": "gte", "field": "id", "value": 0})["items"]
    by_code = {c["name"]: c for c in currencies}
    assert {"EUR", "GBP", "USD"} <= set(by_code)
    assert [c["name"] for c in currencies if c["isInternalCurrency"]] == ["EUR"]
    assert any(not c["isActive"] for c in currencies)  # an inactive currency is no company's currency
    gbp = api.query("Companies", {"op": "eq", "field": "currencyID", "value": by_code["GBP"]["id"]})["items"]
    assert gbp
    narrowed = api.query(
        "Currencies", {"op": "eq", "field": "name", "value": "GBP"}, includeFields=["id", "isInternalCurrency"]
    )["items"]
    assert narrowed == [{"id": by_code["GBP"]["id"], "isInternalCurrency": False}]

    companies = {c["id"]: c for c in api.state("Companies")}
    code_of = {c["id"]: c["name"] for c in currencies}
    facts = [f for f in api.facts("company") if f["autotaskId"]]
    for fact in facts:
        currency_id = companies[fact["autotaskId"]]["currencyID"]
        assert (code_of[currency_id] if currency_id is not None else "EUR") == fact["currency"]
    # most GBP/USD customers' companies carry their currency; a few GBP ones are EUR in Autotask
    mismatched = [f for f in facts if f["currency"] != f["bssCurrency"]]
    assert mismatched and all((f["bssCurrency"], f["currency"]) == ("GBP", "EUR") for f in mismatched)
    assert sum(f["bssCurrency"] in ("GBP", "USD") and f["currency"] == f["bssCurrency"] for f in facts) > len(
        mismatched
    )
    assert any(c["currencyID"] is None for c in companies.values())  # the internal currency by default

    created = new_company(api, "Pound Ltd")
    assert api.patch("Companies", {"id": created, "currencyID": by_code["GBP"]["id"]}).status_code == 200
    assert api.get(f"Companies/{created}").json()["item"]["currencyID"] == by_code["GBP"]["id"]
    assert "currencyID" in errors(api.patch("Companies", {"id": created, "currencyID": 424242}))


def test_seed_holds_look_alike_companies_that_are_other_companies(api: Api) -> None:
    companies = api.state("Companies")
    names = [c["companyName"] for c in companies]
    assert "Kowalski Bäckerei ApS" in names and "Kowalski Bäckerei SARL" not in names  # the customer's own is missing
    assert {"Nordlicht GmbH", "Nordlicht AG", "Muller & Sohne GmbH"} <= set(names)
    assert "Müller & Söhne GmbH" not in names
    assert names.count("Hart & Hale Ltd") == 2
    lookalikes = api.facts("lookalike")
    assert {f["match"] for f in lookalikes} == {"same-name", "other-legal-form", "other-entity"}
    # brand-new customers (no company of their own) whose look-alikes are other legal entities
    new = {f["bssName"]: f["autotaskName"] for f in lookalikes if f["match"] == "other-entity"}
    assert set(new) == {"Brennan Café Oy", "Sánchez Medical Centre Ltd"} and "Schäfer Medical Centre Limited" in names
    assert {"Brennan Café Ltd", "Brennan Café LLP"} <= set(names) and "Brennan Café Oy" not in names
    own = {f["bssId"]: f["autotaskId"] for f in api.facts("company")}
    for fact in lookalikes:
        assert fact["bssId"] is None and fact["autotaskId"] != own[fact["looksLike"]]
    twin = next(f for f in lookalikes if f["match"] == "same-name")
    assert twin["autotaskId"] < own[twin["looksLike"]]  # the impostor comes first
    keyed = next(f for f in api.facts("company") if f["bssName"] == "Brücke Logistik GmbH")
    assert keyed["match"] == "udf" and "Brücke Logistik AG" in names


def test_hand_made_adjustments_make_a_second_one_on_that_day_a_duplicate(api: Api) -> None:
    facts = api.facts("handAdjustment")
    assert {f["match"] for f in facts} == {"same-units", "other-units"}
    for fact in facts:
        assert fact["effectiveDate"].startswith("2026-10") and fact["effectiveDate"] != "2026-10-01"
        assert (fact["unitChange"] == fact["bssChange"]) == (fact["match"] == "same-units")
    fact = facts[0]
    again = api.post(
        "ContractServiceAdjustments",
        {"contractServiceID": fact["contractServiceId"], "effectiveDate": fact["effectiveDate"], "unitChange": 1},
    )
    assert errors(again) == "Attempt to insert duplicate data into contract_service_period"
    rows = units_rows(api, fact["contractServiceId"])
    from_day = [r for r in rows if r["startDate"][:10] == fact["effectiveDate"]]
    before = [r for r in rows if r["endDate"][:10] < fact["effectiveDate"]][-1]
    assert from_day[0]["units"] == before["units"] + fact["unitChange"]


def test_contracts_of_moved_and_unbilled_subscriptions_stay_where_they_were(api: Api) -> None:
    contracts = {c["id"]: c for c in api.state("Contracts")}
    moved = [f for f in api.facts("contract") if f.get("accountInMonth") and f["accountInMonth"] != f["accountId"]]
    assert moved
    own = {f["bssId"]: f["autotaskId"] for f in api.facts("company")}
    for fact in moved:
        contract = contracts[fact["autotaskId"]]
        assert contract["contractNumber"] == fact["bssId"]
        assert contract["companyID"] == own[fact["accountId"]] != own[fact["accountInMonth"]]
    # a second subscription to a product starts this month while the first one's contract is keyed
    universe = build_universe(60, 3, 42)  # the universe the server seeded from
    seconds = [s for s in universe.subscriptions if s.second_of and s.start_date.strftime("%Y-%m") == "2026-10"]
    assert seconds
    keyed = {c["contractNumber"]: c for c in contracts.values() if c["contractNumber"]}
    for subscription in seconds:
        assert subscription.second_of in keyed and subscription.id not in keyed
    unbilled = api.facts("contractService", "not-billed")
    assert unbilled and {f["stopReason"] for f in unbilled} <= {"vanished", "lapsed"}
    assert all(f["units"] > 0 and f["bssUnits"] == 0 for f in unbilled)


def test_seed_is_deterministic_across_servers(server: RunningServer) -> None:
    other = start_server(_args("--seed-customers", "60"))
    try:
        first, second = Api(server), Api(other)
        first.admin.post("/_admin/reset").raise_for_status()
        for entity in ("Companies", "Contracts", "ContractServices", "Services"):
            assert first.state(entity) == second.state(entity)
    finally:
        other.stop()


# --- limits and faults -----------------------------------------------------------------------------------------


def test_threshold_information_counts_requests_and_the_hourly_budget_rejects_past_it(api: Api) -> None:
    api.faults(hourly_limit=5)
    before = api.get("ThresholdInformation").json()
    assert before["externalRequestThreshold"] == 5 and before["requestThresholdTimeframe"] == 60
    after = api.get("ThresholdInformation").json()
    assert after["currentTimeframeRequestCount"] == before["currentTimeframeRequestCount"] + 1
    api.faults(hourly_limit=after["currentTimeframeRequestCount"])
    rejected = api.post("Companies/query", {"filter": [{"op": "exist", "field": "id"}]})
    assert rejected.status_code == 429 and int(rejected.headers["Retry-After"]) > 0
    assert "threshold" in errors(rejected)
    api.faults(hourly_limit=10000)
    assert api.post("Companies/query", {"filter": [{"op": "exist", "field": "id"}]}).status_code == 200


def _concurrent_queries(api: Api, entity: str, count: int) -> list[httpx.Response]:
    body = {"filter": [{"op": "exist", "field": "id"}], "MaxRecords": 1}
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: api.post(f"{entity}/query", body), range(count)))


def test_a_fourth_concurrent_request_per_endpoint_gets_itgenatr005(api: Api) -> None:
    api.faults(latency_ms=400)
    responses = _concurrent_queries(api, "Companies", 5)
    rejected = [r for r in responses if r.status_code != 200]
    assert len(rejected) == 2 and all(r.status_code == 429 for r in rejected)
    text = errors(rejected[0])
    assert "Itgenatr005" in text and "thread threshold of 3 threads has been exceeded" in text
    assert "Retry-After" not in rejected[0].headers
    stats = api.stats()
    assert stats["max_concurrency"]["Companies"] == 3 and stats["requests"]["Companies"]["POST"] == 5


def test_the_thread_limit_is_per_endpoint_and_its_status_is_configurable(api: Api) -> None:
    api.faults(latency_ms=400, thread_limit_status=500)
    with ThreadPoolExecutor(max_workers=2) as pool:
        companies = pool.submit(_concurrent_queries, api, "Companies", 3)
        contracts = pool.submit(_concurrent_queries, api, "Contracts", 4)
        assert all(r.status_code == 200 for r in companies.result())
        statuses = sorted(r.status_code for r in contracts.result())
    assert statuses == [200, 200, 200, 500]


def test_latency_is_added_per_call(api: Api) -> None:
    api.faults(latency_ms=300)
    started = time.perf_counter()
    api.get("Companies/10001")
    assert time.perf_counter() - started >= 0.3


def test_injected_errors_apply_nothing(api: Api) -> None:
    api.faults(error_rate=1.0)
    before = len(api.state("Companies"))
    response = api.post(
        "Companies", {"companyName": "Never", "companyType": 1, "ownerResourceID": owner_id(api), "phone": "1"}
    )
    assert response.status_code >= 500
    assert len(api.state("Companies")) == before
    assert api.stats()["faults"]["errors"] == 1


def test_a_lost_response_hides_a_write_that_was_applied(api: Api) -> None:
    api.faults(lost_response_rate=1.0)
    response = api.post(
        "Companies", {"companyName": "Lost Reply AG", "companyType": 1, "ownerResourceID": owner_id(api), "phone": "1"}
    )
    assert response.status_code == 504
    assert "Lost Reply AG" in [c["companyName"] for c in api.state("Companies")]
    assert api.stats()["writes"] == 1


def test_faults_are_settable_and_admin_calls_are_not_counted(api: Api) -> None:
    current = api.faults(latency_ms=5)
    assert current["latency_ms"] == 5 and current["thread_limit"] == 3
    api.state("Companies")
    api.admin.get("/healthz")
    assert api.stats()["requests"] == {}
    assert api.admin.post("/_admin/faults", json={"nonsense": 1}).status_code == 400


def test_reset_returns_to_the_seed(api: Api) -> None:
    before = api.state("Companies")
    new_company(api, "Temporary Ltd")
    assert len(api.state("Companies")) == len(before) + 1
    api.admin.post("/_admin/reset").raise_for_status()
    assert api.state("Companies") == before


# --- persistence -----------------------------------------------------------------------------------------------


def test_acknowledged_writes_survive_a_sigterm_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "autotask-state.json"
    first = start_server(_args("--seed-customers", "5", "--state-file", str(state_file)))
    try:
        api = Api(first)
        company_id = new_company(api, "Survivor GmbH")
        contract_id = new_recurring_contract(api, company_id)
        assert (
            api.post(
                f"Contracts/{contract_id}/ServiceAdjustments",
                {"serviceID": monthly_service_id(api), "effectiveDate": "2026-02-01", "unitChange": 4},
            ).status_code
            == 200
        )
        first.process.send_signal(signal.SIGTERM)  # right after the acknowledgement
        first.process.wait(timeout=15)
    finally:
        first.stop()
    assert state_file.exists() and not list(tmp_path.glob("*.tmp"))
    second = start_server(_args("--seed-customers", "5", "--state-file", str(state_file)))
    try:
        api = Api(second)
        assert api.get(f"Companies/{company_id}").json()["item"]["companyName"] == "Survivor GmbH"
        cs_id = api.get(f"Contracts/{contract_id}/Services").json()["items"][0]["id"]
        assert [r["units"] for r in units_rows(api, cs_id)][1:3] == [4, 4]
        assert new_company(api, "Next One") == company_id + 1  # ids keep counting up
    finally:
        second.stop()


def test_a_state_file_an_older_sandbox_saved_is_seeded_afresh(tmp_path: Path) -> None:
    state_file = tmp_path / "autotask-state.json"
    # format 1 had no Currencies: keeping it would leave every company without a currency
    state_file.write_text(json.dumps({"format": 1, "tables": {"Companies": {"next_id": 10002, "records": []}}}))
    server = start_server(_args("--seed-customers", "5", "--state-file", str(state_file)))
    try:
        api = Api(server)
        assert [c["name"] for c in api.state("Currencies") if c["isInternalCurrency"]] == ["EUR"]
        assert api.state("Companies")
    finally:
        server.stop()
    from sandbox.autotask_store import STATE_FORMAT

    assert json.loads(state_file.read_text())["format"] == STATE_FORMAT
