"""Mapping-only goldens: what the engine makes of each fixture message, before the state fold.

``tests/golden/adt`` holds what the store ends up with, after the fold; a mapping table edit shows there
mixed with the fold's consequences. Here each message's ``Mapped`` facts (header, event, patient,
encounter, movement, practitioners, participations, warnings) are kept as the engine returns them, so a
table edit shows its own diff. Same fixtures and same ``--update-golden`` flag as ``test_golden.py``.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.hl7 import er7
from gateway.mapping.engine import Engine, Mapped
from tests.unit.test_golden import ROOT, SINGLES, STAYS, dump, rel, stay_messages

if TYPE_CHECKING:
    from tests.unit.conftest import Golden

MAPPING_DIR = ROOT / "tests" / "golden" / "mapping"
#: Each case: its golden's name, its fixture, and its messages (one, or a stay folder's in file order).
CASES = [(p.stem, p, [p]) for p in SINGLES] + [(folder.name, folder, stay_messages(folder)) for folder in STAYS]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} has no JSON form here")


def mapped_json(mapped: Mapped) -> dict[str, Any]:
    """The engine's output as JSON (instants in ISO 8601, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(mapped), default=_plain))  # type: ignore[no-any-return]


def document(engine: Engine, fixture: Path, paths: list[Path]) -> dict[str, Any]:
    return {
        "fixture": rel(fixture),
        "messages": [{"file": p.name, "mapped": mapped_json(engine.map(er7.parse(p.read_bytes())))} for p in paths],
    }


def test_cases_are_discovered() -> None:
    assert len(CASES) == len(SINGLES) + len(STAYS) > 0


def test_every_mapping_golden_has_its_fixture() -> None:
    names = {name for name, _, _ in CASES}
    orphans = sorted(g.name for g in MAPPING_DIR.glob("*.json") if g.stem not in names)
    assert not orphans, f"mapping goldens without a fixture: {orphans}"


@pytest.mark.parametrize(("name", "fixture", "paths"), CASES, ids=[name for name, _, _ in CASES])
def test_mapping_golden(name: str, fixture: Path, paths: list[Path], mapping_engine: Engine, golden: Golden) -> None:
    text = dump(document(mapping_engine, fixture, paths))
    golden.check(MAPPING_DIR / f"{name}.json", text)
    assert dump(document(mapping_engine, fixture, paths)) == text, "the mapping is not deterministic"
