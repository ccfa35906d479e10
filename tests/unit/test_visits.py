"""Folding a stay's facts into its Encounter (order-independent), and a patient's demographic snapshots."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mapping.engine import Engine
from gateway.state.patients import fold_patient, patient_payload
from gateway.state.visits import VisitFact, fold_visit, live_inserts

ROOT = Path(__file__).resolve().parents[2]
EVENTS = Engine.from_directory(ROOT / "mappings").tables.events
PARIS = ZoneInfo("Europe/Paris")
T0 = datetime(2026, 3, 15, 10, 0, tzinfo=PARIS)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENCOUNTER_ID = "enc-ch-test-v26-0001"
VISIT = {"system": "urn:oid:1.2.250.1.999.9.2", "value": "V26-0001", "type": {"coding": [{"code": "VN"}]}}
IMP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
HOME = {"coding": [{"system": "https://example.org/circonstances-sortie", "code": "5"}]}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def location(unit: str) -> list[dict[str, Any]]:
    return [{"location": {"display": unit, "identifier": {"system": "urn:x", "value": unit}}, "status": "active"}]


def encounter_facts(
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    disposition: dict[str, Any] | None = None,
    unit: str = "CHIR",
    cls: dict[str, Any] | None = IMP,
) -> dict[str, Any]:
    """What the engine makes of one message's PV1 (only the parts the fold reads)."""
    facts: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": ENCOUNTER_ID,
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-encounter"]},
        "identifier": [VISIT],
        "location": location(unit),
        "subject": {"reference": "Patient/pat-1"},
    }
    if cls is not None:
        facts["class"] = cls
    period = {k: iso(v) for k, v in (("start", start), ("end", end)) if v is not None}
    if period:
        facts["period"] = period
    if disposition is not None:
        facts["hospitalization"] = {"dischargeDisposition": disposition}
    return facts


def movement(movement_id: str | None, at: datetime | None, action: str, unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"action": action}
    if movement_id is not None:
        out["identifier"] = {"system": "urn:oid:1.2.250.1.999.9.1", "value": movement_id}
    if at is not None:
        out["date"] = iso(at)
    if unit is not None:
        out["medical_unit"] = {"system": "urn:x:uf", "code": unit, "name": f"Unit {unit}"}
    return out


def fact(
    trigger: str,
    *,
    at: datetime,
    control: str,
    movement_id: str | None = None,
    zbe: bool = True,
    encounter: dict[str, Any] | None = None,
    unit: str | None = None,
) -> VisitFact:
    spec = EVENTS[trigger]
    return VisitFact(
        trigger=trigger,
        kind=spec.kind,
        action=spec.action,
        cancels=spec.cancels,
        event_time=at,
        control_id=control,
        encounter=encounter if encounter is not None else encounter_facts(),
        movement=movement(movement_id, at, spec.action, unit) if zbe else None,
    )


def admission(
    at: datetime = T0, *, zbe: bool = True, with_start: bool = True, control: str = "C-A01", movement_id: str = "MV-1"
) -> VisitFact:
    facts = encounter_facts(start=at if with_start else None)
    return fact("A01", at=at, control=control, movement_id=movement_id, zbe=zbe, encounter=facts)


def discharge(
    at: datetime = T0 + timedelta(days=3), *, admitted: datetime | None = T0, zbe: bool = True, with_end: bool = True
) -> VisitFact:
    facts = encounter_facts(start=admitted, end=at if with_end else None, disposition=HOME, unit="CHIR")
    return fact("A03", at=at, control="C-A03", movement_id="MV-2", zbe=zbe, encounter=facts)


def cancel(trigger: str, at: datetime, *, movement_id: str | None, zbe: bool = True, control: str = "") -> VisitFact:
    return fact(trigger, at=at, control=control or f"C-{trigger}", movement_id=movement_id, zbe=zbe)


# -- the examples -----------------------------------------------------------------------------


def test_admission_alone_in_progress() -> None:
    encounter = fold_visit([admission()])
    assert encounter is not None
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": iso(T0)}
    assert encounter["id"] == ENCOUNTER_ID
    assert encounter["identifier"] == [VISIT]
    assert encounter["class"] == IMP
    assert encounter["subject"] == {"reference": "Patient/pat-1"}
    assert encounter["location"][0]["status"] == "active"
    assert "hospitalization" not in encounter


