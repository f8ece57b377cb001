"""`make demo`: run the monthly BSS → Autotask sync for one month on embedded defaults.

Starts the two local sandboxes (BSS and Autotask), prepares a project-local Airflow home (`.airflow/`) and a
SQLite warehouse (`var/demo/warehouse.db`), runs the DAG for real with `airflow dags test`, then prints what
happened and where to look. When the run asks for approval, the demo prints the approval form and approves
its own month through Airflow's REST API (what `make approve` does), so the month is loaded into the
Autotask sandbox, verified and reported. Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]

from include.identifiers import APPROVAL_TASK_IDS, SYNC_DAG_ID  # noqa: E402
from scripts.approve import OPTION_APPROVE  # noqa: E402
from scripts.run import api_for, local_auth_environment, start_api_server, wait_for_approval  # noqa: E402
from stacks.launcher import RunningServer, start_server  # noqa: E402
from stacks.local_stack import airflow_environment  # noqa: E402

DAG_ID = SYNC_DAG_ID
DEMO_DIR = REPO_ROOT / "var" / "demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", default=os.environ.get("DEMO_MONTH", "2026-10"), help="billing month YYYY-MM")
    parser.add_argument("--customers", type=int, default=int(os.environ.get("DEMO_CUSTOMERS", "50")))
    parser.add_argument("--subscriptions-per-customer", type=int, default=3)
    args = parser.parse_args()
    from include.models import BillingMonth

    try:  # before anything starts or any log is touched: the last good run's log stays as it is
        args.month = BillingMonth.parse(args.month).key
    except ValueError:
        print(f"make demo: MONTH must look like YYYY-MM, e.g. MONTH=2026-10; got {args.month!r}", file=sys.stderr)
        return 64

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", REPO_ROOT / ".airflow"))
    airflow_home.mkdir(parents=True, exist_ok=True)
    servers: list[RunningServer] = []
    try:
        step(f"starting the BSS sandbox ({args.customers} customers)")
        bss = start_server(
            [
                "sandbox.bss_server",
                "--customers",
                str(args.customers),
                "--subscriptions-per-customer",
                str(args.subscriptions_per_customer),
            ],
            log_dir=DEMO_DIR,
        )
        servers.append(bss)
        step("starting the Autotask sandbox (state kept in var/demo/autotask-state.json)")
        autotask = start_server(
            [
                "sandbox.autotask_server",
                "--state-file",
                str(DEMO_DIR / "autotask-state.json"),
                "--seed-customers",
                str(args.customers),
                "--seed-subscriptions-per-customer",
                str(args.subscriptions_per_customer),
                "--seed-month",
                args.month,
            ],
            log_dir=DEMO_DIR,
        )
        servers.append(autotask)
        env = airflow_env(airflow_home, bss, autotask)
        env.update(local_auth_environment(airflow_home))

        step(f"preparing the Airflow home {airflow_home}")
        run_quiet([sys.executable, "-m", "airflow", "db", "migrate"], env, DEMO_DIR / "airflow-db-migrate.log")
        step("starting an Airflow api-server (the approval is answered through its REST API)")
        servers.append(start_api_server(env, DEMO_DIR))
        threading.Thread(target=approve_when_asked, args=(args.month, env), daemon=True).start()

        step(f"running the DAG {DAG_ID} for {args.month} (log: var/demo/dag-run.log)")
        started = time.monotonic()
        code = run_dag(args.month, env, DEMO_DIR / "dag-run.log")
        step(f"the run {'succeeded' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f}s")
        summarise(args.month)
        return code
    finally:
        for server in servers:
            server.stop()


def approve_when_asked(month: str, env: dict[str, str]) -> None:
    """Print the approval form once the run asks, then approve the proposed actions as `admin` through the
    REST API, exactly as `make approve MONTH=<month>` would."""
    api = api_for(env)
    approval = wait_for_approval(api, month, lambda: True)
    if approval is None:
        return
    print("\n" + without_ui_links(approval.body) + "\n", flush=True)
    step(f"approving the proposed actions of {month} as admin (what `make approve MONTH={month}` does)")
    api.answer(approval, OPTION_APPROVE)


def airflow_env(airflow_home: Path, bss: RunningServer, autotask: RunningServer) -> dict[str, str]:
    return airflow_environment(
        airflow_home, bss.url, autotask.url, DEMO_DIR / "warehouse.db", REPO_ROOT / "var" / "data_docs"
    )


def run_quiet(command: list[str], env: dict[str, str], log_path: Path) -> None:
    with log_path.open("w") as log:
        result = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode:
        print(log_path.read_text()[-3000:])
        raise SystemExit(f"`{' '.join(command[2:])}` failed ({result.returncode}); see {log_path}")


def run_dag(month: str, env: dict[str, str], log_path: Path) -> int:
    """`airflow dags test` for the month; task progress lines are echoed as they come."""
    command = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "-c", json.dumps({"month": month})]
    # Our own modules' log lines and each task's outcome; Airflow's chatter stays in the log file.
    interesting = ("[include.", "[connectors.", "new_state=", "DagRun Finished", "Traceback", "Error:")
    task_id = "task"
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if "task_id='" in line:
                task_id = line.split("task_id='", 1)[1].split("'", 1)[0]
            if any(marker in line for marker in interesting):
                print("   " + _readable(line, task_id))
        return process.wait()


_TASK_ID = re.compile(r"task_id=['\"]?([\w.-]+)")
_LOGGER_TRAILER = re.compile(r"\s+\[[\w.]+\](\s+\w+=\S*)*\s*$")
_UI_LINK = re.compile(r"\[([^\]]+)\]\((/[^)\s]*)\)")


def _readable(line: str, task_id: str) -> str:
    """`2026-…Z [info     ] message [logger] loc=… k=v` → `info  message` (task states as `task → state`); a
    message that ends in a task's result (a dict) becomes a few plain lines of figures, never a cut dict."""
    text = line.rstrip()
    if "new_state=" in text:
        state = text.split("new_state=", 1)[1].split()[0].strip("'\",")
        named = _TASK_ID.search(text)
        if state == "awaiting_input":  # only the approval task waits for a person
            return (
                f"{APPROVAL_TASK_IDS[DAG_ID]} → awaiting_input: the month waits for a person's approval (the demo "
                "answers it below; in Airflow: Browse → Required Actions, or `make approve`)"
            )
        return f"{named.group(1) if named else task_id} → {state}"
    if text[:4].isdigit() and "] " in text:
        level = text.split("[", 1)[1].split("]", 1)[0].strip()
        message = _LOGGER_TRAILER.sub("", text.split("] ", 1)[1]).rstrip()
        summary = _figures(message)
        if summary is not None:
            return "\n   ".join([f"{level:<7} {summary[0]}", *(f"        {line}" for line in summary[1:])])
        return clip(f"{level:<7} {message}")
    return clip(text)


