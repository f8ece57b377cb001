"""A real Airflow run of the monthly DAG (`airflow dags test`) against the sandboxes and a SQLite warehouse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from include.warehouse import Warehouse
from sandbox.local_stack import airflow_environment
from tests.servers import REPO_ROOT, start_server

pytestmark = pytest.mark.e2e
DAG_ID = "bss_autotask_billing_sync"
MONTH = "2026-10"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory):
    """Sandboxes up, a migrated Airflow home, and the environment a task process needs."""
    home = tmp_path_factory.mktemp("airflow-home")
    work = tmp_path_factory.mktemp("e2e")
    bss = start_server(["sandbox.bss_server", "--customers", "30"])
    autotask = start_server(
        ["sandbox.autotask_server", "--seed-customers", "30", "--state-file", str(work / "autotask.json")]
    )
    env = airflow_environment(home, bss.url, autotask.url, work / "warehouse.db", work / "data_docs")
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    yield {"env": env, "work": work, "bss": bss, "autotask": autotask}
    bss.stop()
    autotask.stop()


def run_dag(env: dict[str, str], conf: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_dag_takes_a_month_from_extract_to_a_validated_plan(airflow_env) -> None:
    result = run_dag(airflow_env["env"], {"month": MONTH})
    output = result.stdout + result.stderr
    (airflow_env["work"] / "dag-run.log").write_text(output)
    assert result.returncode == 0, output[-6000:]
    assert "failed" not in _final_states(output), output[-6000:]

    warehouse = Warehouse(f"sqlite:///{Path(airflow_env['work']) / 'warehouse.db'}")
    runs = warehouse.query("SELECT run_id, status, line_count FROM extract_runs WHERE month = :m", {"m": MONTH})
    assert len(runs) == 1 and runs[0]["status"] == "succeeded" and runs[0]["line_count"] > 0
    assert warehouse.scalar("SELECT COUNT(*) FROM charge_lines WHERE month = :m", {"m": MONTH}) == runs[0]["line_count"]
    run_id = runs[0]["run_id"]
    # Every stage left its mark for this run: the snapshot, the links, the plan, the quality results.
    assert warehouse.scalar("SELECT COUNT(*) FROM at_snapshots WHERE run_id = :r", {"r": run_id}) == 1
    assert warehouse.scalar("SELECT COUNT(*) FROM month_links WHERE run_id = :r", {"r": run_id}) > 0
    assert warehouse.scalar("SELECT COUNT(*) FROM plan_actions WHERE run_id = :r", {"r": run_id}) > 0
    assert warehouse.scalar("SELECT COUNT(*) FROM quality_results WHERE run_id = :r", {"r": run_id}) >= 2
    docs = list((Path(airflow_env["work"]) / "data_docs" / MONTH).glob("*/index.html"))
    assert len(docs) == 1 and "charge" in docs[0].read_text().lower()
    # Nothing was written to Autotask: the plan waits for review.
    stats = httpx.get(airflow_env["autotask"].url + "/_admin/stats", timeout=10).json()
    assert stats["writes"] == 0
    # Secrets never reach the logs of a real run.
    for secret in ("demo-password", "demo-client-secret", "demo-secret"):
        assert secret not in output


def _final_states(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "state=" in line or "Marking task" in line)
