"""`make ui`: a working local Airflow on the demo's sandboxes and warehouse, with a month waiting for review.

Starts the BSS and Autotask sandboxes (the Autotask state `make demo` left in var/demo), then an Airflow
api-server, scheduler, dag-processor and triggerer on the project's Airflow home (`.airflow`, LocalExecutor),
with fixed logins. Prints the URL and the login, then triggers the month after the demo's (unless a run of
it exists already) and waits until it asks for approval (Browse → Required Actions). Runs triggered in the
UI execute and their task logs are readable. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from types import FrameType
from urllib.parse import quote

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

from stacks.airflow_stack import DAG_ID, PASSWORDS_FILE, LocalAirflow, StackError, StackSettings  # noqa: E402

APPROVAL_TASK = "approve"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8080), help="api-server port")
    parser.add_argument("--month", help="the month to trigger (YYYY-MM; default: the month after the demo's)")
    parser.add_argument("--no-trigger", action="store_true", help="start Airflow only; trigger nothing")
    parser.add_argument(
        "--state-dir", type=Path, default=REPO_ROOT / "var", help="where the demo's state is (demo/) and logs go (ui/)"
    )
    args = parser.parse_args(argv)
    demo_dir, log_dir = args.state_dir / "demo", args.state_dir / "ui"
    from include.models import BillingMonth

    if args.month:
        try:
            args.month = BillingMonth.parse(args.month).key
        except ValueError as error:
            print(f"make ui: {error}", file=sys.stderr)
            return 64
    warehouse_path = demo_dir / "warehouse.db"
    loaded_month = last_loaded_month(warehouse_path)
    if loaded_month is None and not args.no_trigger and not args.month and demo_dir != REPO_ROOT / "var" / "demo":
        step(f"no demo found in {demo_dir}: nothing to trigger (run `make demo` for the project's own state)")
    elif loaded_month is None and not args.no_trigger and not args.month:
        step("no demo found in var/demo: running `make demo` first (about a minute), so there is a month to build on")
        if subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "demo.py")], cwd=REPO_ROOT).returncode:
            print("make ui: `make demo` failed; see var/demo/dag-run.log", file=sys.stderr)
            return 1
        loaded_month = last_loaded_month(warehouse_path)
    month = args.month or (BillingMonth.parse(loaded_month).next().key if loaded_month else None)

    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or REPO_ROOT / ".airflow")
    settings = StackSettings(
        airflow_home=airflow_home,
        warehouse_path=warehouse_path,
        data_docs_dir=args.state_dir / "data_docs",
        autotask_state_file=demo_dir / "autotask-state.json",
        log_dir=log_dir,
        port=args.port,
    )
    _stop_on_signals()
    stack = LocalAirflow(settings)
    try:
        step(f"starting the sandboxes and Airflow (api-server, scheduler, dag-processor, triggerer) on {airflow_home}")
        step(f"logs: {log_dir}/ (about a minute until everything is up)")
        started = time.monotonic()
        stack.start()
        step(f"Airflow is up after {time.monotonic() - started:.0f}s")
        print_login(stack)
        if month and not args.no_trigger:
            prepare_review(stack, month, loaded_month)
        print("\nPress Ctrl-C to stop everything `make ui` started.", flush=True)
        while True:
            time.sleep(2)
            for component in stack.components:
                if not component.alive():
                    code = component.process.returncode
                    raise StackError(f"airflow {component.name} stopped ({code}); see {component.log_path}")
    except KeyboardInterrupt:
        print()
        step("stopping (Ctrl-C)")
        return 0
    except StackError as error:
        print(f"make ui: {error}", file=sys.stderr)
        return 1
    finally:
        started = bool(stack.started_pids)
        stack.stop()
        if started:
            step("stopped: api-server, scheduler, dag-processor, triggerer and both sandboxes")


def print_login(stack: LocalAirflow) -> None:
    print()
    print(f"    Airflow UI:  {stack.url.replace('127.0.0.1', 'localhost')}")
    print(f"    login:       admin / {stack.admin_password}")
    print(f"    (also `finance`; passwords in {stack.settings.airflow_home / PASSWORDS_FILE}, yours alone)")
    print(flush=True)


def prepare_review(stack: LocalAirflow, month: str, loaded_month: str | None) -> None:
    """Make sure a month waits for review: a run still open (from an earlier `make ui`) is shown as it is;
    otherwise `month` is triggered unless it already ran. Then wait until the run asks for approval."""
    with closing(stack.client()) as client:
        stack.wait_for_dag(client)
        client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        open_runs = stack.open_runs(client)
        finished = [run for run in stack.runs_of_month(client, month) if run["state"] == "success"]
        if open_runs:
            run = open_runs[-1]
            month = (run.get("conf") or {}).get("month") or month
            run_id = run["dag_run_id"]
            step(f"{month} has a run open already ({run_id}, {run['state']}): not triggering another")
        elif finished:
            step(f"{month} ran already ({finished[0]['dag_run_id']}): trigger another month in the UI (Trigger)")
            return
        else:
            after = f", the month after the last loaded one ({loaded_month})" if loaded_month else ""
            run_id = stack.trigger_month(client, month)
            step(f"triggered {month}{after}: run {run_id}")
        step(f"waiting until {month} asks for approval (extract, checks, snapshot, mapping, plan: a minute or two)")
        try:
            stack.wait_for_task_state(client, run_id, APPROVAL_TASK, ("awaiting_input", "success", "skipped"))
        except (StackError, httpx.HTTPError) as error:
            step(f"{month} did not reach the approval: {error}")
            return
        print_review(stack, month, run_id)


def print_review(stack: LocalAirflow, month: str, run_id: str) -> None:
    counts = review_counts(stack.settings.warehouse_path, month, run_id)
    url = stack.url.replace("127.0.0.1", "localhost")
    print()
    print(f"{month} waits for your review (run {run_id}):")
    for label, key in (
        ("proposed actions", "proposed"),
        ("flagged actions (read their reasons; approve them or not)", "flagged"),
        ("actions that need a mapping", "needs-mapping"),
        ("open mapping suggestions to confirm or reject", "suggestions"),
    ):
        print(f"    {counts.get(key, 0):>5}  {label}")
    run_path = f"{url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
    print(f"  Review:  {run_path}/plugin/billing_review  (the run's Billing review tab)")
    print(f"  Approve: {url}/required_actions  (Browse → Required Actions), or `make approve MONTH={month} BY=admin`")
    print(f"  Months:  {url}/plugin/billing_months  (Browse → Billing months)")
    for earlier in earlier_open_months(stack.settings.warehouse_path, month):
        print(f"  Still open in {earlier}: see its review under Billing months before invoicing it")
    print(flush=True)


def earlier_open_months(warehouse_path: Path, month: str) -> list[str]:
    """The months before `month` whose latest run was approved but left lines open, in words:
    "2026-10: 74 lines (12 flagged, 60 needs-mapping, 2 blocked)"."""
    from include.review import months_with_open_lines
    from include.warehouse import Warehouse

    if not warehouse_path.exists():
        return []
    warehouse = Warehouse(f"sqlite:///{warehouse_path}")
    try:
        found = []
        for row in months_with_open_lines(warehouse, before=month):
            run = row["latest"]
            open_counts = ", ".join(
                f"{count} {status}"
                for status, count in run["by_status"].items()
                if status in ("proposed", "flagged", "needs-mapping", "blocked")
            )
            found.append(f"{row['month']}: {run['open_lines']} lines ({open_counts}), {row['status']}")
        return found
    finally:
        warehouse.dispose()


def review_counts(warehouse_path: Path, month: str, run_id: str) -> dict[str, int]:
    """How many plan actions of the run wait in each status, and the open mapping suggestions of the run's sources."""
    import sqlite3

    with sqlite3.connect(f"file:{warehouse_path}?mode=ro", uri=True) as conn:
        counts = dict(
            conn.execute(
                "SELECT status, COUNT(*) FROM plan_actions WHERE month = ? AND run_id = ? GROUP BY status",
                (month, run_id),
            ).fetchall()
        )
        # the run's own: open suggestions for a source of this run's month (what its review page shows), not the
        # open ones other months' sources left in the warehouse
        counts["suggestions"] = conn.execute(
            "SELECT COUNT(*) FROM mapping_suggestions s WHERE s.status = 'open' AND EXISTS (SELECT 1 FROM month_links m"
            " WHERE m.run_id = ? AND m.kind = s.kind AND m.source_key = s.source_key)",
            (run_id,),
        ).fetchone()[0]
    return counts


def last_loaded_month(warehouse_path: Path) -> str | None:
    """The latest month approved (and so loaded) in the demo's warehouse; None without a demo."""
    import sqlite3

    if not warehouse_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{warehouse_path}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT MAX(month) FROM month_approvals WHERE decision IN ('approved', 'approved_with_flagged')"
            ).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row and row[0] else None


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP stop the stack; the first one counts, later ones (make forwards
    Ctrl-C too, impatient people press it twice) are ignored so that the cleanup is never cut short."""
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for each in stop_signals:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt

    for each in stop_signals:
        signal.signal(each, interrupt)


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
