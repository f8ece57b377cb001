"""`make run MONTH=YYYY-MM [DRY_RUN=1]`: run the monthly sync for real, against the connections in the environment.

Uses `AIRFLOW_CONN_BSS_DEFAULT`, `AIRFLOW_CONN_AUTOTASK_DEFAULT`, `AIRFLOW_CONN_BILLING_WAREHOUSE` and the
`BILLING_SYNC_*` settings as they are. Runs the DAG with `airflow dags test` on `$AIRFLOW_HOME` next to an
`airflow api-server` (so the approval can be answered in the UI or with `make approve`), prints the approval
summary and how to answer it, waits, and exits:

    0  approved, loaded and verified (or a dry run that finished)
    1  the run failed (the failing task's log says why; see the run log)
    2  rejected, or nobody answered within approval_timeout_hours

While the approval waits, the scheduler's timeout sweep runs every minute (`airflow dags test` has no
scheduler), so an unanswered approval times out as it would in a deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

from scripts.approve import (  # noqa: E402
    API_URL_FILE,
    DAG_ID,
    PASSWORDS_FILE,
    AirflowApi,
    ApprovalError,
    PendingApproval,
)
from stacks.launcher import RunningServer, start_server  # noqa: E402
from stacks.local_stack import local_auth_environment, migrate_metadata  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_REJECTED = 0, 1, 2
# The scheduler's own sweep that resolves timed-out approvals with their defaults (Reject).
_TIMEOUT_SWEEP = (
    "import logging, types\n"
    "from airflow.jobs.scheduler_job_runner import SchedulerJobRunner\n"
    "SchedulerJobRunner.check_awaiting_input_timeouts(types.SimpleNamespace(log=logging.getLogger('sweep')))\n"
)


def start_api_server(env: dict[str, str], log_dir: Path) -> RunningServer:
    """An `airflow api-server` on the run's metadata database (one worker), its address written for
    `make approve`."""
    server = start_server(
        ["airflow", "api-server", "--workers", "1"],
        env=env,
        health_path="/api/v2/monitor/health",
        timeout_s=240,
        log_dir=log_dir,
    )
    (Path(env["AIRFLOW_HOME"]) / API_URL_FILE).write_text(server.url)
    env["AIRFLOW_API_URL"] = server.url
    return server


def api_for(env: dict[str, str], user: str = "admin") -> AirflowApi:
    passwords = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
    return AirflowApi(env["AIRFLOW_API_URL"], user, passwords[user])


def migrate(env: dict[str, str], log_path: Path) -> None:
    try:
        migrate_metadata(env, log_path, timeout_s=None)  # a live metadata database may take long
    except RuntimeError as error:
        raise SystemExit(str(error)) from error


def start_dag_run(env: dict[str, str], conf: dict[str, Any], log_path: Path) -> subprocess.Popen:
    """`airflow dags test` of the monthly DAG in the background, its output in `log_path`."""
    command = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "-c", json.dumps(conf)]
    log = log_path.open("w")
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def sweep_approval_timeouts(env: dict[str, str]) -> None:
    """Resolve approvals whose response timeout passed with their default (Reject), as the scheduler does."""
    subprocess.run(
        [sys.executable, "-c", _TIMEOUT_SWEEP], env=env, cwd=REPO_ROOT, capture_output=True, timeout=300, check=False
    )


def wait_for_approval(
    api: AirflowApi, month: str, running: Callable[[], bool], timeout_s: float = 1800
) -> PendingApproval | None:
    """The month's pending approval once the run asks for it; None when the run ended without asking."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and running():
        try:
            pending = [approval for approval in api.pending_approvals() if approval.month == month]
        except ApprovalError:
            pending = []
        if pending:
            return pending[0]
        time.sleep(2)
    return None


def latest_run_id(api: AirflowApi) -> str | None:
    runs = api.client.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"order_by": "-run_after", "limit": 1}).json()
    return runs["dag_runs"][0]["dag_run_id"] if runs.get("dag_runs") else None


def outcome(api: AirflowApi, run_id: str) -> dict[str, Any]:
    """The run's state, its recorded approval and its report (from the tasks' results)."""
    state = api.dag_run(DAG_ID, run_id)["state"]
    return {
        "run_id": run_id,
        "state": state,
        "decision": api.xcom(DAG_ID, run_id, "approve") or {},
        "report": api.xcom(DAG_ID, run_id, "report") or {},
        "load": api.xcom(DAG_ID, run_id, "load") or {},
    }


def exit_code(result: dict[str, Any]) -> int:
    if result["state"] != "success":
        return EXIT_FAILED
    if result["decision"].get("decision") in ("rejected", "timed_out"):
        return EXIT_REJECTED
    return EXIT_OK


