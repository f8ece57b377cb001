"""Turn raw BSS API records into the canonical objects of `include.models`.

This is the only module that knows the BSS record shapes marked [assumed] in docs/bss-api.md: every
BSS field name appears once below, so a rename on a live tenant is a one-line change here.

Type errors are rejected record by record with an error naming the charge (or account) and the
field; questions of plausibility (non-integral quantities, negative prices, a month's totals) are
left to the data-quality suites, which see every row instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Generic, TypeVar

from include.models import (
    BillingCycle,
    BillingPeriod,
    BssAccount,
    ChargeAction,
    ChargeLine,
    ChargeType,
)

# --- BSS field names [assumed]; dotted names are nested objects -------------------------------------
CHARGE_ID = "id"
ACCOUNT = "account"
ACCOUNT_ID = "account.id"
ACCOUNT_NAME = "account.name"
ACCOUNT_CODE = "account.code"
SUBSCRIPTION = "subscription"
SUBSCRIPTION_ID = "subscription.id"
SUBSCRIPTION_STATUS = "subscription.status"
PRODUCT = "product"
PRODUCT_ID = "product.id"
PRODUCT_SKU = "product.sku"
PRODUCT_NAME = "product.name"
BILLING_PLAN = "billingPlan"
BILLING_PLAN_ID = "billingPlan.id"
BILLING_PLAN_NAME = "billingPlan.name"
BILLING_PERIOD = "billingPlan.billingPeriod"
BILLING_CYCLE = "billingCycle"
CHARGE_TYPE = "chargeType"
ACTION = "action"
QUANTITY = "quantity"
SUBSCRIPTION_QUANTITY = "subscriptionQuantity"
UNIT_COST = "unitCost"
UNIT_PRICE = "unitPrice"
CURRENCY = "currency"
CHARGE_START_DATE = "chargeStartDate"
CHARGE_END_DATE = "chargeEndDate"
EFFECTIVE_DATE = "effectiveDate"
INVOICE_ID = "invoiceId"
CREATED_DATE = "createdDate"  # the BSS's own timestamp of the charge: ISO 8601 datetime, optional

ACCOUNT_RECORD_ID = "id"
ACCOUNT_RECORD_NAME = "name"
ACCOUNT_RECORD_CODE = "code"
ACCOUNT_RECORD_STATUS = "status"
ACCOUNT_RECORD_PHONE = "phone"
ACCOUNT_RECORD_EMAIL = "email"
ACCOUNT_RECORD_VAT_NUMBER = "vatNumber"
ACCOUNT_RECORD_ADDRESS = "address"
ACCOUNT_RECORD_STREET = "address.street"
ACCOUNT_RECORD_CITY = "address.city"
ACCOUNT_RECORD_POSTAL_CODE = "address.postalCode"
ACCOUNT_RECORD_COUNTRY = "address.country"

# Money is a JSON number with at most 4 decimals [assumed]; more means a unit or rounding mistake upstream.
MONEY_MAX_DECIMALS = 4
_MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_MAX_DECIMALS)
_DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CURRENCY_PATTERN = re.compile(r"^[A-Za-z]{3}$")
_DATETIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_TRAILING_DIGITS = re.compile(r"(\d+)$")
_SEQUENCE_MAX_DIGITS = 18
_REPR_LIMIT = 60


class BssRecordError(ValueError):
    """A BSS record that cannot be typed; names the record and the field."""

    kind = "record"

    def __init__(self, record_id: str | None, field: str, reason: str) -> None:
        self.record_id = record_id
        self.field = field
        self.reason = reason
        who = f"{self.kind} {record_id}" if record_id else f"{self.kind} (no id)"
        super().__init__(f"{who}: field '{field}': {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the error picklable (XCom, multiprocessing) despite the custom signature.
        return (type(self), (self.record_id, self.field, self.reason))


class ChargeLineError(BssRecordError):
    """A charge record that cannot become a `ChargeLine`."""

    kind = "charge"

    def __init__(self, charge_id: str | None, field: str, reason: str) -> None:
        super().__init__(charge_id, field, reason)

    @property
    def charge_id(self) -> str | None:
        return self.record_id


class AccountRecordError(BssRecordError):
    """An account record that cannot become a `BssAccount`."""

    kind = "account"

    def __init__(self, account_id: str | None, field: str, reason: str) -> None:
        super().__init__(account_id, field, reason)

    @property
    def account_id(self) -> str | None:
        return self.record_id


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


# --- field checks -----------------------------------------------------------------------------------
# Each check takes the raw value (or _MISSING) and returns the typed value or raises _Invalid. The common
# case is tested first with exact types: this runs ~500k times per month, and bool (an int subclass)
# must never pass as a number.

_MISSING: Any = object()
_E = TypeVar("_E", bound=StrEnum)
_Model = TypeVar("_Model")
Check = Callable[[Any], Any]


class _Invalid(Exception):
    """A field failed its check; the caller adds the record id (and the field, unless `field` is set)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _reject_absent(value: Any) -> None:
    if value is _MISSING:
        raise _Invalid("missing")
    if value is None:
        raise _Invalid("missing (null)")


