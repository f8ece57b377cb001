"""The DAG folder imports cleanly and the monthly sync DAG is shaped as specified."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bss_sources import ListSource

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "bss_autotask_billing_sync"


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_no_import_errors(dag_bag) -> None:
    assert dag_bag.import_errors == {}
    assert DAG_ID in dag_bag.dags


def test_schedule_and_run_policy(dag_bag) -> None:
    dag = dag_bag.dags[DAG_ID]
    assert dag.timetable.expression in {"@monthly", "0 0 1 * *"}
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "BSS" in dag.doc_md
    # every step retries a transient failure, except the checks (a failed check is a verdict) and the person's
    # answer (never asked twice)
    assert {task.task_id for task in dag.tasks if not task.retries} == {"validate_charges", "validate_plan", "approve"}
    assert dag.default_args["retries"] >= 1


def test_month_param_validates_the_format(dag_bag) -> None:
    from airflow.sdk.definitions.param import Param

    param = dag_bag.dags[DAG_ID].params.get_param("month")
    assert isinstance(param, Param)
    assert param.resolve("2026-10") == "2026-10"
    assert param.resolve(None) is None
    for bad in ("2026-13", "2026-1", "October", "2026-10-01"):
        with pytest.raises(Exception, match=r"does not match|Invalid|invalid"):
            Param(param.value, **param.schema).resolve(bad)


def test_the_flow_starts_with_extract_then_validation(dag_bag) -> None:
    dag = dag_bag.dags[DAG_ID]
    extract = dag.get_task("extract")
    assert "resolve_month" in extract.upstream_task_ids
    assert "validate_charges" in extract.downstream_task_ids


def modules_imported_by_parsing(dag_file: Path) -> set[str]:
    """The modules a fresh interpreter has imported after importing only the DAG file (what parsing costs)."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('parsed_dag', {str(dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    root = DAGS_FOLDER.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'plugins'}"}  # as Airflow's sys.path has them
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True, env=env
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_dag_files_do_no_heavy_work_at_parse_time() -> None:
    """Parsing imports no pandas, no Great Expectations, none of the product's logic: only its names, its settings
    (the audit's schedule day), the close-wait operator and the alert notifiers, which import Airflow's own bases."""
    light = {"include", "include.identifiers", "include.sync_settings", "include.models", "include.month_close"}
    light |= {"include.month_input"}
    light |= {"include.alerts", "include.prices"}  # the price policy setting: standard library only
    for dag_file in sorted(DAGS_FOLDER.glob("bss_autotask_*.py")):
        modules = modules_imported_by_parsing(dag_file)
        assert not {"pandas", "great_expectations", "connectors"} & modules, dag_file.name
        assert {name for name in modules if name.startswith("include")} <= light, dag_file.name


def test_reads_retry_and_checks_fail_at_once(dag_bag) -> None:
    dag = dag_bag.dags[DAG_ID]
    for reading in ("extract", "snapshot_autotask"):
        assert dag.get_task(reading).retries >= 1, reading
    for check in ("validate_charges", "validate_plan"):
        assert dag.get_task(check).retries == 0, check


# --- each run reads its own inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["link_records", "reconcile"])
def test_rerunning_an_older_runs_step_after_a_newer_extract_fails_and_changes_nothing(
    dag_bag, step: str, warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime

    from airflow.sdk.exceptions import AirflowFailException

    from include.extract import extract_month
    from sandbox.dataset import build_universe

    month, older, newer = "2026-10", "scheduled__2026-11-01T00:00:00+00:00", "manual__2026-11-03T08:00:00+00:00"
    records = build_universe(customers=5, subscriptions_per_customer=2, seed=3).charges_for_month(month)
    extract_month(ListSource(records), warehouse, month, older)
    extract_month(ListSource(records), warehouse, month, newer)
    newer_plan = {
        "action_id": "a-newer-1",
        "idempotency_key": f"{month}|adjust_units|1",
        "month": month,
        "run_id": newer,
        "seq": 1,
        "kind": "adjust_units",
        "status": "proposed",
        "payload": "{}",
        "charge_ids": "[]",
        "depends_on": "[]",
        "created_at": datetime(2026, 11, 3, 8, 5),
    }
    newer_link = {
        "run_id": newer,
        "month": month,
        "kind": "company",
        "source_key": records[0]["account"]["id"],
        "target_id": 31,
        "resolution": "name",
        "suggestions": 0,
    }
    with warehouse.begin() as conn:
        warehouse.insert(conn, "plan_actions", [newer_plan])
        warehouse.insert(conn, "month_links", [newer_link])
    monkeypatch.setenv("BILLING_WAREHOUSE_URL", warehouse.engine.url.render_as_string(hide_password=False))

    older_step = dag_bag.dags[DAG_ID].get_task(step).python_callable
    with pytest.raises(AirflowFailException, match="re-run it from its extract task") as stopped:
        older_step(month, {"run_id": older})
    assert newer in str(stopped.value)
    assert warehouse.query("SELECT action_id, run_id FROM plan_actions") == [
        {"action_id": "a-newer-1", "run_id": newer}
    ]
    assert warehouse.query("SELECT run_id, source_key FROM month_links") == [
        {"run_id": newer, "source_key": records[0]["account"]["id"]}
    ]
    assert warehouse.scalar("SELECT COUNT(DISTINCT run_id) FROM charge_lines") == 1


# --- approve → load → verify → report ----------------------------------------------------------------------


def test_the_month_is_approved_after_validation_then_loaded_verified_and_reported(dag_bag) -> None:
    dag = dag_bag.dags[DAG_ID]
    assert dag.get_task("approve").upstream_task_ids == {"validate_plan"}
    assert dag.get_task("load_share").upstream_task_ids == {"approve"}
    assert dag.get_task("load").upstream_task_ids == {"load_share"}
    assert dag.get_task("verify").upstream_task_ids == {"load", "resolve_month"}
    assert dag.get_task("report").upstream_task_ids == {"verify", "resolve_month"}
    # a rejected month skips load and verify; its report is still written (and nothing failed)
    assert dag.get_task("report").trigger_rule == "none_failed"
    assert dag.get_task("verify").trigger_rule == "all_success"


def test_the_approval_form_offers_the_three_answers_and_rejects_on_timeout(dag_bag) -> None:
    from datetime import timedelta

    from airflow.providers.standard.operators.hitl import HITLOperator

    from include.approval import OPTION_REJECT, OPTIONS
    from include.identifiers import FORM_FINGERPRINT_PARAM

    approve = dag_bag.dags[DAG_ID].get_task("approve")
    assert isinstance(approve, HITLOperator)
    # the form's own field binds an answer to the figures it showed
    assert list(approve.params) == [FORM_FINGERPRINT_PARAM]
    assert approve.options == OPTIONS and approve.defaults == [OPTION_REJECT] and approve.multiple is False
    assert approve.response_timeout == timedelta(days=7)
    # the answer is a person's: never asked twice by a retry
    assert approve.retries == 0
    # a crashed load is retried: the ledger asks Autotask about writes of unknown outcome before resending
    assert dag_bag.dags[DAG_ID].get_task("load").retries >= 1
    assert dag_bag.dags[DAG_ID].get_task("load_share").retries >= 1


def test_dry_run_is_a_param_that_defaults_to_off(dag_bag) -> None:
    param = dag_bag.dags[DAG_ID].params.get_param("dry_run")
    assert param.value is False and param.resolve() is False
    assert param.resolve(True) is True
