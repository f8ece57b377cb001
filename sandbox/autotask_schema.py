"""Entity definitions of the Autotask sandbox: fields, picklists, allowed verbs, value coercion.

Only the entities and fields the billing sync touches, shaped like Autotask's `entityInformation`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sandbox.autotask_errors import ApiError

# Field data types as Autotask's metadata names them; "date" is our marker for date-only datetimes.
INTEGER = "integer"
LONG = "long"
DECIMAL = "decimal"
DOUBLE = "double"
STRING = "string"
BOOLEAN = "boolean"
DATETIME = "datetime"
DATE = "date"
NUMERIC_TYPES = {INTEGER, LONG, DECIMAL, DOUBLE}

RECURRING_SERVICE_CONTRACT = 7
COMPANY_UDF_BSS_ACCOUNT_ID = "BSS Account ID"

PICKLISTS: dict[str, dict[int, str]] = {
    "companyType": {1: "Customer", 2: "Lead", 3: "Prospect", 4: "Dead", 6: "Cancellation", 7: "Vendor", 8: "Partner"},
    "contractType": {
        1: "Time and Materials",
        3: "Fixed Price",
        4: "Block Hours",
        6: "Retainer",
        7: "Recurring Service",
        8: "Per Ticket",
    },
    "contractStatus": {0: "Inactive", 1: "Active"},
    "periodType": {2: "Monthly", 3: "Quarterly", 4: "Semi-Annual", 5: "Yearly"},
    "contractPeriodType": {2: "Monthly", 3: "Quarterly", 4: "Semi-Annual", 5: "Yearly"},
    "yesNo": {0: "No", 1: "Yes"},
    "billingCodeUseType": {1: "Work Type", 2: "Material", 3: "Expense", 4: "Recurring Contract Service"},
    "resourceType": {1: "Employee", 2: "Contractor", 3: "API User"},
    # ContractCharges.chargeType [?]: the client reads the values from entityInformation/fields, never assumes them
    "contractChargeType": {1: "Operational", 2: "Capitalized"},
    # BillingItems.billingItemType [?]: what a posted item bills
    "billingItemType": {4: "Contract Charge", 5: "Recurring Contract Service"},
}
# First ids per entity: distinct ranges make an id used for the wrong entity fail loudly.
FIRST_IDS = {
    "Resources": 29682885,
    "Currencies": 701,
    "BillingCodes": 29682801,
    "Companies": 10001,
    "Contracts": 100001,
    "Services": 501,
    "ContractServices": 200001,
    "ContractServiceAdjustments": 900001,
    "ContractCharges": 400001,
    "BillingItems": 7000001,
    "Invoices": 60001,
}
# Contract types a ContractCharge is refused on unless its billing code is a purchase code [doc].
CHARGE_REFUSING_CONTRACT_TYPES = {4: "Block Hours", 6: "Retainer", 8: "Per Ticket"}
MATERIAL_BILLING_CODE_USE_TYPE = 2
# Months per billing period, by Services.periodType.
PERIOD_MONTHS = {2: 1, 3: 3, 4: 6, 5: 12}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    read_only: bool = False
    length: int | None = None
    picklist: str | None = None
    reference: str | None = None
    # Writable on create only (Autotask rejects a change on update).
    create_only: bool = False
    # Accepted on writes but never returned (ContractServices.adjustedPrice).
    write_only: bool = False


@dataclass(frozen=True)
class EntitySpec:
    name: str
    fields: tuple[Field, ...]
    can_query: bool = True
    can_create: bool = False
    can_update: bool = False
    can_delete: bool = False
    # Create/update only through a parent route (ContractServices through /Contracts/{id}/Services).
    child_write_only: bool = False
    has_udfs: bool = False
    by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)
    by_lower: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name.update({f.name: f for f in self.fields})
        self.by_lower.update({f.name.lower(): f for f in self.fields})

    def field_named(self, name: str) -> Field | None:
        return self.by_name.get(name) or self.by_lower.get(str(name).lower())


def _f(name: str, type_: str, **kwargs) -> Field:
    return Field(name, type_, **kwargs)


ENTITIES: dict[str, EntitySpec] = {}


def _register(spec: EntitySpec) -> None:
    ENTITIES[spec.name] = spec


_register(
    EntitySpec(
        "Companies",
        (
            _f("id", LONG, read_only=True),
            _f("companyName", STRING, required=True, length=100),
            _f("companyType", INTEGER, required=True, picklist="companyType"),
            _f("ownerResourceID", INTEGER, required=True, reference="Resources"),
            _f("phone", STRING, required=True, length=25),
            _f("companyNumber", STRING, length=50),
            _f("address1", STRING, length=150),
            _f("address2", STRING, length=150),
            _f("city", STRING, length=50),
            _f("state", STRING, length=25),
            _f("postalCode", STRING, length=20),
            _f("countryID", INTEGER),
            _f("currencyID", INTEGER, reference="Currencies"),
            _f("webAddress", STRING, length=255),
            _f("taxID", STRING, length=50),
            _f("isActive", BOOLEAN),
            _f("parentCompanyID", INTEGER, reference="Companies"),
            _f("createDate", DATETIME, read_only=True),
            _f("lastActivityDate", DATETIME, read_only=True),
        ),
        can_create=True,
        can_update=True,
        has_udfs=True,
    )
)

_register(
    EntitySpec(
        "Contracts",
        (
            _f("id", LONG, read_only=True),
            _f("companyID", INTEGER, required=True, reference="Companies", create_only=True),
            _f("contractName", STRING, required=True, length=100),
            _f("contractType", INTEGER, required=True, picklist="contractType", create_only=True),
            _f("startDate", DATE, required=True),
            _f("endDate", DATE, required=True),
            _f("status", INTEGER, required=True, picklist="contractStatus"),
            _f("timeReportingRequiresStartAndStopTimes", INTEGER, required=True, picklist="yesNo"),
            _f("contractNumber", STRING, length=50),
            _f("contractPeriodType", INTEGER, picklist="contractPeriodType"),
            _f("description", STRING, length=2000),
            _f("isDefaultContract", BOOLEAN),
            _f("purchaseOrderNumber", STRING, length=50),
            _f("lastModifiedDateTime", DATETIME, read_only=True),
        ),
        can_create=True,
        can_update=True,
    )
)

_register(
    EntitySpec(
        "Services",
        (
            _f("id", LONG, read_only=True),
            _f("name", STRING, required=True, length=100),
            _f("description", STRING, length=400),
            _f("invoiceDescription", STRING, length=1000),
            _f("unitPrice", DECIMAL, required=True),
            _f("unitCost", DECIMAL),
            _f("periodType", INTEGER, required=True, picklist="periodType"),
            _f("billingCodeID", INTEGER, required=True, reference="BillingCodes"),
            _f("sku", STRING, length=50),
            _f("isActive", BOOLEAN),
            _f("vendorCompanyID", INTEGER, reference="Companies"),
            _f("createDate", DATETIME, read_only=True),
            _f("lastModifiedDate", DATETIME, read_only=True),
        ),
        can_create=True,
        can_update=True,
    )
)

_register(
    EntitySpec(
        "ContractServices",
        (
            _f("id", LONG, read_only=True),
            _f("contractID", INTEGER, required=True, reference="Contracts", create_only=True),
            _f("serviceID", INTEGER, required=True, reference="Services", create_only=True),
            _f("unitPrice", DECIMAL, create_only=True),
            _f("unitCost", DECIMAL, create_only=True),
            _f("adjustedPrice", DECIMAL, write_only=True),
            _f("internalCurrencyUnitPrice", DECIMAL, read_only=True),
            _f("internalCurrencyAdjustedPrice", DECIMAL, read_only=True),
            _f("invoiceDescription", STRING, length=1000),
            _f("internalDescription", STRING, length=100, create_only=True),
            _f("quoteItemID", LONG, read_only=True),
        ),
        can_create=True,
        can_update=True,
        child_write_only=True,
    )
)

_register(
    EntitySpec(
        "ContractServiceAdjustments",
        (
            _f("id", LONG, read_only=True),
            _f("contractID", INTEGER, reference="Contracts"),
            _f("serviceID", INTEGER, reference="Services"),
            _f("contractServiceID", LONG, reference="ContractServices"),
            _f("effectiveDate", DATE, required=True),
            _f("unitChange", INTEGER),
            _f("adjustedUnitPrice", DECIMAL),
            _f("adjustedUnitCost", DECIMAL),
            _f("allowRepeatService", BOOLEAN),
        ),
        can_query=False,
        can_create=True,
    )
)

_register(
    EntitySpec(
        "ContractServiceUnits",
        (
            _f("id", LONG, read_only=True),
            _f("contractID", INTEGER, read_only=True, reference="Contracts"),
            _f("contractServiceID", LONG, read_only=True, reference="ContractServices"),
            _f("serviceID", INTEGER, read_only=True, reference="Services"),
            _f("startDate", DATE, read_only=True),
            _f("endDate", DATE, read_only=True),
            _f("units", INTEGER, read_only=True),
            _f("price", DECIMAL, read_only=True),
            _f("cost", DECIMAL, read_only=True),
            _f("internalCurrencyPrice", DECIMAL, read_only=True),
            _f("approveAndPostDate", DATETIME, read_only=True),
            _f("vendorCompanyID", INTEGER, read_only=True),
        ),
    )
)

_register(
    EntitySpec(
        "ContractCharges",
        (
            _f("id", LONG, read_only=True),
            _f("contractID", INTEGER, required=True, reference="Contracts", create_only=True),
            _f("name", STRING, required=True, length=100),
            _f("datePurchased", DATE, required=True),
            _f("chargeType", INTEGER, required=True, picklist="contractChargeType"),
            _f("unitQuantity", DECIMAL, required=True),
            _f("unitCost", DECIMAL),
            _f("unitPrice", DECIMAL),
            _f("billableAmount", DECIMAL, read_only=True),
            _f("productID", INTEGER),
            _f("billingCodeID", INTEGER, reference="BillingCodes"),
            _f("contractServiceID", LONG, reference="ContractServices"),
            _f("isBillableToCompany", BOOLEAN),
            _f("isBilled", BOOLEAN, read_only=True),
            _f("status", INTEGER),
            _f("description", STRING, length=2000),
            _f("purchaseOrderNumber", STRING, length=50),
            _f("internalPurchaseOrderNumber", STRING, length=50),
            _f("createDate", DATETIME, read_only=True),
        ),
        can_create=True,
        can_update=True,
        can_delete=True,
    )
)

_register(
    EntitySpec(
        "BillingItems",
        (
            _f("id", LONG, read_only=True),
            _f("itemDate", DATE, read_only=True),
            _f("postedDate", DATETIME, read_only=True),
            _f("companyID", INTEGER, read_only=True, reference="Companies"),
            _f("contractID", INTEGER, read_only=True, reference="Contracts"),
            _f("contractChargeID", LONG, read_only=True),
            _f("serviceID", INTEGER, read_only=True),
            _f("billingCodeID", INTEGER, read_only=True),
            _f("invoiceID", LONG, read_only=True),
            _f("billingItemType", INTEGER, read_only=True, picklist="billingItemType"),
            _f("subType", INTEGER, read_only=True),
            _f("description", STRING, read_only=True, length=2000),
            _f("quantity", DECIMAL, read_only=True),
            _f("rate", DECIMAL, read_only=True),
            _f("ourCost", DECIMAL, read_only=True),
            _f("extendedPrice", DECIMAL, read_only=True),
            _f("totalAmount", DECIMAL, read_only=True),
        ),
    )
)

_register(
    EntitySpec(
        "Invoices",
        (
            _f("id", LONG, read_only=True),
            _f("invoiceNumber", STRING, read_only=True, length=50),
            _f("companyID", INTEGER, read_only=True, reference="Companies"),
            _f("invoiceDateTime", DATETIME, read_only=True),
            _f("fromDate", DATE, read_only=True),
            _f("toDate", DATE, read_only=True),
            _f("invoiceTotal", DECIMAL, read_only=True),
            _f("isVoided", BOOLEAN, read_only=True),
            _f("voidedDate", DATETIME, read_only=True),
            _f("createDateTime", DATETIME, read_only=True),
        ),
    )
)

_register(
    EntitySpec(
        "BillingCodes",
        (
            _f("id", LONG, read_only=True),
            _f("name", STRING, read_only=True, length=200),
            _f("description", STRING, read_only=True, length=500),
            _f("isActive", BOOLEAN, read_only=True),
            _f("useType", INTEGER, read_only=True, picklist="billingCodeUseType"),
            _f("unitPrice", DECIMAL, read_only=True),
            _f("externalNumber", STRING, read_only=True, length=100),
        ),
    )
)

_register(
    EntitySpec(
        "Resources",
        (
            _f("id", LONG, read_only=True),
            _f("firstName", STRING, read_only=True, length=50),
            _f("lastName", STRING, read_only=True, length=50),
            _f("userName", STRING, read_only=True, length=32),
            _f("email", STRING, read_only=True, length=254),
            _f("isActive", BOOLEAN, read_only=True),
            _f("resourceType", INTEGER, read_only=True, picklist="resourceType"),
            _f("title", STRING, read_only=True, length=50),
        ),
    )
)

_register(
    EntitySpec(
        "Currencies",
        (
            _f("id", LONG, read_only=True),
            _f("name", STRING, read_only=True, length=3),  # the ISO 4217 code
            _f("description", STRING, read_only=True, length=100),
            _f("displaySymbol", STRING, read_only=True, length=10),
            _f("exchangeRate", DECIMAL, read_only=True),
            _f("isInternalCurrency", BOOLEAN, read_only=True),
            _f("isActive", BOOLEAN, read_only=True),
        ),
    )
)

# Company user-defined fields: (name, type, length).
COMPANY_UDFS: tuple[tuple[str, str, int], ...] = (
    (COMPANY_UDF_BSS_ACCOUNT_ID, STRING, 100),
    ("Billing Contact Email", STRING, 254),
)
_UDF_BY_LOWER = {name.lower(): name for name, _, _ in COMPANY_UDFS}

_ENTITY_BY_LOWER = {name.lower(): name for name in ENTITIES}
# Parent routes: /Contracts/{id}/<segment> → child entity.
CHILD_ROUTES: dict[tuple[str, str], str] = {
    ("Contracts", "services"): "ContractServices",
    ("Contracts", "serviceadjustments"): "ContractServiceAdjustments",
    ("Contracts", "serviceunits"): "ContractServiceUnits",
    ("Contracts", "charges"): "ContractCharges",
}


def entity_named(name: str) -> EntitySpec | None:
    canonical = _ENTITY_BY_LOWER.get(name.lower())
    return ENTITIES[canonical] if canonical else None


def udf_name(name: str) -> str | None:
    return _UDF_BY_LOWER.get(str(name).lower())


# --- values ------------------------------------------------------------------------------------------

_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?(Z|[+-]\d{2}:?\d{2})?$"
)


def parse_datetime(value: object) -> datetime:
    """Parse `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS(.fff)(Z)`; raises ValueError."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    match = _DATE_RE.match(str(value).strip())
    if not match:
        raise ValueError(value)
    year, month, day, hour, minute, second, fraction, _zone = match.groups()
    micro = int((fraction or "0").ljust(6, "0")[:6])
    return datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro)


