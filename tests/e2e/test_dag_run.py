"""A real Airflow run of the monthly DAG (`airflow dags test`) against the sandboxes and a SQLite warehouse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from include.warehouse import Warehouse
from stacks.local_stack import airflow_environment
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


def test_a_dry_run_takes_a_month_to_a_validated_plan_and_reports_what_it_would_write(airflow_env) -> None:
    """`make run MONTH=… DRY_RUN=1` (scripts/run.py): the whole month up to the approval, then the report."""
    logs = airflow_env["work"] / "run-logs"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run.py"), "--month", MONTH, "--dry-run", "--log-dir", str(logs)],
        env=airflow_env["env"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    printed = result.stdout + result.stderr
    output = (logs / f"dag-run-{MONTH}.log").read_text()
    assert result.returncode == 0, printed[-3000:] + output[-6000:]
    assert ": success" in printed and "approval: dry_run" in printed and "run report:" in printed
    assert "failed" not in _final_states(output), output[-6000:]
    assert _dag_run_state(output) == "success"

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
    # A dry run asks nobody, approves nothing and writes nothing to Autotask (the sandbox's own counters)...
    assert warehouse.query("SELECT decision FROM month_approvals WHERE run_id = :r", {"r": run_id}) == [
        {"decision": "dry_run"}
    ]
    assert warehouse.scalar("SELECT COUNT(*) FROM plan_actions WHERE status = 'approved'") == 0
    assert warehouse.scalar("SELECT COUNT(*) FROM load_ledger") == 0
    stats = httpx.get(airflow_env["autotask"].url + "/_admin/stats", timeout=10).json()
    assert stats["writes"] == 0
    # ... and reports what it would write, next to the Data Docs
    assert list(docs[0].parent.glob("*.xlsx")) and len(list(docs[0].parent.glob("*.html"))) >= 2
    assert "dry run" in output.lower() and "Run report:" in output
    # Secrets never reach the logs of a real run.
    for secret in ("demo-password", "demo-client-secret", "demo-secret"):
        assert secret not in output


def _final_states(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "state=" in line or "Marking task" in line)


def test_bad_bss_data_fails_the_run_by_name_and_nothing_reaches_autotask(airflow_env) -> None:
    bad_month = "2026-11"
    bss, autotask = airflow_env["bss"], airflow_env["autotask"]
    from sandbox.dataset import build_universe

    victim = build_universe(customers=30, subscriptions_per_customer=3, seed=42).charges_for_month(bad_month)[5]
    broken = {**victim, "effectiveDate": "31/11/2026"}
    httpx.post(
        bss.url + "/_admin/overrides", json={"month": bad_month, "replace": {victim["id"]: broken}}, timeout=10
    ).raise_for_status()
    httpx.post(autotask.url + "/_admin/stats/reset", timeout=10).raise_for_status()
    try:
        result = run_dag(airflow_env["env"], {"month": bad_month})
    finally:
        httpx.post(bss.url + "/_admin/reset", timeout=10)
    output = result.stdout + result.stderr
    (airflow_env["work"] / "dag-run-bad.log").write_text(output)

    assert victim["id"] in output and "effectiveDate" in output
    assert _dag_run_state(output) == "failed"
    warehouse = Warehouse(f"sqlite:///{Path(airflow_env['work']) / 'warehouse.db'}")
    assert warehouse.scalar("SELECT COUNT(*) FROM charge_lines WHERE month = :m", {"m": bad_month}) == 0
    runs = warehouse.query("SELECT status FROM extract_runs WHERE month = :m", {"m": bad_month})
    assert [run["status"] for run in runs] == ["rejected"]
    # The run stopped at extract: Autotask was not even read, let alone written.
    stats = httpx.get(autotask.url + "/_admin/stats", timeout=10).json()
    assert stats["writes"] == 0 and stats["total"] == 0


def _dag_run_state(output: str) -> str:
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    assert finished, "the run never finished"
    return finished[-1].split(" state=", 1)[1].split(",", 1)[0].split()[0]
