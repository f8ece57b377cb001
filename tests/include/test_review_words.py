"""Numbers and days as a person writes them (`include.review_words`)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from include.review_words import day_text, plain_number, score_text, units_text, utc_iso


@pytest.mark.parametrize(
    ("stored", "written"),
    [(Decimal("2.0000"), "2"), (668.0, "668"), ("1.5000", "1.5"), (Decimal("-3.0000"), "-3"), (Decimal("-0.0"), "0")],
)
def test_units_are_written_without_the_stored_decimals(stored: object, written: str) -> None:
    assert plain_number(stored) == written


def test_units_scores_and_days_read_as_words() -> None:
    assert units_text(Decimal("-2.0000")) == "2 units" and units_text(Decimal("1.0000")) == "1 unit"
    assert score_text(Decimal("96.0000")) == "96 %" and score_text(89.6) == "90 %"
    assert day_text(date(2027, 10, 2)) == "2 Oct 2027"
    assert plain_number(None) == "" and plain_number("") == ""


def test_a_stored_moment_is_given_to_the_browser_in_utc_with_its_zone() -> None:
    assert utc_iso(datetime(2026, 12, 8, 0, 42, 58, 93275)) == "2026-12-08T00:42:58+00:00"
    assert utc_iso("2026-12-08 00:42:58.093275") == "2026-12-08T00:42:58+00:00"
    berlin = datetime(2026, 12, 8, 1, 42, tzinfo=timezone(timedelta(hours=1)))
    assert utc_iso(berlin) == "2026-12-08T00:42:00+00:00"
