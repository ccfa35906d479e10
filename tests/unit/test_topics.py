"""Topics fire on the change between two versions of an Encounter, never on the trigger event."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from gateway.subscriptions.topics import BY_URL, TOPIC_BASE, TOPICS, fired


def encounter(status: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": "enc-1", "status": status}


def codes(prev: str | None, new: str, resource_type: str = "Encounter") -> list[str]:
    return [t.code for t in fired(resource_type, encounter(prev) if prev else None, encounter(new))]


@pytest.mark.parametrize("prev", [None, "planned"])
def test_start_fires_when_the_stay_begins(prev: str | None) -> None:
    assert codes(prev, "in-progress") == ["encounter-start"]


@pytest.mark.parametrize("prev", ["in-progress", "onleave"])
def test_start_does_not_fire_again_while_active(prev: str) -> None:
    assert codes(prev, "in-progress") == []


def test_start_does_not_fire_when_a_discharge_is_cancelled() -> None:
    # A13: finished → in-progress; the platform heard of this admission already.
    assert codes("finished", "in-progress") == []


def test_start_fires_again_after_a_cancelled_admission_is_readmitted() -> None:
    assert codes("cancelled", "in-progress") == ["encounter-start"]


@pytest.mark.parametrize("prev", [None, "in-progress", "planned", "onleave"])
def test_end_fires_on_finished(prev: str | None) -> None:
    assert codes(prev, "finished") == ["encounter-end"]


def test_end_fires_once() -> None:
    assert codes("finished", "finished") == []
    history = [None, "planned", "in-progress", "in-progress", "finished", "finished", "finished"]
    fired_codes = [c for prev, new in pairwise(history) for c in codes(prev, new)]
    assert fired_codes.count("encounter-end") == 1
    assert fired_codes.count("encounter-start") == 1
    assert fired_codes == ["encounter-start", "encounter-end"]


@pytest.mark.parametrize(
    ("prev", "new"),
    [
        (None, "planned"),
        (None, "cancelled"),
        ("in-progress", "cancelled"),
        ("finished", "cancelled"),
        ("planned", "planned"),
        ("in-progress", "entered-in-error"),
    ],
)
def test_nothing_fires(prev: str | None, new: str) -> None:
    assert codes(prev, new) == []


def test_only_encounters_fire() -> None:
    assert codes(None, "in-progress", resource_type="Patient") == []
    assert codes("in-progress", "finished", resource_type="Patient") == []


def test_topic_identity() -> None:
    by_code = {t.code: t for t in TOPICS}
    assert set(by_code) == {"encounter-start", "encounter-end"}
    assert by_code["encounter-start"].event_code == "ADM"  # ANS NdE TRE_R254: admission
    assert by_code["encounter-end"].event_code == "SOR"  # discharge
    for topic in TOPICS:
        assert topic.url == f"{TOPIC_BASE}/{topic.code}"
        assert BY_URL[topic.url] is topic
        assert topic.resource == "Encounter"
