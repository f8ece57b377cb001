"""The BSS adapter types raw records, and every bad record is named by its id and field."""

from __future__ import annotations

import copy
import pickle
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from include.bss_adapter import (
    AccountRecordError,
    ChargeLineError,
    account_id_of,
    charge_id_of,
    to_account,
    to_charge_line,
)
from include.models import BillingCycle, BillingPeriod, BssAccount, ChargeAction, ChargeLine, ChargeType

GOOD_CHARGE: dict[str, Any] = {
    "id": "CHG-2026-10-000123",
    "account": {"id": "ACC-1001", "name": "Contoso Ltd", "code": "CONTOSO"},
    "subscription": {"id": "SUB-000042", "status": "Active"},
    "product": {"id": "PRD-7", "sku": "CFQ7TTC0LDPB:0001", "name": "Microsoft 365 Business Standard"},
    "billingPlan": {"id": "BP-3", "name": "Monthly billing", "billingPeriod": "Monthly"},
    "billingCycle": "Annual",
    "chargeType": "Recurring",
    "action": "QuantityIncrease",
    "quantity": 3,
    "subscriptionQuantity": 28,
    "unitCost": 10.50,
    "unitPrice": 12.50,
    "currency": "EUR",
    "chargeStartDate": "2026-10-18",
    "chargeEndDate": "2026-10-31",
    "effectiveDate": "2026-10-18",
    "invoiceId": None,
    "createdDate": "2026-10-18T09:15:00+02:00",
}

EXPECTED_LINE = ChargeLine(
    charge_id="CHG-2026-10-000123",
    account_id="ACC-1001",
    account_name="Contoso Ltd",
    account_code="CONTOSO",
    subscription_id="SUB-000042",
    subscription_status="Active",
    product_id="PRD-7",
    product_sku="CFQ7TTC0LDPB:0001",
    product_name="Microsoft 365 Business Standard",
    billing_plan_id="BP-3",
    billing_plan_name="Monthly billing",
    billing_period=BillingPeriod.MONTHLY,
    billing_cycle=BillingCycle.ANNUAL,
    charge_type=ChargeType.RECURRING,
    action=ChargeAction.QUANTITY_INCREASE,
    quantity=Decimal("3"),
    subscription_quantity=Decimal("28"),
    unit_cost=Decimal("10.5"),
    unit_price=Decimal("12.5"),
    currency="EUR",
    charge_start_date=date(2026, 10, 18),
    charge_end_date=date(2026, 10, 31),
    effective_date=date(2026, 10, 18),
    invoice_id=None,
    charged_at=datetime(2026, 10, 18, 7, 15),  # the BSS's timestamp in UTC
    charge_sequence=123,
)

_DELETE = object()


def charge_with(path: str, value: Any) -> dict[str, Any]:
    """The good charge with one (dotted) field replaced, or removed when value is _DELETE."""
    record = copy.deepcopy(GOOD_CHARGE)
    *parents, leaf = path.split(".")
    target = record
    for parent in parents:
        target = target[parent]
    if value is _DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return record


def test_a_good_record_becomes_the_expected_charge_line() -> None:
    assert to_charge_line(GOOD_CHARGE) == EXPECTED_LINE


def test_money_keeps_its_decimal_digits_without_float_noise() -> None:
    line = to_charge_line(charge_with("unitCost", 0.1) | {"unitPrice": 1234.5678})
    assert line.unit_cost == Decimal("0.1")
    assert str(line.unit_cost) == "0.1"
    assert line.unit_price == Decimal("1234.5678")
    assert to_charge_line(charge_with("unitCost", -0.0001)).unit_cost == Decimal("-0.0001")
    assert to_charge_line(charge_with("unitCost", 7)).unit_cost == Decimal(7)


def test_optional_fields_may_be_absent_or_null() -> None:
    record = copy.deepcopy(GOOD_CHARGE)
    del record["account"]["code"]
    del record["subscription"]["status"]
    record["product"]["sku"] = None
    del record["billingPlan"]["id"]
    del record["invoiceId"]
    line = to_charge_line(record)
    assert (line.account_code, line.subscription_status, line.product_sku) == (None, None, None)
    assert (line.billing_plan_id, line.invoice_id) == (None, None)


def test_negative_and_fractional_quantities_are_left_to_the_quality_suites() -> None:
    line = to_charge_line(charge_with("quantity", -2.5))
    assert line.quantity == Decimal("-2.5")


def test_the_bss_timestamp_is_optional_and_kept_in_utc() -> None:
    assert to_charge_line(charge_with("createdDate", _DELETE)).charged_at is None
    assert to_charge_line(charge_with("createdDate", None)).charged_at is None
    assert to_charge_line(charge_with("createdDate", "2026-10-18T23:30:00Z")).charged_at == datetime(
        2026, 10, 18, 23, 30
    )
    naive = to_charge_line(charge_with("createdDate", "2026-10-18 08:00:00.250"))
    assert naive.charged_at == datetime(2026, 10, 18, 8, 0, 0, 250000)


