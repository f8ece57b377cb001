"""The OData subset the BSS API accepts in `$filter` and `$orderby`, parsed and applied to JSON records.

Grammar: `clause (and clause)*`, `clause := field op literal`, op one of `eq ne gt ge lt le`, literal a
single-quoted string (`''` escapes a quote), a bare date `2026-10-01`, a number, `null`, `true` or
`false`. Fields are dotted paths into the record (`account.id`) and are checked against a schema, so a
typo is a clear 400 instead of an empty result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")
MISSING = object()

# field type names used in the schemas: "string", "date", "number", "boolean"
CHARGE_FIELDS: dict[str, str] = {
    "id": "string",
    "account.id": "string",
    "account.name": "string",
    "account.code": "string",
    "subscription.id": "string",
    "subscription.status": "string",
    "product.id": "string",
    "product.sku": "string",
    "product.name": "string",
    "billingPlan.id": "string",
    "billingPlan.name": "string",
    "billingPlan.billingPeriod": "string",
    "billingCycle": "string",
    "chargeType": "string",
    "action": "string",
    "quantity": "number",
    "subscriptionQuantity": "number",
    "unitCost": "number",
    "unitPrice": "number",
    "currency": "string",
    "chargeStartDate": "date",
    "chargeEndDate": "date",
    "effectiveDate": "date",
    "invoiceId": "string",
}
ACCOUNT_FIELDS: dict[str, str] = {
    "id": "string",
    "name": "string",
    "code": "string",
    "status": "string",
    "phone": "string",
    "email": "string",
    "vatNumber": "string",
    "address.street": "string",
    "address.city": "string",
    "address.postalCode": "string",
    "address.country": "string",
}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<date>\d{4}-\d{2}-\d{2})(?![\w.:-])
      | (?P<number>-?\d+(?:\.\d+)?)(?![\w.:-])
      | (?P<word>[A-Za-z_$][\w.$]*)
      | (?P<other>\S+)
    )""",
    re.VERBOSE,
)


class FilterError(ValueError):
    """A `$filter` or `$orderby` the API rejects; the message says what is wrong."""


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    value: Any  # str, float, bool or None; dates stay ISO strings (they order as text)

    def matches(self, record: Any, lenient: bool = False) -> bool:
        """Whether the record satisfies the clause; `lenient`: a missing or mistyped value matches."""
        actual = resolve(record, self.field)
        if actual is MISSING:
            return lenient
        if self.value is None or actual is None:
            equal = actual is self.value
            return equal if self.op == "eq" else (not equal if self.op == "ne" else False)
        if not _same_kind(actual, self.value):
            return lenient or self.op == "ne"
        return _compare(actual, self.op, self.value)


@dataclass(frozen=True)
class OrderBy:
    field: str
    descending: bool


def parse_filter(text: str | None, schema: dict[str, str]) -> list[Clause]:
    """Parse a `$filter` into clauses that must all hold; raises FilterError naming the problem."""
    if text is None or not text.strip():
        return []
    tokens = _tokenize(text)
    clauses: list[Clause] = []
    position = 0
    while True:
        if position + 3 > len(tokens):
            raise FilterError(f"Invalid $filter: incomplete expression at the end of '{text}'")
        (field_kind, field_name), (op_kind, op), literal = tokens[position : position + 3]
        if field_kind != "word" or field_name.lower() in (*OPERATORS, "and", "or", "not"):
            raise FilterError(f"Invalid $filter: expected a field name, found '{field_name}'")
        field_type = _field_type(field_name, schema)
        if op_kind != "word" or op.lower() not in OPERATORS:
            raise FilterError(
                f"Invalid $filter: unsupported operator '{op}' after '{field_name}' (supported: {', '.join(OPERATORS)})"
            )
        value = _literal(literal, field_name, field_type, op.lower())
        clauses.append(Clause(field_name, op.lower(), value))
        position += 3
        if position == len(tokens):
            return clauses
        kind, word = tokens[position]
        if kind == "word" and word.lower() == "and":
            position += 1
            continue
        if kind == "word" and word.lower() == "or":
            raise FilterError("Invalid $filter: 'or' is not supported, only 'and'")
        raise FilterError(f"Invalid $filter: expected 'and', found '{word}'")


def parse_orderby(text: str | None, schema: dict[str, str]) -> list[OrderBy]:
    """Parse `$orderby` (`field [asc|desc], ...`)."""
    if text is None or not text.strip():
        return []
    orders = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2:
            raise FilterError(f"Invalid $orderby: '{part.strip()}' (expected 'field asc|desc')")
        _field_type(words[0], schema)
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise FilterError(f"Invalid $orderby: direction '{words[1]}' (expected asc or desc)")
        orders.append(OrderBy(words[0], direction == "desc"))
    return orders


def resolve(record: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def date_bounds(clauses: list[Clause], fields: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The tightest [lower, upper] ISO dates the clauses on `fields` allow (None: unbounded)."""
    lower: str | None = None
    upper: str | None = None
    for clause in clauses:
        if clause.field not in fields or not isinstance(clause.value, str):
            continue
        if clause.op in ("ge", "gt", "eq"):
            lower = clause.value if lower is None else max(lower, clause.value)
        if clause.op in ("le", "lt", "eq"):
            upper = clause.value if upper is None else min(upper, clause.value)
    return lower, upper


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        value = match.group(kind)
        if kind == "other":
            if value.startswith("'"):
                raise FilterError(f"Invalid $filter: unterminated string {value}")
            raise FilterError(f"Invalid $filter: unexpected '{value}'")
        tokens.append((kind, value))
    return tokens


def _field_type(name: str, schema: dict[str, str]) -> str:
    if name in schema:
        return schema[name]
    if any(known.startswith(name + ".") for known in schema):
        raise FilterError(
            f"Invalid field '{name}': it is an object, use one of its fields "
            f"({', '.join(k for k in schema if k.startswith(name + '.'))})"
        )
    raise FilterError(f"Unknown field '{name}' (known fields: {', '.join(schema)})")


def _literal(token: tuple[str, str], field_name: str, field_type: str, op: str) -> Any:
    kind, text = token
    if kind == "word" and text.lower() == "null":
        if op not in ("eq", "ne"):
            raise FilterError(f"Invalid $filter: null can only be compared with eq or ne ('{field_name}')")
        return None
    if kind == "word" and text.lower() in ("true", "false"):
        value: Any = text.lower() == "true"
        kind = "boolean"
    elif kind == "string":
        value = text[1:-1].replace("''", "'")
    elif kind == "date":
        value = text
    elif kind == "number":
        value = float(text)
    else:
        raise FilterError(f"Invalid $filter: '{text}' is not a value (strings need single quotes)")
    if field_type == "number" and kind != "number":
        raise FilterError(f"Invalid $filter: field '{field_name}' is a number, cannot compare with {text}")
    if field_type in ("string", "date") and kind in ("number", "boolean"):
        raise FilterError(f"Invalid $filter: field '{field_name}' is a {field_type}, cannot compare with {text}")
    if field_type == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            raise FilterError(f"Invalid $filter: '{value}' is not a date (YYYY-MM-DD) for '{field_name}'") from None
    return value


def _same_kind(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool)
    if isinstance(expected, float):
        return isinstance(actual, int | float)
    return isinstance(actual, str)


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "eq":
        return actual == expected
    if op == "ne":
        return actual != expected
    if op == "gt":
        return actual > expected
    if op == "ge":
        return actual >= expected
    if op == "lt":
        return actual < expected
    return actual <= expected