def _required_text(value: Any) -> str:
    if type(value) is str and value.strip():
        return value
    _reject_absent(value)
    if type(value) is str:
        raise _Invalid("empty")
    raise _Invalid(f"expected a string, got {_shown(value)}")


def _optional_text(value: Any) -> str | None:
    if type(value) is str:
        return value
    if value is None or value is _MISSING:
        return None
    raise _Invalid(f"expected a string, got {_shown(value)}")


def _number(value: Any) -> Decimal:
    kind = type(value)
    if kind is int:
        return Decimal(value)
    if kind is float and math.isfinite(value):
        # repr() first: Decimal(10.1) would carry the float's binary noise into the money.
        return Decimal(repr(value))
    _reject_absent(value)
    if kind is float:
        raise _Invalid(f"expected a finite number, got {_shown(value)}")
    raise _Invalid(f"expected a number, got {_shown(value)}")


def _money(value: Any) -> Decimal:
    number = _number(value)
    if type(value) is float:  # an int has no decimals to count
        try:
            # quantize() is C-fast and is only equal when nothing beyond the 4th decimal is lost
            if number != number.quantize(_MONEY_QUANTUM):
                raise _Invalid(f"more than {MONEY_MAX_DECIMALS} decimals: {_shown(value)}")
        except InvalidOperation:
            raise _Invalid(f"out of range for money: {_shown(value)}") from None
    return number


def _day(value: Any) -> date:
    if type(value) is str and _DATE_PATTERN.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise _Invalid(f"not a calendar date: {_shown(value)}") from None
    _reject_absent(value)
    raise _Invalid(f"expected a date YYYY-MM-DD, got {_shown(value)}")


