"""Step 3's input: the Autotask state a month is compared with, fetched in few batched reads and
stored per run, so review and load work from exactly what reconciliation compared.

What is fetched (every read is a paged query or a `query_in` of at most 500 ids; never a GET per line):
- all companies (linking by key or name needs the whole list; a few pages even for large tenants), and the
  currencies once, so each company's currency is stored as an ISO code (`currencyID` → `Currencies.name`;
  a company without one bills in the tenant's internal currency);
- all recurring-service contracts (contractType 7), the services catalogue;
- the contract services of those contracts, and their ContractServiceUnits overlapping the window
  [first day of the previous month, first day of the next month]: the previous month so a renewal can
  read the units in force when the contract ended, the next month's first day for the
  `next_period_start` policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from include.autotask_reader import AutotaskReader, api_date, udf_value
from include.models import BillingMonth
from include.sync_settings import RECURRING_SERVICE_CONTRACT_TYPE, SyncSettings
from include.warehouse import Warehouse, utcnow

log = logging.getLogger(__name__)

SNAPSHOT_TABLES = (
    "at_contract_service_units",
    "at_contract_services",
    "at_services",
    "at_contracts",
    "at_companies",
    "at_snapshots",
)
CONTRACT_FIELDS = [
    "id",
    "companyID",
    "contractName",
    "contractNumber",
    "contractType",
    "status",
    "startDate",
    "endDate",
]
_RECORD_KEYS = {
    "at_companies": "company_id",
    "at_contracts": "contract_id",
    "at_services": "service_id",
    "at_contract_services": "contract_service_id",
    "at_contract_service_units": "contract_service_unit_id",
}
CURRENCY_FIELDS = ["id", "name", "isInternalCurrency", "isActive"]
SERVICE_FIELDS = ["id", "name", "sku", "periodType", "unitPrice", "unitCost", "billingCodeID", "isActive"]
CONTRACT_SERVICE_FIELDS = ["id", "contractID", "serviceID", "unitPrice", "unitCost"]


@dataclass(frozen=True)
class SnapshotSummary:
    run_id: str
    month: str
    companies: int
    contracts: int
    services: int
    contract_services: int
    contract_service_units: int
    reader_calls: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _CountingReader:
    """Counts the reader calls a snapshot makes (the hook turns each into one or a few HTTP requests)."""

    def __init__(self, reader: AutotaskReader) -> None:
        self._reader = reader
        self.calls = 0

    def query(
        self, entity: str, filters: list[dict] | None = None, include_fields: list[str] | None = None
    ) -> list[dict]:
        self.calls += 1
        return self._reader.query(entity, filters, include_fields)

    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[dict] | None = None,
        include_fields: list[str] | None = None,
    ) -> list[dict]:
        values = list(values)
        if not values:
            return []
        self.calls += -(-len(values) // 500)
        return self._reader.query_in(entity, field, values, filters, include_fields)

    def contract_service_units(self, ids: Iterable[int], start: date, end: date) -> list[dict]:
        ids = list(ids)
        if not ids:
            return []
        self.calls += -(-len(ids) // 500)
        return self._reader.contract_service_units(ids, start, end)


def units_window(month: BillingMonth) -> tuple[date, date]:
    return month.previous().first_day, month.next().first_day


def take_snapshot(
    reader: AutotaskReader,
    warehouse: Warehouse,
    month: str,
    run_id: str,
    settings: SyncSettings | None = None,
) -> SnapshotSummary:
    """Fetch the Autotask state `month` needs and store it under `run_id` (replacing a previous attempt)."""
    settings = settings or SyncSettings()
    billing_month = BillingMonth.parse(month)
    started = time.monotonic()
    counting = _CountingReader(reader)

    companies = counting.query("Companies")
    company_currency = CompanyCurrency(counting.query("Currencies", None, CURRENCY_FIELDS))
    contracts = counting.query(
        "Contracts",
        [{"op": "eq", "field": "contractType", "value": RECURRING_SERVICE_CONTRACT_TYPE}],
        CONTRACT_FIELDS,
    )
    services = counting.query("Services", None, SERVICE_FIELDS)
    contract_services = counting.query_in(
        "ContractServices",
        "contractID",
        sorted({int(record["id"]) for record in contracts}),
        None,
        CONTRACT_SERVICE_FIELDS,
    )
    window_start, window_end = units_window(billing_month)
    units = counting.contract_service_units(
        sorted({int(record["id"]) for record in contract_services}), window_start, window_end
    )

    rows = {
        "at_companies": [_company_row(run_id, record, settings, company_currency) for record in companies],
        "at_contracts": [_contract_row(run_id, record) for record in contracts],
        "at_services": [_service_row(run_id, record) for record in services],
        "at_contract_services": [_contract_service_row(run_id, record) for record in contract_services],
        "at_contract_service_units": [_unit_row(run_id, record) for record in units],
    }
    summary = SnapshotSummary(
        run_id=run_id,
        month=billing_month.key,
        companies=len(rows["at_companies"]),
        contracts=len(rows["at_contracts"]),
        services=len(rows["at_services"]),
        contract_services=len(rows["at_contract_services"]),
        contract_service_units=len(rows["at_contract_service_units"]),
        reader_calls=counting.calls,
        seconds=round(time.monotonic() - started, 3),
    )
    with warehouse.begin() as conn:
        for table in SNAPSHOT_TABLES:
            conn.execute(warehouse.table(table).delete().where(warehouse.table(table).c.run_id == run_id))
        for table, table_rows in rows.items():
            warehouse.insert(conn, table, _dedupe(table, table_rows))
        warehouse.insert(
            conn,
            "at_snapshots",
            [
                {
                    "run_id": run_id,
                    "month": billing_month.key,
                    "taken_at": utcnow(),
                    "units_from": window_start,
                    "units_to": window_end,
                    "companies": summary.companies,
                    "contracts": summary.contracts,
                    "services": summary.services,
                    "contract_services": summary.contract_services,
                    "contract_service_units": summary.contract_service_units,
                    "reader_calls": summary.reader_calls,
                    "internal_currency": company_currency.internal,
                }
            ],
        )
    log.info("snapshot %s for %s: %s", run_id, billing_month, summary.as_dict())
    return summary


def _dedupe(table: str, rows: list[dict]) -> list[dict]:
    """Paged reads can repeat a record when Autotask changes between pages; keep the last copy."""
    key = _RECORD_KEYS[table]
    return list({row[key]: row for row in rows}.values())


class CompanyCurrency:
    """A company's Autotask currency as an ISO code, from the tenant's Currencies."""

    def __init__(self, currencies: list[dict]) -> None:
        self._codes = {int(record["id"]): str(record["name"]).strip().upper() for record in currencies}
        internal = [record for record in currencies if record.get("isInternalCurrency") is True]
        self.internal = str(internal[0]["name"]).strip().upper() if len(internal) == 1 else None

    def of(self, company: dict) -> str | None:
        """The code of the company's currencyID; the internal currency when it has none; None when unknown."""
        currency_id = company.get("currencyID")
        if currency_id in (None, ""):
            return self.internal
        return self._codes.get(int(currency_id))


