"""`make ui` (scripts/ui.py) as a person runs it: it prints the URL and a login that works, and Ctrl-C stops every
process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from stacks.launcher import free_port
from tests.servers import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _processes_with_airflow_home(home: Path) -> list[str]:
    marker = f"AIRFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append(f"{entry.name} {command}")
        except OSError:
            continue
    return found


def test_make_ui_prints_a_working_login_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    home, port = tmp_path / "airflow-home", free_port()
    output = tmp_path / "ui.out"
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "scripts/ui.py", "--port", str(port), "--state-dir", str(tmp_path / "var")],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # like a terminal: Ctrl-C goes to the script's process group
        )
    try:
        deadline = time.monotonic() + 300
        while "Press Ctrl-C" not in output.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, output.read_text()
            time.sleep(1)
        printed = output.read_text()
        assert f"Airflow UI:  http://localhost:{port}" in printed, printed
        login = re.search(r"login:\s+admin / (\S+)", printed)
        assert login, printed
        token = httpx.post(
            f"http://127.0.0.1:{port}/auth/token", json={"username": "admin", "password": login.group(1)}, timeout=30
        )
        assert token.status_code == 201
        anonymous = httpx.get(f"http://127.0.0.1:{port}/api/v2/dags", timeout=30)
        assert anonymous.status_code == 401  # a real login: no anonymous admin
        health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=30).json()
        for component in ("scheduler", "dag_processor", "triggerer"):
            assert health[component]["status"] == "healthy", health
        assert _processes_with_airflow_home(home)

        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "stopped: api-server, scheduler, dag-processor, triggerer and both sandboxes" in output.read_text()
    assert _processes_with_airflow_home(home) == []
