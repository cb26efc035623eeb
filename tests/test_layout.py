"""The fixed layout, and the rooms inside it with their dependency direction.

The rooms, from the bottom up (the README's architecture section draws them): a
module may import its own room and the rooms below it, never one above. So there
are no package cycles, the core knows nothing of the features, and only the
assembly (`ledger.app`, `ledger.tooling`, `ledger.cli`) sees everything.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROOMS_BOTTOM_UP = (
    "ledger",  # errors, limits, ids, settings
    "ledger.observability",  # log lines, metrics, the request in flight
    "ledger.db",  # pool, migrations runner, named SQL, embedded PostgreSQL
    "ledger.access",  # API keys and roles
    "ledger.http",  # problems, request guard, strict bodies, OpenAPI helpers
    "ledger.core",  # the double-entry core: accounts, transfers, audit
    "verifier",  # credit-token and receipt formats (PASETO), shared with clients
    "verifier.charges",  # verify-and-debit: the hot path
    "issuer",  # signing keys, credit tokens
    "issuer.topups",  # card and USDC top-ups
    "ledger.usage",  # usage roll-up, analytics, exports, operator lists
    "verifier.sdk",  # code that runs in other people's processes
    "ledger.dashboard",  # the web dashboard (server-rendered pages)
    "ledger.app",  # the HTTP app assembly
    "ledger.tooling",  # bench, torture, demo, load generator
    "ledger.cli",  # the `ledger` command
)
PACKAGES = ("ledger", "issuer", "verifier")


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if module == "ledger.__main__":
        return "ledger.cli"
    if len(parts) > 1 and (ROOT / parts[0] / parts[1]).is_dir():
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]


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


def test_every_module_is_in_a_room() -> None:
    rooms = {_room(_module_of(path)) for path in _sources()}
    assert rooms == set(ROOMS_BOTTOM_UP)


def test_imports_only_run_down() -> None:
    rank = {room: i for i, room in enumerate(ROOMS_BOTTOM_UP)}
    upward = []
    for path in _sources():
        here = _room(_module_of(path))
        assert here is not None
        for name in _imported_modules(path):
            there = _room(name)
            if there is not None and rank[there] > rank[here]:
                upward.append(f"{path.relative_to(ROOT)} ({here}) imports {name} ({there})")
    assert upward == []


def test_nothing_imports_tests() -> None:
    for path in _sources():
        assert not any(name.split(".")[0] == "tests" for name in _imported_modules(path)), path


def test_every_package_ships() -> None:
    """The build lists every package folder (and the migrations, mapped into the
    package), so a wheel holds all the code, SQL and migrations."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        _module_of(init.parent / "x")[: -len(".x")]
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert set(config["packages"]) == folders | {"ledger.migrations"}
    assert config["package-dir"] == {"ledger.migrations": "migrations"}
