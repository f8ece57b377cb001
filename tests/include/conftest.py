"""Fixtures the loader, report and reversal tests share: the Autotask sandbox over HTTP, one per test module,
and its admin handle, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.launcher import RunningServer
from tests.include.loader_support import SandboxAdmin, sandbox_server


@pytest.fixture(scope="module")
def autotask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from sandbox_server(tmp_path_factory.mktemp("logs"))


@pytest.fixture
def admin(autotask) -> SandboxAdmin:
    """The sandbox's admin handle on an empty, reset sandbox (a module that injects faults overrides this to take
    them off again after each test)."""
    handle = SandboxAdmin(autotask)
    handle.reset()
    return handle