def format_date(day: date) -> str:
    """Date-only fields travel as midnight datetimes."""
    return day.isoformat() + "T00:00:00"


def format_datetime(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_text() -> str:
    return format_datetime(datetime.now(UTC).replace(tzinfo=None))


def to_date(text: str) -> date:
    return date.fromisoformat(text[:10])


def _conversion_error(value: object, type_: str, name: str) -> ApiError:
    dotnet = {
        INTEGER: "System.Int32",
        LONG: "System.Int64",
        DECIMAL: "System.Decimal",
        DOUBLE: "System.Double",
        BOOLEAN: "System.Boolean",
        DATETIME: "System.DateTime",
        DATE: "System.DateTime",
        STRING: "System.String",
    }[type_]
    return ApiError(f"Error converting value {value!r} to type '{dotnet}'. Path '{name}'.")


def coerce(spec_field: Field, value: object) -> object:
    """Turn an incoming JSON value into the stored (and returned) representation of the field."""
    if value is None:
        return None
    type_, name = spec_field.type, spec_field.name
    try:
        if type_ in (INTEGER, LONG):
            if isinstance(value, bool):
                return int(value)  # Autotask's yes/no integers accept true/false
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if type_ in (DECIMAL, DOUBLE):
            if isinstance(value, bool):
                raise ValueError(value)
            return round(float(value), 4)
        if type_ == BOOLEAN:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ValueError(value)
        if type_ == DATE:
            return format_date(parse_datetime(value).date())
        if type_ == DATETIME:
            return format_datetime(parse_datetime(value))
        if isinstance(value, (dict, list)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise _conversion_error(value, type_, name) from exc


# --- metadata ----------------------------------------------------------------------------------------


def entity_information(spec: EntitySpec) -> dict:
    return {
        "info": {
            "name": spec.name[:-3] + "y" if spec.name.endswith("ies") else spec.name.rstrip("s"),
            "canCreate": spec.can_create,
            "canDelete": spec.can_delete,
            "canQuery": spec.can_query,
            "canUpdate": spec.can_update,
            "userAccessForCreate": "All" if spec.can_create else "None",
            "userAccessForDelete": "All" if spec.can_delete else "None",
            "userAccessForQuery": "All" if spec.can_query else "None",
            "userAccessForUpdate": "All" if spec.can_update else "None",
            "hasUserDefinedFields": spec.has_udfs,
            "supportsWebhookCallouts": spec.name in ("Companies", "Contracts"),
        }
    }


def _picklist_values(name: str) -> list[dict]:
    return [
        {
            "value": str(value),
            "label": label,
            "isDefaultValue": False,
            "sortOrder": order,
            "parentValue": "",
            "isActive": True,
            "isSystem": True,
        }
        for order, (value, label) in enumerate(PICKLISTS[name].items(), start=1)
    ]


def entity_fields(spec: EntitySpec) -> dict:
    fields = []
    for item in spec.fields:
        fields.append(
            {
                "name": item.name,
                "dataType": "datetime" if item.type in (DATE, DATETIME) else item.type,
                "length": item.length or 0,
                "isRequired": item.required,
                "isReadOnly": item.read_only,
                "isQueryable": spec.can_query and not item.write_only,
                "isReference": item.reference is not None,
                "referenceEntityType": item.reference or "",
                "isPickList": item.picklist is not None,
                "picklistValues": _picklist_values(item.picklist) if item.picklist else None,
                "picklistParentValueField": "",
                "isSupportedWebhookField": False,
            }
        )
    return {"fields": fields}


def user_defined_fields(spec: EntitySpec) -> dict:
    if not spec.has_udfs:
        return {"fields": []}
    return {
        "fields": [
            {
                "name": name,
                "label": name,
                "dataType": type_,
                "length": length,
                "isRequired": False,
                "isReadOnly": False,
                "isQueryable": True,
                "isReference": False,
                "referenceEntityType": "",
                "isPickList": False,
                "picklistValues": None,
                "picklistParentValueField": "",
                "isSupportedWebhookField": False,
            }
            for name, type_, length in COMPANY_UDFS
        ]
    }
