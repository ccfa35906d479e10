"""Folding a stay's facts into its Encounter (order-independent), and a patient's demographic snapshots."""

from __future__ import annotations

import copy
import itertools
import shutil
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.mapping.engine import Engine
from gateway.mapping.ids import resource_id
from gateway.mapping.tables import CANCEL_KINDS, CORRECTION_KIND, EVENT_KINDS, IDENTITY_KINDS
from gateway.state.patients import fold_patient, patient_payload
from gateway.state.visits import (
    CLASS_BY_TRIGGER,
    KINDS,
    RAW_NATURE_SYSTEM,
    ContentOrder,
    Stay,
    VisitFact,
    _finish,
    fold_stay,
    fold_visit,
)

ROOT = Path(__file__).resolve().parents[2]
TABLES = Engine.from_directory(ROOT / "mappings").tables
EVENTS = TABLES.events
NATURES = TABLES.codes["MovementNature"]
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
    doctor: str | None = None,
    patient: str = "pat-1",
) -> dict[str, Any]:
    """What the engine makes of one message's PV1 (only the parts the fold reads)."""
    facts: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": ENCOUNTER_ID,
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-encounter"]},
        "identifier": [VISIT],
        "location": location(unit),
        "subject": {"reference": f"Patient/{patient}"},
    }
    if cls is not None:
        facts["class"] = cls
    if doctor is not None:
        facts["participant"] = [attending(doctor)]
    period = {k: iso(v) for k, v in (("start", start), ("end", end)) if v is not None}
    if period:
        facts["period"] = period
    if disposition is not None:
        facts["hospitalization"] = {"dischargeDisposition": disposition}
    return facts


def attending(doctor: str) -> dict[str, Any]:
    return {"individual": {"reference": f"Practitioner/{doctor}"}, "type": [{"coding": [{"code": "ATND"}]}]}


MOVEMENT_SYSTEM = "urn:oid:1.2.250.1.999.9.1"


def movement_identifier(movement_id: str) -> dict[str, Any]:
    return {"system": MOVEMENT_SYSTEM, "value": movement_id, "type": {"coding": [{"code": "MN"}]}}


def movement(
    movement_id: str | None,
    at: datetime | None,
    action: str,
    unit: str | None = None,
    *,
    historic: bool | None = None,
    nature: Any = None,
    original: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"action": action}
    if movement_id is not None:
        out["identifier"] = movement_identifier(movement_id)
    if at is not None:
        out["date"] = iso(at)
    if historic is not None:
        out["historic"] = historic
    if original is not None:
        out["original_trigger"] = original
    if unit is not None:
        out["medical_unit"] = {"system": "urn:x:uf", "code": unit, "name": f"Unit {unit}"}
    if nature is not None:
        out["nature"] = nature
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
    action: str | None = None,
    recorded: datetime | None = None,
    historic: bool | None = None,
    nature: Any = None,
    original: str | None = None,
) -> VisitFact:
    spec = EVENTS[trigger]
    act = action or spec.action  # ZBE-4 wins over the event's default, as in the engine
    extra = {"recorded_at": recorded} if recorded is not None else {}
    return VisitFact(
        trigger=trigger,
        kind=spec.kind,
        action=act,
        cancels=spec.cancels,
        event_time=at,
        control_id=control,
        encounter=encounter if encounter is not None else encounter_facts(),
        movement=movement(movement_id, at, act, unit, historic=historic, nature=nature, original=original)
        if zbe
        else None,
        **extra,
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
    # FR Core requires a period: the cancelled stay keeps the one it had (no end)
    assert encounter["period"] == {"start": iso(T0)}


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


def test_facts_tied_but_for_their_content_fold_alike_in_any_order() -> None:
    """Same time, kind, movement and MSH-10, different content (a sender re-using a control id): the whole
    text breaks the tie, in the event order and among versions of the movement alike."""
    first = fact("A01", at=T0, control="C-1", movement_id="MV-1", unit="4010")
    second = fact("A01", at=T0, control="C-1", movement_id="MV-1", unit="4020")
    assert first.sort_key()[:4] == second.sort_key()[:4] and first.content_key() != second.content_key()
    folded = fold_stay([first, second], natures=NATURES)
    assert fold_stay([second, first], natures=NATURES) == folded
    winner = max((first, second), key=VisitFact.content_key)
    assert folded.encounter is not None
    assert folded.encounter["serviceProvider"]["identifier"]["value"] == winner.movement["medical_unit"]["code"]  # type: ignore[index]
    assert sorted([second, first], key=VisitFact.sort_key) == sorted([first, second], key=VisitFact.content_key)


def test_content_order_compares_the_whole_text_only() -> None:
    one = admission()
    assert ContentOrder(one) == ContentOrder(VisitFact.from_payload(one.to_payload()))
    assert ContentOrder(one) != ContentOrder(discharge())
    assert ContentOrder(one) != one.content_key()  # not a string: only another fact's order
    assert (ContentOrder(one) > ContentOrder(discharge())) == (one.content_key() > discharge().content_key())


def test_payload_round_trip() -> None:
    facts = [admission(), discharge(), cancel("A11", T0 + timedelta(hours=2), movement_id="MV-1")]
    restored = [VisitFact.from_payload(f.to_payload()) for f in facts]
    assert restored == facts
    assert fold_visit(restored) == fold_visit(facts)


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
        assert "start" in encounter["period"]  # FR Core: a cancelled stay keeps its period


# -- the event table --------------------------------------------------------------------------

EVENT_TABLE = [
    ("A01", "admit", "INSERT", ()),
    ("A04", "register", "INSERT", ()),
    ("A05", "preadmit", "INSERT", ()),
    ("A14", "pending-admit", "INSERT", ()),
    ("A06", "change-class", "INSERT", ("A07",)),
    ("A07", "change-class", "INSERT", ("A06",)),
    ("A02", "transfer", "INSERT", ()),
    ("Z80", "transfer", "INSERT", ()),
    ("Z84", "transfer", "INSERT", ()),
    ("A21", "leave", "INSERT", ()),
    ("A22", "return", "INSERT", ()),
    ("A54", "doctor-change", "INSERT", ()),
    ("A03", "discharge", "INSERT", ()),
    ("A15", "pending-transfer", "INSERT", ()),
    ("A16", "pending-discharge", "INSERT", ()),
    ("A08", "update", "INSERT", ()),
    ("Z99", "correction", "UPDATE", ()),
    ("A44", "move-account", "INSERT", ()),
    ("A11", "cancel-admit", "CANCEL", ("A01", "A04")),
    ("A38", "cancel-preadmit", "CANCEL", ("A05",)),
    ("A12", "cancel-transfer", "CANCEL", ("A02", "Z80", "Z84")),
    ("Z81", "cancel-transfer", "CANCEL", ("A02", "Z80", "Z84")),
    ("Z85", "cancel-transfer", "CANCEL", ("A02", "Z80", "Z84")),
    ("A13", "cancel-discharge", "CANCEL", ("A03",)),
    ("A52", "cancel-leave", "CANCEL", ("A21",)),
    ("A53", "cancel-return", "CANCEL", ("A22",)),
    ("A55", "cancel-doctor-change", "CANCEL", ("A54",)),
    ("A27", "cancel-pending-admit", "CANCEL", ("A14",)),
    ("A26", "cancel-pending-transfer", "CANCEL", ("A15",)),
    ("A25", "cancel-pending-discharge", "CANCEL", ("A16",)),
    ("A28", "person", "INSERT", ()),
    ("A31", "person-update", "INSERT", ()),
    ("A47", "change-identifier", "INSERT", ()),
    ("A40", "merge", "INSERT", ()),
]


@pytest.mark.parametrize(("trigger", "kind", "action", "cancels"), EVENT_TABLE, ids=[row[0] for row in EVENT_TABLE])
def test_event_table(trigger: str, kind: str, action: str, cancels: tuple[str, ...]) -> None:
    spec = EVENTS[trigger]
    assert (spec.kind, spec.action, spec.cancels) == (kind, action, cancels)


def test_event_table_is_complete_and_every_kind_is_folded() -> None:
    assert sorted(EVENTS) == sorted(row[0] for row in EVENT_TABLE)
    # ANS NdE event types: A01/A04 are admissions (ADM), A03 a discharge (SOR); nothing else has a code
    event_types = {t: row.target_code for t, row in TABLES.codes["ADT_to_TRE_R254"].items()}
    assert event_types == {"A01": "ADM", "A04": "ADM", "A03": "SOR"}
    # every kind the tables accept is one the fold knows, and each is in exactly one family
    families = [set(KINDS), set(CANCEL_KINDS), {CORRECTION_KIND}, set(IDENTITY_KINDS)]
    assert set().union(*families) == EVENT_KINDS
    assert sum(len(f) for f in families) == len(EVENT_KINDS)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("action: CANCEL, cancels: [A01, A04]}", "action: CANCEL}", "needs 'cancels'"),
        ("cancels: [A03]}", "cancels: [A03, A11]}", "cancels A11, which is not an INSERT event"),
        ("{kind: correction, action: UPDATE}", "{kind: correction, action: INSERT}", "a correction is an UPDATE"),
    ],
    ids=["cancel-without-target", "cancel-of-a-cancel", "correction-not-update"],
)
def test_event_table_cross_checks(tmp_path: Path, old: str, new: str, message: str) -> None:
    target = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    adt = target / "messages" / "ADT.yaml"
    text = adt.read_text(encoding="utf-8")
    assert old in text
    adt.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Engine.from_directory(target)
    assert "ADT.yaml" in info.value.message
    assert message in info.value.message


