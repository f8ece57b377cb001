"""The warehouse schema is versioned and applies the same way on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
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
    sqlite = url_from_connection_fields("sqlite", host=str(tmp_path / "w.db"))
    assert sqlite.render_as_string() == f"sqlite:///{tmp_path / 'w.db'}"
    url = url_from_connection_fields("postgres", "db.example", 5433, "user", "p@ss word", "billing")
    assert (url.drivername, url.host, url.port, url.database) == ("postgresql+psycopg2", "db.example", 5433, "billing")
    assert (url.username, url.password) == ("user", "p@ss word")  # not "p@ss+word"
    assert str(url_from_connection_fields("http", extra={"sqlalchemy_url": "sqlite://"})) == "sqlite://"
    with pytest.raises(WarehouseError, match="not supported"):
        url_from_connection_fields("mysql")


HOSTILE_PASSWORD = "p@ss word+/%:#?50%"


def test_a_password_with_url_characters_survives_the_url_as_text() -> None:
    url = url_from_connection_fields("postgres", "127.0.0.1", 5432, "bill@ing user", HOSTILE_PASSWORD, "billing")
    assert url.password == HOSTILE_PASSWORD
    # The text form (what an env var or a log would carry, password shown) parses back to the same password.
    reparsed = sa.make_url(url.render_as_string(hide_password=False))
    assert (reparsed.username, reparsed.password) == ("bill@ing user", HOSTILE_PASSWORD)


def test_a_role_with_url_characters_in_name_and_password_connects_to_postgres(postgres_url: str) -> None:
    role = f"bill@ing user/+%:{uuid.uuid4().hex[:8]}"  # roles are server-wide: one per test run
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    def as_admin(statement: str) -> None:
        # Straight to the driver, without parameters: "%" in the name and password is not a placeholder.
        with admin.connect() as conn, conn.connection.driver_connection.cursor() as cursor:
            cursor.execute(statement)

    as_admin(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{HOSTILE_PASSWORD}'")
    try:
        server = sa.make_url(postgres_url)
        url = url_from_connection_fields("postgres", server.host, server.port, role, HOSTILE_PASSWORD, server.database)
        warehouse = Warehouse(url)
        try:
            assert warehouse.scalar("SELECT current_user") == role
        finally:
            warehouse.dispose()
    finally:
        as_admin(f'DROP OWNED BY "{role}"')
        as_admin(f'DROP ROLE "{role}"')
        admin.dispose()


# --- migrations apply all or nothing ------------------------------------------------------------------------


def _migrations_dir(tmp_path: Path, second: str) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir(exist_ok=True)
    (directory / "0001_first.sql").write_text("CREATE TABLE first_table (id INTEGER PRIMARY KEY);\n")
    (directory / "0002_second.sql").write_text(second)
    return directory


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_failing_migration_leaves_nothing_behind_and_a_fixed_retry_succeeds(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url")
    warehouse = Warehouse(url)
    broken = (
        "CREATE TABLE second_table (id INTEGER PRIMARY KEY, name VARCHAR(20));\n"
        "CREATE INDEX ix_second_name ON second_table (name);\n"
        "CREATE TABLE third_table (id INTEGER PRIMARY KEY, second_id INTEGER REFERENCES missing_table (id) x);\n"
    )
    try:
        with pytest.raises(sa.exc.DBAPIError):
            warehouse.migrate(_migrations_dir(tmp_path, broken))
        with warehouse.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert "first_table" in tables and not tables & {"second_table", "third_table"}
        assert warehouse.applied_versions() == {"0001"}

        fixed = broken.replace(" REFERENCES missing_table (id) x", "")
        assert warehouse.migrate(_migrations_dir(tmp_path, fixed)) == ["0002_second.sql"]
        with warehouse.begin() as conn:
            conn.execute(sa.text("INSERT INTO second_table (id, name) VALUES (1, 'Société')"))
        assert warehouse.applied_versions() == {"0001", "0002"}
        # Normal use keeps the driver's own transactions: a failed transaction still leaves nothing.
        with pytest.raises(RuntimeError), warehouse.begin() as conn:
            conn.execute(sa.text("INSERT INTO second_table (id, name) VALUES (2, 'Müller')"))
            raise RuntimeError("boom")
        assert warehouse.scalar("SELECT COUNT(*) FROM second_table") == 1
    finally:
        warehouse.dispose()


def test_attempts_migration_keeps_existing_runs_as_first_attempts(sqlite_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "before_0006"
    directory.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name < "0006":
            (directory / path.name).write_text(path.read_text())
    warehouse = Warehouse(sqlite_url)
    warehouse.migrate(directory)
    with warehouse.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO extract_runs (run_id, month, status, started_at) "
                "VALUES ('old-run', '2026-09', 'succeeded', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO bss_charges_raw (run_id, seq, month, charge_id, payload) "
                "VALUES ('old-run', 0, '2026-09', 'CHG-1', '{}')"
            )
        )
    assert warehouse.migrate() == [path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql")) if path.name >= "0006"]
    assert warehouse.query("SELECT run_id, attempt, status FROM extract_runs") == [
        {"run_id": "old-run", "attempt": 1, "status": "succeeded"}
    ]
    assert warehouse.query("SELECT run_id, attempt, seq FROM bss_charges_raw") == [
        {"run_id": "old-run", "attempt": 1, "seq": 0}
    ]
    warehouse.dispose()


def test_repr_hides_the_password() -> None:
    handle = Warehouse("postgresql+psycopg2://user:topsecret@127.0.0.1:1/x")
    assert "topsecret" not in repr(handle)


def test_ddl_scripts_split_on_statement_ends() -> None:
    script = "-- comment\nCREATE TABLE a (x INTEGER);\nCREATE INDEX i ON a (x);\n"
    assert split_statements(script) == ["CREATE TABLE a (x INTEGER)", "CREATE INDEX i ON a (x)"]
