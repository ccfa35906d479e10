"""Golden files for unit tests: ``--update-golden`` rewrites them; without it a difference fails with a diff.

Run ``pytest tests/unit/test_golden.py --update-golden`` to regenerate, then review the change as a diff:
the terminal summary lists every golden file the run rewrote.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
REWRITTEN = pytest.StashKey[list[str]]()


@dataclass(slots=True)
class Golden:
    """Compares produced text with a golden file, or rewrites the file when ``update`` is set."""

    update: bool
    rewritten: list[str] = field(default_factory=list)

    def check(self, path: Path, actual: str, *, expected: str | None = None) -> None:
        """Fail unless ``actual`` equals the golden file. ``expected`` is what an update writes when it
        is not ``actual`` (a known bug's corrected output): the comparison with ``actual`` still fails."""
        name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        golden = path.read_text(encoding="utf-8") if path.exists() else None
        if self.update:
            wanted = actual if expected is None else expected
            if golden != wanted:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(wanted, encoding="utf-8")
                self.rewritten.append(f"{name} ({'changed' if golden is not None else 'new'})")
                golden = wanted
        if golden == actual:
            return
        if golden is None:
            pytest.fail(f"golden file {name} is missing; create it with --update-golden", pytrace=False)
        diff = difflib.unified_diff(
            golden.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{name} (golden)",
            tofile=f"{name} (actual)",
        )
        pytest.fail(
            f"output differs from golden file {name} (if intended, rerun with --update-golden and review):\n"
            + "".join(diff),
            pytrace=False,
        )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    config = request.config
    if REWRITTEN not in config.stash:
        config.stash[REWRITTEN] = []
    # getoption's default covers a run where this conftest was loaded after option parsing.
    tracker = Golden(update=bool(config.getoption("--update-golden", default=False)))
    tracker.rewritten = config.stash[REWRITTEN]
    return tracker


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rewritten = config.stash.get(REWRITTEN, [])
    if rewritten:
        terminalreporter.section("golden files rewritten (--update-golden): review the diff")
        for line in rewritten:
            terminalreporter.write_line(line)


#: The shared fixtures that open a store: a unit test asking for one belongs in tests/integration.
STORE_FIXTURES = frozenset({"database_url", "db", "settings", "pg_database"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/unit/ runs without a database (STYLE.md, tests): fail collection when a unit test asks for one."""
    here = Path(__file__).resolve().parent
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.is_relative_to(here) and fixtures & STORE_FIXTURES:
            raise pytest.UsageError(
                f"{item.nodeid} uses {sorted(fixtures & STORE_FIXTURES)}: a test with a store goes in tests/integration"
            )
