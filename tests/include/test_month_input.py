"""The billing month as a person types it in the trigger form: refused in words, the empty month is the last closed
one, and a run is named after its month (`include.month_input`, `billing_review.trigger_form`)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from billing_review.trigger_form import named_after_its_month

from include.month_input import default_month, month_field_description, month_problem, month_run_id


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("Nov 2026", "2026-11"),
        ("november 2026", "2026-11"),
        ("11/2026", "2026-11"),
        ("2026/3", "2026-03"),
        ("2026-3", "2026-03"),
    ],
)
def test_a_month_written_otherwise_is_refused_in_words_with_the_month_it_probably_meant(typed: str, meant: str) -> None:
    problem = month_problem(typed)
    assert problem is not None
    assert f'"{typed}" is not a month' in problem and "YYYY-MM" in problem and f"Did you mean {meant}?" in problem
    assert "\\d" not in problem and "schema" not in problem and "^" not in problem


def test_a_thirteenth_month_is_explained_and_no_month_is_guessed() -> None:
    problem = month_problem("2026-13")
    assert problem is not None and "months run from 01 to 12" in problem and "Did you mean" not in problem
    assert month_problem("soon") is not None and "Did you mean" not in month_problem("soon")
    assert month_problem(202611) is not None


@pytest.mark.parametrize("accepted", ["2026-11", " 2026-01 ", "", None])
def test_a_month_written_as_yyyy_mm_or_left_empty_is_accepted(accepted: str | None) -> None:
    assert month_problem(accepted) is None


def test_an_empty_month_bills_the_last_closed_month_never_the_unfinished_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BILLING_MONTH_OFFSET", raising=False)
    assert default_month(date(2026, 12, 7)).key == "2026-11"
    assert default_month(datetime(2027, 1, 1, 0, 0, tzinfo=UTC)).key == "2026-12"
    assert "last closed month" in month_field_description()
    monkeypatch.setenv("BILLING_MONTH_OFFSET", "0")
    assert default_month(date(2026, 12, 7)).key == "2026-12"
    assert "has not ended yet" in month_field_description()


def test_a_sync_trigger_is_named_after_its_month_and_keeps_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BILLING_MONTH_OFFSET", raising=False)
    now = datetime(2026, 12, 7, 10, 2, 3, tzinfo=UTC)
    empty = named_after_its_month({"logical_date": None, "conf": {"month": None, "dry_run": False}}, now)
    assert empty["conf"] == {"month": "2026-11", "dry_run": False}
    assert empty["dag_run_id"] == "2026-11__manual__2026-12-07T10:02:03+00:00" == month_run_id("2026-11", "manual", now)
    assert empty["note"] == "Billing month 2026-11"
    dated = named_after_its_month({"logical_date": "2026-08-15T00:00:00Z", "conf": {}}, now)
    assert dated["conf"]["month"] == "2026-07" and dated["dag_run_id"].startswith("2026-07__manual__")
    given = named_after_its_month({"dag_run_id": "mine", "note": "re-run", "conf": {"month": "2026-10"}}, now)
    assert (given["dag_run_id"], given["note"], given["conf"]["month"]) == ("mine", "re-run", "2026-10")
