"""The fixed layout and dependency direction from the design."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The assembly, and the fault harness that drives the whole assembled service:
# the only `ledger` modules allowed to import the feature packages.
ASSEMBLY = {"app.py", "cli.py", "__main__.py", "torture.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_layout() -> None:
    for name in (
        "pyproject.toml",
        "README.md",
        "ledger",
        "issuer",
        "verifier",
        "migrations",
        "tests",
        "openapi",
    ):
        assert (ROOT / name).exists(), name
    assert (ROOT / ".ci" / "run").exists()


def test_ledger_depends_on_neither_issuer_nor_verifier() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "ledger").rglob("*.py")
        if path.name not in ASSEMBLY and _imports(path) & {"issuer", "verifier"}
    ]
    assert offenders == []


def test_nothing_imports_tests() -> None:
    for package in ("ledger", "issuer", "verifier"):
        for path in (ROOT / package).rglob("*.py"):
            assert "tests" not in _imports(path), path
