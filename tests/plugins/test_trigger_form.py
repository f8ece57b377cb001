"""The billing DAG's trigger form through a real `airflow api-server` with the billing plugin (the DAGs serialized
into its metadata database, as the dag-processor does): what Airflow's "Trigger" dialog sends and shows."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from include.month_input import default_month
from tests.plugins.review_support import DAG_ID, airflow_env, start_api_server, stop_group, token
from tests.servers import REPO_ROOT


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("trigger-form")
    env = airflow_env(work / "airflow", work / "warehouse.db", work / "data_docs")
    env.pop("BILLING_MONTH_OFFSET", None)
    server = start_api_server(env, work)
    try:
        subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "reserialize"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=300,
        )
        admin = token(server.url, "admin")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=60) as client:
            yield {"url": server.url, "admin": client}
    finally:
        stop_group(server)


def trigger(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, **body})


@pytest.mark.parametrize(
    ("typed", "hint"), [("2026-13", "months run from 01 to 12"), ("Nov 2026", "Did you mean 2026-11?")]
)
def test_a_wrong_month_is_refused_in_words_not_with_a_json_schema_dump(airflow: dict, typed: str, hint: str) -> None:
    answer = trigger(airflow["admin"], conf={"month": typed})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith(f'Billing month: "{typed}" is not a month') and hint in detail and "YYYY-MM" in detail
    assert "schema" not in detail and "pattern" not in detail and "\\d" not in detail
    runs = airflow["admin"].get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()
    assert runs["total_entries"] == 0
    # without a login Airflow answers as ever
    anonymous = httpx.post(f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns", json={"conf": {"month": typed}})
    assert anonymous.status_code == 401


def test_an_empty_month_bills_the_last_closed_month_and_the_run_is_named_after_it(airflow: dict) -> None:
    before = datetime.now(UTC)
    answer = trigger(airflow["admin"], conf={"month": None, "dry_run": False})
    assert answer.status_code == 200, answer.text
    run = answer.json()
    expected = default_month(before).key
    assert expected < f"{before:%Y-%m}"  # the month that ended, never the running one
    assert run["conf"]["month"] == expected
    assert run["dag_run_id"].startswith(f"{expected}__manual__")
    assert run["note"] == f"Billing month {expected}"
    listed = airflow["admin"].get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
    assert [entry["dag_run_id"] for entry in listed] == [run["dag_run_id"]]
    # a month and a run id given by the person stay theirs
    given = trigger(airflow["admin"], dag_run_id="month-2026-10-again", conf={"month": "2026-10"})
    assert given.status_code == 200, given.text
    assert given.json()["dag_run_id"] == "month-2026-10-again" and given.json()["conf"]["month"] == "2026-10"


def test_the_form_marks_the_month_and_dry_run_optional_and_says_what_an_empty_month_bills(airflow: dict) -> None:
    details = airflow["admin"].get(f"/api/v2/dags/{DAG_ID}/details").json()
    params = details["params"]
    # Airflow's form marks a field required when its type does not allow null
    assert "null" in params["dry_run"]["schema"]["type"] and "null" in params["month"]["schema"]["type"]
    assert "last closed month" in params["month"]["description"]
