"""Property: for generated stays, the same messages in any arrival order end in the same resources.

Goes through the whole pipeline (parse, map, store, refold, care circle) on in-memory stores, so it
checks what the gateway holds, not only the pure fold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.convert import convert_messages
from gateway.mapping.engine import Engine
from tests.messages import Adt

T0 = datetime(2026, 3, 1, 8, 0)
FIXED = datetime(2030, 1, 1, tzinfo=UTC)


def hl7_time(hours: int) -> str:
    return (T0 + timedelta(hours=hours)).strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True)
class Plan:
    """A stay: admission, maybe a transfer (maybe cancelled or corrected), leave/return, discharge."""

    transfer: bool
    cancel_transfer: bool
    correct_transfer: bool
    leave: bool
    discharge: bool
    cancel_discharge: bool
    doctor_change: bool


plans = st.builds(Plan, *(st.booleans() for _ in range(7)))


def messages(plan: Plan) -> list[bytes]:
    out = [Adt(control_id="M01", movement="MV-1", event_time=hl7_time(0))]
    if plan.transfer:
        out.append(Adt(trigger="A02", control_id="M02", movement="MV-2", event_time=hl7_time(5)))
        if plan.correct_transfer:
            out.append(
                Adt(
                    trigger="Z99",
                    control_id="M03",
                    movement="MV-2",
                    action="UPDATE",
                    original_trigger="A02",
                    event_time=hl7_time(5),
                )
            )
        if plan.cancel_transfer:
            out.append(
                Adt(
                    trigger="A12",
                    control_id="M04",
                    movement="MV-2",
                    action="CANCEL",
                    original_trigger="A02",
                    event_time=hl7_time(6),
                )
            )
    if plan.doctor_change:
        out.append(
            Adt(
                trigger="A54",
                control_id="M05",
                movement="MV-5",
                event_time=hl7_time(8),
                attending="10009999999^NOUVEAU^MEDECIN^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS",
            )
        )
    if plan.leave:
        out.append(Adt(trigger="A21", control_id="M06", movement="MV-6", event_time=hl7_time(10)))
        out.append(Adt(trigger="A22", control_id="M07", movement="MV-7", event_time=hl7_time(20)))
    if plan.discharge:
        out.append(
            Adt(trigger="A03", control_id="M08", movement="MV-8", event_time=hl7_time(30), discharge_time=hl7_time(30))
        )
        if plan.cancel_discharge:
            out.append(
                Adt(
                    trigger="A13",
                    control_id="M09",
                    movement="MV-8",
                    action="CANCEL",
                    original_trigger="A03",
                    event_time=hl7_time(31),
                )
            )
    raws = []
    for adt in out:
        text = adt.build()
        if adt.trigger == "A02" or (adt.trigger == "Z99"):
            # the transfer moves the patient; the correction fixes the bed of that transfer
            bed = "CHIR^205^1" if adt.trigger == "A02" else "CHIR^205^2"
            text = (
                text.replace("MED^101^1", bed)
                .replace("Médecine^^^^^", "Chirurgie^^^^^")
                .replace("^UF^^^3001", "^UF^^^3002")
            )
        raws.append(text.encode())
    return raws


def final_state(engine: Engine, raws: list[bytes]) -> str:
    converted = convert_messages(raws, engine=engine, clock=lambda: FIXED)
    assert all(code == "AA" for code, _, _ in converted.acks), [ack for _, _, ack in converted.acks]
    stripped: list[dict[str, Any]] = []
    for resource in converted.resources:
        meta = {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
        stripped.append({**resource, "meta": meta})
    return json.dumps(stripped, sort_keys=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans, data=st.data())
def test_any_arrival_order_ends_in_the_event_order_state(
    mapping_engine: Engine, plan: Plan, data: st.DataObject
) -> None:
    raws = messages(plan)
    in_order = final_state(mapping_engine, raws)
    shuffled = data.draw(st.permutations(raws))
    assert final_state(mapping_engine, list(shuffled)) == in_order
