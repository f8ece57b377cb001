"""Shared test fixtures: environment, warehouses on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Before anything imports Airflow or GX: a private Airflow home, no examples, no GX analytics.
_TEST_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="billing-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_TEST_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ["GX_ANALYTICS_ENABLED"] = "false"

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from include.warehouse import Warehouse  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
# CI sets REQUIRE_POSTGRES=1: an unreachable server then fails the PostgreSQL tests instead of skipping them.
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"


def _postgres_problem() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:  # any failure to connect means "no server here"
        return f"{type(error).__name__}: {error}".splitlines()[0]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the PostgreSQL server; skips (or fails under REQUIRE_POSTGRES=1) when unreachable."""
    problem = _postgres_problem()
    if problem:
        message = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {problem}"
        if REQUIRE_POSTGRES:
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"billing_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """A migrated warehouse, once on SQLite and once on PostgreSQL."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    handle = Warehouse(url)
    handle.migrate()
    try:
        yield handle
    finally:
        handle.dispose()


# -- sandboxes ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bss_sandbox():
    """The BSS sandbox (50 customers × 3 subscriptions, seed 42), shared by the session; reset after each use."""
    from tests.servers import start_server

    server = start_server(["sandbox.bss_server", "--customers", "50", "--subscriptions-per-customer", "3"])
    yield server
    server.stop()


@pytest.fixture
def bss(bss_sandbox, monkeypatch: pytest.MonkeyPatch):
    """The shared BSS sandbox, with `bss_default` pointing at it and faults/overrides cleared afterwards."""
    import httpx

    from sandbox.local_stack import bss_connection

    monkeypatch.setenv("AIRFLOW_CONN_BSS_DEFAULT", json.dumps(bss_connection(bss_sandbox.url)))
    yield bss_sandbox
    httpx.post(bss_sandbox.url + "/_admin/reset", timeout=10)
