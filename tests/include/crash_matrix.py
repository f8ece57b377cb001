"""The whole crash matrix (`make test-crash`; `make test` runs the subset in test_crash_rerun.py): the load SIGKILLed
at 1, 2, 3, 10 and 50 % of the month's writes, before Autotask processes the write and after it (the answer lost),
and at each step of the ledger that matters; with the proposed lines approved and with the flagged ones too; on
SQLite and on PostgreSQL. Each case runs the month again as a person does and compares Autotask with one clean run:
0 duplicate, 0 missing, 0 unexpected writes. Each case prints one CRASH {json} line (the README's figures).

Not named test_*.py, so `make test` does not collect it; `make test-crash` names it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.include.crash_support import KILL_POINTS, PROPOSED_ONLY, WITH_FLAGGED, Kill, crash_and_rerun
from tests.include.test_crash_rerun import expected_state, explain

SHARES = (0.01, 0.02, 0.03, 0.10, 0.50)
DATABASES = ("sqlite", "postgres")
APPROVALS = (PROPOSED_ONLY, WITH_FLAGGED)


def _database_url(request: pytest.FixtureRequest, database: str, tmp_path) -> str:
    return request.getfixturevalue("postgres_url") if database == "postgres" else f"sqlite:///{tmp_path / 'crash.db'}"


def _report(case: str, outcome) -> None:
    figures = {
        "case": case,
        "killed_at": outcome.killed_at,
        "month_writes": outcome.month_writes,
        "writes": outcome.writes,
        "duplicates": outcome.duplicates,
        "missing": outcome.missing,
        "unexpected": outcome.unexpected,
    }
    print("CRASH " + json.dumps(figures))


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("approval", APPROVALS)
@pytest.mark.parametrize("moment", ("before", "after"))
@pytest.mark.parametrize("share", SHARES)
def test_killed_at_a_share_of_the_month(
    request, autotask, admin, tmp_path, monkeypatch, database, approval, moment, share
):
    expected = expected_state(autotask, admin, approval, tmp_path, monkeypatch)
    kill = Kill(after_writes=max(1, round(expected[1] * share)), moment=moment)
    url = _database_url(request, database, tmp_path)
    outcome = crash_and_rerun(autotask, admin, url, approval, kill, expected, monkeypatch)
    _report(f"{share:.0%} {moment} {approval} {database}", outcome)
    assert outcome.clean, explain(outcome)


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("approval", APPROVALS)
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_at_a_step_of_the_ledger(request, autotask, admin, tmp_path, monkeypatch, database, approval, point):
    expected = expected_state(autotask, admin, approval, tmp_path, monkeypatch)
    kill = replace(KILL_POINTS[point], label=point)
    if point in ("before-the-request-is-processed", "after-the-request-before-the-answer"):
        kill = replace(kill, after_writes=max(1, expected[1] // 5))
    url = _database_url(request, database, tmp_path)
    outcome = crash_and_rerun(autotask, admin, url, approval, kill, expected, monkeypatch)
    _report(f"{point} {approval} {database}", outcome)
    assert outcome.clean, explain(outcome)