def test_class_by_trigger_mirrors_the_patient_class_table() -> None:
    for trigger, pv1_2 in (("A06", "I"), ("A07", "O")):
        row = TABLES.code("PatientClass_to_EncounterClass", pv1_2)
        assert row is not None
        assert CLASS_BY_TRIGGER[trigger] == row.coding()


def test_an_unknown_zbe9_nature_is_kept_raw() -> None:
    """Hospitals extend ZBE-9 (suffixed codes): the code outside the table is kept as sent."""
    folded = stay([move("A01", T0, "MV-1", unit="URG", uf="4010", nature="HMS-X")])
    codings = folded.movements[0]["type"][0]["coding"]
    assert codings[1] == {"system": RAW_NATURE_SYSTEM, "code": "HMS-X"}


def test_movement_nature_table() -> None:
    assert sorted(NATURES) == sorted(["S", "H", "M", "L", "D", "SM", "SH", "MH", "LD", "HMS", "C"])
    for code, row in NATURES.items():
        assert row.target_code == code
        assert row.target_system == "https://gateway.e-parcours.example/fhir/CodeSystem/movement-nature"
        assert row.target_display


# -- helpers for stays with movements ---------------------------------------------------------


def move(
    trigger: str,
    at: datetime,
    movement_id: str | None,
    *,
    unit: str = "CHIR",
    uf: str | None = None,
    control: str = "",
    **kwargs: Any,
) -> VisitFact:
    """A movement message whose PV1 puts the patient in ``unit`` (and ZBE-7 in ``uf``)."""
    doctor = kwargs.pop("doctor", None)
    facts = kwargs.pop("encounter", None) or encounter_facts(unit=unit, doctor=doctor)
    return fact(
        trigger,
        at=at,
        control=control or f"C-{trigger}-{movement_id}",
        movement_id=movement_id,
        encounter=facts,
        unit=uf,
        **kwargs,
    )


def stay(facts: list[VisitFact]) -> Stay:
    """The fold, checked on the way to give the same result in reverse arrival order."""
    folded = fold_stay(facts, natures=NATURES)
    assert fold_stay(facts[::-1], natures=NATURES) == folded
    return folded


def current(facts: list[VisitFact]) -> dict[str, Any]:
    encounter = stay(facts).encounter
    assert encounter is not None
    return encounter


def place(encounter: dict[str, Any]) -> list[str]:
    return [loc["location"]["display"] for loc in encounter.get("location", [])]


def by_id(movements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["identifier"][0]["value"]: m for m in movements}


