"""Folding a patient's demographic snapshots: the snapshot with the latest event time describes him."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def patient_payload(*, patient: dict[str, Any], event_time: datetime, control_id: str) -> dict[str, Any]:
    return {"event_time": event_time.isoformat(), "control_id": control_id, "patient": patient}


def fold_patient(snapshots: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Latest by (event time, control id): independent of arrival order, deterministic on ties."""
    if not snapshots:
        return None
    latest = max(snapshots, key=lambda s: (datetime.fromisoformat(s["event_time"]), s.get("control_id", "")))
    return dict(latest["patient"])
