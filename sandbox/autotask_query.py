"""Autotask query grammar for the sandbox: parse a search body, match records, page by id.

The filter is compiled once into a predicate; equality and `in` conditions at the top level also
become index hints, so a 500-id `in` query over many thousand records touches only those records.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sandbox.autotask_errors import ApiError
from sandbox.autotask_schema import (
    BOOLEAN,
    DATE,
    DATETIME,
    STRING,
    EntitySpec,
    Field,
    coerce,
    format_datetime,
    parse_datetime,
    udf_name,
)

MAX_RECORDS = 500
MAX_CONDITIONS = 500
LEAF_OPS = {
    "eq",
    "noteq",
    "gt",
    "gte",
    "lt",
    "lte",
    "beginswith",
    "endswith",
    "contains",
    "exist",
    "notexist",
    "in",
    "notin",
}
GROUP_OPS = {"and", "or"}

Predicate = Callable[[dict], bool]


@dataclass(frozen=True)
class IndexHint:
    """A top-level `eq`/`in` condition: records must have one of `keys` in `field` (a UDF when `udf`)."""

    field: str
    keys: frozenset
    udf: bool = False


@dataclass
class Query:
    predicate: Predicate
    hints: list[IndexHint] = field(default_factory=list)
    include_fields: list[str] | None = None
    max_records: int = MAX_RECORDS
    # Top-level range conditions (field, op, coerced value): let derived rows be skipped early.
    ranges: list[tuple[str, str, object]] = field(default_factory=list)


def index_key(value: object) -> object:
    """How a stored value is compared: strings without case (Autotask's collation), others as they are."""
    return value.lower() if isinstance(value, str) else value


def udf_value(record: dict, name: str) -> object:
    for udf in record.get("userDefinedFields") or ():
        if udf.get("name") == name:
            return udf.get("value")
    return None


def _case_insensitive_get(body: dict, key: str, default: object = None) -> object:
    for name, value in body.items():
        if name.lower() == key.lower():
            return value
    return default


def parse_query(spec: EntitySpec, body: dict) -> Query:
    """Validate a search body (`filter`, `IncludeFields`, `MaxRecords`) against the entity."""
    if not isinstance(body, dict):
        raise ApiError("The search object is not valid JSON.")
    max_records = _case_insensitive_get(body, "MaxRecords", MAX_RECORDS)
    if max_records is None:
        max_records = MAX_RECORDS
    if isinstance(max_records, bool) or not isinstance(max_records, int) or not 1 <= max_records <= MAX_RECORDS:
        raise ApiError("maxCountOfRecordsToReturn must be between 1 and 500")
    items = _case_insensitive_get(body, "filter")
    if not isinstance(items, list) or not items:
        raise ApiError("A query must contain at least one filter.")
    counter = _Counter()
    predicates = [_compile(spec, item, counter, in_or=False) for item in items]
    if counter.conditions > MAX_CONDITIONS:
        raise ApiError(
            f"The query contains {counter.conditions} conditions; a query may contain at most "
            f"{MAX_CONDITIONS} OR conditions or IN values."
        )
    if counter.udfs > 1:
        raise ApiError("Only one user-defined field may be queried per request.")
    hints = [hint for item in items if (hint := _hint(spec, item, counter.in_keys)) is not None]
    include = _case_insensitive_get(body, "IncludeFields")
    include_fields = _include_fields(spec, include) if include else None
    return Query(_all(predicates), hints, include_fields, max_records, _ranges(spec, items))


def _all(checks: list[Predicate]) -> Predicate:
    """A predicate true when every check is (in order, stopping at the first false one)."""
    if len(checks) == 1:
        return checks[0]

    def predicate(record: dict) -> bool:
        for check in checks:  # noqa: SIM110  # a plain loop: no generator per record (a hot path)
            if not check(record):
                return False
        return True

    return predicate


def _any(checks: list[Predicate]) -> Predicate:
    def predicate(record: dict) -> bool:
        for check in checks:  # noqa: SIM110  # a plain loop: no generator per record (a hot path)
            if check(record):
                return True
        return False

    return predicate


def _ranges(spec: EntitySpec, items: list) -> list[tuple[str, str, object]]:
    found = []
    for item in items:
        op = str(item.get("op", "")).lower()
        spec_field = spec.field_named(str(item.get("field")))
        if op in ("gt", "gte", "lt", "lte") and spec_field is not None and not item.get("udf"):
            found.append((spec_field.name, op, filter_value(spec_field, item.get("value"))))
    return found


def _include_fields(spec: EntitySpec, names: object) -> list[str]:
    if not isinstance(names, list):
        raise ApiError("IncludeFields must be a list of field names.")
    chosen = ["id"]
    for name in names:
        if spec.has_udfs and str(name).lower() == "userdefinedfields":
            chosen.append("userDefinedFields")
            continue
        spec_field = spec.field_named(str(name))
        if spec_field is None or spec_field.write_only:
            raise ApiError(f"Unable to find {name} in the {spec.name} entity.")
        if spec_field.name not in chosen:
            chosen.append(spec_field.name)
    return chosen


@dataclass
class _Counter:
    conditions: int = 0
    udfs: int = 0
    # coerced `in` values by (id of the value list, field), so the index hint need not coerce them again
    in_keys: dict[tuple[int, str], frozenset] = field(default_factory=dict)


def _compile(spec: EntitySpec, item: object, counter: _Counter, in_or: bool) -> Predicate:
    if not isinstance(item, dict):
        raise ApiError("Each filter item must be an object with an 'op'.")
    op = str(item.get("op", "")).lower()
    if op in GROUP_OPS:
        children = item.get("items")
        if not isinstance(children, list) or not children:
            raise ApiError(f"The '{op}' filter group must contain items.")
        compiled = [_compile(spec, child, counter, in_or or op == "or") for child in children]
        return _all(compiled) if op == "and" else _any(compiled)
    if op not in LEAF_OPS:
        raise ApiError(f"Invalid filter operator: '{item.get('op')}'.")
    getter, spec_field = _getter(spec, item, counter)
    if in_or:
        counter.conditions += 1
    key = spec_field.name if item.get("udf") is not True else None
    return _leaf(op, spec_field, getter, item.get("value"), counter, key)


def _getter(spec: EntitySpec, item: dict, counter: _Counter) -> tuple[Callable[[dict], object], Field]:
    name = item.get("field")
    if not isinstance(name, str) or not name:
        raise ApiError("A filter condition needs a 'field'.")
    if item.get("udf") is True:
        if not spec.has_udfs or (canonical := udf_name(name)) is None:
            raise ApiError(f"Unable to find user-defined field {name} in the {spec.name} entity.")
        counter.udfs += 1
        return (lambda record: udf_value(record, canonical)), Field(canonical, STRING)
    spec_field = spec.field_named(name)
    if spec_field is None or spec_field.write_only:
        raise ApiError(f"Unable to find {name} in the {spec.name} entity.")
    key = spec_field.name
    return (lambda record: record.get(key)), spec_field


def filter_value(spec_field: Field, value: object) -> object:
    """Coerce a filter value to what a stored value of the field compares against."""
    if value is None:
        return None
    if spec_field.type in (DATE, DATETIME):
        try:
            moment = parse_datetime(value)
        except ValueError:
            raise ApiError(
                f"Error converting value {value!r} to type 'System.DateTime'. Path '{spec_field.name}'."
            ) from None
        # through index_key like stored values, so "T" compares with "t" and equal dates stay equal
        return index_key(moment.strftime("%Y-%m-%dT%H:%M:%S") if spec_field.type == DATE else format_datetime(moment))
    if spec_field.type == BOOLEAN and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return index_key(coerce(spec_field, value))


def _leaf(
    op: str, spec_field: Field, getter: Callable[[dict], object], raw: object, counter: _Counter, key: str | None = None
) -> Predicate:
    """The check of one condition; `key` (a plain field, not a UDF) lets hot checks read the record directly."""
    if op == "exist":
        return lambda record: getter(record) not in (None, "")
    if op == "notexist":
        return lambda record: getter(record) in (None, "")
    if op in ("in", "notin"):
        if not isinstance(raw, list):
            raise ApiError(f"The '{op}' operator requires a list of values.")
        counter.conditions += len(raw)
        keys = frozenset(filter_value(spec_field, value) for value in raw)
        counter.in_keys[(id(raw), spec_field.name)] = keys
        if op == "in" and key is not None:

            def in_keys(record: dict) -> bool:
                value = record.get(key)
                return (value.lower() if isinstance(value, str) else value) in keys

            return in_keys
        if op == "in":
            return lambda record: index_key(getter(record)) in keys
        return lambda record: index_key(getter(record)) not in keys
    if op in ("beginswith", "endswith", "contains"):
        text = str(raw if raw is not None else "").lower()
        method = {"beginswith": str.startswith, "endswith": str.endswith, "contains": str.__contains__}[op]

        def text_match(record: dict) -> bool:
            value = getter(record)
            return value is not None and method(_as_text(value), text)

        return text_match
    target = filter_value(spec_field, raw)
    if op == "eq":
        if target is None:
            return lambda record: getter(record) in (None, "")
        return lambda record: index_key(getter(record)) == target
    if op == "noteq":
        if target is None:
            return lambda record: getter(record) not in (None, "")
        return lambda record: index_key(getter(record)) != target
    compare = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}[op]
    if target is None:
        raise ApiError(f"The '{op}' operator requires a value.")

    if key is not None:

        def ordered_field(record: dict) -> bool:
            value = record.get(key)
            if value is None:
                return False
            try:
                return compare(value.lower() if isinstance(value, str) else value, target)
            except TypeError:
                return False

        return ordered_field

    def ordered(record: dict) -> bool:
        value = getter(record)
        if value is None:
            return False
        try:
            return compare(index_key(value), target)
        except TypeError:
            return False

    return ordered


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def _hint(spec: EntitySpec, item: dict, in_keys: dict[tuple[int, str], frozenset] | None = None) -> IndexHint | None:
    """An index hint from a top-level eq/in condition, or None."""
    op = str(item.get("op", "")).lower()
    if op not in ("eq", "in") or item.get("value") is None:
        return None
    if item.get("udf") is True:
        name = udf_name(str(item.get("field")))
        values = item["value"] if op == "in" else [item["value"]]
        return IndexHint(name, frozenset(index_key(str(value)) for value in values), udf=True) if name else None
    spec_field = spec.field_named(str(item.get("field")))
    if spec_field is None:
        return None
    values = item["value"] if op == "in" else [item["value"]]
    known = (in_keys or {}).get((id(values), spec_field.name)) if op == "in" else None
    if known is not None:
        return IndexHint(spec_field.name, known)
    return IndexHint(spec_field.name, frozenset(filter_value(spec_field, value) for value in values))


