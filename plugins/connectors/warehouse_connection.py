"""The `billing_warehouse` Airflow connection turned into a `Warehouse` (SQLite file by default)."""

from __future__ import annotations

import logging
import os

from sqlalchemy.engine import URL

from include.warehouse import Warehouse, url_from_connection_fields

log = logging.getLogger(__name__)

WAREHOUSE_CONN_ID = "billing_warehouse"


def warehouse_url(conn_id: str = WAREHOUSE_CONN_ID) -> str | URL:
    """The SQLAlchemy URL of the warehouse: the connection if defined, else `BILLING_WAREHOUSE_URL`, else SQLite.

    From a connection it is a URL object, so the password reaches the driver exactly as stored.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        url = os.environ.get("BILLING_WAREHOUSE_URL")
        if url:
            return url
        log.info("no %r connection: using the default SQLite warehouse", conn_id)
        return Warehouse().engine.url.render_as_string(hide_password=False)
    return url_from_connection_fields(
        conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra_dejson
    )


def get_warehouse(conn_id: str = WAREHOUSE_CONN_ID, migrate: bool = True) -> Warehouse:
    warehouse = Warehouse(warehouse_url(conn_id))
    if migrate:
        applied = warehouse.migrate()
        if applied:
            log.info("warehouse schema upgraded: %s", ", ".join(applied))
    return warehouse
