"""The Celery deployment of docker-compose.yaml, run without containers: for `make stack` and the deployment test.

Real processes, each in its own process group: `airflow api-server`, `scheduler`, `dag-processor`, `triggerer`
and Celery workers (`airflow celery worker --celery-hostname <name>@%h --queues default`), on a fresh PostgreSQL
database for Airflow's metadata, a Redis database of their own as the broker, and a fresh PostgreSQL database as
the warehouse. The settings shared with docker-compose.yaml come from `deploy/airflow.env` (one source); only the
addresses, ports and secrets are this machine's. `stop()` ends every process it started (and their children),
drops both databases and empties its Redis database.
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
import uuid
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import sqlalchemy as sa

from include.identifiers import SYNC_DAG_ID
from stacks.airflow_api import API_URL_FILE, PASSWORDS_FILE, AirflowApi
from stacks.launcher import REPO_ROOT, free_port
from stacks.local_stack import (
    AUTOTASK_BILLING_CODE_ID,
    AUTOTASK_OWNER_RESOURCE_ID,
    airflow_environment,
    migrate_metadata,
    start_airflow_component,
)

SHARED_ENV_FILE = REPO_ROOT / "deploy" / "airflow.env"
DAG_ID = SYNC_DAG_ID
QUEUE = "default"
# Redis databases a stack may take when the broker URL names none (the first empty one is claimed).
_REDIS_DATABASES = range(6, 16)
_CLAIM_KEY = "billing-celery-stack:owner"


def read_env_file(path: Path = SHARED_ENV_FILE) -> dict[str, str]:
    """KEY=value lines of an env file (the subset docker compose and this module both read: no quotes, no ${})."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip() or any(mark in value for mark in ('"', "'", "${")):
            raise ValueError(f"{path}:{number}: expected KEY=value without quotes or ${{...}}, got {line!r}")
        values[key.strip()] = value.strip()
    return values


def worker_hostname() -> str:
    """`[core] hostname_callable` of the stack: the Celery worker's name, so task instances say which of the
    workers on one machine ran them; the machine's name for every other process."""
    return os.environ.get("BILLING_WORKER_NAME") or socket.getfqdn()


# What a worker never gets, as in docker-compose.yaml: it runs any task's code, so no login (the password file), no key
# that signs a login or a task token, no session key.
WORKER_WITHHELD = frozenset(
    {"AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"}
)


@dataclass
class StackSettings:
    """Where the stack's parts live. `postgres_url`: an admin URL of the PostgreSQL server (it creates and drops
    its two databases there); `redis_url`: the broker (`redis://host:port` to take a free database of 6..15, or
    `redis://host:port/<n>` for that one, which must be empty)."""

    postgres_url: str
    redis_url: str
    work_dir: Path
    bss_url: str
    autotask_url: str
    workers: tuple[str, ...] = ("w1", "w2")
    api_port: int | None = None
    users: tuple[str, ...] = ("admin", "finance")
    # settings of this place on top of deploy/airflow.env (a test's shorter heartbeat timeout, say)
    overrides: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 300.0


@dataclass
class Component:
    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class CeleryStack:
    """Start with `start()` (or `with CeleryStack(settings) as stack:`), stop with `stop()`."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        token = uuid.uuid4().hex[:10]
        self.metadata_db = f"billing_airflow_{token}"
        self.warehouse_db = f"billing_warehouse_{token}"
        self.components: dict[str, Component] = {}
        self.env: dict[str, str] = {}
        self.redis_url = ""
        self.api_url = ""
        self.passwords: dict[str, str] = {}
        self.started_pids: set[int] = set()
        self.timings: dict[str, float] = {}
        self._created_databases: list[str] = []

    # -- start --------------------------------------------------------------------------------------------

    def __enter__(self) -> CeleryStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> CeleryStack:
        started = time.monotonic()
        work = self.settings.work_dir
        work.mkdir(parents=True, exist_ok=True)
        self.redis_url = _claim_redis_database(self.settings.redis_url)
        self._create_database(self.metadata_db)
        self._create_database(self.warehouse_db)
        self.env = self._environment()
        self._migrate()
        self.timings["migrate_s"] = round(time.monotonic() - started, 1)
        self._start("api-server", ["api-server", "--port", self.env["AIRFLOW__API__PORT"]])
        for name in ("scheduler", "dag-processor", "triggerer"):
            self._start(name, [name])
        for index, worker in enumerate(self.settings.workers):
            command = ["celery", "worker", "--celery-hostname", f"{worker}@%h", "--queues", QUEUE]
            if index:  # one log server a machine: the shared log folder lets the api-server read every log
                command.append("--skip-serve-logs")
            self._start(f"worker-{worker}", command, {"BILLING_WORKER_NAME": worker}, withheld=WORKER_WITHHELD)
        self._wait_until_ready()
        self.timings["start_s"] = round(time.monotonic() - started, 1)
        return self

    def _environment(self) -> dict[str, str]:
        work = self.settings.work_dir
        home = work / "airflow-home"
        home.mkdir(parents=True, exist_ok=True)
        env = airflow_environment(home, self.settings.bss_url, self.settings.autotask_url, work / "unused.db", work)
        env.update(read_env_file())
        port = self.settings.api_port or free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        (home / API_URL_FILE).write_text(self.api_url)
        passwords_path = home / PASSWORDS_FILE  # where `make approve` looks (with the api-server's address)
        self.passwords = {user: secrets.token_urlsafe(12) for user in self.settings.users}
        passwords_path.write_text(json.dumps(self.passwords, indent=2))
        passwords_path.chmod(0o600)
        metadata = self.database_url(self.metadata_db)
        env.update(
            {
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
                "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stacks.celery_stack.worker_hostname",
                # runs are triggered (`make stack`, the test): no scheduled run of the current month on unpausing
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__CORE__FERNET_KEY": urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:admin" for user in self.passwords),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_path),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(work / "logs"),
                # ports of their own: other Airflow processes on this machine keep theirs
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
                "AIRFLOW_CONN_BILLING_WAREHOUSE": self.warehouse_connection_uri(),
                "BILLING_DATA_DOCS_DIR": str(work / "data_docs"),
                "BILLING_SYNC_OWNER_RESOURCE_ID": str(AUTOTASK_OWNER_RESOURCE_ID),
                "BILLING_SYNC_BILLING_CODE_ID": str(AUTOTASK_BILLING_CODE_ID),
            }
        )
        env.update(self.settings.overrides)
        return env

    def database_url(self, name: str) -> str:
        url = sa.make_url(self.settings.postgres_url).set(drivername="postgresql+psycopg2", database=name)
        return url.render_as_string(hide_password=False)

    def warehouse_url(self) -> str:
        """The warehouse's SQLAlchemy URL (for `include.warehouse.Warehouse`)."""
        return self.database_url(self.warehouse_db)

    def warehouse_connection_uri(self) -> str:
        """The warehouse as an Airflow connection URI (`postgres://…`, see `connectors.warehouse_connection`)."""
        url = sa.make_url(self.settings.postgres_url).set(drivername="postgres", database=self.warehouse_db)
        return url.render_as_string(hide_password=False)

    def _create_database(self, name: str) -> None:
        admin = sa.create_engine(self.settings.postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            self._created_databases.append(name)
        finally:
            admin.dispose()

    def recreate_warehouse(self) -> None:
        """An empty warehouse again (same database name, so the workers' connection stays right)."""
        admin = sa.create_engine(self.settings.postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.warehouse_db}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{self.warehouse_db}"'))
        finally:
            admin.dispose()

    def _migrate(self) -> None:
        migrate_metadata(self.env, self.settings.work_dir / "airflow-db-migrate.log", self.settings.ready_timeout_s)

    def _start(
        self,
        name: str,
        airflow_args: list[str],
        extra_env: dict[str, str] | None = None,
        withheld: frozenset[str] = frozenset(),
    ) -> None:
        log_path = self.settings.work_dir / f"{name}.log"
        env = {key: value for key, value in {**self.env, **(extra_env or {})}.items() if key not in withheld}
        process = start_airflow_component(airflow_args, env, log_path)
        self.components[name] = Component(name, process, log_path)
        self.started_pids.add(process.pid)

    def _wait_until_ready(self) -> None:
        """The api-server answers, the scheduler, triggerer and dag-processor report healthy, every worker says
        it is ready, and the DAG is parsed (then unpaused)."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        waiting_for = "the api-server"
        while time.monotonic() < deadline:
            for component in self.components.values():
                if component.process.poll() is not None:
                    raise RuntimeError(
                        f"{component.name} exited with {component.process.returncode} while starting; "
                        f"{component.log_path}:\n{component.log()[-3000:]}"
                    )
            try:
                waiting_for = self._not_ready_yet()
            except httpx.HTTPError:
                waiting_for = "the api-server"
            if waiting_for is None:
                self.api().client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
                return
            time.sleep(1)
        raise TimeoutError(f"the Celery stack was not ready in {self.settings.ready_timeout_s:.0f} s: {waiting_for}")

    def _not_ready_yet(self) -> str | None:
        health = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        if health.status_code != 200:
            return "the api-server"
        status = health.json()
        for part in ("scheduler", "triggerer", "dag_processor"):
            if (status.get(part) or {}).get("status") != "healthy":
                return f"the {part} (health: {status.get(part)})"
        for worker in self.settings.workers:
            if f"{worker}@" not in self.components[f"worker-{worker}"].log() or " ready." not in (
                self.components[f"worker-{worker}"].log()
            ):
                return f"worker {worker}"
        if self.api().client.get(f"/api/v2/dags/{DAG_ID}").status_code != 200:
            return f"the DAG {DAG_ID} to be parsed"
        return None

    # -- use ----------------------------------------------------------------------------------------------

    def api(self, user: str = "admin") -> AirflowApi:
        return AirflowApi(self.api_url, user, self.passwords[user])

    def kill_worker(self, worker: str) -> list[int]:
        """SIGKILL a worker and every process under it (its running tasks too), as a lost machine. Returns the
        pids killed."""
        component = self.components[f"worker-{worker}"]
        try:
            root = psutil.Process(component.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.process.pid, signal.SIGKILL)
        for process in tree:  # a task process that left the worker's group dies with it too
            with contextlib.suppress(psutil.Error):
                process.kill()
        component.process.wait(timeout=30)
        psutil.wait_procs(tree, timeout=10)
        return [process.pid for process in tree]

    def processes(self) -> list[psutil.Process]:
        """Every running process of the stack: the components and their children."""
        found: dict[int, psutil.Process] = {}
        for component in self.components.values():
            try:
                root = psutil.Process(component.process.pid)
                for process in [root, *root.children(recursive=True)]:
                    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                        found[process.pid] = process
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def memory_mib(self) -> float:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return round(total / 2**20, 1)

    # -- stop ---------------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """Stop every process (SIGTERM to each group, SIGKILL what is left), drop both databases, empty the
        Redis database. Returns the pids still alive afterwards (none, unless something escaped)."""
        tree = {process.pid for process in self.processes()} | self.started_pids
        for component in self.components.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for component in self.components.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for component in self.components.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=10)
        for pid in tree:  # children that left their group
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        psutil.wait_procs([p for p in (_process(pid) for pid in tree) if p is not None], timeout=10)
        alive = [pid for pid in tree if _alive(pid)]
        self._drop_databases()
        self._release_redis()
        return alive

    def _drop_databases(self) -> None:
        if not self._created_databases:
            return
        admin = sa.create_engine(self.settings.postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for name in self._created_databases:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            self._created_databases = []
        finally:
            admin.dispose()

    def _release_redis(self) -> None:
        if not self.redis_url:
            return
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            client.flushdb()  # the database was empty when the stack claimed it: every key is the stack's
        finally:
            client.close()
        self.redis_url = ""

    def databases_left(self) -> list[str]:
        admin = sa.create_engine(self.settings.postgres_url)
        try:
            with admin.connect() as conn:
                names = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
        finally:
            admin.dispose()
        return [name for name in names if name in (self.metadata_db, self.warehouse_db)]


def _claim_redis_database(url: str) -> str:
    """A Redis database of the stack's own: the one the URL names (it must be empty), else the first empty one
    of 6..15. A key marks it taken until `stop()` empties it."""
    import redis

    parsed = urlsplit(url)
    base = urlunsplit((parsed.scheme, parsed.netloc, "", "", ""))
    named = parsed.path.strip("/")
    candidates = [int(named)] if named else list(_REDIS_DATABASES)
    for number in candidates:
        candidate = f"{base}/{number}"
        client = redis.Redis.from_url(candidate)
        try:
            if client.dbsize() == 0 and client.set(_CLAIM_KEY, str(os.getpid()), nx=True):
                return candidate
        finally:
            client.close()
    if len(candidates) == 1:
        raise RuntimeError(
            f"Redis database {candidates[0]} at {base} is not empty: another stack may use it. Name another "
            f"database number, or empty this one (redis-cli -n {candidates[0]} flushdb) if nothing uses it."
        )
    raise RuntimeError(f"no empty Redis database among {candidates[0]}..{candidates[-1]} at {base}")


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _alive(pid: int) -> bool:
    process = _process(pid)
    try:
        return process is not None and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
