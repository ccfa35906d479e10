"""Subscription topics: their canonical URLs and the state changes that trigger them.

Topics fire on the change between the stored resource and its new version (R5 SubscriptionTopic
``resourceTrigger`` style), not on the trigger event: a discharge applied before its admission, a
cancel, or a replay then notify exactly what changed for the platform, and a duplicate notifies nothing.
The message's movement action is passed along only to tell a correction (Z99) from other changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.canonical import CANONICAL_BASE

TOPIC_BASE = f"{CANONICAL_BASE}/SubscriptionTopic"
ACTIVE = frozenset({"in-progress", "onleave", "arrived", "triaged"})
VOID = frozenset({"cancelled", "entered-in-error"})
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One resource's change: its previous version (``None`` if new), its new one, and the action."""

    prev: JSON | None
    new: JSON
    action: str = "INSERT"

    @property
    def prev_status(self) -> str | None:
        return self.prev.get("status") if self.prev else None


@dataclass(frozen=True, slots=True)
class Topic:
    code: str
    title: str
    description: str
    resource: str
    #: ANS NdE TRE_R254 event code, where one exists
    event_code: str | None
    fires: Callable[[Change], bool]

    @property
    def url(self) -> str:
        return f"{TOPIC_BASE}/{self.code}"


def _started(c: Change) -> bool:
    return c.new.get("status") in ACTIVE and c.prev_status not in ACTIVE | {"finished"}


def _ended(c: Change) -> bool:
    return c.new.get("status") == "finished" and c.prev_status != "finished"


def _where(resource: JSON) -> tuple[Any, Any]:
    return resource.get("location"), resource.get("serviceProvider")


def _transferred(c: Change) -> bool:
    """Bed, room, unit or UF in charge changed while the patient is in (A02, and its Z99 or A12)."""
    return (
        c.prev is not None
        and c.prev_status in ACTIVE
        and c.new.get("status") in ACTIVE
        and _where(c.prev) != _where(c.new)
    )


def _cancelled_or_corrected(c: Change) -> bool:
    """The stay was cancelled (A11, A38), its discharge undone (A13), or a movement corrected (Z99)."""
    if c.prev is None:
        return False
    if c.new.get("status") in VOID and c.prev_status not in VOID:
        return True
    if c.prev_status == "finished" and c.new.get("status") != "finished":
        return True
    return c.action == "UPDATE"


def _declared(c: Change) -> bool:
    """An NdE event declaration was made (active), revoked, or restored: what the platform must hear."""
    if c.prev is None:
        return c.new.get("status") == "active"
    return c.prev_status != c.new.get("status")


def _dead(patient: JSON | None) -> bool:
    return bool(patient) and bool(patient.get("deceasedDateTime") or patient.get("deceasedBoolean"))  # type: ignore[union-attr]


def _died(c: Change) -> bool:
    return _dead(c.new) and not _dead(c.prev)


def _circle_changed(c: Change) -> bool:
    joined, left = members_changed(c.prev, c.new)
    return bool(joined or left)


def members_changed(prev: JSON | None, new: JSON) -> tuple[list[JSON], list[JSON]]:
    """(joined, left) members between two versions: who is now active and was not, and the reverse."""

    def active(team: JSON | None) -> dict[str, JSON]:
        return {
            str(p["member"].get("reference") or p["member"].get("display")): p["member"]
            for p in (team or {}).get("participant", [])
            if not p.get("period", {}).get("end")
        }

    before, after = active(prev), active(new)
    joined = [after[k] for k in sorted(after.keys() - before.keys())]
    left = [before[k] for k in sorted(before.keys() - after.keys())]
    return joined, left


TOPICS: tuple[Topic, ...] = (
    Topic(
        code="encounter-start",
        title="Entrée: début de séjour ou de venue",
        description="An Encounter becomes in-progress (admission A01, visit start A04, or its replay).",
        resource="Encounter",
        event_code="ADM",
        fires=_started,
    ),
    Topic(
        code="encounter-end",
        title="Sortie: fin de séjour",
        description="An Encounter becomes finished (discharge A03).",
        resource="Encounter",
        event_code="SOR",
        fires=_ended,
    ),
    Topic(
        code="encounter-transfer",
        title="Mutation ou transfert",
        description="The location or the unit in charge of an in-progress stay changed (A02, Z99, A12).",
        resource="Encounter",
        event_code=None,
        fires=_transferred,
    ),
    Topic(
        code="encounter-cancelled-or-corrected",
        title="Séjour annulé ou corrigé",
        description="A stay was cancelled (A11, A38), its discharge cancelled (A13), or corrected (Z99).",
        resource="Encounter",
        event_code=None,
        fires=_cancelled_or_corrected,
    ),
    Topic(
        code="patient-death",
        title="Décès",
        description="A patient is recorded deceased (PID-29/30, or a discharge by death).",
        resource="Patient",
        event_code=None,
        fires=_died,
    ),
    Topic(
        code="careteam-changed",
        title="Cercle de soins modifié",
        description="A member joined or left a patient's care circle (hospital feed or platform).",
        resource="CareTeam",
        event_code=None,
        fires=_circle_changed,
    ),
    Topic(
        code="event-declaration",
        title="Déclaration d'évènement (ANS NdE, flux 3)",
        description=(
            "An NdE event declaration (CommunicationRequest, TRE_R254 ADM or SOR) was made, revoked by a "
            "cancellation, or restored. ANS NdE subscriptions (criteria CommunicationRequest?event-type=) "
            "listen here; filters: event-type, patient, patient.identifier, facility."
        ),
        resource="CommunicationRequest",
        event_code=None,
        fires=_declared,
    ),
)
BY_URL = {t.url: t for t in TOPICS}
#: the topics about each resource type, in :data:`TOPICS`' order
BY_RESOURCE: dict[str, tuple[Topic, ...]] = {
    kind: tuple(t for t in TOPICS if t.resource == kind) for kind in dict.fromkeys(t.resource for t in TOPICS)
}


def fired(resource_type: str, change: Change, *, heard: Callable[[Topic], object] | None = None) -> list[Topic]:
    """The topics ``change`` fires; with ``heard``, only among those it accepts, asked first: whether a
    topic fires compares both versions (a circle's members, each side), whether anyone subscribes to it
    is one lookup, and most changes of a message interest nobody."""
    return [t for t in BY_RESOURCE.get(resource_type, ()) if (heard is None or heard(t)) and t.fires(change)]
