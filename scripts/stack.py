"""`make stack`: the Celery deployment of docker-compose.yaml on this machine, without Docker.

Starts the BSS and Autotask sandboxes, then the api-server, scheduler, dag-processor, triggerer and two Celery
workers (`stacks.celery_stack`, the settings of `deploy/airflow.env`) on a fresh PostgreSQL metadata database,
a Redis database of its own and a fresh PostgreSQL warehouse. Prints the UI's address and the logins, and runs
until Ctrl-C, which stops every process and drops both databases (the stack forgets its runs).

PostgreSQL: `STACK_POSTGRES_URL` (an admin URL; default postgresql+psycopg2://postgres@127.0.0.1:5432/postgres).
Redis: `STACK_REDIS_URL` (default redis://127.0.0.1:6379: the first empty database of 6..15). The UI's port:
`PORT` (default 8080). Runs are triggered (UI or REST), never scheduled.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "plugins")]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from stacks.celery_stack import DAG_ID, CeleryStack, StackSettings  # noqa: E402
from stacks.launcher import start_server  # noqa: E402

STACK_DIR = REPO_ROOT / "var" / "stack"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50, help="sandbox customers (default 50)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")), help="the UI's port")
    args = parser.parse_args(argv)
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    logs = STACK_DIR / "logs"

    def stop_on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    started = time.monotonic()
    servers = []
    stack: CeleryStack | None = None
    try:
        print("==> starting the BSS and Autotask sandboxes", flush=True)
        bss = start_server(["sandbox.bss_server", "--customers", str(args.customers)], log_dir=logs)
        servers.append(bss)
        autotask = start_server(
            [
                "sandbox.autotask_server",
                "--seed-customers",
                str(args.customers),
                "--state-file",
                str(STACK_DIR / "autotask-state.json"),
            ],
            log_dir=logs,
        )
        servers.append(autotask)
        settings = StackSettings(
            postgres_url=os.environ.get("STACK_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
            redis_url=os.environ.get("STACK_REDIS_URL", "redis://127.0.0.1:6379"),
            work_dir=STACK_DIR,
            bss_url=bss.url,
            autotask_url=autotask.url,
            api_port=args.port,
        )
        stack = CeleryStack(settings)
        print("==> starting Airflow on Celery: api-server, scheduler, dag-processor, triggerer, workers w1 and w2")
        print(f"    (metadata database {stack.metadata_db}, warehouse {stack.warehouse_db}; logs in {STACK_DIR})")
        stack.start()
        home = stack.env["AIRFLOW_HOME"]
        print()
        print(f"Airflow UI: {stack.api_url}  (ready in {time.monotonic() - started:.0f} s)")
        for user, password in stack.passwords.items():
            print(f"  login: {user} / {password}")
        print(f"  broker: {stack.redis_url}; {len(stack.processes())} processes, {stack.memory_mib():.0f} MiB")
        print(f"Trigger {DAG_ID} with a month (YYYY-MM) in the UI; answer its approval there (Browse → Required")
        print(f"Actions) or with: AIRFLOW_HOME={home} make approve MONTH=YYYY-MM")
        print("Ctrl-C stops everything and drops the stack's databases.", flush=True)
        while True:
            for component in stack.components.values():
                if component.process.poll() is not None:
                    print(f"{component.name} stopped ({component.process.returncode}); see {component.log_path}")
                    return 1
            time.sleep(2)
    except KeyboardInterrupt:
        print("\n==> stopping", flush=True)
        return 0
    finally:
        if stack is not None:
            left = stack.stop()
            if left:
                print(f"processes still running: {left}", file=sys.stderr)
        for server in servers:
            server.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