def test_admission_start_falls_back_to_movement_date_then_event_time() -> None:
    at = T0 + timedelta(minutes=5)
    from_zbe = fold_visit([admission(at, with_start=False)])
    assert from_zbe is not None
    assert from_zbe["period"] == {"start": iso(at)}
    from_event = fold_visit([admission(at, with_start=False, zbe=False)])
    assert from_event is not None
    assert from_event["period"] == {"start": iso(at)}


def test_admission_then_discharge_finished() -> None:
    out = T0 + timedelta(days=3, hours=4)
    encounter = fold_visit([admission(), discharge(out)])
    assert encounter is not None
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": iso(T0), "end": iso(out)}
    assert encounter["hospitalization"]["dischargeDisposition"] == HOME
    assert all(loc["status"] == "completed" for loc in encounter["location"])


def test_discharge_end_falls_back_to_movement_date() -> None:
    out = T0 + timedelta(days=2)
    encounter = fold_visit([admission(), discharge(out, with_end=False)])
    assert encounter is not None
    assert encounter["period"]["end"] == iso(out)


def test_discharge_alone_finished() -> None:
    out = T0 + timedelta(days=3)
    encounter = fold_visit([discharge(out)])
    assert encounter is not None
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": iso(T0), "end": iso(out)}
    assert encounter["hospitalization"]["dischargeDisposition"] == HOME


def test_discharge_before_admission_arrives_same_result() -> None:
    facts = [admission(), discharge()]
    assert fold_visit(facts[::-1]) == fold_visit(facts)


def test_cancel_admission_by_movement_id() -> None:
    encounter = fold_visit([admission(), cancel("A11", T0 + timedelta(hours=1), movement_id="MV-1")])
    assert encounter is not None
    assert encounter["status"] == "cancelled"
    # the stay is still this stay: identity survives, the period does not
    assert encounter["id"] == ENCOUNTER_ID
    assert encounter["identifier"] == [VISIT]
    assert encounter["subject"] == {"reference": "Patient/pat-1"}
    assert encounter["class"] == IMP
    assert "period" not in encounter


def test_cancel_undoes_a_movement_received_twice() -> None:
    # The same INSERT re-sent under a new MSH-10: one movement (ZBE-1), so one cancel undoes it.
    facts = [admission(), admission(control="C-A01-RESENT"), cancel("A11", T0 + timedelta(hours=1), movement_id="MV-1")]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "cancelled"


def test_cancel_admission_without_zbe_by_trigger() -> None:
    facts = [admission(zbe=False), cancel("A11", T0 + timedelta(hours=1), movement_id=None, zbe=False)]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "cancelled"


def test_cancel_by_trigger_only_undoes_an_earlier_insert() -> None:
    facts = [admission(zbe=False), cancel("A11", T0 - timedelta(hours=1), movement_id=None, zbe=False)]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "in-progress"


def test_cancel_with_unknown_movement_id_undoes_nothing() -> None:
    facts = [admission(), cancel("A11", T0 + timedelta(hours=1), movement_id="MV-999")]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": iso(T0)}


def test_cancel_discharge_back_to_in_progress() -> None:
    out = T0 + timedelta(days=3)
    facts = [admission(), discharge(out), cancel("A13", out + timedelta(hours=1), movement_id="MV-2")]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": iso(T0)}
    assert "end" not in encounter["period"]
    assert "hospitalization" not in encounter
    assert all(loc["status"] == "active" for loc in encounter["location"])


def test_cancel_discharge_without_zbe() -> None:
    out = T0 + timedelta(days=3)
    facts = [
        admission(zbe=False),
        discharge(out, zbe=False),
        cancel("A13", out + timedelta(hours=1), movement_id=None, zbe=False),
    ]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "in-progress"
    assert "hospitalization" not in encounter


def test_a13_does_not_cancel_the_admission() -> None:
    facts = [admission(zbe=False), cancel("A13", T0 + timedelta(hours=1), movement_id=None, zbe=False)]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "in-progress"


@pytest.mark.parametrize(
    "facts",
    [
        [cancel("A11", T0, movement_id="MV-1")],
        [cancel("A11", T0, movement_id=None, zbe=False)],
        [cancel("A13", T0, movement_id="MV-2"), cancel("A11", T0, movement_id="MV-1")],
        [],
    ],
)
def test_cancels_for_movements_never_seen_create_nothing(facts: list[VisitFact]) -> None:
    assert fold_visit(facts) is None


def test_readmission_after_discharge_in_same_visit() -> None:
    back = T0 + timedelta(days=5)
    facts = [admission(), discharge(), admission(back, control="C-A01-2", movement_id="MV-3")]
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter["period"]
    assert encounter["period"]["start"] == iso(T0)  # the stay started with the first admission


