"""The billing month as a person gives it in Airflow's trigger form, and how a run is named after it.

Light on purpose (only `include.models`): the DAG files read it when they are parsed, and the billing plugin's
trigger middleware (`billing_review.trigger_form`) reads it for every trigger of a billing DAG.

- A month is written `YYYY-MM`. Anything else is refused with a sentence that says so, and with the month it
  probably meant when that is clear ("Nov 2026" → 2026-11): never with a regular expression.
- An empty month bills the last closed month: the calendar month before the run date, shifted by
  `BILLING_MONTH_OFFSET` (default -1: the month that just ended; 0 bills the run date's own, unfinished month).
- A run's id starts with its month (`2026-11__manual__2026-12-07T10:02:03+00:00`), so Airflow's runs list shows
  which month each run bills.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime

from include.models import MONTH_PATTERN, BillingMonth

DEFAULT_MONTH_OFFSET = -1
_MONTH_NAMES = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
_NAMED = re.compile(r"^([a-z]+)\.?[\s,/-]*(\d{4})$|^(\d{4})[\s,/-]*([a-z]+)\.?$")
_NUMERIC = re.compile(
    r"^(\d{1,2})\s*[/.\-\s]\s*(\d{4})$|^(\d{4})\s*[/.\s]\s*(\d{1,2})$|^(\d{4})-(\d)$|^(\d{4})(\d{2})$"
)


def month_offset() -> int:
    """`BILLING_MONTH_OFFSET`: months added to the run date's month when no month is given (default -1)."""
    text = os.environ.get("BILLING_MONTH_OFFSET", "").strip()
    return int(text) if text else DEFAULT_MONTH_OFFSET


def default_month(run_date: date | datetime, offset: int | None = None) -> BillingMonth:
    """The month a run without a month bills: the run date's month shifted by the offset (the last closed month)."""
    day = run_date.date() if isinstance(run_date, datetime) else run_date
    return BillingMonth.of(day).shifted(month_offset() if offset is None else offset)


def default_month_in_words(offset: int | None = None) -> str:
    """What an empty month field means, for the field's description."""
    offset = month_offset() if offset is None else offset
    if offset == -1:
        return "the last closed month (the calendar month before the run date)"
    if offset == 0:
        return "the run date's own month (BILLING_MONTH_OFFSET=0: a month that has not ended yet)"
    months = abs(offset)
    return f"the month {months} month{'s' if months != 1 else ''} {'before' if offset < 0 else 'after'} the run date's"


def month_field_description(offset: int | None = None) -> str:
    empty = default_month_in_words(offset)
    return f"Year and month as YYYY-MM, e.g. 2026-11 for November 2026. Leave empty for {empty}."


def month_problem(text: object) -> str | None:
    """None when `text` is a billing month (`YYYY-MM`) or empty; otherwise the sentence that says what is wrong."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str) and MONTH_PATTERN.match(text.strip()):
        return None
    shown = text if isinstance(text, str) else repr(text)
    guess = _probable_month(text) if isinstance(text, str) else None
    hint = f" Did you mean {guess.key}?" if guess is not None else ""
    why = ""
    if isinstance(text, str) and re.fullmatch(r"\s*\d{4}-\d{2}\s*", text):
        why = " There is no month " + text.strip()[5:] + ": months run from 01 to 12."
    return (
        f'Billing month: "{shown}" is not a month the sync understands.{why} Write the year, a dash and the month '
        f"as two digits (YYYY-MM), e.g. 2026-11 for November 2026, or leave the field empty for "
        f"{default_month_in_words()}.{hint}"
    )


def _probable_month(text: str) -> BillingMonth | None:
    """The month a person most likely meant ("Nov 2026", "11/2026", "2026/11", "202611"), if it is clear."""
    cleaned = text.strip().lower()
    named = _NAMED.match(cleaned)
    if named:
        name, year = (named.group(1), named.group(2)) if named.group(1) else (named.group(4), named.group(3))
        number = _MONTH_NAMES.get(name)
        return BillingMonth(int(year), number) if number else None
    numeric = _NUMERIC.match(cleaned)
    if numeric:
        groups = numeric.groups()
        pairs = [(groups[1], groups[0]), (groups[2], groups[3]), (groups[4], groups[5]), (groups[6], groups[7])]
        year, month = next((year, month) for year, month in pairs if year is not None)
        return BillingMonth(int(year), int(month)) if 1 <= int(month) <= 12 else None
    return None


def month_run_id(month: str, run_type: str, run_after: datetime) -> str:
    """A run id that starts with the billing month: `2026-11__manual__2026-12-07T10:02:03.123456+00:00`."""
    return f"{BillingMonth.parse(month).key}__{run_type}__{run_after.isoformat()}"
