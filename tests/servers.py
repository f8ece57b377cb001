"""Start the project's HTTP servers as real subprocesses in tests (see `stacks.launcher`)."""

from stacks.launcher import REPO_ROOT, RunningServer, free_port, start_server

__all__ = ["REPO_ROOT", "RunningServer", "free_port", "start_server"]
