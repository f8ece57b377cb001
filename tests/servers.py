"""Start the project's HTTP servers as real subprocesses in tests (see `sandbox.launcher`)."""

from sandbox.launcher import REPO_ROOT, RunningServer, free_port, start_server

__all__ = ["REPO_ROOT", "RunningServer", "free_port", "start_server"]