def movement_id_of(movement_value: str) -> str:
    return resource_id("Encounter", f"movement|{ENCOUNTER_ID}|{MOVEMENT_SYSTEM}|{movement_value}")


H = timedelta(hours=1)
D = timedelta(days=1)


# -- pre-admission and pending admission ------------------------------------------------------


@pytest.mark.parametrize("trigger", ["A05", "A14"])
def test_planned_alone(trigger: str) -> None:
    encounter = current([move(trigger, T0, "MV-P", encounter=encounter_facts(start=T0 + D, unit="CHIR"))])
    assert encounter["status"] == "planned"
    assert encounter["period"] == {"start": iso(T0 + D)}  # a plan carries its planned start (PV1-44)
    assert [loc["status"] for loc in encounter["location"]] == ["planned"]


@pytest.mark.parametrize(("trigger", "cancel_trigger"), [("A05", "A38"), ("A14", "A27")])
def test_planned_then_cancelled(trigger: str, cancel_trigger: str) -> None:
    facts = [move(trigger, T0, "MV-P"), cancel(cancel_trigger, T0 + H, movement_id="MV-P")]
    folded = stay(facts)
    assert folded.encounter is not None
    assert folded.encounter["status"] == "cancelled"
    assert [m["status"] for m in folded.movements] == ["cancelled"]


@pytest.mark.parametrize("trigger", ["A05", "A14"])
def test_planned_then_admitted(trigger: str) -> None:
    facts = [move(trigger, T0, "MV-P"), admission(T0 + D)]
    encounter = current(facts)
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": iso(T0 + D)}


def test_plan_after_admission_does_not_unbegin_the_stay() -> None:
    encounter = current([admission(), move("A05", T0 + H, "MV-P")])
    assert encounter["status"] == "in-progress"


def test_cancelled_admission_falls_back_to_the_preadmission() -> None:
    facts = [move("A05", T0 - D, "MV-P"), admission(), cancel("A11", T0 + H, movement_id="MV-1")]
    encounter = current(facts)
    assert encounter["status"] == "planned"
    assert encounter["period"] == {"start": iso(T0 - D)}  # the pre-admission's own date (ZBE-2)


# -- transfers --------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["A02", "Z80", "Z84"])
def test_transfer_moves_the_present(trigger: str) -> None:
    facts = [move("A01", T0, "MV-1", unit="URG", uf="4010"), move(trigger, T0 + D, "MV-2", unit="CARDIO", uf="4020")]
    encounter = current(facts)
    assert encounter["status"] == "in-progress"
    assert place(encounter) == ["CARDIO"]
    assert encounter["serviceProvider"]["identifier"]["value"] == "4020"
    assert encounter["period"] == {"start": iso(T0)}


@pytest.mark.parametrize(
    ("trigger", "cancel_trigger"), [("A02", "A12"), ("Z80", "Z81"), ("Z84", "Z85"), ("A02", "Z81")]
)
@pytest.mark.parametrize("zbe", [True, False])
def test_cancel_transfer_restores_the_previous_place(trigger: str, cancel_trigger: str, zbe: bool) -> None:
    facts = [
        move("A01", T0, "MV-1", unit="URG", uf="4010", zbe=zbe),
        move(trigger, T0 + D, "MV-2", unit="CARDIO", uf="4020", zbe=zbe),
        cancel(cancel_trigger, T0 + D + H, movement_id="MV-2", zbe=zbe),
    ]
    encounter = current(facts)
    assert encounter["status"] == "in-progress"
    assert place(encounter) == ["URG"]
    if zbe:
        assert encounter["serviceProvider"]["identifier"]["value"] == "4010"


def test_historic_movement_does_not_overwrite_the_present() -> None:
    admit = move("A01", T0, "MV-1", unit="URG", uf="4010")
    now = move("A02", T0 + 2 * D, "MV-3", unit="CARDIO", uf="4030")
    # sent last, but dated between the two: ZBE-5 = Y, a movement entered after the fact
    past = move("A02", T0 + D, "MV-2", unit="PNEUMO", uf="4020", historic=True)
    folded = stay([admit, now, past])
    assert folded.encounter is not None
    assert place(folded.encounter) == ["CARDIO"]
    assert folded.encounter["serviceProvider"]["identifier"]["value"] == "4030"
    assert [m["identifier"][0]["value"] for m in folded.movements] == ["MV-1", "MV-2", "MV-3"]
    assert [m["period"] for m in folded.movements] == [
        {"start": iso(T0), "end": iso(T0 + D)},
        {"start": iso(T0 + D), "end": iso(T0 + 2 * D)},
        {"start": iso(T0 + 2 * D)},
    ]
    assert [m["status"] for m in folded.movements] == ["finished", "finished", "in-progress"]


# -- class changes ----------------------------------------------------------------------------

AMB = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"}


@pytest.mark.parametrize(("first", "trigger", "wanted"), [(AMB, "A06", "IMP"), (IMP, "A07", "AMB")])
@pytest.mark.parametrize("with_pv1_2", [True, False])
def test_change_class_insert(first: dict[str, Any], trigger: str, wanted: str, with_pv1_2: bool) -> None:
    pv1_class = CLASS_BY_TRIGGER[trigger] if with_pv1_2 else None
    facts = [
        move("A01", T0, "MV-1", encounter=encounter_facts(cls=first)),
        move(trigger, T0 + D, "MV-2", encounter=encounter_facts(cls=pv1_class)),
    ]
    encounter = current(facts)
    assert encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == wanted


def test_change_class_takes_pv1_2_over_the_trigger() -> None:
    emergency = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"}
    facts = [move("A04", T0, "MV-1", encounter=encounter_facts(cls=AMB))]
    facts.append(move("A06", T0 + H, "MV-2", encounter=encounter_facts(cls=emergency)))
    assert current(facts)["class"] == emergency


