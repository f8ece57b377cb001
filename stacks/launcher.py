"""Start the project's HTTP servers (sandboxes, Airflow) as real subprocesses: for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    health_path: str = "/healthz"
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(
    module_args: list[str],
    env: dict[str, str] | None = None,
    port: int | None = None,
    health_path: str = "/healthz",
    timeout_s: float = 30.0,
    log_dir: Path | None = None,
) -> RunningServer:
    """Run `python -m <module_args...> --port <port>` and wait until GET health_path answers 200."""
    port = port or free_port()
    log_dir = log_dir or Path(os.environ.get("TEST_LOG_DIR", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{module_args[0].replace('.', '_')}-{port}.log"
    child_env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}", **(env or {})}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args, "--port", str(port)],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, port, log_path, health_path, module_args)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module_args[0]} exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.url + health_path, timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"{module_args[0]} did not become healthy in {timeout_s}s:\n{server.log()[-4000:]}")
