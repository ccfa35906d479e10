"""Topics fire on the change between two versions of a resource, never on the trigger event."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from gateway.state.apply import Applied, Unit
from gateway.subscriptions.topics import BY_URL, TOPIC_BASE, TOPICS, Change, fired, members_changed


def encounter(status: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": "enc-1", "status": status}


def codes(prev: str | None, new: str, resource_type: str = "Encounter") -> list[str]:
    return [t.code for t in fired(resource_type, Change(encounter(prev) if prev else None, encounter(new)))]


@pytest.mark.parametrize("prev", [None, "planned"])
def test_start_fires_when_the_stay_begins(prev: str | None) -> None:
    assert codes(prev, "in-progress") == ["encounter-start"]


@pytest.mark.parametrize("prev", ["in-progress", "onleave"])
def test_start_does_not_fire_again_while_active(prev: str) -> None:
    assert codes(prev, "in-progress") == []


def test_a_cancelled_discharge_is_a_cancellation_not_a_new_start() -> None:
    # A13: finished → in-progress; the platform heard of this admission already.
    assert codes("finished", "in-progress") == ["encounter-cancelled-or-corrected"]


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


@pytest.mark.parametrize(("prev", "new"), [(None, "planned"), (None, "cancelled"), ("planned", "planned")])
def test_nothing_fires(prev: str | None, new: str) -> None:
    assert codes(prev, new) == []


@pytest.mark.parametrize(
    ("prev", "new"), [("in-progress", "cancelled"), ("finished", "cancelled"), ("in-progress", "entered-in-error")]
)
def test_cancellation_fires_only_the_cancel_topic(prev: str, new: str) -> None:
    assert codes(prev, new) == ["encounter-cancelled-or-corrected"]


def test_a_correction_fires_the_cancel_or_correct_topic() -> None:
    change = Change(encounter("in-progress"), {**encounter("in-progress"), "period": {"start": "2026-01-01"}}, "UPDATE")
    assert [t.code for t in fired("Encounter", change)] == ["encounter-cancelled-or-corrected"]


def test_transfer_fires_when_the_place_changes_while_in() -> None:
    before = {**encounter("in-progress"), "location": [{"location": {"display": "A"}}]}
    after = {**encounter("in-progress"), "location": [{"location": {"display": "B"}}]}
    assert [t.code for t in fired("Encounter", Change(before, after))] == ["encounter-transfer"]
    assert [t.code for t in fired("Encounter", Change(before, before))] == []


def test_death_fires_once_on_the_patient() -> None:
    alive = {"resourceType": "Patient", "id": "p"}
    dead = {**alive, "deceasedDateTime": "2026-03-05"}
    assert [t.code for t in fired("Patient", Change(alive, dead))] == ["patient-death"]
    assert [t.code for t in fired("Patient", Change(dead, dead))] == []


def test_care_circle_change_says_who_joined_and_left() -> None:
    def team(*refs: str, ended: str = "") -> dict:
        parts = [{"member": {"reference": r}} for r in refs]
        if ended:
            parts.append({"member": {"reference": ended}, "period": {"start": "2026", "end": "2026-02"}})
        return {"resourceType": "CareTeam", "participant": parts}

    assert [t.code for t in fired("CareTeam", Change(team("Practitioner/a"), team("Practitioner/a")))] == []
    change = Change(team("Practitioner/a"), team("Practitioner/b", ended="Practitioner/a"))
    assert [t.code for t in fired("CareTeam", change)] == ["careteam-changed"]
    assert members_changed(change.prev, change.new) == (
        [{"reference": "Practitioner/b"}],
        [{"reference": "Practitioner/a"}],
    )


def test_encounter_topics_ignore_other_resources() -> None:
    assert codes(None, "in-progress", resource_type="Practitioner") == []
    assert codes("in-progress", "finished", resource_type="Practitioner") == []


def test_topic_identity() -> None:
    by_code = {t.code: t for t in TOPICS}
    assert set(by_code) == {
        "encounter-start",
        "encounter-end",
        "encounter-transfer",
        "encounter-cancelled-or-corrected",
        "patient-death",
        "careteam-changed",
        "event-declaration",  # ANS NdE flux 3: what NdE subscriptions listen to
    }
    assert by_code["event-declaration"].resource == "CommunicationRequest"
    assert by_code["encounter-start"].event_code == "ADM"  # ANS NdE TRE_R254: admission
    assert by_code["encounter-end"].event_code == "SOR"  # discharge
    for topic in TOPICS:
        assert topic.url == f"{TOPIC_BASE}/{topic.code}"
        assert BY_URL[topic.url] is topic
        assert topic.resource in ("Encounter", "Patient", "CareTeam", "CommunicationRequest")


def _declaration(status: str) -> dict[str, object]:
    return {"resourceType": "CommunicationRequest", "id": "d1", "status": status}


@pytest.mark.parametrize(
    ("prev", "new", "fires"),
    [
        (None, "active", True),  # declared
        (None, "revoked", False),  # never announced: nothing to take back
        ("active", "revoked", True),  # a cancellation revokes it
        ("revoked", "active", True),  # the cancellation was itself cancelled
        ("active", "active", False),  # a correction restates the event time: the declaration is updated
    ],
)
def test_event_declaration_topic(prev: str | None, new: str, fires: bool) -> None:
    change = Change(_declaration(prev) if prev else None, _declaration(new))
    assert [t.code for t in fired("CommunicationRequest", change)] == (["event-declaration"] if fires else [])


def test_a_topic_nobody_hears_is_not_compared() -> None:
    """``fired(heard=…)`` asks whether anyone listens before comparing the versions: a change whose
    topics nobody subscribes to fires none, and the others fire as without it."""
    asked: list[str] = []

    def heard(topic: Any) -> bool:
        asked.append(topic.code)
        return topic.code == "encounter-end"

    start = Change(None, encounter("in-progress"))
    assert fired("Encounter", start, heard=heard) == []
    assert asked == [t.code for t in TOPICS if t.resource == "Encounter"]
    end = Change(encounter("in-progress"), encounter("finished"))
    assert [t.code for t in fired("Encounter", end, heard=heard)] == ["encounter-end"]
    assert fired("Practitioner", end, heard=heard) == []


class _Storage:
    """The unit of work's ``listening``, counting what it is asked."""

    def __init__(self, subs: dict[str, list[Any]]) -> None:
        self.subs = subs
        self.asked: list[str] = []

    def listening(self, topic_url: str, *, now: Any = None) -> list[Any]:
        self.asked.append(topic_url)
        return list(self.subs.get(topic_url, []))


def test_a_unit_asks_once_per_topic_who_listens() -> None:
    start = BY_URL[f"{TOPIC_BASE}/encounter-start"]
    storage = _Storage({start.url: ["sub"]})
    unit = Unit(storage, datetime(2026, 3, 1, tzinfo=UTC), 0, None, None, None, Applied(), None)  # type: ignore[arg-type]
    others = [t for t in TOPICS if t is not start]
    for _ in range(3):
        assert unit.heard(start) and unit.listening(start.url) == ["sub"]
        assert not any(unit.heard(t) for t in others)
    assert sorted(storage.asked) == sorted(t.url for t in TOPICS)  # each once, whatever the number of changes
