"""`make run`'s logs go beside the Airflow home the run uses (or `BILLING_RUN_LOG_DIR`), never into the checkout
for everyone: two environments driven from one checkout keep their logs apart."""

from __future__ import annotations

from pathlib import Path

from scripts.run import LOG_DIR_SETTING, run_log_dir
from tests.servers import REPO_ROOT


def test_two_airflow_homes_from_one_checkout_never_share_a_log_folder(tmp_path: Path) -> None:
    staging = {"AIRFLOW_HOME": str(tmp_path / "staging" / "airflow")}
    production = {"AIRFLOW_HOME": str(tmp_path / "production" / "airflow")}
    first, second = run_log_dir("2026-10", staging), run_log_dir("2026-10", production)
    assert first == tmp_path / "staging" / "airflow" / "logs" / "billing-run" / "2026-10"
    assert second == tmp_path / "production" / "airflow" / "logs" / "billing-run" / "2026-10"
    assert not first.is_relative_to(second.parent) and not second.is_relative_to(first.parent)
    for folder in (first, second):
        assert not folder.is_relative_to(REPO_ROOT / "var")


def test_the_log_dir_setting_and_the_command_line_come_first(tmp_path: Path) -> None:
    env = {"AIRFLOW_HOME": str(tmp_path / "airflow"), LOG_DIR_SETTING: str(tmp_path / "billing-logs")}
    assert run_log_dir("2026-11", env) == tmp_path / "billing-logs" / "2026-11"
    assert run_log_dir("2026-11", env, tmp_path / "here") == tmp_path / "here"
    # an empty setting is no setting: the Airflow home's folder
    assert (
        run_log_dir("2026-11", {**env, LOG_DIR_SETTING: " "})
        == tmp_path / "airflow" / "logs" / "billing-run" / "2026-11"
    )


def test_the_default_airflow_home_keeps_its_logs_in_its_own_folder() -> None:
    home = REPO_ROOT / ".airflow"
    assert run_log_dir("2026-10", {"AIRFLOW_HOME": str(home)}) == home / "logs" / "billing-run" / "2026-10"