def _figures(message: str, width: int = 100) -> list[str] | None:
    """`reconcile run-1 for 2026-10: {'actions': 92, 'by_kind': {...}}` → the head, then the figures as short plain
    lines (`actions 92`, `by kind: adjust units 42, create company 7`); None when the message holds no dict."""
    head, brace, rest = message.partition(": {")
    if not brace:
        return None
    try:
        figures = ast.literal_eval("{" + rest)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(figures, dict):
        return None
    items = [_item(key, value) for key, value in figures.items() if key not in ("run_id", "month", "seconds")]
    lines, current = [], ""
    for item in (item for item in items if item):
        if current and len(current) + 2 + len(item) > width:
            lines.append(current)
            current = item
        else:
            current = f"{current}; {item}" if current else item
    return [head + ":", *lines, *([current] if current else [])]


def _item(key: Any, value: Any) -> str:
    name = str(key).replace("_", " ")
    if isinstance(value, dict):
        inner = ", ".join(filter(None, (_item(k, v) for k, v in value.items())))
        return f"{name}: {inner}" if inner else ""
    if isinstance(value, list | tuple):
        return f"{name} {len(value)}"
    return f"{name} {value}"


def without_ui_links(body: str) -> str:
    """The approval form for a terminal: a link into the Airflow UI (`/billing/…`, a server that stops with the demo)
    becomes its words and how to open it (`make ui`)."""
    return _UI_LINK.sub(lambda link: f"{link.group(1)} (in the Airflow UI: `make ui`)", body)


