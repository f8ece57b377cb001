"""The DAG folder imports cleanly and the monthly sync DAG is shaped as specified."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert all(task.retries >= 0 for task in dag.tasks)
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


def test_dag_files_do_no_heavy_work_at_parse_time() -> None:
    source = (DAGS_FOLDER / f"{DAG_ID}.py").read_text()
    header = source.split("def bss_autotask_billing_sync", 1)[0]
    for heavy in ("import pandas", "great_expectations", "sqlalchemy", "from include", "from connectors"):
        assert heavy not in header, f"{heavy} imported at module level of the DAG file"
