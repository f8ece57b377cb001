"""Fast inserts of many rows (snapshot, links, plan): the driver's own batch call, without per-row
SQLAlchemy parameter processing, which dominates at 100k+ rows. Same transaction as `conn`.

A candidate for `Warehouse.insert` itself; kept here until the warehouse's owner takes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

from include.warehouse import Warehouse

_BATCH = 5_000


def bulk_insert(conn: Connection, warehouse: Warehouse, table_name: str, rows: Sequence[Mapping[str, Any]],
                ignore_conflicts: bool = False) -> int:
    """Insert `rows` (dicts with the same keys) into `table_name`; returns how many were sent.

    `ignore_conflicts` skips rows whose primary key exists (ON CONFLICT DO NOTHING, both dialects).
    """
    if not rows:
        return 0
    columns = list(rows[0])
    table = warehouse.table(table_name)  # also checks the table exists
    names = ", ".join(columns)
    suffix = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    dbapi = conn.connection.driver_connection
    if warehouse.dialect == "sqlite":
        statement = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' for _ in columns)}){suffix}"
        cursor = dbapi.cursor()
        try:
            for start in range(0, len(rows), _BATCH):
                cursor.executemany(statement, _sqlite_tuples(rows[start : start + _BATCH], columns))
        finally:
            cursor.close()
        return len(rows)
    if warehouse.dialect == "postgresql":
        from psycopg2.extras import execute_values

        statement = f"INSERT INTO {table.name} ({names}) VALUES %s{suffix}"
        with dbapi.cursor() as cursor:
            for start in range(0, len(rows), _BATCH):
                execute_values(cursor, statement, [tuple(row[name] for name in columns)
                                                   for row in rows[start : start + _BATCH]], page_size=_BATCH)
        return len(rows)
    raise NotImplementedError(f"bulk_insert supports sqlite and postgresql, not {warehouse.dialect}")


def _sqlite_tuples(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> list[tuple]:
    """The rows as tuples, column by column: only columns holding a convertible type are converted."""
    values = []
    for name in columns:
        column = [row[name] for row in rows]
        types = set(map(type, column)) - _PLAIN_TYPES
        if len(types) == 1:
            # one convertible type besides plain values (None included): convert just its values
            kind = types.pop()
            convert = _SQLITE_CONVERSIONS.get(kind)
            if convert is not None:
                column = [convert(value) if type(value) is kind else value for value in column]
        elif types:
            column = [_sqlite_value(value) for value in column]
        values.append(column)
    return list(zip(*values, strict=True))


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), bytes})


def _sqlite_value(value: Any) -> Any:
    # the representations SQLAlchemy's SQLite types store and read back
    convert = _SQLITE_CONVERSIONS.get(type(value))
    return value if convert is None else convert(value)


_SQLITE_CONVERSIONS = {
    Decimal: float,
    datetime: lambda value: value.strftime("%Y-%m-%d %H:%M:%S.%f"),
    date: date.isoformat,
}
