"""A typed builder for Autotask REST query bodies, and the date encoding Autotask expects.

Autotask's grammar is small and strict: fourteen operators, `and`/`or` groups that nest, top-level items
ANDed, `"udf": true` on a user-defined field (one per query), at most 500 values in an `in`, and
`MaxRecords` between 1 and 500. Anything else is rejected with HTTP 500, so mistakes are caught here.

    Query("Companies", [Filter.eq("isActive", True), or_(Filter.begins_with("companyName", "A"),
          Filter.in_("id", [1, 2, 3]))], include_fields=["id", "companyName"]).body()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

# the value encoding lives in include/ (the loader needs it too, and include/ imports nothing of plugins/)
from include.autotask_reader import format_api_date, format_api_datetime, to_api_value

_REEXPORTED = (format_api_date, format_api_datetime)  # the hook and its tests import them from here

VALUE_OPERATORS = frozenset({"eq", "noteq", "gt", "gte", "lt", "lte", "beginsWith", "endsWith", "contains"})
LIST_OPERATORS = frozenset({"in", "notIn"})
EXISTENCE_OPERATORS = frozenset({"exist", "notExist"})
FIELD_OPERATORS = VALUE_OPERATORS | LIST_OPERATORS | EXISTENCE_OPERATORS
GROUP_OPERATORS = frozenset({"and", "or"})

MAX_PAGE_SIZE = 500
MAX_IN_VALUES = 500

# Autotask insists on a filter; "id >= 0" is the conventional "everything".
MATCH_ALL: list[dict[str, Any]] = [{"op": "gte", "field": "id", "value": 0}]


def parse_api_date(text: str | None) -> date | None:
    """The date part of an Autotask datetime string (`2026-10-01T00:00:00`, `...Z`, `...+00:00`)."""
    if not text:
        return None
    return date.fromisoformat(text[:10])


@dataclass(frozen=True, slots=True)
class Filter:
    """One condition on one field. Build with the class methods (`Filter.eq("id", 1)`)."""

    op: str
    field: str
    value: Any = None
    udf: bool = False

    def __post_init__(self) -> None:
        if self.op not in FIELD_OPERATORS:
            raise ValueError(f"unknown Autotask operator {self.op!r}; allowed: {sorted(FIELD_OPERATORS)}")
        if not self.field:
            raise ValueError("a filter needs a field name")
        if self.op in LIST_OPERATORS:
            values = list(self.value) if isinstance(self.value, Iterable) and not isinstance(self.value, str) else None
            if not values:
                raise ValueError(f"{self.op!r} needs a non-empty list of values")
            if len(values) > MAX_IN_VALUES:
                raise ValueError(
                    f"{self.op!r} takes at most {MAX_IN_VALUES} values (got {len(values)}); use query_in to batch"
                )
            object.__setattr__(self, "value", tuple(values))

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {"op": self.op, "field": self.field}
        if self.op in LIST_OPERATORS:
            item["value"] = [to_api_value(v) for v in self.value]
        elif self.op in VALUE_OPERATORS:
            item["value"] = to_api_value(self.value)
        if self.udf:
            item["udf"] = True
        return item

    @classmethod
    def eq(cls, field: str, value: Any, udf: bool = False) -> Filter:
        return cls("eq", field, value, udf)

    @classmethod
    def noteq(cls, field: str, value: Any, udf: bool = False) -> Filter:
        return cls("noteq", field, value, udf)

    @classmethod
    def gt(cls, field: str, value: Any, udf: bool = False) -> Filter:
        return cls("gt", field, value, udf)

    @classmethod
    def gte(cls, field: str, value: Any, udf: bool = False) -> Filter:
        return cls("gte", field, value, udf)

    @classmethod
    def lt(cls, field: str, value: Any, udf: bool = False) -> Filter:
        return cls("lt", field, value, udf)

    @classmethod
    def lte(cls, field: str, value: Any, udf: bool = False) -> Filter:
        return cls("lte", field, value, udf)

    @classmethod
    def begins_with(cls, field: str, value: str, udf: bool = False) -> Filter:
        return cls("beginsWith", field, value, udf)

    @classmethod
    def ends_with(cls, field: str, value: str, udf: bool = False) -> Filter:
        return cls("endsWith", field, value, udf)

    @classmethod
    def contains(cls, field: str, value: str, udf: bool = False) -> Filter:
        return cls("contains", field, value, udf)

    @classmethod
    def exist(cls, field: str, udf: bool = False) -> Filter:
        return cls("exist", field, None, udf)

    @classmethod
    def not_exist(cls, field: str, udf: bool = False) -> Filter:
        return cls("notExist", field, None, udf)

    @classmethod
    def in_(cls, field: str, values: Iterable[Any], udf: bool = False) -> Filter:
        return cls("in", field, tuple(values), udf)

    @classmethod
    def not_in(cls, field: str, values: Iterable[Any], udf: bool = False) -> Filter:
        return cls("notIn", field, tuple(values), udf)


@dataclass(frozen=True, slots=True)
class Group:
    """An `and`/`or` group of conditions; groups nest."""

    op: str
    items: tuple[Filter | Group, ...]  # raw dicts are accepted and validated

    def __post_init__(self) -> None:
        if self.op not in GROUP_OPERATORS:
            raise ValueError(f"a group is 'and' or 'or', not {self.op!r}")
        if not self.items:
            raise ValueError(f"an {self.op!r} group needs at least one item")
        object.__setattr__(self, "items", tuple(to_filter_objects(self.items)))

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "items": [item.to_dict() for item in self.items]}


FilterLike = Filter | Group | Mapping[str, Any]


def and_(*items: FilterLike) -> Group:
    return Group("and", tuple(items))


def or_(*items: FilterLike) -> Group:
    return Group("or", tuple(items))


def filter_from_dict(raw: Mapping[str, Any]) -> Filter | Group:
    """Validate a raw filter dict (`{"op","field","value"}` or `{"op","items"}`) into the typed form."""
    op = raw.get("op")
    if op in GROUP_OPERATORS:
        return Group(op, tuple(filter_from_dict(item) for item in raw.get("items") or ()))
    return Filter(str(op), str(raw.get("field") or ""), raw.get("value"), bool(raw.get("udf", False)))


def to_filter_objects(filters: Sequence[FilterLike] | None) -> list[Filter | Group]:
    """Accept builder objects or raw dicts (so `include/` needs no import of this module)."""
    typed: list[Filter | Group] = []
    for item in filters or ():
        if isinstance(item, Filter | Group):
            typed.append(item)
        elif isinstance(item, Mapping):
            typed.append(filter_from_dict(item))
        else:
            raise TypeError(f"a filter is a Filter, a Group or a dict, not {type(item).__name__}")
    return typed


def clamp_page_size(max_records: int | None) -> int:
    """Autotask rejects MaxRecords outside 1–500; clamp instead of failing."""
    if max_records is None:
        return MAX_PAGE_SIZE
    return max(1, min(MAX_PAGE_SIZE, int(max_records)))


def count_udf_filters(items: Iterable[Filter | Group]) -> int:
    total = 0
    for item in items:
        total += count_udf_filters(item.items) if isinstance(item, Group) else int(item.udf)
    return total


@dataclass(frozen=True)
class Query:
    """A query on one entity; `body()` is the JSON to POST to `/{entity}/query`."""

    entity: str
    filters: Sequence[FilterLike] | None = None
    include_fields: Sequence[str] | None = None
    max_records: int | None = None
    typed_filters: tuple[Filter | Group, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        typed = tuple(to_filter_objects(self.filters))
        if count_udf_filters(typed) > 1:
            raise ValueError("Autotask allows only one user-defined field per query")
        object.__setattr__(self, "typed_filters", typed)

    @property
    def page_size(self) -> int:
        return clamp_page_size(self.max_records)

    def filter_body(self) -> list[dict[str, Any]]:
        return [item.to_dict() for item in self.typed_filters] or [dict(item) for item in MATCH_ALL]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"filter": self.filter_body(), "MaxRecords": self.page_size}
        if self.include_fields:
            body["IncludeFields"] = list(self.include_fields)
        return body
