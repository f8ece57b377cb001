"""docker-compose.yaml, checked statically (no Docker engine runs on these machines)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_every_airflow_3_component_runs_with_its_command(compose: dict) -> None:
    services = compose["services"]
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert "airflow db migrate" in " ".join(services["airflow-init"]["command"])


def test_celery_executor_with_redis_and_postgres_metadata(compose: dict) -> None:
    env = compose["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = env["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://") and "@redis:6379" in broker
    assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert {"postgres", "redis", "warehouse-db"} <= set(compose["services"])
    assert compose["services"]["redis"]["image"].startswith("redis:")


def test_the_warehouse_is_its_own_postgres_reached_through_the_connection(compose: dict) -> None:
    env = compose["services"]["airflow-worker"]["environment"]
    assert env["AIRFLOW_CONN_BILLING_WAREHOUSE"].startswith("postgres://")
    assert "@warehouse-db:5432/" in env["AIRFLOW_CONN_BILLING_WAREHOUSE"]
    assert compose["services"]["warehouse-db"]["image"].startswith("postgres:")


def test_project_folders_are_mounted_where_airflow_looks(compose: dict) -> None:
    volumes = compose["services"]["airflow-worker"]["volumes"]
    for folder in ("dags", "plugins", "include", "expectations"):
        assert f"./{folder}:/opt/airflow/{folder}" in volumes
        assert (ROOT / folder).is_dir()
    assert "/opt/airflow/plugins" in compose["services"]["airflow-worker"]["environment"]["PYTHONPATH"]


def test_sandboxes_start_only_with_their_profile_and_the_connections_default_to_them(compose: dict) -> None:
    services = compose["services"]
    for name, module in (("bss-sandbox", "sandbox.bss_server"), ("autotask-sandbox", "sandbox.autotask_server")):
        assert services[name]["profiles"] == ["sandbox"]
        assert module in services[name]["command"]
        assert "0.0.0.0" in services[name]["command"]
    env = services["airflow-worker"]["environment"]
    assert "bss-sandbox:8781" in env["AIRFLOW_CONN_BSS_DEFAULT"]
    assert "autotask-sandbox:8782" in env["AIRFLOW_CONN_AUTOTASK_DEFAULT"]


def test_services_wait_for_their_dependencies(compose: dict) -> None:
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"


def test_the_image_installs_the_lock(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2" in dockerfile
    assert "requirements.txt" in dockerfile
    assert compose["services"]["airflow-worker"]["build"] == "."
