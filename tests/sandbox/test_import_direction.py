"""Which way the imports run between the stand-ins, the local stacks and the product (architecture.md).

`sandbox/` holds only the API stand-ins: they speak the BSS's and Autotask's contracts and know nothing of the
product, so a sandbox behaviour can never be a copy of the code it tests. `stacks/` starts local processes for the
demo, `make ui`, `make stack`, the tests and the benchmarks; the command-line scripts use it, never the other way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def imports_of(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    offending = {}
    for path in sorted((REPO_ROOT / folder).glob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden)
        if bad:
            offending[path.name] = bad
    return offending


def test_the_sandboxes_import_nothing_of_the_product_or_the_scripts() -> None:
    assert imports_of("sandbox", ("include", "plugins", "dags", "scripts", "stacks", "connectors", "tests")) == {}


def test_the_local_stacks_import_nothing_of_the_scripts() -> None:
    assert imports_of("stacks", ("scripts", "tests")) == {}


@pytest.mark.parametrize(
    "source", ["import scripts.run", "from include.loader import x", "def f():\n    import dags.x"]
)
def test_the_check_sees_every_form_of_import(tmp_path: Path, source: str) -> None:
    (tmp_path / "module.py").write_text(source + "\n")
    assert imported_modules(tmp_path / "module.py") & {"scripts.run", "include.loader", "dags.x"}
