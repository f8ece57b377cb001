"""The `$filter`/`$orderby` subset: parsed clauses select exactly what a plain Python predicate selects."""

from __future__ import annotations

import operator
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.dataset import build_universe
from sandbox.odata_filter import (
    CHARGE_FIELDS,
    FilterError,
    date_bounds,
    parse_filter,
    parse_orderby,
)

LINES = build_universe().charges_for_month("2026-10")
PYTHON_OPERATORS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
ops = st.sampled_from(sorted(PYTHON_OPERATORS))
number_clause = st.tuples(st.sampled_from(["quantity", "subscriptionQuantity", "unitPrice"]), ops, st.integers(-20, 60))
string_clause = st.tuples(
    st.sampled_from(["action", "chargeType", "currency"]),
    ops,
    st.sampled_from(["Cycle", "New", "Prorated", "EUR", "GBP", "O'Brien"]),
)
date_clause = st.tuples(
    st.just("effectiveDate"), ops, st.integers(0, 30).map(lambda day: date(2026, 10, 1) + timedelta(days=day))
)
clauses = st.lists(st.one_of(number_clause, string_clause, date_clause), min_size=1, max_size=4)


def literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return value.isoformat() if isinstance(value, date) else str(value)


def python_value(value: object) -> object:
    return value.isoformat() if isinstance(value, date) else value


@settings(max_examples=150, deadline=None)
@given(clauses)
def test_parsed_filter_selects_what_the_python_predicate_selects(generated):
    text = " and ".join(f"{field} {op} {literal(value)}" for field, op, value in generated)
    parsed = parse_filter(text, CHARGE_FIELDS)
    found = [line for line in LINES if all(clause.matches(line) for clause in parsed)]
    expected = [
        line
        for line in LINES
        if all(PYTHON_OPERATORS[op](line[field], python_value(value)) for field, op, value in generated)
    ]
    assert found == expected


def test_keywords_and_operators_are_case_insensitive_and_spacing_is_free():
    parsed = parse_filter("  quantity  GT 3   AND action Eq 'Cycle' ", CHARGE_FIELDS)
    assert [(clause.field, clause.op, clause.value) for clause in parsed] == [
        ("quantity", "gt", 3.0),
        ("action", "eq", "Cycle"),
    ]


def test_date_bounds_take_the_tightest_range():
    parsed = parse_filter(
        "chargeStartDate ge 2026-10-01 and chargeStartDate ge 2026-10-05 "
        "and effectiveDate le 2026-10-20 and quantity gt 1",
        CHARGE_FIELDS,
    )
    assert date_bounds(parsed, ("chargeStartDate", "effectiveDate")) == ("2026-10-05", "2026-10-20")
    assert date_bounds(parse_filter("id eq 'x'", CHARGE_FIELDS), ("chargeStartDate",)) == (None, None)


def test_orderby_defaults_to_ascending_and_accepts_several_fields():
    orders = parse_orderby("quantity desc, id", CHARGE_FIELDS)
    assert [(order.field, order.descending) for order in orders] == [("quantity", True), ("id", False)]


@pytest.mark.parametrize("text", ["quantity gt null", "unitPrice eq true", "id eq 5", "effectiveDate eq 7"])
def test_mistyped_literals_are_rejected(text):
    with pytest.raises(FilterError):
        parse_filter(text, CHARGE_FIELDS)


def test_lenient_matching_lets_injected_records_through():
    clause = parse_filter("quantity gt 3", CHARGE_FIELDS)[0]
    assert clause.matches({"quantity": "lots"}, lenient=True)
    assert not clause.matches({"quantity": "lots"})
    assert clause.matches({}, lenient=True)
    assert not clause.matches({})