@pytest.mark.parametrize(
    ("first", "insert", "cancel_trigger"),
    [(IMP, "A07", "A06"), (AMB, "A06", "A07")],
    ids=["A06-cancels-A07", "A07-cancels-A06"],
)
@pytest.mark.parametrize("zbe", [True, False])
def test_change_class_as_cancel(first: dict[str, Any], insert: str, cancel_trigger: str, zbe: bool) -> None:
    """ZBE-4 CANCEL on an A06 undoes an A07 (and the reverse): the class goes back."""
    facts = [
        move("A01", T0, "MV-1", encounter=encounter_facts(cls=first), zbe=zbe),
        move(insert, T0 + D, "MV-2", encounter=encounter_facts(cls=None), zbe=zbe),
        move(cancel_trigger, T0 + D + H, "MV-2", encounter=encounter_facts(cls=None), action="CANCEL", zbe=zbe),
    ]
    folded = stay(facts)
    assert folded.encounter is not None
    assert folded.encounter["class"] == first
    assert folded.encounter["status"] == "in-progress"
    if zbe:
        assert [m["status"] for m in folded.movements] == ["in-progress", "cancelled"]


def test_change_class_cancel_does_not_undo_the_same_trigger() -> None:
    facts = [
        admission(zbe=False),
        move("A07", T0 + D, None, zbe=False, encounter=encounter_facts(cls=None)),
        move("A07", T0 + D + H, None, zbe=False, action="CANCEL", encounter=encounter_facts(cls=None)),
    ]
    # an A07 CANCEL undoes an A06; there is none, so the class change stands
    assert current(facts)["class"]["code"] == "AMB"


# -- leave and return -------------------------------------------------------------------------


def leave_return(*, with_return: bool = True) -> list[VisitFact]:
    facts = [admission(), move("A21", T0 + D, "MV-L")]
    if with_return:
        facts.append(move("A22", T0 + 2 * D, "MV-R"))
    return facts


def test_leave_is_onleave() -> None:
    encounter = current(leave_return(with_return=False))
    assert encounter["status"] == "onleave"
    assert encounter["period"] == {"start": iso(T0)}
    assert [loc["status"] for loc in encounter["location"]] == ["reserved"]  # the bed is kept


def test_return_is_in_progress() -> None:
    folded = stay(leave_return())
    assert folded.encounter is not None
    assert folded.encounter["status"] == "in-progress"
    assert [m["status"] for m in folded.movements] == ["finished", "finished", "in-progress"]
    leave = by_id(folded.movements)["MV-L"]
    assert leave["period"] == {"start": iso(T0 + D), "end": iso(T0 + 2 * D)}


@pytest.mark.parametrize("zbe", [True, False])
def test_cancel_leave(zbe: bool) -> None:
    facts = [
        admission(zbe=zbe),
        move("A21", T0 + D, "MV-L", zbe=zbe),
        cancel("A52", T0 + D + H, movement_id="MV-L", zbe=zbe),
    ]
    assert current(facts)["status"] == "in-progress"


@pytest.mark.parametrize("zbe", [True, False])
def test_cancel_return_back_on_leave(zbe: bool) -> None:
    facts = [
        admission(zbe=zbe),
        move("A21", T0 + D, "MV-L", zbe=zbe),
        move("A22", T0 + 2 * D, "MV-R", zbe=zbe),
        cancel("A53", T0 + 2 * D + H, movement_id="MV-R", zbe=zbe),
    ]
    assert current(facts)["status"] == "onleave"


def test_discharge_while_on_leave_finishes() -> None:
    facts = [*leave_return(with_return=False), discharge(T0 + 3 * D)]
    encounter = current(facts)
    assert encounter["status"] == "finished"
    assert encounter["period"]["end"] == iso(T0 + 3 * D)


# -- doctor change ----------------------------------------------------------------------------


def test_doctor_change_replaces_the_participants() -> None:
    facts = [move("A01", T0, "MV-1", doctor="dr-a"), move("A54", T0 + D, "MV-2", doctor="dr-b")]
    encounter = current(facts)
    assert encounter["status"] == "in-progress"
    assert encounter["participant"] == [attending("dr-b")]


@pytest.mark.parametrize("zbe", [True, False])
def test_cancel_doctor_change(zbe: bool) -> None:
    facts = [
        move("A01", T0, "MV-1", doctor="dr-a", zbe=zbe),
        move("A54", T0 + D, "MV-2", doctor="dr-b", zbe=zbe),
        cancel("A55", T0 + D + H, movement_id="MV-2", zbe=zbe),
    ]
    assert current(facts)["participant"] == [attending("dr-a")]


# -- pending transfer and discharge -----------------------------------------------------------


@pytest.mark.parametrize(("trigger", "cancel_trigger"), [("A15", "A26"), ("A16", "A25")])
def test_pending_movement_changes_nothing_but_is_listed_planned(trigger: str, cancel_trigger: str) -> None:
    base = [move("A01", T0, "MV-1", unit="URG", uf="4010")]
    pending = move(trigger, T0 + D, "MV-P", unit="CARDIO", uf="4020")
    before = current(base)
    folded = stay([*base, pending])
    assert folded.encounter == before  # status, place and unit in charge unchanged
    assert [m["status"] for m in folded.movements] == ["in-progress", "planned"]
    assert "end" not in folded.movements[0]["period"]  # a plan does not end the present movement
    assert folded.movements[1]["period"] == {"start": iso(T0 + D)}
    assert [loc["status"] for loc in folded.movements[1]["location"]] == ["planned"]
    undone = stay([*base, pending, cancel(cancel_trigger, T0 + D + H, movement_id="MV-P")])
    assert undone.encounter == before
    assert [m["status"] for m in undone.movements] == ["in-progress", "cancelled"]


def test_pending_discharge_then_discharge() -> None:
    facts = [admission(), move("A16", T0 + D, "MV-P"), discharge(T0 + 2 * D)]
    folded = stay(facts)
    assert folded.encounter is not None
    assert folded.encounter["status"] == "finished"
    # the pending discharge is no longer a plan once the stay has moved past it (the discharge came)
    assert [m["status"] for m in folded.movements] == ["finished", "finished", "finished"]


def test_pending_transfer_alone_means_the_patient_is_in() -> None:
    assert current([move("A15", T0, "MV-P")])["status"] == "in-progress"


# -- A08 update (foreign senders) -------------------------------------------------------------


