"""Subscription topics: their canonical URLs and the state changes that trigger them.

Topics fire on the change between the stored Encounter and its new version (R5 SubscriptionTopic
``resourceTrigger`` style), not on the trigger event: a discharge applied before its admission, a
cancel, or a replay then notify exactly what changed for the platform, and a duplicate notifies nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.fhir.canonical import CANONICAL_BASE

TOPIC_BASE = f"{CANONICAL_BASE}/SubscriptionTopic"
ACTIVE = frozenset({"in-progress", "onleave", "arrived", "triaged"})
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Topic:
    code: str
    title: str
    description: str
    resource: str
    #: ANS NdE TRE_R254 event code, where one exists
    event_code: str | None
    fires: Callable[[JSON | None, JSON], bool]

    @property
    def url(self) -> str:
        return f"{TOPIC_BASE}/{self.code}"


def _started(prev: JSON | None, new: JSON) -> bool:
    return new.get("status") in ACTIVE and (prev is None or prev.get("status") not in ACTIVE | {"finished"})


def _ended(prev: JSON | None, new: JSON) -> bool:
    return new.get("status") == "finished" and (prev is None or prev.get("status") != "finished")


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
)
BY_URL = {t.url: t for t in TOPICS}


def fired(resource_type: str, prev: JSON | None, new: JSON) -> list[Topic]:
    return [t for t in TOPICS if t.resource == resource_type and t.fires(prev, new)]
