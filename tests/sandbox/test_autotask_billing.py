"""The Autotask sandbox's billing entities over HTTP: ContractCharges (changes refused once billed), BillingItems
and Invoices (query only), Approve & Post with its leak switches, unpost, and the same faults as every entity."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.sandbox.test_autotask_server import (
    FAULTS_OFF,
    Api,
    _args,
    errors,
    monthly_service_id,
    new_company,
    new_recurring_contract,
)
from tests.servers import RunningServer, start_server

USAGE_CODE = 29682805  # the seed's "Cloud Usage" material code
RECURRING_CODE = 29682801


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(_args("--seed-customers", "20"))
    yield running
    running.stop()


@pytest.fixture
def api(server: RunningServer) -> Iterator[Api]:
    client = Api(server)
    client.admin.post("/_admin/reset").raise_for_status()
    client.faults(**FAULTS_OFF)
    client.admin.post("/_admin/stats/reset").raise_for_status()
    yield client
    client.faults(**FAULTS_OFF)


def charge_body(contract_id: int, **changes: object) -> dict:
    return {
        "contractID": contract_id,
        "name": "Azure plan usage — Oct 2026",
        "datePurchased": "2026-10-31",
        "chargeType": 1,
        "unitQuantity": 12.5,
        "unitCost": 8.0,
        "unitPrice": 10.0,
        "billingCodeID": USAGE_CODE,
        "purchaseOrderNumber": "CHG-2026-10-77",
        **changes,
    }


def query_status(api: Api, entity: str) -> int:
    return api.post(f"{entity}/query", {"filter": [{"op": "gt", "field": "id", "value": 0}]}).status_code


def post_month(api: Api, **switches: object) -> dict:
    response = api.admin.post("/_admin/approve-and-post", json={"month": "2026-10", **switches})
    assert response.status_code == 200, response.text
    return response.json()


def contract_with_service(api: Api, units: int = 10) -> tuple[int, int]:
    company = new_company(api, "Billing Test GmbH")
    contract = new_recurring_contract(api, company, start="2026-01-01", end="2027-12-31")
    response = api.post(
        "ContractServiceAdjustments",
        {
            "contractID": contract,
            "serviceID": monthly_service_id(api),
            "effectiveDate": "2026-01-01",
            "unitChange": units,
        },
    )
    assert response.status_code == 200, response.text
    return company, contract


# --- ContractCharges --------------------------------------------------------------------------------------------


def test_the_charge_type_picklist_is_read_from_the_entity_fields(api: Api) -> None:
    fields = {field["name"]: field for field in api.get("ContractCharges/entityInformation/fields").json()["fields"]}
    assert fields["chargeType"]["isPickList"] and fields["chargeType"]["isRequired"]
    assert {value["label"] for value in fields["chargeType"]["picklistValues"]} == {"Operational", "Capitalized"}
    assert fields["isBilled"]["isReadOnly"] and fields["billableAmount"]["isReadOnly"]
    info = api.get("ContractCharges/entityInformation").json()["info"]
    assert info["canCreate"] and info["canUpdate"] and info["canDelete"] and info["canQuery"]


def test_a_charge_is_created_queried_changed_and_deleted_while_not_billed(api: Api) -> None:
    _, contract = contract_with_service(api)
    created = api.post("ContractCharges", charge_body(contract))
    assert created.status_code == 200, created.text
    charge_id = created.json()["itemId"]
    found = api.query("ContractCharges", {"op": "eq", "field": "purchaseOrderNumber", "value": "CHG-2026-10-77"})
    item = found["items"][0]
    assert item["id"] == charge_id and item["isBilled"] is False and item["billableAmount"] == 125.0
    assert api.patch("ContractCharges", {"id": charge_id, "unitQuantity": 3}).status_code == 200
    assert api.get(f"ContractCharges/{charge_id}").json()["item"]["billableAmount"] == 30.0
    # through the contract too
    child = api.post(
        f"Contracts/{contract}/Charges", {k: v for k, v in charge_body(contract).items() if k != "contractID"}
    )
    assert child.status_code == 200 and api.get(f"Contracts/{contract}/Charges").json()["pageDetails"]["count"] == 2
    deleted = api.http.delete(f"{api.base}/ContractCharges/{charge_id}")
    assert deleted.status_code == 200 and deleted.json() == {"itemId": charge_id}
    assert api.get(f"ContractCharges/{charge_id}").json()["item"] is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": None}, "Required field name is missing."),
        ({"chargeType": 9}, "Value 9 is not a valid picklist value for field chargeType."),
        ({"billingCodeID": None}, "Either productID or billingCodeID is required"),
        ({"billingCodeID": 12345}, "Reference value 12345 for field billingCodeID does not exist."),
        ({"name": "x" * 101}, "exceeds the maximum length of 100"),
        ({"unitQuantity": "many"}, "Error converting value 'many' to type 'System.Decimal'"),
    ],
)
def test_bad_charges_are_refused_in_autotasks_error_style(api: Api, changes: dict, message: str) -> None:
    _, contract = contract_with_service(api)
    response = api.post("ContractCharges", charge_body(contract, **changes))
    assert response.status_code == 500 and message in errors(response)
    assert api.state("ContractCharges") == []


def test_a_charge_on_a_block_hours_contract_needs_a_purchase_code(api: Api) -> None:
    company = new_company(api, "Block Hours AG")
    block = new_recurring_contract(api, company, contract_type=4)
    refused = api.post("ContractCharges", charge_body(block, billingCodeID=RECURRING_CODE))
    assert refused.status_code == 500 and "Block Hours contracts unless the billing code is a purchase code" in errors(
        refused
    )
    assert api.post("ContractCharges", charge_body(block)).status_code == 200  # a material (purchase) code


def test_a_billed_charge_can_be_neither_changed_nor_deleted(api: Api) -> None:
    _, contract = contract_with_service(api)
    charge_id = api.post("ContractCharges", charge_body(contract)).json()["itemId"]
    post_month(api)
    assert api.get(f"ContractCharges/{charge_id}").json()["item"]["isBilled"] is True
    changed = api.patch("ContractCharges", {"id": charge_id, "unitQuantity": 1})
    deleted = api.http.delete(f"{api.base}/ContractCharges/{charge_id}")
    for response, verb in ((changed, "updated"), (deleted, "deleted")):
        assert response.status_code == 500
        assert (
            errors(response)
            == f"The ContractCharge {charge_id} has been billed (Approve and Post) and cannot be {verb}."
        )
    assert api.get(f"ContractCharges/{charge_id}").json()["item"]["unitQuantity"] == 12.5


def test_billing_items_and_invoices_are_query_only(api: Api) -> None:
    for entity in ("BillingItems", "Invoices"):
        assert api.post(entity, {}).status_code == 405
        assert api.patch(entity, {"id": 1}).status_code == 405
        assert api.http.delete(f"{api.base}/{entity}/1").status_code == 405
        assert api.query(entity, {"op": "gt", "field": "id", "value": 0})["items"] == []


# --- Approve & Post ---------------------------------------------------------------------------------------------


def test_approve_and_post_bills_the_months_periods_and_charges_once_per_company(api: Api) -> None:
    company, contract = contract_with_service(api, units=10)
    charge_id = api.post("ContractCharges", charge_body(contract)).json()["itemId"]
    api.post(
        "ContractServiceAdjustments",
        {"contractID": contract, "serviceID": monthly_service_id(api), "effectiveDate": "2026-10-16", "unitChange": 5},
    )
    result = post_month(api)
    assert result["invoices"] >= 1 and result["planted"] == {"unbilled": [], "below_cost": [], "under_billed": []}
    items = api.query("BillingItems", {"op": "eq", "field": "contractID", "value": contract})["items"]
    service = next(s for s in api.state("Services") if s["id"] == monthly_service_id(api))
    periods = sorted((item for item in items if item["serviceID"]), key=lambda item: item["itemDate"])
    # the month's period split by the adjustment: 15 days of 10 units, 16 days of 15, each prorated by its days
    assert [(item["itemDate"][:10], item["quantity"]) for item in periods] == [("2026-10-01", 10), ("2026-10-16", 15)]
    assert periods[0]["rate"] == pytest.approx(round(service["unitPrice"] * 15 / 31, 4))
    assert periods[1]["extendedPrice"] == pytest.approx(round(15 * round(service["unitPrice"] * 16 / 31, 4), 2))
    charge_item = next(item for item in items if item["contractChargeID"] == charge_id)
    assert (charge_item["quantity"], charge_item["rate"], charge_item["ourCost"], charge_item["extendedPrice"]) == (
        12.5,
        10.0,
        100.0,
        125.0,
    )
    invoices = api.query("Invoices", {"op": "eq", "field": "companyID", "value": company})["items"]
    assert len(invoices) == 1 and {item["invoiceID"] for item in items} == {invoices[0]["id"]}
    assert invoices[0]["invoiceTotal"] == pytest.approx(sum(item["extendedPrice"] for item in items))
    units = api.query("ContractServiceUnits", {"op": "eq", "field": "contractID", "value": contract})["items"]
    posted = {row["startDate"][:10]: row["approveAndPostDate"] for row in units}
    assert posted["2026-10-01"] == posted["2026-10-16"] == result["postedDate"] and posted["2026-11-01"] is None
    # posting again bills nothing twice; unpost voids the invoice and frees the periods and the charge
    assert post_month(api)["billingItems"] == 0
    undone = api.admin.post("/_admin/unpost", json={"month": "2026-10"}).json()
    assert (
        undone["voidedInvoices"] >= 1
        and api.query("BillingItems", {"op": "eq", "field": "contractID", "value": contract})["items"] == []
    )
    assert (
        api.query("Invoices", {"op": "eq", "field": "id", "value": invoices[0]["id"]})["items"][0]["isVoided"] is True
    )
    assert api.get(f"ContractCharges/{charge_id}").json()["item"]["isBilled"] is False
    assert post_month(api)["billingItems"] == result["billingItems"]


def test_the_switches_plant_unbilled_below_cost_and_under_billed_contracts(api: Api) -> None:
    contracts = [contract_with_service(api, units=4)[1] for _ in range(3)]
    unbilled, below, under = contracts
    result = post_month(
        api, unbilled_contracts=[unbilled], below_cost_contracts=[below], under_billed_contracts=[under]
    )
    assert result["planted"] == {"unbilled": [unbilled], "below_cost": [below], "under_billed": [under]}
    by_contract = {
        contract: api.query("BillingItems", {"op": "eq", "field": "contractID", "value": contract})["items"]
        for contract in contracts
    }
    assert by_contract[unbilled] == []
    for item in by_contract[below]:
        assert item["extendedPrice"] < item["ourCost"]
    service = next(s for s in api.state("Services") if s["id"] == monthly_service_id(api))
    for item in by_contract[under]:
        assert item["ourCost"] <= item["extendedPrice"] < item["quantity"] * service["unitPrice"]
    # a share picks every contract with something to post: only the one left unbilled has
    shares = post_month(api, unbilled_share=1.0)
    assert shares["billingItems"] == 0 and shares["planted"]["unbilled"] == [unbilled]


@pytest.mark.parametrize(
    "body",
    [
        {"month": "2026-13"},
        {"month": "2026-10", "unbilled_contracts": "all"},
        {"month": "2026-10", "below_cost_share": 2},
        {"month": "2026-10", "leak": 1},
    ],
)
def test_bad_posting_requests_are_refused_and_post_nothing(api: Api, body: dict) -> None:
    response = api.admin.post("/_admin/approve-and-post", json=body)
    assert response.status_code == 400 and response.json()["errors"]
    assert api.state("BillingItems") == []


# --- the same faults as every entity ----------------------------------------------------------------------------


def test_charges_get_the_same_faults_as_every_entity(api: Api) -> None:
    _, contract = contract_with_service(api)
    api.faults(lost_response_rate=1.0)
    lost = api.post("ContractCharges", charge_body(contract))
    assert lost.status_code == 504
    api.faults(lost_response_rate=0.0)
    assert len(api.state("ContractCharges")) == 1  # applied, only the answer was lost

    api.faults(error_rate=1.0)
    assert query_status(api, "BillingItems") == 503
    api.faults(error_rate=0.0)

    api.faults(latency_ms=400)
    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = list(pool.map(lambda _: query_status(api, "ContractCharges"), range(5)))
    api.faults(latency_ms=0)
    assert statuses.count(200) == 3 and statuses.count(429) == 2
    assert api.stats()["max_concurrency"]["ContractCharges"] == 3

    used = api.get("ThresholdInformation").json()["currentTimeframeRequestCount"]
    api.faults(hourly_limit=used + 1)
    assert query_status(api, "Invoices") == 200
    over = api.post("Invoices/query", {"filter": [{"op": "gt", "field": "id", "value": 0}]})
    assert over.status_code == 429 and "request threshold" in errors(over) and over.headers["Retry-After"]
