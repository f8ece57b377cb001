"""A whole local Airflow on the sandboxes: what `make ui` runs and what the browser test starts on free ports.

`LocalAirflow` is a context manager. On enter it starts the BSS and Autotask sandboxes, migrates the Airflow
home, and starts an api-server, a scheduler, a dag-processor and a triggerer (LocalExecutor, 4 worker slots)
on that home, each in its own process group, with fixed logins (each user an admin, passwords in
`$AIRFLOW_HOME/billing-passwords.json`). It returns once the api-server answers and the scheduler, the
dag-processor and the triggerer report a heartbeat. On exit it stops every process it started: SIGTERM to each
process group, SIGKILL to what is still alive after a grace period (the scheduler often needs it).

Scheduled runs are off (`[scheduler] use_job_schedule = False`): only runs triggered in the UI, through the
REST API or by `trigger_month` run, so opening the UI never starts a month nobody asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from include.identifiers import SYNC_DAG_ID
from stacks.airflow_api import API_URL_FILE, PASSWORDS_FILE  # the files `make approve` and `make run` read
from stacks.launcher import RunningServer, free_port, start_server
from stacks.local_stack import airflow_environment, local_auth_environment, migrate_metadata, start_airflow_component

DAG_ID = SYNC_DAG_ID
COMPONENTS = ("scheduler", "dag-processor", "triggerer")
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


@dataclass
class StackSettings:
    """Where the local Airflow keeps its state and which ports it uses (0: a free port)."""

    airflow_home: Path
    warehouse_path: Path
    data_docs_dir: Path
    autotask_state_file: Path
    log_dir: Path
    port: int = 8080
    bss_port: int = 0
    autotask_port: int = 0
    customers: int = 50
    subscriptions_per_customer: int = 3
    seed_month: str = "2026-10"
    users: tuple[str, ...] = ("admin", "finance")
    parallelism: int = 4
    start_timeout_s: float = 240.0
    extra_env: dict[str, str] = field(default_factory=dict)
    bss_args: list[str] = field(default_factory=list)  # more `sandbox.bss_server` flags, e.g. --account-name


@dataclass
class Component:
    """An Airflow process started in its own process group."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class StackError(RuntimeError):
    """The local Airflow could not start (the message names the component and shows its log's end)."""


