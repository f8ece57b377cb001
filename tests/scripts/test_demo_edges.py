"""`make demo`'s edges: a badly written MONTH fails at once, before anything starts; summaries end on a word."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from scripts.demo import DEMO_DIR, _readable, clip
from tests.servers import REPO_ROOT


@pytest.mark.parametrize("month", ["2026-13", "Oct 2026", "2026-1", ""])
def test_a_badly_written_month_fails_at_once_showing_the_expected_form(month: str) -> None:
    log = DEMO_DIR / "dag-run.log"
    before = log.stat().st_mtime_ns if log.exists() else None
    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "demo", f"MONTH={month}"] if month else ["make", "demo", "MONTH= "],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DEMO_MONTH": "not-a-month"},
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "MONTH must look like YYYY-MM, e.g. MONTH=2026-10" in result.stderr, result.stderr
    assert repr(month.strip() or "not-a-month") in result.stderr
    # nothing started: no sandbox, no Airflow (those take seconds), and the last good run's log is untouched
    assert "starting" not in result.stdout and elapsed < 15
    assert (log.stat().st_mtime_ns if log.exists() else None) == before


def test_long_task_summaries_are_cut_at_a_word_and_say_so() -> None:
    words = [f"contract-{number}" for number in range(60)]
    text = " ".join(words)
    clipped = clip(text, 120)
    assert len(clipped) <= 120 and clipped.endswith("…")
    kept = clipped.removesuffix("…").split(" ")
    assert kept == words[: len(kept)]  # every word whole, in order
    assert clip("short and whole") == "short and whole"


def test_a_log_line_becomes_level_and_message_without_a_cut_word() -> None:
    message = "reconcile run-1 for 2026-10: " + ", ".join(f"'kind_{n}': {n}" for n in range(40))
    line = f"2026-12-01T00:51:05.195538Z [info     ] {message} [include.reconcile] loc=reconcile.py:10\n"
    shown = _readable(line, "reconcile")
    assert shown.startswith("info    reconcile run-1 for 2026-10:") and shown.endswith("…") and len(shown) <= 240
    kept = shown.removeprefix("info    ").removesuffix("…")
    assert message.startswith(kept)
    assert message[len(kept)] == ","  # cut between two items: every "'kind_n': n" shown is whole