def test_a08_updates_class_place_and_people_without_a_movement() -> None:
    update = fact(
        "A08", at=T0 + D, control="C-A08", zbe=False, encounter=encounter_facts(unit="REA", cls=AMB, doctor="dr-u")
    )
    folded = stay([move("A01", T0, "MV-1", doctor="dr-a"), update])
    assert folded.encounter is not None
    assert folded.encounter["status"] == "in-progress"
    assert place(folded.encounter) == ["REA"]
    assert folded.encounter["class"] == AMB
    assert folded.encounter["participant"] == [attending("dr-u")]
    assert [m["identifier"][0]["value"] for m in folded.movements] == ["MV-1"]
    assert folded.movements[0]["period"] == {"start": iso(T0)}  # not a movement: no end to the admission


def test_a08_reusing_a_movement_id_does_not_replace_the_movement() -> None:
    update = fact("A08", at=T0 + D, control="C-A08", movement_id="MV-1", encounter=encounter_facts(unit="REA"))
    folded = stay([admission(), update])
    assert folded.encounter is not None
    assert folded.encounter["status"] == "in-progress"
    assert place(folded.encounter) == ["REA"]
    assert [m["type"][0]["coding"][0]["code"] for m in folded.movements] == ["A01"]


def test_a08_before_discharge_keeps_it_finished() -> None:
    update = fact("A08", at=T0 + D, control="C-A08", zbe=False, encounter=encounter_facts(unit="REA"))
    encounter = current([admission(), update, discharge(T0 + 2 * D)])
    assert encounter["status"] == "finished"


@pytest.mark.parametrize("trigger", ["A08", "A44"])
def test_update_or_move_alone_creates_nothing(trigger: str) -> None:
    lone = fact(trigger, at=T0, control="C-1", zbe=False, encounter=encounter_facts(patient="pat-2"))
    assert stay([lone]) == Stay(None, [])


# -- A44 move account -------------------------------------------------------------------------


def test_move_account_changes_the_subject() -> None:
    moved = fact("A44", at=T0 + D, control="C-A44", zbe=False, encounter=encounter_facts(patient="pat-2"))
    folded = stay([admission(), moved, discharge(T0 + 2 * D)])
    assert folded.encounter is not None
    assert folded.encounter["subject"] == {"reference": "Patient/pat-2"}
    assert {m["subject"]["reference"] for m in folded.movements} == {"Patient/pat-2"}
    assert folded.encounter["status"] == "finished"


def test_latest_move_account_wins() -> None:
    first = fact("A44", at=T0 + D, control="C-1", zbe=False, encounter=encounter_facts(patient="pat-2"))
    second = fact("A44", at=T0 + 2 * D, control="C-2", zbe=False, encounter=encounter_facts(patient="pat-3"))
    later_movement = move("A02", T0 + 3 * D, "MV-2")  # its PV1 still names pat-1: the A44 decides
    assert current([admission(), second, first, later_movement])["subject"] == {"reference": "Patient/pat-3"}


# -- cancels and corrections for movements never seen -----------------------------------------

CANCEL_TRIGGERS = ["A11", "A38", "A12", "Z81", "Z85", "A13", "A52", "A53", "A55", "A27", "A26", "A25"]


@pytest.mark.parametrize("trigger", CANCEL_TRIGGERS)
@pytest.mark.parametrize("zbe", [True, False])
def test_cancel_never_seen_creates_nothing(trigger: str, zbe: bool) -> None:
    assert stay([cancel(trigger, T0, movement_id="MV-X", zbe=zbe)]) == Stay(None, [])


@pytest.mark.parametrize("trigger", CANCEL_TRIGGERS)
def test_cancel_of_an_unknown_movement_changes_nothing(trigger: str) -> None:
    base = [admission(), move("A02", T0 + D, "MV-2", unit="CARDIO"), move("A21", T0 + 2 * D, "MV-3")]
    assert stay([*base, cancel(trigger, T0 + 3 * D, movement_id="MV-X")]) == stay(base)


def test_correction_never_seen_creates_nothing() -> None:
    lone = move("Z99", T0, "MV-X", unit="REA", original="A02")
    assert stay([lone]) == Stay(None, [])
    base = [admission()]
    assert stay([*base, lone]) == stay(base)


def test_correction_without_movement_id_changes_nothing() -> None:
    base = [admission()]
    assert stay([*base, move("Z99", T0 + H, None, zbe=False, unit="REA")]) == stay(base)


# -- Z99 corrections --------------------------------------------------------------------------


def test_correction_replaces_place_unit_and_date() -> None:
    transfer = move("A02", T0 + D, "MV-2", unit="CARDIO", uf="4020", recorded=T0 + D)
    fixed = move("Z99", T0 + D + 2 * H, "MV-2", unit="PNEUMO", uf="4030", recorded=T0 + 2 * D, original="A02")
    folded = stay([admission(), transfer, fixed])
    assert folded.encounter is not None
    assert place(folded.encounter) == ["PNEUMO"]
    assert folded.encounter["serviceProvider"]["identifier"]["value"] == "4030"
    moved = by_id(folded.movements)["MV-2"]
    assert moved["period"]["start"] == iso(T0 + D + 2 * H)
    assert by_id(folded.movements)["MV-1"]["period"]["end"] == iso(T0 + D + 2 * H)
    assert moved["type"][0]["coding"][0]["code"] == "A02"  # the movement keeps its trigger
    assert len(folded.movements) == 2  # a correction is no movement of its own


def test_correction_can_reorder_movements() -> None:
    """A Z99 moving a transfer's date before another movement: the present follows the new order."""
    first = move("A02", T0 + D, "MV-2", unit="CARDIO", recorded=T0 + D)
    second = move("A02", T0 + 2 * D, "MV-3", unit="PNEUMO", recorded=T0 + 2 * D)
    fixed = move("Z99", T0 + 3 * D, "MV-2", unit="CARDIO", recorded=T0 + 4 * D, original="A02")
    folded = stay([admission(), first, second, fixed])
    assert folded.encounter is not None
    assert place(folded.encounter) == ["CARDIO"]
    assert [m["identifier"][0]["value"] for m in folded.movements] == ["MV-1", "MV-3", "MV-2"]


