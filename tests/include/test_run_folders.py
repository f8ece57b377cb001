"""A run's folder (Data Docs and report): a reversible, collision-free encoding of its id, so no run writes into
another run's folder, whatever ids people trigger runs with."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.quality import data_docs_dir, run_folder_name, run_id_of_folder

REAL = "manual__2026-12-07T17:47:48.743912+00:00"
CRAFTED = "manual__2026-12-07T17_47_48.743912_00_00"  # what the real id's folder used to be called


def test_a_crafted_id_that_looks_like_another_runs_old_folder_gets_a_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_DATA_DOCS_DIR", str(tmp_path))
    real, crafted = data_docs_dir("2026-12", REAL), data_docs_dir("2026-12", CRAFTED)
    assert real != crafted and real.parent == crafted.parent == tmp_path / "2026-12"
    assert real.name == "manual__2026-12-07T17~3A47~3A48.743912~2B00~3A00" and crafted.name == CRAFTED
    assert (run_id_of_folder(real.name), run_id_of_folder(crafted.name)) == (REAL, CRAFTED)


@pytest.mark.parametrize("run_id", ["..", ".", ".hidden", "a/../../b", "a\\b", "x\x00y", "~7E", "", "Zoë ✓", " "])
def test_no_id_escapes_the_months_folder_or_hides_in_it(run_id: str) -> None:
    name = run_folder_name(run_id)
    assert name not in (".", "..") and not name.startswith(".") and name
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name.encode()) <= 255
    assert run_id_of_folder(name) == (run_id or None)


@given(st.text(max_size=300), st.text(max_size=300))
def test_two_ids_never_share_a_folder_and_every_short_name_reads_back(first: str, second: str) -> None:
    if first != second:
        assert run_folder_name(first) != run_folder_name(second)
    name = run_folder_name(first)
    assert len(name) <= 180 and set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-~")
    assert run_id_of_folder(name) in (first, None) and (run_id_of_folder(name) is None) == ("~~" in name or not first)