# --- paging ------------------------------------------------------------------------------------------


@dataclass
class Page:
    records: list[dict]
    has_more: bool
    has_previous: bool


def page_after(
    ids: Sequence[int], get: Callable[[int], dict], predicate: Predicate, after: int | None, size: int
) -> Page:
    """The next `size` matches with id > after (ids ascending)."""
    start = bisect.bisect_right(ids, after) if after is not None else 0
    found: list[dict] = []
    has_more = False
    for record in _records(ids, get, range(start, len(ids))):
        if predicate(record):
            if len(found) == size:
                has_more = True
                break
            found.append(record)
    return Page(found, has_more, after is not None)


def page_before(ids: Sequence[int], get: Callable[[int], dict], predicate: Predicate, before: int, size: int) -> Page:
    """The `size` matches just before id `before`, in ascending order."""
    end = bisect.bisect_left(ids, before)
    found: list[dict] = []
    has_previous = False
    for record in _records(ids, get, range(end - 1, -1, -1)):
        if predicate(record):
            if len(found) == size:
                has_previous = True
                break
            found.append(record)
    found.reverse()
    return Page(found, True, has_previous)


def count_matches(ids: Sequence[int], get: Callable[[int], dict], predicate: Predicate) -> int:
    return sum(1 for record in _records(ids, get, range(len(ids))) if predicate(record))


def _records(ids: Sequence[int], get: Callable[[int], dict], positions: range) -> Iterator[dict]:
    for position in positions:
        record = get(ids[position])
        if record is not None:
            yield record


def project(record: dict, include_fields: list[str] | None) -> dict:
    if include_fields is None:
        return record
    return {name: record.get(name) for name in include_fields}
