"""The package's rooms import downward only (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "delta_actors"

# Top to bottom; a room may import any room below it, and itself.
ROOMS = [
    ["__main__", "__init__"],
    ["ops", "testing"],
    ["web"],
    ["runtime"],
    ["leader"],
    ["context"],
    ["client"],
    ["bulk"],
    ["events"],
    ["resources"],
    ["queue"],
    ["app"],
    ["controller", "tracing"],
    ["middleware"],
    ["local"],
    ["db"],
    ["model", "config"],
    ["health"],
    ["outcomes", "errors", "cancellation"],
]
LEVEL = {room: level for level, rooms in enumerate(ROOMS) for room in rooms}


def room_of(module: str) -> str:
    """`delta_actors.queue.worker` -> `queue`; `delta_actors.client` -> `client`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "delta_actors":
                modules |= {f"delta_actors.{alias.name}" for alias in node.names}
            elif node.module.startswith("delta_actors."):
                modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules |= {a.name for a in node.names if a.name.startswith("delta_actors.")}
    return modules


def test_every_module_belongs_to_a_room():
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("delta_actors", *path.relative_to(PACKAGE).with_suffix("").parts))
        assert room_of(module) in LEVEL, f"{module} is in no room of docs/architecture.md"


def test_no_module_imports_a_room_above_its_own():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("delta_actors", *path.relative_to(PACKAGE).with_suffix("").parts))
        own = room_of(module)
        for imported in imports_of(path):
            other = room_of(imported)
            if other != own and LEVEL[other] <= LEVEL[own] and own not in ("__init__", "__main__"):
                upward.append(f"{module} imports {imported}")
    assert not upward, "imports that run upward:\n" + "\n".join(sorted(upward))