class LocalAirflow:
    """The sandboxes and a complete Airflow (api-server, scheduler, dag-processor, triggerer) on one home."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.servers: list[RunningServer] = []
        self.components: list[Component] = []
        self.started_pids: list[int] = []  # every component's process group and every sandbox, kept after stop
        self.env: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> LocalAirflow:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        settings = self.settings
        if settings.port and not _port_free(settings.port):
            raise StackError(f"port {settings.port} is in use (another Airflow?): choose another, e.g. PORT=8081")
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        settings.airflow_home.mkdir(parents=True, exist_ok=True)
        settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        bss = start_server(
            [
                "sandbox.bss_server",
                "--customers",
                str(settings.customers),
                "--subscriptions-per-customer",
                str(settings.subscriptions_per_customer),
                *settings.bss_args,
            ],
            port=settings.bss_port or None,
            log_dir=settings.log_dir,
        )
        self.servers.append(bss)
        self.started_pids.append(bss.process.pid)
        autotask = start_server(
            [
                "sandbox.autotask_server",
                "--state-file",
                str(settings.autotask_state_file),
                "--seed-customers",
                str(settings.customers),
                "--seed-subscriptions-per-customer",
                str(settings.subscriptions_per_customer),
                "--seed-month",
                settings.seed_month,
            ],
            port=settings.autotask_port or None,
            log_dir=settings.log_dir,
        )
        self.servers.append(autotask)
        self.started_pids.append(autotask.process.pid)
        port = settings.port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = self._environment(bss.url, autotask.url, port)
        self._migrate()
        self._spawn("api-server", ["api-server", "--port", str(port), "--workers", "1"])
        for name in COMPONENTS:
            self._spawn(name, [name])
        self._wait_until_healthy()
        (settings.airflow_home / API_URL_FILE).write_text(self.url)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to every component's process group, SIGKILL after `grace_s`; then the sandboxes."""
        for component in self.components:
            _signal_group(component.process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for component in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for component in self.components:
            # the group may hold children (task supervisors, gunicorn/uvicorn workers) after the leader left
            _signal_group(component.process, signal.SIGKILL)
            if component.alive():
                component.process.wait(timeout=10)
        self.components.clear()
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def remaining_processes(self) -> list[int]:
        """The processes this stack started that still run (its components' groups, its sandboxes)."""
        return remaining_processes(self.started_pids)

    # -- use -------------------------------------------------------------------------------------
    @property
    def admin_password(self) -> str:
        return self.passwords["admin"]

    def client(self, user: str = "admin", timeout_s: float = 30.0) -> httpx.Client:
        """An httpx client on the api-server, logged in as `user` (Bearer token)."""
        client = httpx.Client(base_url=self.url, timeout=timeout_s)
        answer = client.post("/auth/token", json={"username": user, "password": self.passwords[user]})
        if answer.status_code not in (200, 201):
            client.close()
            raise StackError(f"the api-server refused the login of {user!r}: {answer.status_code} {answer.text[:200]}")
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return client

    def wait_for_dag(self, client: httpx.Client, dag_id: str = DAG_ID, timeout_s: float = 180.0) -> None:
        """Until the dag-processor has parsed `dag_id` (a fresh home has no DAGs for the first seconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if client.get(f"/api/v2/dags/{dag_id}").status_code == 200:
                return
            self._check_alive()
            time.sleep(2)
        raise StackError(f"the DAG {dag_id} was not parsed within {timeout_s:.0f}s:\n{self._log_tail('dag-processor')}")

    def runs_of_month(self, client: httpx.Client, month: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """The DAG's runs whose conf asks for `month`, newest first."""
        answer = client.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 100})
        answer.raise_for_status()
        return [run for run in answer.json()["dag_runs"] if (run.get("conf") or {}).get("month") == month]

    def open_runs(self, client: httpx.Client, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """The DAG's queued or running runs, oldest first."""
        answer = client.get(
            f"/api/v2/dags/{dag_id}/dagRuns",
            params={"state": ["queued", "running"], "order_by": "run_after", "limit": 100},
        )
        answer.raise_for_status()
        return answer.json()["dag_runs"]

    def trigger_month(self, client: httpx.Client, month: str, dag_id: str = DAG_ID) -> str:
        """Unpause the DAG and trigger a run of `month`; returns the run id."""
        client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        answer = client.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": {"month": month}, "note": f"Billing month {month} (make ui)"},
        )
        if answer.status_code >= 400:
            raise StackError(f"triggering {dag_id} for {month} failed: {answer.status_code} {answer.text[:300]}")
        return answer.json()["dag_run_id"]

    def task_states(self, client: httpx.Client, run_id: str, dag_id: str = DAG_ID) -> dict[str, str | None]:
        answer = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        answer.raise_for_status()
        return {instance["task_id"]: instance["state"] for instance in answer.json()["task_instances"]}

    def wait_for_task_state(
        self,
        client: httpx.Client,
        run_id: str,
        task_id: str,
        states: tuple[str, ...],
        timeout_s: float = 900.0,
        dag_id: str = DAG_ID,
    ) -> dict[str, str | None]:
        """Poll until `task_id` of the run is in one of `states`; fails early when the run fails."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            seen = self.task_states(client, run_id, dag_id)
            if seen.get(task_id) in states:
                return seen
            run_state = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json().get("state")
            if run_state in ("failed", "success"):
                raise StackError(f"run {run_id} ended {run_state} before {task_id} reached {states}: {seen}")
            self._check_alive()
            time.sleep(2)
        raise StackError(f"{task_id} of {run_id} did not reach {states} in {timeout_s:.0f}s: {seen}")

    def wait_until_scheduler_saw_pause(
        self, run_id: str, task_id: str, dag_id: str = DAG_ID, timeout_s: float = 120.0
    ) -> None:
        """Until the scheduler has handled the executor's event of the task's pause (awaiting input).

        Seen on Airflow 3.3.2 with LocalExecutor: an approval answered before the scheduler handles that event
        (a window of a few seconds) makes the scheduler see a queued task whose process "succeeded", and it marks
        the approval task failed. A person never answers that fast; a test must wait for this first."""
        marker = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id},"
        deadline = time.monotonic() + timeout_s
        scheduler = next(component for component in self.components if component.name == "scheduler")
        while time.monotonic() < deadline:
            if marker in scheduler.log():
                return
            self._check_alive()
            time.sleep(1)
        raise StackError(f"the scheduler did not report {task_id} of {run_id} paused within {timeout_s:.0f}s")

    # -- internals -------------------------------------------------------------------------------
    def _environment(self, bss_url: str, autotask_url: str, port: int) -> dict[str, str]:
        settings = self.settings
        env = airflow_environment(
            settings.airflow_home, bss_url, autotask_url, settings.warehouse_path, settings.data_docs_dir
        )
        auth = local_auth_environment(settings.airflow_home, settings.users)
        self.passwords = json.loads(Path(auth["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
        venv_bin = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": f"{venv_bin}:{env.get('PATH', '')}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(settings.parallelism),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                # one secret for every component of this start: tokens the api-server signs are valid for the
                # scheduler's workers (a mismatch fails every task with "Invalid auth token")
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                **auth,
                "AIRFLOW_API_URL": f"http://127.0.0.1:{port}",
            }
        )
        env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)
        env.update(settings.extra_env)
        return env

    def _migrate(self) -> None:
        try:
            migrate_metadata(self.env, self.settings.log_dir / "airflow-db-migrate.log")
        except RuntimeError as error:
            raise StackError(str(error)) from error

    def _spawn(self, name: str, arguments: list[str]) -> None:
        log_path = self.settings.log_dir / f"airflow-{name}.log"
        process = start_airflow_component(arguments, self.env, log_path)
        self.components.append(Component(name, process, log_path))
        self.started_pids.append(process.pid)

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                health = httpx.get(self.url + "/api/v2/monitor/health", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(1)
                continue
            if all((health.get(key) or {}).get("status") == "healthy" for key in _HEALTH_KEYS.values()):
                return
            time.sleep(1)
        unhealthy = [name for name, key in _HEALTH_KEYS.items() if (health.get(key) or {}).get("status") != "healthy"]
        tails = "\n".join(self._log_tail(name) for name in unhealthy or ["api-server"])
        raise StackError(
            f"Airflow was not healthy within {self.settings.start_timeout_s:.0f}s "
            f"(not healthy: {', '.join(unhealthy) or 'api-server'}):\n{tails}"
        )

    def _check_alive(self) -> None:
        for component in self.components:
            if not component.alive():
                raise StackError(
                    f"airflow {component.name} exited with {component.process.returncode}:\n"
                    f"{self._log_tail(component.name)}"
                )

    def _log_tail(self, name: str, chars: int = 3000) -> str:
        for component in self.components:
            if component.name == name:
                return f"--- {component.log_path} ---\n{component.log()[-chars:]}"
        return ""


def _local_passwords(airflow_home: Path, users: tuple[str, ...]) -> dict[str, str]:
    """The local users' passwords, generated once and kept (mode 600) in `$AIRFLOW_HOME/billing-passwords.json`."""
    path = airflow_home / PASSWORDS_FILE
    passwords = json.loads(path.read_text()) if path.exists() else {}
    for user in users:
        passwords.setdefault(user, secrets.token_urlsafe(12))
    path.write_text(json.dumps(passwords, indent=2))
    path.chmod(0o600)
    return passwords


def remaining_processes(pids: list[int]) -> list[int]:
    """Of the given process (group) ids, the processes still alive: group members and the processes themselves.
    Zombies (exited, not yet reaped) do not count."""
    wanted = set(pids)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgid = fields[0], int(fields[2])
        if state != "Z" and (int(entry.name) in wanted or pgid in wanted):
            found.append(int(entry.name))
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
