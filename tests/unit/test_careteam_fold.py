"""Care circle cases folded through the real pipeline (``gateway convert``) on our own fixtures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.convert import convert_messages
from gateway.mapping.engine import Engine

JSON = dict[str, Any]
FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "adt"


def members(engine: Engine, folder: str, *, first: int | None = None) -> dict[str, JSON]:
    """Member name → participant of the circle the folder's (first) messages make."""
    paths = sorted((FIXTURES / folder).glob("*.hl7"))[:first]
    converted = convert_messages((p.read_bytes() for p in paths), engine=engine, clock=lambda: datetime.now(UTC))
    (team,) = [r for r in converted.resources if r["resourceType"] == "CareTeam"]
    return {p["member"]["display"]: p for p in team["participant"]}


def test_far_future_ends_mean_the_stay_for_stay_bound_members(mapping_engine: Engine) -> None:
    """ROL-6 20991231235959 is a GAM's "no end": a stay-bound member (ROL AT sent with the visit) ends
    with the stay, like the PV1-7 doctor; the médecin traitant (ODRP) simply has no end."""
    found = members(mapping_engine, "stay_far_future_members")
    stay_end = "2027-04-09T11:00:00+02:00"  # the A03's PV1-45
    assert found["HUGO PERRIN"]["period"] == {"start": "2027-04-05T08:00:00+02:00", "end": stay_end}
    assert found["YVES LEMAIRE"]["period"]["end"] == stay_end  # PV1-7: the same end
    assert found["LÉA CARON"]["period"] == {"start": "2020-01-01"}  # no 2099 end kept


def test_far_future_member_stays_open_until_the_discharge(mapping_engine: Engine) -> None:
    found = members(mapping_engine, "stay_far_future_members", first=1)
    assert "end" not in found["HUGO PERRIN"]["period"] and "end" not in found["LÉA CARON"]["period"]