def test_correction_of_the_admission_date_moves_the_start() -> None:
    admit = admission(T0, with_start=False)
    fixed = fact(
        "Z99",
        at=T0 - H,
        control="C-Z99",
        movement_id="MV-1",
        encounter=encounter_facts(),
        recorded=T0 + D,
        original="A01",
    )
    encounter = current([admit, fixed])
    assert encounter["period"] == {"start": iso(T0 - H)}
    assert encounter["status"] == "in-progress"


@pytest.mark.parametrize("arrival", ["newer-last", "older-last"])
@pytest.mark.parametrize("newer_date", ["earlier", "later"])
def test_old_correction_arriving_after_a_newer_one_does_not_win(arrival: str, newer_date: str) -> None:
    """Recording order (EVN-2) decides between corrections: neither arrival order nor the corrected date."""
    transfer = move("A02", T0 + D, "MV-2", unit="CARDIO", recorded=T0 + D)
    older_at, newer_at = (T0 + D + 3 * H, T0 + D + H) if newer_date == "earlier" else (T0 + D + H, T0 + D + 3 * H)
    older = move("Z99", older_at, "MV-2", unit="PNEUMO", uf="4030", recorded=T0 + D + 5 * H, original="A02")
    newer = move("Z99", newer_at, "MV-2", unit="REA", uf="4040", recorded=T0 + D + 6 * H, original="A02")
    corrections = [older, newer] if arrival == "newer-last" else [newer, older]
    folded = stay([admission(), transfer, *corrections])
    assert folded.encounter is not None
    assert place(folded.encounter) == ["REA"]
    assert folded.encounter["serviceProvider"]["identifier"]["value"] == "4040"
    assert by_id(folded.movements)["MV-2"]["period"]["start"] == iso(newer_at)


def test_corrected_then_cancelled_movement_is_gone() -> None:
    facts = [
        admission(),
        move("A02", T0 + D, "MV-2", unit="CARDIO"),
        move("Z99", T0 + D, "MV-2", unit="PNEUMO", recorded=T0 + 2 * D, original="A02"),
        cancel("A12", T0 + 3 * D, movement_id="MV-2"),
    ]
    folded = stay(facts)
    assert folded.encounter is not None
    assert place(folded.encounter) == ["CHIR"]
    assert by_id(folded.movements)["MV-2"]["status"] == "cancelled"


def test_correction_of_a_discharge_date() -> None:
    out = discharge(T0 + 3 * D, with_end=False)
    fixed = fact(
        "Z99",
        at=T0 + 2 * D,
        control="C-Z99",
        movement_id="MV-2",
        encounter=encounter_facts(start=T0, disposition=HOME),
        recorded=T0 + 4 * D,
        original="A03",
    )
    encounter = current([admission(), out, fixed])
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": iso(T0), "end": iso(T0 + 2 * D)}


# -- movement Encounters ----------------------------------------------------------------------

OUT = T0 + 4 * D


def full_stay() -> list[VisitFact]:
    return [
        move("A01", T0, "MV-1", unit="URG", uf="4010", nature="HMS"),
        move("A02", T0 + D, "MV-2", unit="CARDIO", uf="4020", nature="M"),
        move("A21", T0 + 2 * D, "MV-3", unit="CARDIO", uf="4020"),
        move("A22", T0 + 3 * D, "MV-4", unit="CARDIO", uf="4020"),
        move("A03", OUT, "MV-5", encounter=encounter_facts(start=T0, end=OUT, disposition=HOME, unit="CARDIO")),
    ]


def test_movements_are_encounters_part_of_the_stay() -> None:
    folded = stay(full_stay())
    assert folded.encounter is not None
    assert folded.encounter["status"] == "finished"
    values = ["MV-1", "MV-2", "MV-3", "MV-4", "MV-5"]
    assert [m["identifier"][0]["value"] for m in folded.movements] == values
    assert [m["id"] for m in folded.movements] == [movement_id_of(v) for v in values]
    for m in folded.movements:
        assert m["resourceType"] == "Encounter"
        assert m["meta"]["profile"] == ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-encounter"]
        assert m["partOf"] == {"reference": f"Encounter/{ENCOUNTER_ID}"}
        assert m["class"] == folded.encounter["class"]
        assert m["subject"] == folded.encounter["subject"]
        assert m["identifier"] == [movement_identifier(m["identifier"][0]["value"])]


def test_movement_periods_chain_and_statuses() -> None:
    movements = stay(full_stay()).movements
    times = [T0, T0 + D, T0 + 2 * D, T0 + 3 * D, OUT]
    assert [m["period"] for m in movements] == [
        {"start": iso(a), "end": iso(b)} for a, b in zip(times, [*times[1:], OUT], strict=True)
    ]
    assert {m["status"] for m in movements} == {"finished"}
    assert {loc["status"] for m in movements for loc in m["location"]} == {"completed"}


def test_the_current_movement_has_the_stay_status() -> None:
    movements = stay(full_stay()[:3]).movements  # admitted, transferred, on leave
    assert [m["status"] for m in movements] == ["finished", "finished", "onleave"]
    assert "end" not in movements[-1]["period"]
    assert [loc["status"] for loc in movements[-1]["location"]] == ["reserved"]


def test_movement_place_unit_and_type() -> None:
    first, second = stay(full_stay()[:2]).movements
    assert place(first) == ["URG"]
    assert first["serviceProvider"] == {"identifier": {"system": "urn:x:uf", "value": "4010"}, "display": "Unit 4010"}
    assert place(second) == ["CARDIO"]
    assert first["type"] == [
        {
            "coding": [
                {
                    "system": "https://gateway.e-parcours.example/fhir/CodeSystem/movement-type",
                    "code": "A01",
                    "display": "admit",
                },
                {
                    "system": "https://gateway.e-parcours.example/fhir/CodeSystem/movement-nature",
                    "code": "HMS",
                    "display": NATURES["HMS"].target_display,
                },
            ]
        }
    ]
    assert [c["code"] for c in second["type"][0]["coding"]] == ["A02", "M"]