@pytest.mark.parametrize(
    ("charge_id", "sequence"),
    [("CHG-9", 9), ("CHG-10", 10), ("CHG-2026-10-000123", 123), ("chg-007", 7), ("CHG-ABC", None), ("9" * 25, None)],
)
def test_the_charge_sequence_is_the_numeric_tail_of_the_id(charge_id: str, sequence: int | None) -> None:
    assert to_charge_line(charge_with("id", charge_id)).charge_sequence == sequence


def test_charge_nine_comes_before_charge_ten_although_its_id_sorts_after() -> None:
    nine, ten = (to_charge_line(charge_with("id", charge_id)) for charge_id in ("CHG-9", "CHG-10"))
    assert sorted([nine, ten], key=lambda line: line.charge_id) == [ten, nine]  # the id's text: wrong
    assert sorted([ten, nine], key=lambda line: line.charge_sequence) == [nine, ten]


def test_text_longer_than_its_warehouse_column_names_the_charge_and_the_field() -> None:
    limits = {"account_name": 255, "product_name": 255, "charge_id": 100}
    long_name = "Kowalski Bäckerei & Konditorei Sp. z o.o. " * 8  # 336 characters, accents included
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(charge_with("account.name", long_name[:300]), limits)
    error = caught.value
    assert (error.charge_id, error.field) == ("CHG-2026-10-000123", "account.name")
    assert "300 characters" in error.reason and "255" in error.reason
    assert to_charge_line(charge_with("account.name", long_name[:255]), limits).account_name == long_name[:255]
    with pytest.raises(AccountRecordError, match="field 'name': 300 characters"):
        to_account(GOOD_ACCOUNT | {"name": long_name[:300]}, {"name": 255})


def test_a_lowercase_currency_code_is_normalised() -> None:
    assert to_charge_line(charge_with("currency", "eur")).currency == "EUR"


BAD_CHARGES = [
    # (field path, value, field named in the error, words in the reason)
    ("unitCost", "abc", "unitCost", "expected a number, got 'abc'"),
    ("unitCost", "10.50", "unitCost", "expected a number"),
    ("unitCost", True, "unitCost", "expected a number, got True"),
    ("unitCost", 10.12345, "unitCost", "more than 4 decimals"),
    ("unitPrice", 0.00001, "unitPrice", "more than 4 decimals"),
    ("unitPrice", 1e30, "unitPrice", "out of range for money"),
    ("unitPrice", _DELETE, "unitPrice", "missing"),
    ("unitPrice", None, "unitPrice", "missing (null)"),
    ("quantity", "3", "quantity", "expected a number, got '3'"),
    ("quantity", float("nan"), "quantity", "finite number"),
    ("subscriptionQuantity", [28], "subscriptionQuantity", "expected a number"),
    ("account", _DELETE, "account.id", "missing"),
    ("account", "ACC-1001", "account", "expected an object, got 'ACC-1001'"),
    ("account.name", 42, "account.name", "expected a string, got 42"),
    ("account.id", "  ", "account.id", "empty"),
    ("subscription.id", _DELETE, "subscription.id", "missing"),
    ("product.name", None, "product.name", "missing (null)"),
    ("product.sku", 7, "product.sku", "expected a string"),
    ("billingPlan.billingPeriod", "Weekly", "billingPlan.billingPeriod", "got 'Weekly'"),
    ("billingCycle", "annual", "billingCycle", "expected one of Monthly, Annual, Biennial, Triennial"),
    ("chargeType", _DELETE, "chargeType", "missing"),
    ("action", "Upgrade", "action", "got 'Upgrade'"),
    ("action", 3, "action", "got 3"),
    ("currency", 978, "currency", "expected a 3-letter currency code, got 978"),
    ("currency", "EURO", "currency", "3-letter"),
    ("chargeStartDate", "2026-02-30", "chargeStartDate", "not a calendar date"),
    ("chargeEndDate", "31/10/2026", "chargeEndDate", "expected a date YYYY-MM-DD"),
    ("effectiveDate", "20261018", "effectiveDate", "expected a date YYYY-MM-DD"),
    ("effectiveDate", 20261018, "effectiveDate", "expected a date"),
    ("invoiceId", 5, "invoiceId", "expected a string, got 5"),
    ("createdDate", "yesterday", "createdDate", "expected an ISO 8601 date and time"),
    ("createdDate", "2026-10-18", "createdDate", "expected an ISO 8601 date and time"),
    ("createdDate", "2026-10-18T25:00:00", "createdDate", "not a date and time"),
    ("createdDate", 1792300500, "createdDate", "expected an ISO 8601 date and time"),
]


@pytest.mark.parametrize(("path", "value", "field", "reason"), BAD_CHARGES)
def test_a_bad_charge_record_names_the_charge_and_the_field(path: str, value: Any, field: str, reason: str) -> None:
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(charge_with(path, value))
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.charge_id, error.field) == ("CHG-2026-10-000123", field)
    assert reason in error.reason
    assert str(error).startswith(f"charge CHG-2026-10-000123: field '{field}': ")


