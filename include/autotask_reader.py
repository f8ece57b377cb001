"""What `include/` needs from Autotask: the read methods of the Autotask hook, as a Protocol.

The DAG hands in `connectors.autotask_hook.AutotaskHook`; tests hand in an in-memory double.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol


class AutotaskReader(Protocol):
    def query(
        self,
        entity: str,
        filters: list[dict] | None = None,
        include_fields: list[str] | None = None,
        max_records: int | None = None,
    ) -> list[dict]:
        """Every record matching the raw Autotask filters (all pages)."""
        ...

    def query_in(
        self,
        entity: str,
        field: str,
        values: Iterable[Any],
        filters: list[dict] | None = None,
        include_fields: list[str] | None = None,
    ) -> list[dict]:
        """Records whose `field` is one of `values` (the hook batches ≤500 values per call)."""
        ...

    def contract_service_units(self, contract_service_ids: Iterable[int], start: date, end: date) -> list[dict]:
        """ContractServiceUnits rows overlapping [start, end] for the contract services."""
        ...


def api_date(value: Any) -> date | None:
    """An Autotask date-only value (`YYYY-MM-DDT00:00:00`) as a date."""
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def udf_value(record: dict, name: str) -> Any:
    """The value of the user-defined field `name` (case-insensitive) of an Autotask record."""
    wanted = name.casefold()
    for udf in record.get("userDefinedFields") or []:
        if str(udf.get("name", "")).casefold() == wanted:
            return udf.get("value")
    return None


def format_api_date(value: date) -> str:
    """A date-only field (effectiveDate, startDate, endDate) as Autotask wants it: `YYYY-MM-DDT00:00:00`."""
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}T00:00:00"


def format_api_datetime(value: datetime) -> str:
    """A datetime in UTC, `yyyy-mm-ddThh:mm:ss.mmmZ`; naive datetimes are taken to be UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def to_api_value(value: Any) -> Any:
    """Encode a value for a JSON body: dates and datetimes as Autotask strings, Decimals as numbers.

    Booleans stay literal true/false (Autotask rejects "true" strings); containers are encoded deeply.
    """
    if isinstance(value, datetime):
        return format_api_datetime(value)
    if isinstance(value, date):
        return format_api_date(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else float(value)
    if isinstance(value, Mapping):
        return {key: to_api_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_api_value(item) for item in value]
    return value