def print_approval(approval: PendingApproval, api_url: str) -> None:
    print()
    print(approval.body)
    print()
    print(f"The run waits for your answer. Answer in the Airflow UI ({api_url}, Browse → Required Actions),")
    print("or from another terminal:")
    print(f"    make approve MONTH={approval.month} BY=admin                    # approve the proposed actions")
    print(f"    make approve MONTH={approval.month} BY=admin INCLUDE_FLAGGED=1  # approve the flagged actions too")
    print(f"    make approve MONTH={approval.month} BY=admin REJECT=1           # load nothing")
    print("  (BY is the Airflow user you answer as: yours, from your own login file", end=" ")
    print(f"$AIRFLOW_HOME/{PASSWORDS_FILE}, AIRFLOW_API_TOKEN or AIRFLOW_API_PASSWORD)", flush=True)


def run_month(
    month: str,
    env: dict[str, str],
    log_dir: Path,
    conf: dict[str, Any] | None = None,
    on_approval: Callable[[PendingApproval], None] | None = None,
    sweep_every_s: float = 60.0,
) -> dict[str, Any]:
    """Run the month's DAG with a local api-server; `on_approval` is called once the approval waits (print
    it, or answer it). Returns the outcome (see `outcome`), with `log_path`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env.update(local_auth_environment(Path(env["AIRFLOW_HOME"])))
    migrate(env, log_dir / "airflow-db-migrate.log")
    server = start_api_server(env, log_dir)
    log_path = log_dir / f"dag-run-{month}.log"
    try:
        api = api_for(env)
        process = start_dag_run(env, {"month": month, **(conf or {})}, log_path)
        try:
            approval = wait_for_approval(api, month, lambda: process.poll() is None)
            if approval is not None:  # `airflow dags test` names the run by its date: the note names the month
                with contextlib.suppress(ApprovalError):
                    api.set_note(DAG_ID, approval.run_id, f"Billing month {month}: waiting for approval")
            if approval is not None and on_approval is not None:
                threading.Thread(target=on_approval, args=(approval,), daemon=True).start()
            last_sweep = time.monotonic()
            while process.poll() is None:
                time.sleep(1)
                if approval is not None and time.monotonic() - last_sweep >= sweep_every_s:
                    sweep_approval_timeouts(env)
                    last_sweep = time.monotonic()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        run_id = approval.run_id if approval is not None else latest_run_id(api)
        result = outcome(api, run_id) if run_id else {"run_id": None, "state": "failed", "decision": {}}
        note = (result.get("report") or {}).get("note")
        if run_id and note:
            api.set_note(DAG_ID, run_id, note)
        result["log_path"] = str(log_path)
        result["returncode"] = process.returncode
        return result
    finally:
        server.stop()


# Where a run's logs go when --log-dir is not given: this setting's <month>/ folder, else the Airflow home's.
LOG_DIR_SETTING = "BILLING_RUN_LOG_DIR"


def run_log_dir(month: str, env: dict[str, str], override: Path | None = None) -> Path:
    """The folder of `make run`'s logs for `month`: `--log-dir`, else `$BILLING_RUN_LOG_DIR/<month>/`, else
    `$AIRFLOW_HOME/logs/billing-run/<month>/` beside the Airflow home the run uses (never inside the checkout
    unless the Airflow home is): two environments driven from one checkout keep their logs apart."""
    if override is not None:
        return override
    configured = (env.get(LOG_DIR_SETTING) or "").strip()
    if configured:
        return Path(configured).expanduser() / month
    return Path(env["AIRFLOW_HOME"]).expanduser() / "logs" / "billing-run" / month


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", required=True, help="billing month YYYY-MM")
    parser.add_argument("--dry-run", action="store_true", help="report what would be written; write nothing")
    parser.add_argument(
        "--log-dir",
        type=Path,
        help=f"where the run's logs go (default ${LOG_DIR_SETTING}/<month>, else "
        "$AIRFLOW_HOME/logs/billing-run/<month>)",
    )
    args = parser.parse_args(argv)
    from include.models import BillingMonth

    month = BillingMonth.parse(args.month).key
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(REPO_ROOT / ".airflow"))
    log_dir = run_log_dir(month, env, args.log_dir)
    conf = {"dry_run": True} if args.dry_run else {}
    print(f"==> running {DAG_ID} for {month}{' (dry run)' if args.dry_run else ''}; log: {log_dir}", flush=True)
    result = run_month(
        month, env, log_dir, conf, on_approval=lambda approval: print_approval(approval, env["AIRFLOW_API_URL"])
    )
    decision, report = result.get("decision") or {}, result.get("report") or {}
    print()
    print(f"run {result['run_id']}: {result['state']}")
    if decision:
        print(f"approval: {decision.get('decision')} ({decision.get('note')})")
    if report:
        print(f"run report: {report.get('html_path')} and {report.get('xlsx_path')}")
    print(f"run log: {result['log_path']}")
    code = exit_code(result)
    if code == EXIT_REJECTED:
        print(f"{month} was not approved: nothing was loaded.")
    elif code == EXIT_FAILED:
        print(f"{month} did not finish: see the run log for the failing task.")
    return code


if __name__ == "__main__":
    sys.exit(main())
