"""The README's settings table is what an operator reads before changing a setting: each default it states is
the default the code has, and every setting it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from include.sync_settings import SyncSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_defaults() -> dict[str, str]:
    """`setting -> default` as the README's *Settings* table states them (`a` / `b` rows split in two)."""
    section = README.read_text(encoding="utf-8").split("### Settings", 1)[1].split("\n### ", 1)[0]
    defaults: dict[str, str] = {}
    for row in re.findall(r"^\|(.+)\|$", section, re.MULTILINE):
        cells = [cell.strip() for cell in row.split("|")]
        names = re.findall(r"`(\w+)`", cells[0])
        if not names or cells[0] == "setting":
            continue
        values = [value.strip().strip("`") for value in cells[1].split(" / ")]
        assert len(values) == len(names), f"the row of {names} states {len(values)} defaults"
        defaults.update(zip(names, values, strict=True))
    return defaults


def _as_documented(value: object) -> str:
    if value is None or value in ((), []):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_default_the_readme_states_is_the_codes_default() -> None:
    documented = documented_defaults()
    actual = SyncSettings().as_dict()
    assert len(documented) >= 20, documented  # the table was read, not skipped
    unknown = set(documented) - set(actual)
    assert not unknown, f"the README names settings the code does not have: {unknown}"
    assert {name: _as_documented(actual[name]) for name in documented} == documented