def _optional_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 date and time, as naive UTC like every timestamp in the warehouse; absent is None."""
    if value is None or value is _MISSING:
        return None
    if type(value) is str and _DATETIME_PATTERN.match(value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(f"not a date and time: {_shown(value)}") from None
        return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    raise _Invalid(f"expected an ISO 8601 date and time, got {_shown(value)}")


def _charge_sequence(value: Any) -> int | None:
    """The numeric tail of the charge id (`CHG-2026-10-9` -> 9); None when the id ends in no digits.

    Never rejects: the id itself is checked by its own field.
    """
    match = _TRAILING_DIGITS.search(value) if type(value) is str else None
    if not match or len(match.group(1).lstrip("0")) > _SEQUENCE_MAX_DIGITS:
        return None  # beyond a BIGINT the text of the id orders the line
    return int(match.group(1))


def _currency(value: Any) -> str:
    if type(value) is str and _CURRENCY_PATTERN.match(value):
        return value.upper()
    _reject_absent(value)
    raise _Invalid(f"expected a 3-letter currency code, got {_shown(value)}")


def _one_of(enum: type[_E]) -> Callable[[Any], _E]:
    members = {member.value: member for member in enum}
    allowed = ", ".join(members)

    def check(value: Any) -> _E:
        member = members.get(value) if type(value) is str else None
        if member is not None:
            return member
        _reject_absent(value)
        raise _Invalid(f"expected one of {allowed}, got {_shown(value)}")

    return check


def _getter(field: str) -> Callable[[dict[str, Any]], Any]:
    """Read a (dotted) field; _MISSING when it or an enclosing object is absent or null."""
    parts = tuple(field.split("."))
    if len(parts) == 1:
        # The common shapes get a loop-free reader: it halves the cost of typing a record.
        return lambda record: record.get(field, _MISSING)
    if len(parts) == 2:
        outer, inner = parts

        def get_nested(record: dict[str, Any]) -> Any:
            parent = record.get(outer)
            if type(parent) is dict:
                return parent.get(inner, _MISSING)
            if parent is None:
                return _MISSING
            raise _Invalid(f"expected an object, got {_shown(parent)}", outer)

        return get_nested

    def get(record: dict[str, Any]) -> Any:
        value: Any = record
        for depth, part in enumerate(parts):
            if type(value) is not dict:
                if value is None or value is _MISSING:
                    return _MISSING
                raise _Invalid(f"expected an object, got {_shown(value)}", ".".join(parts[:depth]))
            value = value.get(part, _MISSING)
        return value

    return get


Fields = tuple[tuple[str, str, Callable[[dict[str, Any]], Any], Check], ...]


def _fields(*specs: tuple[str, str, Check]) -> Fields:
    """(model attribute, BSS field, check) -> the same with the field's getter built once."""
    return tuple((attribute, field, _getter(field), check) for attribute, field, check in specs)


_CHARGE_FIELDS = _fields(
    ("charge_id", CHARGE_ID, _required_text),
    ("account_id", ACCOUNT_ID, _required_text),
    ("account_name", ACCOUNT_NAME, _required_text),
    ("account_code", ACCOUNT_CODE, _optional_text),
    ("subscription_id", SUBSCRIPTION_ID, _required_text),
    ("subscription_status", SUBSCRIPTION_STATUS, _optional_text),
    ("product_id", PRODUCT_ID, _required_text),
    ("product_sku", PRODUCT_SKU, _optional_text),
    ("product_name", PRODUCT_NAME, _required_text),
    ("billing_plan_id", BILLING_PLAN_ID, _optional_text),
    ("billing_plan_name", BILLING_PLAN_NAME, _optional_text),
    ("billing_period", BILLING_PERIOD, _one_of(BillingPeriod)),
    ("billing_cycle", BILLING_CYCLE, _one_of(BillingCycle)),
    ("charge_type", CHARGE_TYPE, _one_of(ChargeType)),
    ("action", ACTION, _one_of(ChargeAction)),
    ("quantity", QUANTITY, _number),
    ("subscription_quantity", SUBSCRIPTION_QUANTITY, _number),
    ("unit_cost", UNIT_COST, _money),
    ("unit_price", UNIT_PRICE, _money),
    ("currency", CURRENCY, _currency),
    ("charge_start_date", CHARGE_START_DATE, _day),
    ("charge_end_date", CHARGE_END_DATE, _day),
    ("effective_date", EFFECTIVE_DATE, _day),
    ("invoice_id", INVOICE_ID, _optional_text),
    ("charged_at", CREATED_DATE, _optional_timestamp),
    ("charge_sequence", CHARGE_ID, _charge_sequence),
)

_ACCOUNT_FIELDS = _fields(
    ("account_id", ACCOUNT_RECORD_ID, _required_text),
    ("name", ACCOUNT_RECORD_NAME, _required_text),
    ("code", ACCOUNT_RECORD_CODE, _optional_text),
    ("status", ACCOUNT_RECORD_STATUS, _optional_text),
    ("phone", ACCOUNT_RECORD_PHONE, _optional_text),
    ("email", ACCOUNT_RECORD_EMAIL, _optional_text),
    ("vat_number", ACCOUNT_RECORD_VAT_NUMBER, _optional_text),
    ("street", ACCOUNT_RECORD_STREET, _optional_text),
    ("city", ACCOUNT_RECORD_CITY, _optional_text),
    ("postal_code", ACCOUNT_RECORD_POSTAL_CODE, _optional_text),
    ("country", ACCOUNT_RECORD_COUNTRY, _optional_text),
)


