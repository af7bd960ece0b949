"""docs/api.md documents every public name, so the reference cannot silently fall behind."""

from __future__ import annotations

import re
from pathlib import Path

import delta_actors as delta

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented() -> set[str]:
    return set(re.findall(r"^### (\w+)\s*$", API_DOC.read_text(), flags=re.MULTILINE))


def test_every_public_name_has_an_entry():
    missing = sorted(set(delta.__all__) - documented())
    assert not missing, f"add a `### name` entry to docs/api.md for: {', '.join(missing)}"


def test_every_entry_is_a_public_name():
    stale = sorted(documented() - set(delta.__all__))
    assert not stale, f"docs/api.md documents names that are not in __all__: {', '.join(stale)}"
