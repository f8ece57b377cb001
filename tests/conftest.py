"""Shared test fixtures: environment, warehouses on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import dis
import inspect
import json
import os
import sys
import tempfile
import types
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Before anything imports Airflow or GX: a private Airflow home, no examples, no GX analytics.
_TEST_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="billing-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_TEST_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ["GX_ANALYTICS_ENABLED"] = "false"

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from hypothesis import is_hypothesis_test  # noqa: E402

from include.warehouse import Warehouse  # noqa: E402

if TYPE_CHECKING:
    from sandbox.dataset import Universe
    from stacks.launcher import RunningServer
    from tests.include.loader_support import SandboxAdmin

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


# -- lanes ----------------------------------------------------------------------------------------
# Every test runs in one or more lanes (markers declared in pyproject.toml). `make check` runs the `unit` lane:
# tests that run in this one process (in-process code, SQLite, servers in threads). A test that starts a process
# (a sandbox over HTTP, Airflow, a make target, a script: by itself, through a fixture, or through a helper of
# tests/ that these call) is `e2e`; one that needs the PostgreSQL server is `postgres`; Playwright is `browser`;
# the Celery stack is `celery`. The lanes are worked out here from what a test uses, so a test added anywhere
# lands in the right one without being marked by hand; a lane marker written on a test (or its module) wins.
LANES = ("unit", "e2e", "postgres", "browser", "celery")
E2E_FOLDER = Path(__file__).resolve().parent / "e2e"
# fixtures that put a test in a lane (also when used through other fixtures: pytest's closure is searched)
LANE_FIXTURES = {"postgres_server": "postgres", "postgres_url": "postgres"}
# what starts a process, in a test, its fixtures, or the tests/ helpers they call: -> e2e
PROCESS_MODULES = ("subprocess", "multiprocessing", "stacks.launcher.start_server")  # (tests.servers re-exports it)
# in-process but seconds a test, so not in the fast lane: the GX gate (a validation and its Data Docs)
SLOW_IN_PROCESS = (
    "great_expectations",
    "include.quality.validate_charges",
    "include.quality.validate_plan",
    "include.quality.configure_context",
)
# what a fixture (where a test's stack is started) uses: module (or object) -> lane
FIXTURE_LANE_MODULES = {
    "stacks.airflow_stack": "e2e",  # a local Airflow (api-server, scheduler, triggerer) for real
    "playwright": "browser",
    "stacks.celery_stack": "celery",
    "celery": "celery",
}
_HELPERS = "tests."  # helpers followed into: their code starts what the tests that call them use


def _names_used(function: Any, seen: set[types.CodeType] | None = None) -> set[str]:
    """What a function's code (nested functions included) imports and refers to: module names, and for a global
    or an imported name the module it comes from and its qualified name; followed into the functions of tests/
    helpers it calls."""
    function = inspect.unwrap(function)
    if is_hypothesis_test(function):
        function = function.hypothesis.inner_test  # the test's own body, not Hypothesis' runner
    code = getattr(function, "__code__", None)
    module_globals = getattr(function, "__globals__", {})
    seen = set() if seen is None else seen
    used: set[str] = set()
    codes = [code] if code is not None else []
    while codes:
        current = codes.pop()
        if current in seen:
            continue
        seen.add(current)
        codes.extend(constant for constant in current.co_consts if isinstance(constant, types.CodeType))
        imported_from = None
        for instruction in dis.get_instructions(current):
            value = None
            if instruction.opname == "IMPORT_NAME":
                imported_from = instruction.argval
                used.add(imported_from)
            elif instruction.opname == "IMPORT_FROM" and imported_from:
                value = _imported(imported_from, instruction.argval)
            elif instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                value = module_globals.get(instruction.argval)
            if isinstance(value, types.ModuleType):
                used.add(value.__name__)
            elif value is not None:
                module = getattr(value, "__module__", None) or ""
                used.update((module, f"{module}.{getattr(value, '__qualname__', '')}"))
                if isinstance(value, types.FunctionType) and module.startswith(_HELPERS):
                    used |= _names_used(value, seen)
    return used


def _imported(module: str, name: str) -> Any:
    """`from module import name` as already imported (a module's own deprecation warnings kept quiet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return getattr(sys.modules.get(module), name, None)
        except Exception:  # a module's lazy __getattr__ may fail in its own ways: then the name is not followed
            return None


def _uses(names: set[str], prefix: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for name in names)


def _derived_lanes(item: pytest.Item) -> set[str]:
    lanes = set()
    if E2E_FOLDER in Path(str(item.path)).parents:
        lanes.add("e2e")
    fixture_names = set(getattr(item, "fixturenames", ()))
    lanes.update(lane for name, lane in LANE_FIXTURES.items() if name in fixture_names)
    # a fixture or test parametrized over databases (the `warehouse` fixture, `database` params): its PostgreSQL case
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "postgres" in [value for value in callspec.params.values() if isinstance(value, str)]:
        lanes.add("postgres")
    fixture_info = getattr(item, "_fixtureinfo", None)
    definitions = fixture_info.name2fixturedefs if fixture_info is not None else {}
    by_fixtures = set().union(
        *(_names_used(definition.func) for name in fixture_names for definition in definitions.get(name, ()))
    )
    by_test = _names_used(item.function) if isinstance(item, pytest.Function) else set()
    if any(_uses(by_fixtures | by_test, name) for name in (*PROCESS_MODULES, *SLOW_IN_PROCESS)):
        lanes.add("e2e")
    # a Hypothesis search that builds a warehouse per example: the planning chain dozens of times over
    if is_hypothesis_test(getattr(item, "obj", None)) and _uses(by_fixtures | by_test, "include.warehouse.Warehouse"):
        lanes.add("e2e")
    lanes.update(lane for module, lane in FIXTURE_LANE_MODULES.items() if _uses(by_fixtures, module))
    return lanes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        explicit = {mark.name for mark in item.iter_markers() if mark.name in LANES}
        derived = _derived_lanes(item)
        if "unit" in explicit:
            lanes = explicit  # written on a test, `unit` keeps it in the fast lane whatever it uses
        elif explicit:
            lanes = explicit | (derived - {"unit"})
        else:
            lanes = derived or {"unit"}
        for lane in sorted(lanes - explicit):
            item.add_marker(getattr(pytest.mark, lane))


# -- sandboxes ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def universe() -> Universe:
    """The BSS sandbox's default data set (50 customers x 3 subscriptions, seed 42): what `bss_sandbox` serves and
    `python -m sandbox.bss_server` serves without flags. Shared: treat its months as read-only."""
    from sandbox.dataset import build_universe

    return build_universe()


@pytest.fixture(scope="session")
def bss_sandbox():
    """The BSS sandbox (50 customers × 3 subscriptions, seed 42), shared by the session; reset after each use."""
    from tests.servers import start_server

    server = start_server(["sandbox.bss_server", "--customers", "50", "--subscriptions-per-customer", "3"])
    yield server
    server.stop()


@pytest.fixture
def bss(bss_sandbox, monkeypatch: pytest.MonkeyPatch):
    """The shared BSS sandbox, with `bss_default` pointing at it and faults/overrides cleared before and after."""
    import httpx

    from stacks.local_stack import bss_connection

    httpx.post(bss_sandbox.url + "/_admin/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AIRFLOW_CONN_BSS_DEFAULT", json.dumps(bss_connection(bss_sandbox.url)))
    yield bss_sandbox
    httpx.post(bss_sandbox.url + "/_admin/reset", timeout=10)


@pytest.fixture(scope="module")
def autotask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The Autotask sandbox of the loader, report, reversal and load-task tests (seeded from the BSS data set's
    first 60 customers), one per test module."""
    from tests.include.loader_support import sandbox_server

    yield from sandbox_server(tmp_path_factory.mktemp("logs"))


@pytest.fixture
def admin(autotask: RunningServer) -> Iterator[SandboxAdmin]:
    """`autotask`'s admin handle on a reset sandbox (its seed, no faults, zero counters); whatever faults a test
    injects are taken off again afterwards."""
    from tests.include.loader_support import FAULTS_OFF, SandboxAdmin

    handle = SandboxAdmin(autotask)
    handle.reset()
    yield handle
    handle.faults(**FAULTS_OFF)
