"""``coap/`` is sans-I/O and standalone: standard library only, nothing of the project."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

COAP_DIR = Path(__file__).resolve().parents[2] / "coap"
SOURCES = sorted(COAP_DIR.rglob("*.py"))
# Standard-library modules a sans-I/O codec has no business importing.
IO_MODULES = {"socket", "asyncio", "selectors", "logging", "ssl", "threading", "subprocess"}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(top-level module, relative level) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0], node.level))
    return found


def test_sources_found() -> None:
    names = {p.name for p in SOURCES}
    assert {"__init__.py", "_codec.py", "codes.py", "options.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_only_standard_library_imports(path: Path) -> None:
    for module, level in _imports(path):
        if level:  # relative: inside coap/ by construction
            continue
        assert module != "collector", f"{path.name} imports collector"
        assert module in sys.stdlib_module_names or module == "__future__", (
            f"{path.name} imports non-stdlib {module!r}"
        )
        assert module not in IO_MODULES, f"{path.name} imports I/O module {module!r}"


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    # Guards the guard: the walker must see nested and from-imports.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import collector.events\n    from orjson import dumps\n")
    modules = {m for m, _ in _imports(bad)}
    assert modules == {"collector", "orjson"}
    assert "orjson" not in sys.stdlib_module_names