def _record_id(record: object, field: str) -> str | None:
    value = record.get(field) if type(record) is dict else None
    if type(value) is str and value.strip():
        return value
    if type(value) is int:
        return str(value)
    return None


def charge_id_of(record: object) -> str | None:
    """The charge id of a raw record if it has a usable one (for storing and reporting raw rows)."""
    return _record_id(record, CHARGE_ID)


def account_id_of(record: object) -> str | None:
    """The account id of a raw account record if it has a usable one."""
    return _record_id(record, ACCOUNT_RECORD_ID)


class _Schema(Generic[_Model]):
    """How one kind of record becomes one model: its checked fields, in the model's field order."""

    def __init__(self, model: type[_Model], error: type[BssRecordError], id_field: str, fields: Fields):
        attributes = [attribute for attribute, *_ in fields]
        if attributes != [model_field.name for model_field in dataclasses.fields(model)]:  # type: ignore[arg-type]
            raise TypeError(f"{model.__name__}: the field table does not follow the model's fields")
        self.model = model
        self.error = error
        self.id_field = id_field
        self.fields = fields
        self.readers = tuple((get, check) for _, _, get, check in fields)
        self._lengths_cache: tuple[Mapping[str, int], tuple[tuple[int, str, int], ...]] | None = None

    def build(self, record: object, max_lengths: Mapping[str, int] | None = None) -> _Model:
        if type(record) is not dict:
            raise self.error(None, "<record>", f"expected a JSON object, got {_shown(record)}")
        try:
            # One comprehension, positional arguments: the fastest way to run the checks in CPython.
            values = [check(get(record)) for get, check in self.readers]
        except _Invalid:
            pass
        else:
            if max_lengths:
                for position, field, limit in self._length_checks(max_lengths):
                    value = values[position]
                    if type(value) is str and len(value) > limit:
                        raise self.error(
                            _record_id(record, self.id_field),
                            field,
                            f"{len(value)} characters, longer than the {limit} the warehouse keeps: {_shown(value)}",
                        )
            return self.model(*values)
        # Rare path: run the checks again one by one to learn which field failed.
        for _, field, get, check in self.fields:
            try:
                check(get(record))
            except _Invalid as invalid:
                record_id = _record_id(record, self.id_field)
                raise self.error(record_id, invalid.field or field, invalid.reason) from None
        raise AssertionError("a field check failed once and then passed")  # checks are pure; unreachable

    def _length_checks(self, max_lengths: Mapping[str, int]) -> tuple[tuple[int, str, int], ...]:
        """(position, BSS field, most characters) of each sized attribute; built once per limits mapping."""
        cached = self._lengths_cache
        if cached is None or cached[0] is not max_lengths:
            checks = tuple(
                (position, field, max_lengths[attribute])
                for position, (attribute, field, _, _) in enumerate(self.fields)
                if attribute in max_lengths
            )
            cached = self._lengths_cache = (max_lengths, checks)
        return cached[1]


_CHARGE_SCHEMA = _Schema(ChargeLine, ChargeLineError, CHARGE_ID, _CHARGE_FIELDS)
_ACCOUNT_SCHEMA = _Schema(BssAccount, AccountRecordError, ACCOUNT_RECORD_ID, _ACCOUNT_FIELDS)


def to_charge_line(record: object, max_lengths: Mapping[str, int] | None = None) -> ChargeLine:
    """Type one raw charge record; raises `ChargeLineError` naming the charge id and the field.

    `max_lengths` (ChargeLine attribute -> characters, from the warehouse's columns) rejects text the
    warehouse could not store.
    """
    return _CHARGE_SCHEMA.build(record, max_lengths)


def to_account(record: object, max_lengths: Mapping[str, int] | None = None) -> BssAccount:
    """Type one raw account record; raises `AccountRecordError` naming the account id and the field."""
    return _ACCOUNT_SCHEMA.build(record, max_lengths)