def test_later_movement_describes_the_present() -> None:
    admit = fact("A01", at=T0, control="C1", movement_id="MV-1", encounter=encounter_facts(unit="URG"), unit="4010")
    out = fact(
        "A03",
        at=T0 + timedelta(days=1),
        control="C2",
        movement_id="MV-2",
        encounter=encounter_facts(unit="CHIR", end=T0 + timedelta(days=1)),
        unit="4020",
    )
    encounter = fold_visit([out, admit])
    assert encounter is not None
    assert [loc["location"]["display"] for loc in encounter["location"]] == ["CHIR"]
    assert encounter["serviceProvider"]["identifier"] == {"system": "urn:x:uf", "value": "4020"}
    assert encounter["serviceProvider"]["display"] == "Unit 4020"


def test_missing_class_is_unknown_null_flavor() -> None:
    facts = fact("A01", at=T0, control="C1", movement_id="MV-1", encounter=encounter_facts(cls=None))
    encounter = fold_visit([facts])
    assert encounter is not None
    assert encounter["class"]["code"] == "UNK"
    assert encounter["class"]["system"].endswith("v3-NullFlavor")


def test_fold_does_not_modify_its_input() -> None:
    facts = [admission(), discharge(), cancel("A13", T0 + timedelta(days=4), movement_id="MV-2")]
    before = copy.deepcopy([f.to_payload() for f in facts])
    first = fold_visit(facts)
    assert [f.to_payload() for f in facts] == before
    assert fold_visit(facts) == first


def test_payload_round_trip() -> None:
    facts = [admission(), discharge(), cancel("A11", T0 + timedelta(hours=2), movement_id="MV-1")]
    restored = [VisitFact.from_payload(f.to_payload()) for f in facts]
    assert restored == facts
    assert fold_visit(restored) == fold_visit(facts)


def test_live_inserts() -> None:
    a, d = admission(), discharge()
    inserts, live = live_inserts([d, cancel("A13", T0 + timedelta(days=4), movement_id="MV-2"), a])
    assert inserts == [a, d]
    assert live == [a]


# -- property: any arrival order gives the same Encounter -------------------------------------


@st.composite
def stays(draw: st.DrawFn) -> tuple[list[VisitFact], dict[str, Any]]:
    """An admission, an optional discharge, optional cancels, with random (possibly equal) times."""
    same_zbe = draw(st.booleans())  # every message has a ZBE, or none has; else each one decides
    uses_zbe = draw(st.booleans())
    with_zbe = {name: uses_zbe if same_zbe else draw(st.booleans()) for name in ("admit", "out", "c_admit", "c_out")}

    def at() -> datetime:
        return T0 + timedelta(minutes=draw(st.integers(0, 8)) * 30)

    admit_trigger = draw(st.sampled_from(["A01", "A04"]))
    t_admit = at()
    facts = [
        fact(
            admit_trigger,
            at=t_admit,
            control="C1",
            movement_id="MV-1",
            zbe=with_zbe["admit"],
            encounter=encounter_facts(start=t_admit if draw(st.booleans()) else None, unit="URG"),
            unit="4010",
        )
    ]
    plan: dict[str, Any] = {"uniform": same_zbe, "zbe": uses_zbe, "t_admit": t_admit}
    if draw(st.booleans()):
        t_out = at()
        plan["t_out"] = t_out
        facts.append(
            fact(
                "A03",
                at=t_out,
                control="C2",
                movement_id="MV-2",
                zbe=with_zbe["out"],
                encounter=encounter_facts(start=t_admit, end=t_out, disposition=HOME, unit="CHIR"),
                unit="4020",
            )
        )
    if draw(st.booleans()):
        plan["t_c_admit"] = at()
        facts.append(cancel("A11", plan["t_c_admit"], movement_id="MV-1", zbe=with_zbe["c_admit"], control="C3"))
    if draw(st.booleans()):
        plan["t_c_out"] = at()
        facts.append(cancel("A13", plan["t_c_out"], movement_id="MV-2", zbe=with_zbe["c_out"], control="C4"))
    plan["resent"] = draw(st.booleans())
    if plan["resent"]:
        # the same message received again, under its own MSH-10 or a new one
        again = draw(st.sampled_from(facts))
        new_control = draw(st.booleans())
        facts.append(replace(again, control_id="C9") if new_control else again)
    return facts, plan


def event_order(facts: list[VisitFact]) -> list[VisitFact]:
    return sorted(facts, key=lambda f: f.event_time)  # stable: generation order on equal times


