"""A load SIGKILLed early, then the month run again as a person does (a new run, approved again): Autotask ends
exactly as one clean run leaves it — nothing twice, nothing lost, no write beyond the month's own.

The representative subset of the crash matrix (`make test-crash` runs it all: tests/include/test_crash_matrix.py).
"""

from __future__ import annotations

import pytest

from include.warehouse import Warehouse
from tests.include.crash_support import (
    PROPOSED_ONLY,
    WITH_FLAGGED,
    Kill,
    clean_run,
    compare,
    load_in_process,
    load_killed,
    plan_and_approve,
)
from tests.include.loader_support import make_hook

_EXPECTED: dict[str, tuple] = {}


def expected_state(autotask, admin, approval: str, tmp_path, monkeypatch) -> tuple:
    """One clean run's final Autotask state and write count (once per approval kind and sandbox)."""
    key = f"{autotask.url}|{approval}"
    if key not in _EXPECTED:
        warehouse = Warehouse(f"sqlite:///{tmp_path / 'clean.db'}")
        warehouse.migrate()
        _EXPECTED[key] = clean_run(autotask, admin, warehouse, approval, monkeypatch)
    return _EXPECTED[key]


def crash_and_rerun(autotask, admin, database_url: str, approval: str, kill: Kill, expected, monkeypatch):
    admin.reset()
    warehouse = Warehouse(database_url)
    warehouse.migrate()
    hook = make_hook(autotask, monkeypatch)
    plan_and_approve(hook, warehouse, "run-1", approval)
    killed_at = load_killed(autotask, admin, database_url, "run-1", kill)
    assert killed_at < expected[1], "the kill came after the month's last write: it proved nothing"
    # the person sees the run fail and runs the month again: a new run, approved the same way
    plan_and_approve(hook, warehouse, "run-2", approval)
    summary = load_in_process(hook, warehouse, "run-2")
    assert summary.status == "succeeded" and summary.failed == 0, summary.failures or summary.waits
    again = load_in_process(hook, warehouse, "run-2")  # a retry of the load writes nothing
    assert again.write_requests == 0
    return compare(admin, killed_at, expected)


@pytest.mark.parametrize("approval", [PROPOSED_ONLY, WITH_FLAGGED])
@pytest.mark.parametrize("share", [0.01, 0.03, 0.5])
def test_a_load_killed_then_run_again_writes_every_change_exactly_once(
    autotask, admin, tmp_path, monkeypatch, approval, share
):
    expected = expected_state(autotask, admin, approval, tmp_path, monkeypatch)
    kill = Kill(after_writes=max(1, round(expected[1] * share)), moment="after")
    outcome = crash_and_rerun(
        autotask, admin, f"sqlite:///{tmp_path / 'crash.db'}", approval, kill, expected, monkeypatch
    )
    assert outcome.clean, "\n".join(f"{k} {v}" for k, v in outcome.differences.items())
