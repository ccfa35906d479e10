"""The layering the style guide promises, read from the source with ``ast`` (nothing is imported).

- the mapping engine is pure: no web framework, no database, no HTTP client;
- ``state/`` folds and applies without importing SQLAlchemy (it gets connections from ``db/``);
- above ``db/``, SQLAlchemy is named for connection and engine types at most, and only by the modules
  listed in ``SQLALCHEMY_TYPES_ONLY`` (a list that may only shrink); nobody above ``db/`` builds SQL;
- packages form no import cycle beyond the ones listed in ``KNOWN_CYCLES`` (which may only shrink).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

#: What a pure module must not import.
IMPURE = ("fastapi", "starlette", "sqlalchemy", "httpx", "uvicorn")
#: SQLAlchemy names that are handles, not SQL: a layer above ``db/`` may pass them along.
HANDLE_NAMES = frozenset({"Connection", "Engine"})
#: Modules above ``db/`` that still import SQLAlchemy's handle types instead of ``gateway.db.engine``'s
#: ``Database`` / ``DbConnection``. Remove a line when its module is fixed; never add one.
SQLALCHEMY_TYPES_ONLY: frozenset[str] = frozenset()
#: Modules above ``db/`` that still use SQLAlchemy for more than a handle type, and what for. Only shrinks.
SQLALCHEMY_BEYOND_TYPES: dict[str, str] = {}
#: Import cycles between packages (strongly connected components) still to be broken. Only shrinks.
KNOWN_CYCLES = (
    frozenset({"auth", "state", "subscriptions"}),  # state/apply → subscriptions; nde_* → state; policy/worker
    frozenset({"api", "runtime", "web"}),  # web pages call api routes' helpers; runtime builds the web app
)


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(GATEWAY.rglob("*.py")):
        yield path.relative_to(GATEWAY).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


@cache
def _imports() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Each module's imports anywhere in it (functions and ``TYPE_CHECKING`` blocks too): (module, names)."""
    found: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for rel, tree in _modules():
        items: list[tuple[str, tuple[str, ...]]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                items.extend((alias.name, ()) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{rel}: relative import"
                items.append((node.module or "", tuple(alias.name for alias in node.names)))
        found[rel] = items
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _unit(rel: str) -> str:
    """A package (``fhir``) or a top-level module (``pipeline``): the nodes of the cycle check."""
    return rel.split("/", 1)[0].removesuffix(".py")


def _offences(prefix: str, banned: tuple[str, ...]) -> list[str]:
    return [
        f"{rel} imports {module}"
        for rel, items in _imports().items()
        if rel.startswith(prefix)
        for module, _ in items
        if _top(module) in banned
    ]


def test_the_mapping_engine_is_pure() -> None:
    assert _offences("mapping/", IMPURE) == []


def test_state_does_not_import_sqlalchemy() -> None:
    assert _offences("state/", ("sqlalchemy",)) == []


def _sqlalchemy_users() -> dict[str, set[str]]:
    users: dict[str, set[str]] = {}
    for rel, items in _imports().items():
        if rel.startswith("db/"):
            continue
        for module, names in items:
            if _top(module) == "sqlalchemy":
                users.setdefault(rel, set()).update({f"{module}.{n}" for n in names} or {module})
    return users


def test_nothing_above_db_builds_sql() -> None:
    beyond = {
        rel: sorted(n for n in names if n.rsplit(".", 1)[-1] not in HANDLE_NAMES or n.count(".") > 1)
        for rel, names in _sqlalchemy_users().items()
    }
    beyond = {rel: names for rel, names in beyond.items() if names}
    assert set(beyond) <= set(SQLALCHEMY_BEYOND_TYPES), beyond


def test_above_db_sqlalchemy_types_only_where_listed() -> None:
    users = set(_sqlalchemy_users())
    assert users <= SQLALCHEMY_TYPES_ONLY | set(SQLALCHEMY_BEYOND_TYPES), sorted(
        users - SQLALCHEMY_TYPES_ONLY - set(SQLALCHEMY_BEYOND_TYPES)
    )
    fixed = (SQLALCHEMY_TYPES_ONLY | set(SQLALCHEMY_BEYOND_TYPES)) - users
    assert not fixed, f"no longer import SQLAlchemy: remove {sorted(fixed)} from the lists"


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for rel, items in _imports().items():
        source = _unit(rel)
        for module, _ in items:
            parts = module.split(".")
            if parts[0] == "gateway" and len(parts) > 1 and parts[1] != source:
                edges.setdefault(source, set()).add(parts[1])
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative over a small graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_new_package_cycles() -> None:
    cycles = _cycles(_graph())
    assert sorted(map(sorted, cycles)) == sorted(map(sorted, KNOWN_CYCLES)), (
        "a new cycle, or a known one broken (then shrink KNOWN_CYCLES)"
    )


#: Edges that would bring back a broken cycle: fhir renders subscriptions' topics, so nothing fhir
#: needs may depend on fhir (the canonical URLs and token lists live in leaf modules for that).
@pytest.mark.parametrize(("importer", "imported"), [("subscriptions", "fhir"), ("mapping", "fhir"), ("db", "fhir")])
def test_no_upward_import(importer: str, imported: str) -> None:
    assert imported not in _graph().get(importer, set())


@pytest.mark.parametrize("leaf", ["canonical", "token_lists", "clock", "errors"])
def test_leaf_modules_import_nothing_from_the_gateway(leaf: str) -> None:
    assert _graph().get(leaf, set()) == set()