@PROPERTY
@given(data=st.data(), stay=stays())
def test_any_permutation_folds_like_event_order(data: st.DataObject, stay: tuple[list[VisitFact], Any]) -> None:
    facts, _ = stay
    expected = fold_visit(event_order(facts))
    shuffled = data.draw(st.permutations(facts))
    assert fold_visit(shuffled) == expected
    assert fold_visit(facts[::-1]) == expected


@PROPERTY
@given(stay=stays())
def test_status_follows_the_facts(stay: tuple[list[VisitFact], dict[str, Any]]) -> None:
    """An oracle written from the rules: which inserts a cancel undoes, then the latest live insert wins."""
    facts, plan = stay
    if not plan["uniform"] or (plan["resent"] and not plan["zbe"]):
        return  # without ZBE-1 a re-sent insert cannot be told from a second one
    zbe = plan["zbe"]
    t_admit = plan["t_admit"]
    admit_live = not ("t_c_admit" in plan and (zbe or t_admit <= plan["t_c_admit"]))
    has_out = "t_out" in plan
    out_live = has_out and not ("t_c_out" in plan and (zbe or plan["t_out"] <= plan["t_c_out"]))
    encounter = fold_visit(facts)
    assert encounter is not None
    assert encounter["id"] == ENCOUNTER_ID
    if not admit_live and not out_live:
        expected = "cancelled"
    elif out_live and (not admit_live or plan["t_out"] >= t_admit):
        expected = "finished"
    else:
        expected = "in-progress"
    assert encounter["status"] == expected
    if expected == "finished":
        assert encounter["period"]["end"] == iso(plan["t_out"])
        assert encounter["hospitalization"]["dischargeDisposition"] == HOME
    else:
        assert "end" not in encounter.get("period", {})
        assert "hospitalization" not in encounter
    if expected == "cancelled":
        assert "period" not in encounter


# -- patients ---------------------------------------------------------------------------------


def snapshot(family: str, at: datetime, control: str) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "pat-1", "name": [{"family": family}]}
    return patient_payload(patient=patient, event_time=at, control_id=control)


def test_fold_patient_latest_event_time_wins() -> None:
    old = snapshot("MARTIN", T0, "C-9")
    new = snapshot("MARTIN-DUPONT", T0 + timedelta(days=1), "C-1")
    for order in ([old, new], [new, old]):
        folded = fold_patient(order)
        assert folded is not None
        assert folded["name"] == [{"family": "MARTIN-DUPONT"}]


def test_fold_patient_compares_instants_not_strings() -> None:
    # 09:30 UTC is 10:30 in Paris: later than 10:00 Paris although its text sorts first.
    paris = snapshot("PARIS-TIME", datetime(2026, 3, 15, 10, 0, tzinfo=PARIS), "C-1")
    utc = snapshot("UTC-TIME", datetime(2026, 3, 15, 9, 30, tzinfo=ZoneInfo("UTC")), "C-2")
    assert utc["event_time"] < paris["event_time"]
    folded = fold_patient([utc, paris])
    assert folded is not None
    assert folded["name"] == [{"family": "UTC-TIME"}]


def test_fold_patient_tie_broken_by_control_id() -> None:
    a = snapshot("FIRST", T0, "CTRL-0001")
    b = snapshot("SECOND", T0, "CTRL-0002")
    for order in ([a, b], [b, a]):
        folded = fold_patient(order)
        assert folded is not None
        assert folded["name"] == [{"family": "SECOND"}]


def test_fold_patient_empty() -> None:
    assert fold_patient([]) is None


def test_fold_patient_returns_a_copy() -> None:
    snap = snapshot("MARTIN", T0, "C-1")
    folded = fold_patient([snap])
    assert folded is not None
    folded["gender"] = "female"
    assert "gender" not in snap["patient"]


@PROPERTY
@given(
    data=st.data(),
    stamps=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from(["C-1", "C-2", "C-3", "C-10"])),
        min_size=1,
        max_size=8,
        unique=True,
    ),
)
def test_fold_patient_order_independent(data: st.DataObject, stamps: list[tuple[int, str]]) -> None:
    snaps = [snapshot(f"NAME-{m}-{c}", T0 + timedelta(minutes=m), c) for m, c in stamps]
    latest_minute, latest_control = max(stamps)
    folded = fold_patient(data.draw(st.permutations(snaps)))
    assert folded is not None
    assert folded["name"] == [{"family": f"NAME-{latest_minute}-{latest_control}"}]