def _company_row(run_id: str, record: dict, settings: SyncSettings, currency: CompanyCurrency) -> dict:
    if settings.company_key_field:
        key = record.get(settings.company_key_field)
    elif settings.company_key_udf:
        key = udf_value(record, settings.company_key_udf)
    else:
        key = None
    key = str(key).strip() if key not in (None, "") else None
    return {
        "run_id": run_id,
        "company_id": int(record["id"]),
        "company_name": str(record.get("companyName") or ""),
        "company_type": _int_or_none(record.get("companyType")),
        "is_active": record.get("isActive") is not False,
        "phone": record.get("phone"),
        "external_key": key or None,
        "currency": currency.of(record),
        # what tells companies of one name apart in the review's search
        "address": _text_or_none(record.get("address1"), 150),
        "city": _text_or_none(record.get("city"), 50),
    }


def _text_or_none(value: object, limit: int) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:limit] or None


def _contract_row(run_id: str, record: dict) -> dict:
    return {
        "run_id": run_id,
        "contract_id": int(record["id"]),
        "company_id": int(record["companyID"]),
        "contract_name": str(record.get("contractName") or ""),
        "contract_number": record.get("contractNumber") or None,
        "contract_type": int(record.get("contractType") or RECURRING_SERVICE_CONTRACT_TYPE),
        "status": _int_or_none(record.get("status")),
        "start_date": _date(record.get("startDate")),
        "end_date": _date(record.get("endDate")),
    }


def _service_row(run_id: str, record: dict) -> dict:
    return {
        "run_id": run_id,
        "service_id": int(record["id"]),
        "service_name": str(record.get("name") or ""),
        "sku": record.get("sku") or None,
        "period_type": _int_or_none(record.get("periodType")),
        "unit_price": record.get("unitPrice"),
        "unit_cost": record.get("unitCost"),
        "billing_code_id": _int_or_none(record.get("billingCodeID")),
        "is_active": record.get("isActive") is not False,
    }


def _contract_service_row(run_id: str, record: dict) -> dict:
    return {
        "run_id": run_id,
        "contract_service_id": int(record["id"]),
        "contract_id": int(record["contractID"]),
        "service_id": int(record["serviceID"]),
        "unit_price": record.get("unitPrice"),
        "unit_cost": record.get("unitCost"),
    }


def _unit_row(run_id: str, record: dict) -> dict:
    posted = record.get("approveAndPostDate")
    return {
        "run_id": run_id,
        "contract_service_unit_id": int(record["id"]),
        "contract_service_id": int(record["contractServiceID"]),
        "contract_id": _int_or_none(record.get("contractID")),
        "service_id": _int_or_none(record.get("serviceID")),
        "start_date": _date(record["startDate"]),
        "end_date": _date(record["endDate"]),
        "units": record.get("units") or 0,
        "price": record.get("price"),
        "cost": record.get("cost"),
        "approve_and_post_date": _api_datetime(posted),
    }


def _date(value: Any) -> date | None:
    # a snapshot holds a few hundred distinct dates in hundreds of thousands of fields: parse each once
    return _parsed_date(value) if type(value) is str else api_date(value)


@lru_cache(maxsize=65_536)
def _parsed_date(value: str) -> date | None:
    return api_date(value)


def _api_datetime(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return _parsed_datetime(str(value))


@lru_cache(maxsize=65_536)
def _parsed_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "")[:19])


def _int_or_none(value: Any) -> int | None:
    return None if value in (None, "") else int(value)
