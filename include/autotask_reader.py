"""What `include/` needs from Autotask: the read methods of the Autotask hook, as a Protocol.

The DAG hands in `connectors.autotask_hook.AutotaskHook`; tests hand in an in-memory double.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
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