def test_movement_nature_outside_the_table_is_kept_as_sent() -> None:
    [only] = stay([move("A01", T0, "MV-1", nature="XYZ")]).movements
    assert only["type"][0]["coding"][1:] == [{"system": RAW_NATURE_SYSTEM, "code": "XYZ"}]


def test_movement_nature_already_coded_by_the_engine() -> None:
    coded = NATURES["SH"].coding()
    [only] = fold_stay([move("A01", T0, "MV-1", nature=coded)]).movements  # no table needed
    assert only["type"][0]["coding"][1] == coded


def test_movement_nature_needs_the_table_when_bare() -> None:
    """Without the table a bare code cannot be coded: it is kept as sent, never dropped."""
    [only] = fold_stay([move("A01", T0, "MV-1", nature="SH")]).movements
    assert only["type"][0]["coding"][1:] == [{"system": RAW_NATURE_SYSTEM, "code": "SH"}]


def test_movements_without_zbe_are_not_listed_but_end_the_previous_one() -> None:
    facts = [admission(), move("A02", T0 + D, None, zbe=False, unit="CARDIO"), move("A02", T0 + 2 * D, "MV-3")]
    movements = stay(facts).movements
    assert [m["identifier"][0]["value"] for m in movements] == ["MV-1", "MV-3"]
    assert movements[0]["period"] == {"start": iso(T0), "end": iso(T0 + D)}
    assert movements[0]["status"] == "finished"


def test_cancelled_stay_lists_its_movements_cancelled() -> None:
    folded = stay([admission(), cancel("A11", T0 + H, movement_id="MV-1")])
    assert folded.encounter is not None
    assert folded.encounter["status"] == "cancelled"
    [only] = folded.movements
    assert only["status"] == "cancelled"
    assert only["period"] == {"start": iso(T0)}
    assert all("status" not in loc for loc in only["location"])


def test_cancelled_movement_is_listed_and_left_out_of_the_chain() -> None:
    facts = [
        *full_stay()[:2],
        move("A02", T0 + 2 * D, "MV-9", unit="REA"),
        cancel("A12", T0 + 3 * D, movement_id="MV-9"),
    ]
    movements = by_id(stay(facts).movements)
    assert movements["MV-9"]["status"] == "cancelled"
    assert movements["MV-2"]["status"] == "in-progress"
    assert "end" not in movements["MV-2"]["period"]


def test_movement_received_twice_is_listed_once() -> None:
    again = replace(full_stay()[1], control_id="C-RESENT")
    movements = stay([*full_stay(), again]).movements
    assert len(movements) == 5


def test_fold_visit_is_the_stay_encounter() -> None:
    assert fold_visit(full_stay()) == fold_stay(full_stay()).encounter


def test_readmission_lists_each_movement() -> None:
    facts = [*full_stay(), move("A01", OUT + D, "MV-6", unit="URG")]
    folded = stay(facts)
    assert folded.encounter is not None
    assert folded.encounter["status"] == "in-progress"
    assert [m["status"] for m in folded.movements] == ["finished"] * 5 + ["in-progress"]
    assert folded.movements[4]["period"] == {"start": iso(OUT), "end": iso(OUT + D)}


# -- recorded_at ------------------------------------------------------------------------------


def test_recorded_at_defaults_to_event_time() -> None:
    assert admission().recorded_at == T0
    late = fact("A01", at=T0, control="C1", movement_id="MV-1", recorded=T0 + D)
    assert late.recorded_at == T0 + D
    assert VisitFact.from_payload(late.to_payload()) == late


def test_old_payload_without_recorded_at_loads() -> None:
    payload = admission().to_payload()
    del payload["recorded_at"]
    restored = VisitFact.from_payload(payload)
    assert restored.recorded_at == restored.event_time == T0
    assert restored == admission()


# -- property: rich stays, any arrival order --------------------------------------------------

UNITS = ["URG", "CARDIO", "PNEUMO", "REA"]
#: The insert each generated movement may be undone by, and the ZBE-4 the cancel carries.
UNDO = {
    "A01": ("A11", None),
    "A04": ("A11", None),
    "A05": ("A38", None),
    "A02": ("A12", None),
    "Z80": ("Z81", None),
    "A21": ("A52", None),
    "A22": ("A53", None),
    "A54": ("A55", None),
    "A15": ("A26", None),
    "A16": ("A25", None),
    "A03": ("A13", None),
    "A06": ("A07", "CANCEL"),
    "A07": ("A06", "CANCEL"),
}
RICH = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rich_stays(draw: st.DrawFn) -> tuple[list[VisitFact], bool]:
    """Admissions, transfers, leaves and returns, class and doctor changes, plans, a discharge, A08/A44,
    Z99 corrections (some recorded out of order), cancels (some for movements never seen), re-sent
    messages; times drawn from a few values so that ties happen. Returns (facts, every fact has a ZBE)."""
    mode = draw(st.sampled_from(["zbe", "none", "mixed"]))
    count = 0

    def at() -> datetime:
        return T0 + timedelta(hours=6 * draw(st.integers(0, 10)))

    def with_zbe() -> bool:
        return mode == "zbe" or (mode == "mixed" and draw(st.booleans()))

    def add(trigger: str, **kwargs: Any) -> VisitFact:
        nonlocal count
        count += 1
        zbe = with_zbe()
        when = kwargs.pop("when", None) or at()
        return move(
            trigger,
            when,
            f"MV-{count}" if zbe else None,
            zbe=zbe,
            unit=draw(st.sampled_from(UNITS)),
            uf=draw(st.sampled_from([None, "4010", "4020"])),
            nature=draw(st.sampled_from([None, "H", "HMS", "XYZ"])),
            doctor=draw(st.sampled_from([None, "dr-a", "dr-b"])),
            recorded=T0 + timedelta(hours=6 * draw(st.integers(0, 14))),
            control=f"C-{count}",
            **kwargs,
        )

    t_admit = at()
    first = draw(st.sampled_from(["A01", "A04", "A05"]))
    inserts = [add(first, when=t_admit, encounter=encounter_facts(start=t_admit if draw(st.booleans()) else None))]
    for trigger in draw(
        st.lists(st.sampled_from(["A02", "Z80", "A21", "A22", "A54", "A06", "A07", "A15", "A16"]), max_size=4)
    ):
        inserts.append(add(trigger))
    if draw(st.booleans()):
        t_out = at()
        out = encounter_facts(start=t_admit, end=t_out if draw(st.booleans()) else None, disposition=HOME)
        inserts.append(add("A03", when=t_out, encounter=out))
    facts = list(inserts)
    for trigger in draw(st.lists(st.sampled_from(["A08", "A44"]), max_size=2)):
        patient = draw(st.sampled_from(["pat-1", "pat-2"]))
        facts.append(add(trigger, encounter=encounter_facts(unit=draw(st.sampled_from(UNITS)), patient=patient)))
    for target in draw(st.lists(st.sampled_from(inserts), max_size=3)):  # corrections, possibly several each
        key = (target.movement or {}).get("identifier", {}).get("value")
        count += 1
        facts.append(
            move(
                "Z99",
                at(),
                key,
                zbe=key is not None,
                unit=draw(st.sampled_from(UNITS)),
                uf=draw(st.sampled_from([None, "4030"])),
                recorded=T0 + timedelta(hours=6 * draw(st.integers(0, 14))),
                original=target.trigger,
                control=f"C-{count}",
            )
        )
    for target in draw(st.lists(st.sampled_from(inserts), max_size=3, unique_by=id)):
        trigger, action = UNDO[target.trigger]
        key = (target.movement or {}).get("identifier", {}).get("value")
        count += 1
        facts.append(
            move(trigger, at(), key, zbe=key is not None, action=action, control=f"C-{count}", original=target.trigger)
        )
    if draw(st.booleans()):
        facts.append(cancel(draw(st.sampled_from(CANCEL_TRIGGERS)), at(), movement_id="MV-NEVER", control="C-NEVER"))
    for again in draw(st.lists(st.sampled_from(facts), max_size=2)):  # re-sent, same or new MSH-10
        facts.append(replace(again, control_id=again.control_id + "-R") if draw(st.booleans()) else again)
    return facts, mode == "zbe"


