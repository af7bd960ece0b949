"""docs/api.md stays the map of the public API: every exported name is on it."""

from __future__ import annotations

import re
from pathlib import Path

import delta_actors as delta

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_public_name_is_documented_in_api_md():
    text = API_DOC.read_text(encoding="utf-8")
    # Classes by name; functions (lower case) only as `delta.name`.
    documented = set(re.findall(r"`(?:delta\.)?([A-Z]\w+)", text))
    documented |= set(re.findall(r"`delta\.([a-z]\w+)", text))
    missing = sorted(set(delta.__all__) - documented)
    assert missing == [], f"add these to docs/api.md: {missing}"


def test_api_md_names_nothing_that_is_not_exported():
    text = API_DOC.read_text(encoding="utf-8")
    named = set(re.findall(r"`delta\.([A-Za-z]\w+)", text))
    assert sorted(named - set(delta.__all__)) == []