def test_the_error_message_reads_as_documented() -> None:
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(charge_with("unitCost", "abc"))
    assert str(caught.value) == "charge CHG-2026-10-000123: field 'unitCost': expected a number, got 'abc'"


@pytest.mark.parametrize("record", [None, "CHG-1", 17, ["id", "CHG-1"]])
def test_a_record_that_is_not_an_object_is_rejected_without_an_id(record: object) -> None:
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(record)
    assert caught.value.charge_id is None
    assert "expected a JSON object" in str(caught.value)
    assert str(caught.value).startswith("charge (no id): ")


def test_a_missing_id_is_reported_as_no_id() -> None:
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(charge_with("id", _DELETE))
    assert (caught.value.charge_id, caught.value.field, caught.value.reason) == (None, "id", "missing")


def test_the_first_bad_field_in_record_order_is_named() -> None:
    record = charge_with("unitCost", "abc") | {"action": "Upgrade"}
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(record)
    assert caught.value.field == "action"


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(charge_with("unitCost", "x" * 500))
    assert len(str(caught.value)) < 150


def test_errors_can_be_built_with_the_documented_keywords() -> None:
    error = ChargeLineError(charge_id="CHG-1", field="unitCost", reason="expected a number, got 'abc'")
    assert str(error) == "charge CHG-1: field 'unitCost': expected a number, got 'abc'"
    assert (
        str(AccountRecordError(account_id=None, field="id", reason="missing")) == "account (no id): field 'id': missing"
    )


def test_record_errors_survive_pickling() -> None:
    with pytest.raises(ChargeLineError) as caught:
        to_charge_line(charge_with("unitCost", "abc"))
    copy_of_error = pickle.loads(pickle.dumps(caught.value))
    assert str(copy_of_error) == str(caught.value)
    assert copy_of_error.field == "unitCost"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"id": "CHG-1"}, "CHG-1"),
        ({"id": 12}, "12"),
        ({"id": ""}, None),
        ({"id": None}, None),
        ({"id": True}, None),
        ({}, None),
        ("CHG-1", None),
        (None, None),
    ],
)
def test_charge_id_of_is_best_effort(record: object, expected: str | None) -> None:
    assert charge_id_of(record) == expected


def test_typing_twenty_thousand_records_keeps_each_one() -> None:
    # How fast typing is belongs to `make bench` (bench_extract: >= 5,000 lines/s through HTTP, typing and SQL).
    records = [charge_with("id", f"CHG-2026-10-{n:06d}") for n in range(20_000)]
    lines = [to_charge_line(record) for record in records]
    assert [line.charge_id for line in lines] == [record["id"] for record in records]


GOOD_ACCOUNT: dict[str, Any] = {
    "id": "ACC-1001",
    "name": "Contoso Ltd",
    "code": "CONTOSO",
    "status": "Active",
    "phone": "+30 210 555 0100",
    "email": "billing@contoso.example",
    "vatNumber": "EL123456789",
    "address": {"street": "1 Main St", "city": "Athens", "postalCode": "10558", "country": "GR"},
}


def test_a_good_account_becomes_the_expected_bss_account() -> None:
    assert to_account(GOOD_ACCOUNT) == BssAccount(
        account_id="ACC-1001",
        name="Contoso Ltd",
        code="CONTOSO",
        status="Active",
        phone="+30 210 555 0100",
        email="billing@contoso.example",
        vat_number="EL123456789",
        street="1 Main St",
        city="Athens",
        postal_code="10558",
        country="GR",
    )


def test_an_account_without_address_or_phone_is_still_an_account() -> None:
    account = to_account({"id": "ACC-2", "name": "Fabrikam", "address": None})
    assert (account.phone, account.street, account.country) == (None, None, None)


@pytest.mark.parametrize(
    ("record", "account_id", "field", "reason"),
    [
        ({"name": "Contoso"}, None, "id", "missing"),
        (GOOD_ACCOUNT | {"name": None}, "ACC-1001", "name", "missing (null)"),
        (GOOD_ACCOUNT | {"phone": 2105550100}, "ACC-1001", "phone", "expected a string"),
        (GOOD_ACCOUNT | {"address": "1 Main St"}, "ACC-1001", "address", "expected an object"),
        (
            GOOD_ACCOUNT | {"address": {"city": ["Athens"]}},
            "ACC-1001",
            "address.city",
            "expected a string",
        ),
        ("ACC-1001", None, "<record>", "expected a JSON object"),
    ],
)
def test_a_bad_account_record_names_the_account_and_the_field(
    record: object, account_id: str | None, field: str, reason: str
) -> None:
    with pytest.raises(AccountRecordError) as caught:
        to_account(record)
    assert (caught.value.account_id, caught.value.field) == (account_id, field)
    assert reason in caught.value.reason
    assert str(caught.value).startswith("account ")
    assert account_id_of(record) == account_id