def clip(text: str, limit: int = 240) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with `…` when something was cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if text[limit - 1] != " ":  # the cut fell inside a word: go back to the last whole item, else word
        boundary = cut.rfind(", ") if cut.rfind(", ") > limit // 2 else cut.rfind(" ")
        if boundary > 0:
            cut = cut[:boundary]
    return cut.rstrip(" ,:") + "…"


def summarise(month: str) -> None:
    from include.warehouse import Warehouse

    warehouse = Warehouse(f"sqlite:///{DEMO_DIR / 'warehouse.db'}")
    print()
    print(f"Warehouse (SQLite): {DEMO_DIR / 'warehouse.db'}")
    try:
        runs = warehouse.query(
            "SELECT run_id, status, raw_count, line_count, rejected_count FROM extract_runs"
            " WHERE month = :m ORDER BY started_at DESC LIMIT 1",
            {"m": month},
        )
        if runs:
            run = runs[0]
            print(
                f"  last extract of {month}: {run['status']}, {run['line_count']} typed lines "
                f"of {run['raw_count']} records (run {run['run_id']})"
            )
        for row in warehouse.query(
            "SELECT action, COUNT(*) AS lines, SUM(quantity) AS units FROM charge_lines WHERE month = :m"
            " GROUP BY action ORDER BY action",
            {"m": month},
        ):
            print(f"    {row['action']:<18} {row['lines']:>6} lines")
        plan = warehouse.query(
            "SELECT kind, status, COUNT(*) AS actions FROM plan_actions WHERE month = :m"
            " GROUP BY kind, status ORDER BY kind, status",
            {"m": month},
        )
        if plan:
            print(f"  change plan for {month} (approved actions are loaded, then `applied`):")
            for row in plan:
                print(f"    {row['kind']:<26} {row['status']:<14} {row['actions']:>5}")
        for row in warehouse.query(
            "SELECT decision, decided_by FROM month_approvals WHERE month = :m ORDER BY decided_at DESC LIMIT 1",
            {"m": month},
        ):
            print(f"  approval: {row['decision']} by {row['decided_by'] or 'nobody'}")
        differences = warehouse.scalar(
            "SELECT COUNT(*) FROM load_verifications v WHERE v.month = :m AND v.matches = 0"
            " AND v.run_id = (SELECT MAX(run_id) FROM load_verifications WHERE month = :m)",
            {"m": month},
        )
        print(f"  verification (Autotask read back): {differences or 'no'} differences")
    except Exception as error:  # the summary is a courtesy; the run's own result is what counts
        print(f"  (no summary: {error})")
    reports = sorted(
        (REPO_ROOT / "var" / "data_docs" / month).glob("*/index.html"), key=lambda path: path.stat().st_mtime
    )
    if reports:
        print(f"Data-quality report (Data Docs): {reports[-1]}")
        run_reports = sorted(reports[-1].parent.glob("*.xlsx"))
        if run_reports:
            print(f"Run report: {', '.join(str(path.with_suffix('.html')) for path in run_reports)} (and .xlsx)")
    print(f"Full run log: {DEMO_DIR / 'dag-run.log'}")
    print("Review the next month in the Airflow UI: `make ui` (it prints the URL and the login)")


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
