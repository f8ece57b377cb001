"""The warehouse schema is versioned and applies the same way on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.warehouse import (
    MIGRATIONS_DIR,
    Warehouse,
    WarehouseError,
    split_statements,
    url_from_connection_fields,
)


def test_every_migration_is_applied_once_and_recorded(warehouse: Warehouse) -> None:
    expected = {path.name for path in MIGRATIONS_DIR.glob("*.sql")}
    recorded = {row["name"] for row in warehouse.query("SELECT name FROM schema_migrations")}
    assert recorded == expected
    assert warehouse.migrate() == []  # a second run applies nothing


def test_money_and_dates_round_trip_exactly(warehouse: Warehouse) -> None:
    row = {
        "run_id": "r1",
        "month": "2026-10",
        "status": "running",
        "started_at": sa.func.current_timestamp(),
    }
    with warehouse.begin() as conn:
        conn.execute(warehouse.table("extract_runs").insert().values(**row))
    line = {
        "month": "2026-10",
        "charge_id": "CHG-1",
        "account_id": "ACC-1",
        "account_name": "Müller & Söhne GmbH",
        "account_code": None,
        "subscription_id": "SUB-1",
        "subscription_status": "Active",
        "product_id": "PRD-1",
        "product_sku": "SKU",
        "product_name": "P",
        "billing_plan_id": None,
        "billing_plan_name": None,
        "billing_period": "Monthly",
        "billing_cycle": "Annual",
        "charge_type": "Recurring",
        "action": "Cycle",
        "quantity": Decimal("3"),
        "subscription_quantity": Decimal("28"),
        "unit_cost": Decimal("10.1234"),
        "unit_price": Decimal("12.5"),
        "currency": "EUR",
        "charge_start_date": "2026-10-01",
        "charge_end_date": "2026-10-31",
        "effective_date": "2026-10-18",
        "invoice_id": None,
        "run_id": "r1",
    }
    from datetime import date

    line.update(
        charge_start_date=date(2026, 10, 1), charge_end_date=date(2026, 10, 31), effective_date=date(2026, 10, 18)
    )
    with warehouse.begin() as conn:
        warehouse.insert(conn, "charge_lines", [line])
    stored = warehouse.query("SELECT unit_cost, effective_date, account_name FROM charge_lines")[0]
    assert Decimal(str(stored["unit_cost"])) == Decimal("10.1234")
    assert str(stored["effective_date"])[:10] == "2026-10-18"
    assert stored["account_name"] == "Müller & Söhne GmbH"


def test_a_failed_transaction_leaves_nothing(warehouse: Warehouse) -> None:
    with pytest.raises(RuntimeError), warehouse.begin() as conn:
        conn.execute(
            warehouse.table("extract_runs")
            .insert()
            .values(run_id="r2", month="2026-10", status="running", started_at=sa.func.current_timestamp())
        )
        raise RuntimeError("boom")
    assert warehouse.scalar("SELECT COUNT(*) FROM extract_runs WHERE run_id = 'r2'") == 0


def test_unknown_table_names_the_fix(sqlite_url: str) -> None:
    with pytest.raises(WarehouseError, match="run migrate"):
        Warehouse(sqlite_url).table("charge_lines")


def test_connection_fields_become_urls(tmp_path: Path) -> None:
    assert url_from_connection_fields("sqlite", host=str(tmp_path / "w.db")) == f"sqlite:///{tmp_path / 'w.db'}"
    url = url_from_connection_fields("postgres", "db.example", 5433, "user", "p@ss word", "billing")
    assert url == "postgresql+psycopg2://user:p%40ss+word@db.example:5433/billing"
    assert url_from_connection_fields("http", extra={"sqlalchemy_url": "sqlite://"}) == "sqlite://"
    with pytest.raises(WarehouseError, match="not supported"):
        url_from_connection_fields("mysql")


def test_repr_hides_the_password() -> None:
    handle = Warehouse("postgresql+psycopg2://user:topsecret@127.0.0.1:1/x")
    assert "topsecret" not in repr(handle)


def test_ddl_scripts_split_on_statement_ends() -> None:
    script = "-- comment\nCREATE TABLE a (x INTEGER);\nCREATE INDEX i ON a (x);\n"
    assert split_statements(script) == ["CREATE TABLE a (x INTEGER)", "CREATE INDEX i ON a (x)"]