@RICH
@given(data=st.data(), generated=rich_stays())
def test_rich_stay_any_permutation_folds_like_event_order(
    data: st.DataObject, generated: tuple[list[VisitFact], bool]
) -> None:
    facts, _ = generated
    expected = fold_stay(event_order(facts), natures=NATURES)
    assert fold_stay(data.draw(st.permutations(facts)), natures=NATURES) == expected
    assert fold_stay(facts[::-1], natures=NATURES) == expected
    assert fold_visit(facts) == expected.encounter


@RICH
@given(generated=rich_stays())
def test_rich_stay_invariants(generated: tuple[list[VisitFact], bool]) -> None:
    facts, all_zbe = generated
    folded = fold_stay(facts, natures=NATURES)
    encounter = folded.encounter
    if encounter is None:
        assert folded.movements == []
        return
    status = encounter["status"]
    assert status in {"planned", "in-progress", "onleave", "finished", "cancelled"}
    assert ("end" in encounter.get("period", {})) == (status == "finished")
    assert ("dischargeDisposition" in encounter.get("hospitalization", {})) <= (status == "finished")
    ids = [m["id"] for m in folded.movements]
    assert len(ids) == len(set(ids))
    assert ENCOUNTER_ID not in ids
    starts = [m["period"]["start"] for m in folded.movements]
    assert [datetime.fromisoformat(s) for s in starts] == sorted(datetime.fromisoformat(s) for s in starts)
    for m in folded.movements:
        assert m["partOf"] == {"reference": f"Encounter/{ENCOUNTER_ID}"}
        assert m["subject"] == encounter["subject"]
        assert m["type"][0]["coding"][0]["code"] in UNDO
        if m["type"][0]["coding"][0]["code"] in PLANS:  # a plan: pending, overtaken (finished) or undone
            assert m["status"] in ("planned", "finished", "cancelled")
    chain = [
        m
        for m in folded.movements
        if m["status"] not in ("planned", "cancelled") and m["type"][0]["coding"][0]["code"] not in PLANS
    ]
    if status == "cancelled":
        assert chain == []
        assert {m["status"] for m in folded.movements} <= {"cancelled"}
        return
    assert all(m["status"] == "finished" for m in chain[:-1])
    if all_zbe and chain:  # every real movement listed: each ends where the next begins
        assert chain[-1]["status"] == status
        assert chain[-1]["class"] == encounter["class"]  # each movement keeps its class; the last is the stay's
        for earlier, later in itertools.pairwise(chain):
            assert earlier["period"]["end"] == later["period"]["start"]


#: Plans (pre-admission, pending admission, transfer, discharge): movements outside the chain.
PLANS = frozenset({"A05", "A14", "A15", "A16"})


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


def test_a_facts_movement_key_and_rule_are_set_at_init_and_by_replace() -> None:
    admitted = fact("A01", at=T0, control="C-1", movement_id="MV-1")
    assert admitted.movement_key == f"{admitted.movement['identifier']['system']}|MV-1"  # type: ignore[index]
    assert admitted.rule is KINDS["admit"]
    moved = replace(admitted, kind="transfer", movement={"identifier": {"system": "s", "value": "MV-9"}})
    assert (moved.movement_key, moved.rule) == ("s|MV-9", KINDS["transfer"])
    bare = replace(admitted, kind=CORRECTION_KIND, movement=None)
    assert bare.movement_key is None and bare.rule.rank == 9 and not bare.rule.movement  # no ZBE-1, inert
    # derived from the fields, they take no part in equality: the same fact read again is equal
    assert VisitFact.from_payload(admitted.to_payload()) == admitted


def test_movements_are_built_in_the_key_order_finish_gives() -> None:
    stay = fold_stay([admission(), fact("A02", at=T0 + timedelta(hours=2), control="C-2", movement_id="MV-2")])
    assert stay.movements and any("serviceProvider" in m or "location" in m for m in stay.movements)
    for movement in stay.movements:
        assert list(movement) == list(_finish(dict(movement)))
