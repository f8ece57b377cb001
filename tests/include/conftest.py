"""What the include tests share (the Autotask sandbox and its admin handle are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def data_docs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's Data Docs go (`BILLING_DATA_DOCS_DIR`): its own folder, never the checkout's var/."""
    directory = tmp_path / "data_docs"
    monkeypatch.setenv("BILLING_DATA_DOCS_DIR", str(directory))
    return directory
