"""When a write finds a resource unchanged (``db.repo._same``): equal but for versionId/lastUpdated."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.db.repo import StoredResource, _resource, _same

STORED: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "3", "lastUpdated": "2026-03-10T12:00:00.000Z", "profile": ["x"]},
    "name": [{"family": "DUPONT"}],
}


@pytest.mark.parametrize(
    ("new", "same"),
    [
        ({"resourceType": "Patient", "id": "p1", "meta": {"profile": ["x"]}, "name": [{"family": "DUPONT"}]}, True),
        ({**STORED, "meta": {"versionId": "9", "profile": ["x"]}}, True),
        ({**STORED, "name": [{"family": "MARTIN"}]}, False),
        ({**STORED, "gender": "female"}, False),
        ({k: v for k, v in STORED.items() if k != "name"}, False),
        ({**{k: v for k, v in STORED.items() if k != "name"}, "gender": "female"}, False),
        ({**STORED, "meta": {"profile": ["y"]}}, False),
        ({k: v for k, v in STORED.items() if k != "meta"}, False),  # the stored one has a profile
    ],
)
def test_same_ignores_only_the_version(new: dict[str, Any], same: bool) -> None:
    assert _same(STORED, new) is same
    assert _same(new, STORED) is same


def test_no_meta_equals_a_meta_holding_only_the_version() -> None:
    bare = {"resourceType": "Organization", "id": "o1", "name": "CH"}
    stored = {**bare, "meta": {"versionId": "1", "lastUpdated": "2026-03-10T12:00:00.000Z"}}
    assert _same(stored, bare)
    assert _same(bare, {**bare, "meta": None})


def test_a_resource_built_on_the_stores_fast_path_is_the_dataclasss() -> None:
    """``_resource`` sets the slots of the frozen dataclass itself: the same value, still frozen."""
    at = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    fields = {"version_id": 3, "last_updated": at, "content": STORED, "deleted": False, "columns": ("", b"x")}
    fast = _resource("Patient", "p1", **fields)
    assert fast == StoredResource(type="Patient", id="p1", **fields)
    assert repr(fast) == repr(StoredResource(type="Patient", id="p1", **fields))
    with pytest.raises(AttributeError):
        fast.version_id = 4  # type: ignore[misc]
