"""The staging warehouse: connection, versioned schema, and small helpers every stage uses.

SQLite file by default, PostgreSQL in production. The schema is versioned DDL in
`include/sql/migrations/NNNN_name.sql`, applied in order once each and recorded in `schema_migrations`.
Queries that shape or compare data live in `include/sql/*.sql` and are loaded by name with `sql()`.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SAWarning

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
DEFAULT_SQLITE_PATH = Path(__file__).resolve().parent.parent / "var" / "warehouse.db"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_INSERT_BATCH = 5_000
# First key of the PostgreSQL advisory locks that serialise writers of one month ("BILL" in ASCII).
_MONTH_LOCK_NAMESPACE = 0x42494C4C

# SQLite keeps NUMERIC as REAL; 4-decimal money round-trips exactly at our magnitudes, so the warning
# about Decimal emulation is noise here. PostgreSQL stores exact NUMERIC.
warnings.filterwarnings("ignore", category=SAWarning, message=".*does \\*not\\* support Decimal.*")


class WarehouseError(RuntimeError):
    """The warehouse is unreachable or its schema is not what this code expects."""


@cache
def sql(name: str) -> str:
    """The text of `include/sql/<name>.sql`."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise WarehouseError(f"no SQL file {path}")
    return path.read_text()


def split_statements(script: str) -> list[str]:
    """Split a DDL script on `;` at line ends, dropping `--` comment lines (no procedural SQL here)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements = re.split(r";\s*(?:\n|$)", "\n".join(lines))
    return [statement.strip() for statement in statements if statement.strip()]


def url_from_connection_fields(
    conn_type: str | None,
    host: str | None = None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> URL:
    """A SQLAlchemy URL from an Airflow connection's fields (`billing_warehouse`).

    `extra.sqlalchemy_url` wins; conn_type `sqlite` takes the file path in host; `postgres` the usual fields.
    Built as a URL object, never as escaped text: a password like "p@ss word/+%:" reaches the server as is.
    """
    extra = extra or {}
    if extra.get("sqlalchemy_url"):
        return sa.make_url(str(extra["sqlalchemy_url"]))
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        return URL.create("sqlite", database=host or schema or str(DEFAULT_SQLITE_PATH))
    if kind in {"postgres", "postgresql"}:
        return URL.create(
            "postgresql+psycopg2",
            username=login or None,
            password=password or None,
            host=host or "127.0.0.1",
            port=port or 5432,
            database=schema or "postgres",
        )
    raise WarehouseError(f"billing_warehouse connection type {conn_type!r} is not supported (sqlite, postgres)")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the review UI read while a task writes; busy_timeout waits instead of failing on a lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Warehouse:
    """A handle on the staging warehouse. Cheap to create; create one per task."""

    def __init__(self, url: str | URL | None = None, engine: Engine | None = None) -> None:
        if engine is None:
            url = sa.make_url(url or f"sqlite:///{DEFAULT_SQLITE_PATH}")
            if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, future=True, pool_pre_ping=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
        self.engine = engine
        self._metadata = sa.MetaData()
        self._reflecting = threading.Lock()  # tasks may share a handle across threads (concurrent extracts)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"Warehouse({self.engine.url.render_as_string(hide_password=True)})"

    # -- schema ---------------------------------------------------------------------------------
    def migrations(self, directory: Path = MIGRATIONS_DIR) -> list[tuple[str, Path]]:
        found = []
        for path in sorted(directory.glob("*.sql")):
            match = _MIGRATION_NAME.match(path.name)
            if not match:
                raise WarehouseError(f"migration file {path.name} must be named NNNN_lowercase_name.sql")
            found.append((match.group(1), path))
        versions = [version for version, _ in found]
        if len(set(versions)) != len(versions):
            raise WarehouseError(f"two migrations share a version number: {versions}")
        return found

    def applied_versions(self) -> set[str]:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("schema_migrations"):
                return set()
            return {row[0] for row in conn.execute(sa.text("SELECT version FROM schema_migrations"))}

    def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply the migrations not yet applied, each all or nothing in its own transaction.

        Returns what was applied. A migration that fails leaves nothing of itself behind (no half-made
        table), so fixing it and migrating again succeeds.
        """
        with self._ddl_transaction() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version VARCHAR(4) PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at TIMESTAMP NOT NULL)"
                )
            )
        applied = self.applied_versions()
        newly_applied = []
        try:
            for version, path in self.migrations(directory):
                if version in applied:
                    continue
                with self._ddl_transaction() as conn:
                    for statement in split_statements(path.read_text()):
                        conn.execute(sa.text(statement))
                    conn.execute(
                        sa.text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                        {"v": version, "n": path.name, "t": utcnow()},
                    )
                log.info("warehouse: applied migration %s", path.name)
                newly_applied.append(path.name)
        finally:
            self._metadata = sa.MetaData()
        return newly_applied

    @contextmanager
    def _ddl_transaction(self) -> Iterator[Connection]:
        """A transaction that DDL is part of, on both databases.

        PostgreSQL's DDL is transactional as is. Python's sqlite3 driver opens its own transactions only
        before INSERT/UPDATE/DELETE, so a CREATE TABLE commits by itself and a failing migration would leave
        half its tables behind. SQLAlchemy's documented fix ("Serializable isolation / Savepoints /
        Transactional DDL" in its SQLite dialect notes) switches the driver's own handling off and emits
        BEGIN; here only for this connection and only for the migration, so normal use is unchanged.
        """
        with self.engine.connect() as conn:
            if self.dialect != "sqlite":
                with conn.begin():
                    yield conn
                return
            dbapi = conn.connection.driver_connection
            driver_isolation = dbapi.isolation_level
            dbapi.isolation_level = None  # the driver now leaves BEGIN/COMMIT to us
            try:
                with conn.begin():
                    conn.exec_driver_sql("BEGIN")
                    yield conn
            finally:
                dbapi.isolation_level = driver_isolation

    def table(self, name: str) -> sa.Table:
        """The reflected table (cached): inserts through it get each dialect's typing right."""
        with self._reflecting:
            if name not in self._metadata.tables:
                try:
                    sa.Table(name, self._metadata, autoload_with=self.engine)
                except sa.exc.NoSuchTableError as error:
                    raise WarehouseError(f"warehouse table {name!r} does not exist: run migrate() first") from error
            return self._metadata.tables[name]

    def text_lengths(self, table_name: str) -> dict[str, int]:
        """The most characters each sized text column of a table keeps (e.g. account_name: 255).

        The migrations are the one place that sizes columns; typing checks values against this before
        writing, so an overlong value is named by record and field instead of failing in the driver.
        """
        return {
            column.name: column.type.length
            for column in self.table(table_name).columns
            if isinstance(column.type, sa.String) and column.type.length
        }

    # -- data -----------------------------------------------------------------------------------
    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything inside commits together or not at all."""
        with self.engine.begin() as conn:
            yield conn

    def insert(
        self,
        conn: Connection,
        table_name: str,
        rows: Iterable[Mapping[str, Any]],
        ignore_conflicts: bool = False,
    ) -> int:
        """Insert rows (dicts with the same keys) in batches, in `conn`'s transaction; returns how many were sent.

        Goes through the driver's own batch call: SQLAlchemy's per-row parameter processing dominated bulk loads
        (two thirds of the extract, most of the plan's writes). `ignore_conflicts` skips rows whose primary key
        exists (ON CONFLICT DO NOTHING on both dialects).
        """
        table = self.table(table_name)  # also checks that the table exists
        count = 0
        for batch in _batches(rows, _INSERT_BATCH):
            columns = list(batch[0])
            names = ", ".join(columns)
            suffix = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
            dbapi = conn.connection.driver_connection
            if self.dialect == "sqlite":
                placeholders = ", ".join("?" for _ in columns)
                cursor = dbapi.cursor()
                try:
                    cursor.executemany(
                        f"INSERT INTO {table.name} ({names}) VALUES ({placeholders}){suffix}",
                        _sqlite_tuples(batch, columns),
                    )
                finally:
                    cursor.close()
            elif self.dialect == "postgresql":
                from psycopg2.extras import execute_values

                with dbapi.cursor() as cursor:
                    execute_values(
                        cursor,
                        f"INSERT INTO {table.name} ({names}) VALUES %s{suffix}",
                        [tuple(row[name] for name in columns) for row in batch],
                        page_size=len(batch),
                    )
            else:
                conn.execute(table.insert(), batch)
            count += len(batch)
        return count

    def within(self, conn: Connection) -> Warehouse:
        """A handle whose every read and write joins `conn`'s open transaction (nothing commits on its own).

        A person's decision on the review page changes links, re-plans the affected lines and writes its audit row:
        all of it must commit together or not at all, and the re-plan must read the links the decision just wrote.
        The functions it calls take a warehouse and open their own connections and transactions; given this handle,
        they all use `conn` instead (`begin()` and `engine.connect()` yield it and neither commit nor close it)."""
        return _JoinedWarehouse(self, conn)

    def lock_month(self, conn: Connection, month: str) -> None:
        """Hold the month for writing until `conn`'s transaction ends: concurrent writers of a month queue.

        PostgreSQL: a transaction-scoped advisory lock on the month. SQLite: the database's write lock,
        taken now by a write that changes nothing (WAL lets only one writer in; busy_timeout makes the
        others wait rather than fail).
        """
        if self.dialect == "postgresql":
            year, number = (int(part) for part in month.split("-"))
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:namespace, :month)"),
                {"namespace": _MONTH_LOCK_NAMESPACE, "month": year * 100 + number},
            )
        elif self.dialect == "sqlite":
            conn.execute(sa.text("UPDATE schema_migrations SET version = version WHERE 1 = 0"))

    def query(self, statement: str | sa.TextClause, params: Mapping[str, Any] | None = None) -> list[dict]:
        """Run a read query (SQL text or the name of an `include/sql` file) and return rows as dicts."""
        text = statement if isinstance(statement, sa.TextClause) else sa.text(_resolve_sql(statement))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text, dict(params or {}))]

    def read_frame(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        """Like `query`, as a pandas DataFrame."""
        import pandas as pd

        with self.engine.connect() as conn:
            return pd.read_sql_query(sa.text(_resolve_sql(statement)), conn, params=dict(params or {}))

    def scalar(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(_resolve_sql(statement)), dict(params or {})).scalar()

    def dispose(self) -> None:
        self.engine.dispose()


class _JoinedEngine:
    """An engine stand-in for `Warehouse.within`: its connections are the one open transaction's connection."""

    def __init__(self, engine: Engine, conn: Connection) -> None:
        self._engine = engine
        self._conn = conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        yield self._conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        yield self._conn

    def dispose(self) -> None:  # the engine belongs to the warehouse the transaction came from
        pass

    def __getattr__(self, name: str) -> Any:  # dialect, url
        return getattr(self._engine, name)


class _JoinedWarehouse(Warehouse):
    def __init__(self, outer: Warehouse, conn: Connection) -> None:
        super().__init__(engine=_JoinedEngine(outer.engine, conn))  # type: ignore[arg-type]
        self._outer = outer

    def table(self, name: str) -> sa.Table:
        return self._outer.table(name)  # reflected once, by the warehouse's own engine

    def within(self, conn: Connection) -> Warehouse:
        return self


def _batches(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# How SQLAlchemy's SQLite types store these values (Numeric as REAL, DATE/DATETIME as ISO text).
_SQLITE_CONVERSIONS: dict[type, Any] = {
    Decimal: float,
    datetime: lambda value: value.strftime("%Y-%m-%d %H:%M:%S.%f"),
    date: date.isoformat,
}
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), bytes})


def _sqlite_tuples(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> list[tuple]:
    """The rows as tuples, converted column by column, and only the columns that hold a convertible type."""
    values = []
    for name in columns:
        column = [row[name] for row in rows]
        kinds = set(map(type, column)) - _PLAIN_TYPES
        if len(kinds) == 1:
            kind = kinds.pop()
            convert = _SQLITE_CONVERSIONS.get(kind)
            if convert is not None:
                column = [convert(value) if type(value) is kind else value for value in column]
        elif kinds:
            column = [_SQLITE_CONVERSIONS.get(type(value), _same)(value) for value in column]
        values.append(column)
    return list(zip(*values, strict=True))


def _same(value: Any) -> Any:
    return value


def _resolve_sql(statement: str) -> str:
    """A bare name like `month_lines` means `include/sql/month_lines.sql`."""
    return sql(statement) if re.fullmatch(r"[a-z0-9_]+", statement) else statement


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
