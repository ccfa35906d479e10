"""The care circle (cercle de soins) through the HTTP API: hospital messages in, CareTeam read back.

One CareTeam per patient (ANS ``cds-ihe-careteam``), folded from ROL/PD1 statements, the doctors and the
unit in charge of each stay, and what platforms add through ``$add-member``, ``$end-member`` and PUT.
Every expectation below follows from the messages the test sends (DOMAIN.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.db.repo import OutboxRecord
from gateway.runtime import Runtime
from tests.api_helpers import empty_store, events, subscribe, without_meta_versions
from tests.messages import IPP_AUTH, IPP_SYSTEM, RPPS, Adt

JSON = dict[str, Any]
HL7 = {"Content-Type": "application/hl7-v2"}
PS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"  # idNatPs: the prefixed national id (8 + RPPS)
RPPS_SYSTEM = "https://rpps.esante.gouv.fr"  # FR Core 2.1.0: the 11-digit RPPS
CDS_PROFILE = "https://interop.esante.gouv.fr/ig/fhir/cds/StructureDefinition/cds-ihe-careteam"
SOURCE_EXT = "https://gateway.e-parcours.example/fhir/StructureDefinition/careteam-participant-source"
TRE_R259 = "https://mos.esante.gouv.fr/NOS/TRE_R259-HL7ParticipationFunction/FHIR/TRE-R259-HL7ParticipationFunction"
GATEWAY_ROLES = "https://gateway.e-parcours.example/fhir/CodeSystem/careteam-role"
HOSPITAL = "hospital:CH-TEST"
PARCEO = {"X-Platform": "Parceo"}
CARDIO_UF = f"Cardiologie^^^^^{IPP_AUTH}^UF^^^3002"


@dataclass(frozen=True)
class Doctor:
    rpps: str
    family: str
    given: str

    @property
    def xcn(self) -> str:
        return f"{self.rpps}^{self.family}^{self.given}^^^DR^^^{RPPS}^D^^^RPPS"

    @property
    def display(self) -> str:
        return f"{self.given} {self.family}"

    @property
    def token(self) -> str:
        return f"{PS_SYSTEM}|{self.rpps}"


MARTIN = Doctor("10003456789", "MARTIN", "PAUL")  # médecin traitant (ROL ODRP, PD1-4)
JEAN = Doctor("10001234567", "MEDECIN", "JEAN")  # the Adt builder's PV1-7 attending
DURAND = Doctor("10007654321", "DURAND", "SOPHIE")  # PV1-17 admitting
DUPONT = Doctor("10002222222", "DUPONT", "ANNE")  # ROL RT correspondent
NURSE = {
    "reference": "Practitioner/ide-coste",
    "identifier": {"system": PS_SYSTEM, "value": "10008888888"},
    "display": "CLAIRE COSTE",
}
NURSE_ROLE = {"coding": [{"system": "http://snomed.info/sct", "code": "224535009", "display": "Registered nurse"}]}


# -- messages ------------------------------------------------------------------------------------


def rol(action: str, doctor: Doctor, *, start: str = "", end: str = "", role: str = "ODRP") -> str:
    """ROL-2 action, ROL-3 role, ROL-4 the person (XCN with RPPS), ROL-5 start, ROL-6 end."""
    text = {"ODRP": "Médecin traitant", "RT": "Correspondant"}.get(role, "")
    return f"ROL||{action}|{role}^{text}^HL70443|{doctor.xcn}|{start}|{end}"


def set_field(message: str, segment: str, position: int, value: str) -> str:
    """``message`` with field ``position`` of its first ``segment`` set (not for MSH)."""
    segments = message.split("\r")
    index = next(i for i, seg in enumerate(segments) if seg.split("|")[0] == segment)
    fields = segments[index].split("|")
    fields += [""] * (position + 1 - len(fields))
    fields[position] = value
    segments[index] = "|".join(fields)
    return "\r".join(segments)


def person(control_id: str, event_time: str, *segments: str, ipp: str = "100001") -> Adt:
    """An A31 (demographics, no visit) carrying care circle statements."""
    return Adt(
        trigger="A31",
        control_id=control_id,
        event_time=event_time,
        ipp=ipp,
        extra_segments=list(segments),
        with_zbe=False,
    )


def stay_message(adt: Adt, *, admitting: Doctor | None = DURAND, unit: str | None = None) -> str:
    """A movement message with PV1-17 admitting (repeated in every movement, as PAM-FR senders do)."""
    text = adt.build()
    if admitting is not None:
        text = set_field(text, "PV1", 17, admitting.xcn)
    if unit is not None:
        text = set_field(text, "ZBE", 7, unit)
    return text


def admission(control_id: str = "A1", **fields: Any) -> str:
    return stay_message(Adt(control_id=control_id, **fields))


def discharge(control_id: str = "D1", event_time: str = "20260305120000", **fields: Any) -> str:
    adt = Adt(
        trigger="A03",
        control_id=control_id,
        movement="MVT-D",
        event_time=event_time,
        discharge_time=event_time,
        **fields,
    )
    return stay_message(adt)


# -- the API ---------------------------------------------------------------------------------------


def send(client: TestClient, message: Adt | str) -> None:
    raw = message.bytes() if isinstance(message, Adt) else message.encode("utf-8")
    answer = client.post("/hl7v2", content=raw, headers=HL7)
    assert answer.status_code == 200 and answer.headers["x-ack-code"] == "AA", answer.text


def patient_id(client: TestClient, ipp: str = "100001") -> str:
    found = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|{ipp}"}).json()
    assert found["total"] == 1
    return str(found["entry"][0]["resource"]["id"])


def practitioner_id(client: TestClient, doctor: Doctor) -> str:
    found = client.get("/fhir/Practitioner", params={"identifier": doctor.token}).json()
    assert found["total"] == 1
    return str(found["entry"][0]["resource"]["id"])


def role_reference(client: TestClient, doctor: Doctor) -> str:
    """CDS 2.0.1 members are roles: the one PractitionerRole of a doctor, as a reference."""
    practitioner = f"Practitioner/{practitioner_id(client, doctor)}"
    found = client.get("/fhir/PractitionerRole", params={"practitioner": practitioner}).json()
    assert found["total"] == 1, found
    assert found["entry"][0]["resource"]["practitioner"]["reference"] == practitioner
    return f"PractitionerRole/{found['entry'][0]['resource']['id']}"


def circle(client: TestClient, ipp: str = "100001") -> JSON:
    """The patient's care circle: exactly one CareTeam whose subject is the patient."""
    pid = patient_id(client, ipp)
    found = client.get("/fhir/CareTeam", params={"patient": f"Patient/{pid}"}).json()
    assert found["total"] == 1, found
    team: JSON = found["entry"][0]["resource"]
    assert team["subject"] == {"reference": f"Patient/{pid}"}
    return team


def role_code(participant: JSON) -> str:
    (role,) = participant["role"]
    (coding,) = role["coding"]
    return str(coding["code"])


def source(participant: JSON) -> str:
    (ext,) = [e for e in participant.get("extension", []) if e["url"] == SOURCE_EXT]
    return str(ext["valueString"])


def of(team: JSON, *, display: str, role: str | None = None) -> list[JSON]:
    """The participant entries of one member (by display), optionally in one role."""
    return [
        p
        for p in team.get("participant", [])
        if p["member"].get("display") == display and (role is None or role_code(p) == role)
    ]


def one(team: JSON, *, display: str, role: str) -> JSON:
    found = of(team, display=display, role=role)
    assert len(found) == 1, (display, role, team.get("participant"))
    return found[0]


def summary(team: JSON) -> list[tuple[str, str, str, JSON]]:
    """(member, role, source, period) of every participant, sorted: what a platform sees of a circle."""
    return sorted(
        (p["member"].get("display", ""), role_code(p), source(p), p.get("period", {}))
        for p in team.get("participant", [])
    )


def add_member(client: TestClient, team_id: str, *, start: str = "2026-03-02", platform: str = "Parceo") -> JSON:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "member", "valueReference": NURSE},
            {"name": "role", "valueCodeableConcept": NURSE_ROLE},
            {"name": "start", "valueDateTime": start},
        ],
    }
    answer = client.post(f"/fhir/CareTeam/{team_id}/$add-member", json=params, headers={"X-Platform": platform})
    assert answer.status_code == 200, answer.text
    team: JSON = answer.json()
    return team


def end_member(client: TestClient, team_id: str, member: JSON, *, end: str | None = None) -> Any:
    params: JSON = {"resourceType": "Parameters", "parameter": [{"name": "member", "valueReference": member}]}
    if end:
        params["parameter"].append({"name": "end", "valueDateTime": end})
    return client.post(f"/fhir/CareTeam/{team_id}/$end-member", json=params, headers=PARCEO)


def changes(record: OutboxRecord) -> list[tuple[str, str]]:
    """(change, member reference) entries of an event's context: who joined or left the circle."""
    return [(str(c["change"]), str(c["reference"])) for c in record.context if "change" in c]


# -- one circle per patient ------------------------------------------------------------------------


def test_one_careteam_per_patient_with_the_cds_profile(client: TestClient) -> None:
    send(client, admission(ipp="100001", visit="V-1"))
    send(client, admission("A2", ipp="100002", visit="V-2", movement="MVT-2"))
    send(client, discharge(ipp="100001", visit="V-1"))  # a second message for the first patient: same circle

    teams = {ipp: circle(client, ipp) for ipp in ("100001", "100002")}
    assert teams["100001"]["id"] != teams["100002"]["id"]
    for team in teams.values():
        assert team["resourceType"] == "CareTeam"
        assert team["meta"]["profile"] == [CDS_PROFILE]
        assert team["status"] == "active"
        assert team["participant"]
        assert all(source(p) == HOSPITAL for p in team["participant"])
    assert client.get("/fhir/CareTeam").json()["total"] == 2
    assert client.get("/fhir/CareTeam", params={"status": "active"}).json()["total"] == 2


# -- ROL and PD1: the médecin traitant -----------------------------------------------------------


def test_rol_add_update_delete_and_add_again(client: TestClient) -> None:
    send(client, person("P1", "20260110090000", rol("AD", MARTIN, start="20250101")))
    team = circle(client)
    pcp = one(team, display=MARTIN.display, role="PCP")
    assert pcp["role"][0]["coding"][0]["system"] == TRE_R259
    assert pcp["member"]["identifier"]["value"] == MARTIN.rpps
    assert pcp["member"]["reference"] == role_reference(client, MARTIN)
    assert pcp["period"] == {"start": "2025-01-01"} and source(pcp) == HOSPITAL

    send(client, person("P2", "20260120090000", rol("UP", MARTIN, start="20250115")))
    assert one(circle(client), display=MARTIN.display, role="PCP")["period"] == {"start": "2025-01-15"}

    send(client, person("P3", "20260201090000", rol("DE", MARTIN, end="20250601")))
    ended = one(circle(client), display=MARTIN.display, role="PCP")
    assert ended["period"] == {"start": "2025-01-15", "end": "2025-06-01"}

    send(client, person("P4", "20260301090000", rol("AD", MARTIN, start="20250901")))
    entries = of(circle(client), display=MARTIN.display, role="PCP")
    assert [p["period"] for p in entries] == [{"start": "2025-01-15", "end": "2025-06-01"}, {"start": "2025-09-01"}]

    send(client, person("P5", "20260401100000", rol("DE", MARTIN)))  # no ROL-6: ended at the event time
    entries = of(circle(client), display=MARTIN.display, role="PCP")
    assert entries[1]["period"] == {"start": "2025-09-01", "end": "2026-04-01T10:00:00+02:00"}

    team = circle(client)
    history = client.get(f"/fhir/CareTeam/{team['id']}/_history").json()
    assert history["type"] == "history" and history["total"] == 5
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["5", "4", "3", "2", "1"]
    first = client.get(f"/fhir/CareTeam/{team['id']}/_history/1").json()
    assert [p["period"] for p in of(first, display=MARTIN.display)] == [{"start": "2025-01-01"}]
    assert client.get(f"/fhir/CareTeam/{team['id']}").headers["etag"] == 'W/"5"'


def test_pd1_alone_names_the_medecin_traitant(client: TestClient) -> None:
    send(client, person("P1", "20260110090000", f"PD1||||{MARTIN.xcn}"))
    pcp = one(circle(client), display=MARTIN.display, role="PCP")
    assert pcp["period"] == {"start": "2026-01-10T09:00:00+01:00"}  # no ROL-5: from the event
    identifier = pcp["member"]["identifier"]
    assert (identifier["system"], identifier["value"]) == (RPPS_SYSTEM, MARTIN.rpps)
    assert pcp["member"]["reference"] == role_reference(client, MARTIN)
    assert source(pcp) == HOSPITAL
    # PD1-4 repeated later only confirms him: still one open entry with its first start
    send(client, person("P2", "20260210090000", f"PD1||||{MARTIN.xcn}"))
    assert one(circle(client), display=MARTIN.display, role="PCP")["period"] == {"start": "2026-01-10T09:00:00+01:00"}


# -- stay members: doctors and the unit in charge ------------------------------------------------


def test_stay_doctors_and_unit_follow_admission_discharge_and_cancels(client: TestClient) -> None:
    start, end = "2026-03-01T08:00:00+01:00", "2026-03-05T12:00:00+01:00"
    send(client, admission())
    team = circle(client)
    attending = one(team, display=JEAN.display, role="ATTPHYS")
    admitting = one(team, display=DURAND.display, role="ADMPHYS")
    unit = one(team, display="Médecine", role="UF-RESP")
    assert attending["period"] == admitting["period"] == unit["period"] == {"start": start}
    assert attending["member"]["identifier"]["value"] == JEAN.rpps
    assert admitting["member"]["identifier"]["value"] == DURAND.rpps
    assert unit["member"]["identifier"]["value"] == "3001"
    assert unit["role"][0]["coding"][0]["system"] == GATEWAY_ROLES
    assert {source(p) for p in team["participant"]} == {HOSPITAL}
    assert len(team["participant"]) == 3

    send(client, discharge())  # A03: every stay member's period ends with the stay
    team = circle(client)
    assert summary(team) == [
        (JEAN.display, "ATTPHYS", HOSPITAL, {"start": start, "end": end}),
        ("Médecine", "UF-RESP", HOSPITAL, {"start": start, "end": end}),
        (DURAND.display, "ADMPHYS", HOSPITAL, {"start": start, "end": end}),
    ]

    cancel_discharge = Adt(
        trigger="A13",
        control_id="D2",
        movement="MVT-D",
        action="CANCEL",
        original_trigger="A03",
        event_time="20260305130000",
    )
    send(client, stay_message(cancel_discharge))  # A13: they are back, without an end
    assert summary(circle(client)) == [
        (JEAN.display, "ATTPHYS", HOSPITAL, {"start": start}),
        ("Médecine", "UF-RESP", HOSPITAL, {"start": start}),
        (DURAND.display, "ADMPHYS", HOSPITAL, {"start": start}),
    ]

    cancel_admission = Adt(
        trigger="A11", control_id="C1", action="CANCEL", original_trigger="A01", event_time="20260305140000"
    )
    send(client, stay_message(cancel_admission))  # A11: a cancelled stay contributes nobody
    team = circle(client)
    assert "participant" not in team and team["status"] == "active"
    stays = client.get("/fhir/Encounter", params={"patient": f"Patient/{patient_id(client)}"}).json()
    assert {e["resource"]["status"] for e in stays["entry"] if "partOf" not in e["resource"]} == {"cancelled"}


def test_the_circle_is_the_same_whatever_the_arrival_order(client: TestClient, runtime: Runtime) -> None:
    messages = [
        stay_message(Adt(control_id="S1", extra_segments=[rol("AD", MARTIN, start="20250101")])),
        stay_message(
            Adt(trigger="A02", control_id="S2", movement="MVT-2", event_time="20260302100000"), unit=CARDIO_UF
        ),
        person("S3", "20260303090000", rol("AD", DUPONT, start="20260303", role="RT")).build(),
        stay_message(
            Adt(
                trigger="A03",
                control_id="S4",
                movement="MVT-3",
                event_time="20260305120000",
                discharge_time="20260305120000",
            ),
            unit=CARDIO_UF,
        ),
        person("S5", "20260306090000", rol("DE", MARTIN, end="20260306")).build(),
    ]
    orders = [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [3, 0, 4, 2, 1]]
    results = []
    for order in orders:
        empty_store(runtime)
        for index in order:
            send(client, messages[index])
        results.append(without_meta_versions(circle(client)))

    start, moved, end = "2026-03-01T08:00:00+01:00", "2026-03-02T10:00:00+01:00", "2026-03-05T12:00:00+01:00"
    assert summary(results[0]) == [
        (DUPONT.display, "CORRE", HOSPITAL, {"start": "2026-03-03"}),
        ("Cardiologie", "UF-RESP", HOSPITAL, {"start": moved, "end": end}),
        (JEAN.display, "ATTPHYS", HOSPITAL, {"start": start, "end": end}),
        ("Médecine", "UF-RESP", HOSPITAL, {"start": start, "end": moved}),
        (MARTIN.display, "PCP", HOSPITAL, {"start": "2025-01-01", "end": "2026-03-06"}),
        (DURAND.display, "ADMPHYS", HOSPITAL, {"start": start, "end": end}),
    ]
    assert results[1] == results[0]
    assert results[2] == results[0]


# -- platform members ------------------------------------------------------------------------------


def test_platform_member_is_never_ended_by_the_hospital(client: TestClient) -> None:
    send(client, admission(extra_segments=[rol("AD", MARTIN, start="20250101")]))
    team_id = circle(client)["id"]

    added = add_member(client, team_id)
    (nurse,) = of(added, display="CLAIRE COSTE")
    assert source(nurse) == "platform:Parceo"
    assert nurse["member"] == NURSE and nurse["role"] == [NURSE_ROLE]
    assert nurse["period"] == {"start": "2026-03-02"}
    assert {source(p) for p in added["participant"] if p is not nurse} == {HOSPITAL}

    # the hospital discharges the patient, ends the médecin traitant, and admits him again
    send(client, discharge())
    send(client, person("P1", "20260306090000", rol("DE", MARTIN, end="20260306")))
    send(client, admission("A2", visit="V-6001", movement="MVT-9", event_time="20260310080000"))
    team = circle(client)
    assert of(team, display="CLAIRE COSTE") == [nurse]  # untouched
    assert one(team, display=MARTIN.display, role="PCP")["period"]["end"] == "2026-03-06"
    assert [p["period"] for p in of(team, display=JEAN.display)] == [
        {"start": "2026-03-01T08:00:00+01:00", "end": "2026-03-05T12:00:00+01:00"},
        {"start": "2026-03-10T08:00:00+01:00"},
    ]

    ended = end_member(client, team_id, NURSE, end="2026-03-20")
    assert ended.status_code == 200, ended.text
    (nurse,) = of(ended.json(), display="CLAIRE COSTE")
    assert nurse["period"] == {"start": "2026-03-02", "end": "2026-03-20"} and source(nurse) == "platform:Parceo"

    send(client, person("P2", "20260321090000", rol("AD", MARTIN, start="20260321")))
    assert of(circle(client), display="CLAIRE COSTE") == [nurse]  # nor reopened by one

    jean = role_reference(client, JEAN)
    before = circle(client)
    refused = end_member(client, team_id, {"reference": jean})  # the attending comes from the hospital
    assert refused.status_code == 422
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert refused.json()["issue"][0]["code"] == "business-rule"
    assert circle(client) == before


def test_put_replaces_the_platform_members_only(client: TestClient) -> None:
    send(client, admission())
    read = client.get(f"/fhir/CareTeam/{circle(client)['id']}")
    assert read.headers["etag"] == 'W/"1"'
    team = read.json()
    team_id = team["id"]
    body = {k: v for k, v in team.items() if k != "meta"}
    hospital = team["participant"]

    added = {
        **body,
        "participant": [*hospital, {"member": NURSE, "role": [NURSE_ROLE], "period": {"start": "2026-03-02"}}],
    }
    answer = client.put(f"/fhir/CareTeam/{team_id}", json=added, headers={"If-Match": 'W/"1"', "X-Platform": "eTICSS"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["etag"] == 'W/"2"'
    (nurse,) = of(answer.json(), display="CLAIRE COSTE")
    assert source(nurse) == "platform:eTICSS" and nurse["period"] == {"start": "2026-03-02"}
    assert [p for p in answer.json()["participant"] if p is not nurse and source(p) == HOSPITAL] == hospital

    stale = client.put(f"/fhir/CareTeam/{team_id}", json=added, headers={"If-Match": 'W/"1"', "X-Platform": "eTICSS"})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"

    current = client.get(f"/fhir/CareTeam/{team_id}").json()
    dropped = {**body, "participant": [p for p in current["participant"] if role_code(p) != "ATTPHYS"]}
    altered_doctor = {
        **one(current, display=JEAN.display, role="ATTPHYS"),
        "period": {"start": "2026-03-01T08:00:00+01:00", "end": "2026-03-02T08:00:00+01:00"},
    }
    altered = {
        **body,
        "participant": [altered_doctor if role_code(p) == "ATTPHYS" else p for p in current["participant"]],
    }
    for refused in (dropped, altered):
        answer = client.put(f"/fhir/CareTeam/{team_id}", json=refused, headers={"If-Match": 'W/"2"', **PARCEO})
        assert answer.status_code == 422, answer.text
        assert answer.json()["issue"][0]["code"] == "business-rule"
    assert client.get(f"/fhir/CareTeam/{team_id}").headers["etag"] == 'W/"2"'  # nothing written

    other = {"reference": "Organization/dac-57", "display": "DAC Moselle"}
    replaced = {**body, "participant": [*hospital, {"member": other}]}
    answer = client.put(f"/fhir/CareTeam/{team_id}", json=replaced, headers={"If-Match": 'W/"2"', **PARCEO})
    assert answer.status_code == 200, answer.text
    final = client.get(f"/fhir/CareTeam/{team_id}").json()
    assert of(final, display="CLAIRE COSTE") == []
    (dac,) = [p for p in final["participant"] if p["member"] == other]
    assert source(dac) == "platform:Parceo"
    assert [p for p in final["participant"] if source(p) == HOSPITAL] == hospital
    assert final["meta"]["versionId"] == "3"


# -- a doctor's view ----------------------------------------------------------------------------


def test_search_the_circles_a_doctor_belongs_to(client: TestClient) -> None:
    send(client, person("P1", "20260110090000", rol("AD", MARTIN, start="20250101"), ipp="100001"))
    send(client, admission(ipp="100001", visit="V-1"))
    send(client, admission("A2", ipp="100002", visit="V-2"))
    first, second = patient_id(client, "100001"), patient_id(client, "100002")

    def subjects(**params: str) -> list[str]:
        found = client.get("/fhir/CareTeam", params=params).json()
        assert found["total"] == len(found["entry"])
        return sorted(e["resource"]["subject"]["reference"] for e in found["entry"])

    martin = practitioner_id(client, MARTIN)
    assert subjects(participant=f"Practitioner/{martin}") == [f"Patient/{first}"]
    assert subjects(**{"participant.identifier": MARTIN.token}) == [f"Patient/{first}"]
    both = sorted([f"Patient/{first}", f"Patient/{second}"])
    assert subjects(participant=f"Practitioner/{practitioner_id(client, JEAN)}") == both
    assert subjects(**{"participant.identifier": JEAN.token}) == both
    # the RPPS is found in every form: under its FR Core system, as the prefixed idNatPs, or bare
    for token in (f"{RPPS_SYSTEM}|{JEAN.rpps}", f"{PS_SYSTEM}|8{JEAN.rpps}", JEAN.rpps):
        assert subjects(**{"participant.identifier": token}) == both
    jean = client.get("/fhir/Practitioner", params={"identifier": f"{PS_SYSTEM}|8{JEAN.rpps}"}).json()
    assert [e["resource"]["id"] for e in jean["entry"]] == [practitioner_id(client, JEAN)]
    assert subjects(**{"participant.identifier": f"{PS_SYSTEM}|10000000000"}) == []
    assert subjects(**{"participant.identifier": f"urn:oid:9.9.9|{MARTIN.rpps}"}) == []


# -- notifications ---------------------------------------------------------------------------------


def test_careteam_changed_says_who_joined_and_left(client: TestClient, runtime: Runtime) -> None:
    sub_id = subscribe(client, "careteam-changed", f"CareTeam?patient.identifier={IPP_SYSTEM}|100001")
    send(client, admission(ipp="100001"))
    team_id, pid = circle(client)["id"], patient_id(client)
    jean, durand = (role_reference(client, d) for d in (JEAN, DURAND))
    (unit,) = (p["member"]["reference"] for p in circle(client)["participant"] if role_code(p) == "UF-RESP")
    send(client, person("P1", "20260302090000", rol("AD", MARTIN, start="20250101")))
    martin = role_reference(client, MARTIN)
    send(client, admission("A2", ipp="100002", visit="V-2"))  # another patient: not followed
    send(client, person("P2", "20260303090000", f"PD1||||{MARTIN.xcn}"))  # confirms MARTIN: no change
    send(client, discharge())
    add_member(client, team_id)
    assert end_member(client, team_id, NURSE).status_code == 200

    got = events(runtime, sub_id)
    assert [r.event_number for r in got] == [1, 2, 3, 4, 5]
    assert {(r.focus_type, r.focus_id) for r in got} == {("CareTeam", team_id)}
    assert [r.focus_version for r in got] == [1, 2, 3, 4, 5]  # every version of the circle, each once
    assert all({"reference": f"Patient/{pid}"} in r.context for r in got)
    assert [sorted(changes(r)) for r in got] == [
        sorted([("joined", jean), ("joined", durand), ("joined", unit)]),  # the unit is an Organization
        [("joined", martin)],
        sorted([("left", jean), ("left", durand), ("left", unit)]),
        [("joined", NURSE["reference"])],
        [("left", NURSE["reference"])],
    ]


def test_encounter_subscription_filtered_on_a_care_team_member(client: TestClient, runtime: Runtime) -> None:
    sub_id = subscribe(client, "encounter-start", f"Encounter?care-team-member={MARTIN.token}")
    send(client, person("P1", "20260201090000", rol("AD", MARTIN, start="20250101"), ipp="100001"))
    send(client, person("P2", "20260201090000", ipp="100002"))
    send(client, admission(ipp="100001", visit="V-1"))
    send(client, admission("A2", ipp="100002", visit="V-2"))
    send(client, person("P3", "20260305090000", rol("DE", MARTIN, end="20260305"), ipp="100001"))
    send(client, admission("A3", ipp="100001", visit="V-3", movement="MVT-3", event_time="20260310080000"))

    got = events(runtime, sub_id)
    assert len(got) == 1  # the first patient's first stay; not the other patient's, nor after MARTIN left
    stay = client.get(f"/fhir/{got[0].focus_type}/{got[0].focus_id}").json()
    assert stay["subject"] == {"reference": f"Patient/{patient_id(client, '100001')}"}
    assert stay["identifier"][0]["value"] == "V-1"


@pytest.mark.parametrize("doctor", [MARTIN, JEAN], ids=["rol-in-the-admission", "pv1-attending"])
def test_encounter_subscription_hears_the_admission_that_names_the_member(
    client: TestClient, runtime: Runtime, doctor: Doctor
) -> None:
    sub_id = subscribe(client, "encounter-start", f"Encounter?care-team-member={doctor.token}")
    send(client, admission(ipp="100001", visit="V-1", extra_segments=[rol("AD", MARTIN, start="20250101")]))
    assert of(circle(client), display=doctor.display)  # the admission put him in the circle
    got = events(runtime, sub_id)
    assert [(r.focus_type, r.event_number) for r in got] == [("Encounter", 1)]


# -- CDS 2.0.1: members as roles and units, search parameters, _include ---------------------------

FR_CORE_SD = "https://hl7.fr/ig/fhir/core/StructureDefinition"


def test_hospital_members_are_roles_and_units_that_resolve(client: TestClient) -> None:
    send(client, stay_message(Adt(control_id="A1"), unit=CARDIO_UF))
    send(client, person("P1", "20260302090000", rol("AD", MARTIN, start="20250101")))
    team = circle(client)
    read = {}
    for participant in team["participant"]:
        ref = participant["member"]["reference"]
        assert ref.split("/")[0] in ("PractitionerRole", "Organization"), ref  # never a bare Practitioner
        answer = client.get(f"/fhir/{ref}")
        assert answer.status_code == 200, ref
        read[role_code(participant)] = answer.json()
    hospital_ref = read["ATTPHYS"]["organization"]["reference"]
    assert read["ADMPHYS"]["organization"]["reference"] == hospital_ref  # both act for the hospital
    hospital = client.get(f"/fhir/{hospital_ref}").json()
    assert hospital["meta"]["profile"] == [f"{FR_CORE_SD}/fr-core-organization"]
    assert hospital["identifier"][0]["value"] == "CH-TEST"  # MSH-4
    assert "organization" not in read["PCP"]  # the médecin traitant's practice is not known
    assert read["PCP"]["practitioner"]["reference"] == f"Practitioner/{practitioner_id(client, MARTIN)}"
    uf = read["UF-RESP"]
    assert uf["meta"]["profile"] == [f"{FR_CORE_SD}/fr-core-organization-uf"]
    assert (uf["identifier"][0]["value"], uf["name"]) == ("3002", "Cardiologie")
    assert uf["partOf"]["reference"] == hospital_ref
    # the roles of a practitioner, and the units of a hospital, are searchable
    jean = f"Practitioner/{practitioner_id(client, JEAN)}"
    assert client.get("/fhir/PractitionerRole", params={"practitioner": jean}).json()["total"] == 1
    units = client.get("/fhir/Organization", params={"partof": hospital_ref}).json()
    assert [e["resource"]["id"] for e in units["entry"]] == [uf["id"]]


def ids(bundle: JSON, mode: str = "match") -> list[str]:
    return sorted(
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"] if e["search"]["mode"] == mode
    )


def test_cds_search_parameters(client: TestClient) -> None:
    """identifier, date/start/end, participant-start/-end, status, _lastUpdated (CDS 2.0.1 + R4)."""
    send(client, admission(ipp="100001", event_time="20260301080000"))  # March 1st, 07:00 UTC
    send(client, discharge(ipp="100001", event_time="20260305120000"))  # members end March 5th
    send(client, admission("A2", ipp="100002", visit="V-2", event_time="20260401080000"))
    first, second = (f"CareTeam/{circle(client, ipp)['id']}" for ipp in ("100001", "100002"))

    def found(**params: str) -> list[str]:
        answer = client.get("/fhir/CareTeam", params=params)
        assert answer.status_code == 200, answer.text
        return ids(answer.json())

    team = circle(client)
    assert found(identifier=f"{team['identifier'][0]['system']}|{team['identifier'][0]['value']}") == [first]
    assert found(start="2026-03-01") == [first]
    assert found(start="ge2026-03-15") == [second]
    assert found(start="lt2026-03-15") == [first]
    assert found(start="2026-03-01T07:00:00Z") == [first]  # the same instant as 08:00 in Paris
    assert found(**{"participant-start": "2026-04"}) == [second]
    assert found(**{"participant-end": "le2026-03-31"}) == [first]  # only the discharged stay's members end
    assert found(**{"participant-end": "gt2026-03-31"}) == []
    assert found(end="ge2026-01-01") == []  # both circles are still open
    # date: the circle's period overlaps the date (an open period covers every later date)
    assert found(date="2026-05-01") == sorted([first, second])
    assert found(date="lt2026-03-15") == [first]
    assert found(date="sa2026-03-15") == [second]
    assert found(status="active", start="ge2026-03-15") == [second]
    assert found(_lastUpdated="ge2000-01-01") == sorted([first, second])
    assert found(_lastUpdated="lt2000-01-01") == []
    for bad in ({"start": "2026-13-45"}, {"start": "ne2026-03-01"}, {"date": "soon"}):
        answer = client.get("/fhir/CareTeam", params=bad)
        assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome", bad


def test_include_members_and_their_practitioners(client: TestClient) -> None:
    send(client, stay_message(Adt(control_id="A1"), unit=CARDIO_UF))
    team = circle(client)
    members = sorted(p["member"]["reference"] for p in team["participant"])
    plain = client.get("/fhir/CareTeam", params={"_id": team["id"], "_include": "CareTeam:participant"}).json()
    assert ids(plain) == [f"CareTeam/{team['id']}"] and plain["total"] == 1  # includes are not counted
    assert ids(plain, "include") == members
    deep = client.get(
        "/fhir/CareTeam",
        params=[
            ("_id", team["id"]),
            ("_include", "CareTeam:participant"),
            ("_include:iterate", "PractitionerRole:practitioner"),
            ("_include:iterate", "PractitionerRole:organization"),
        ],
    ).json()
    included = ids(deep, "include")
    doctors = [f"Practitioner/{practitioner_id(client, d)}" for d in (JEAN, DURAND)]
    roles = [client.get(f"/fhir/{m}").json() for m in members if m.startswith("PractitionerRole/")]
    (hospital,) = {r["organization"]["reference"] for r in roles}
    assert set(members + doctors + [hospital]) == set(included) and len(included) == len(set(included))
    refused = client.get("/fhir/CareTeam", params={"_include": "CareTeam:subject"})
    assert refused.status_code == 400 and "CareTeam:participant" in refused.text
    capability = client.get("/fhir/metadata").json()
    (entry,) = [r for r in capability["rest"][0]["resource"] if r["type"] == "CareTeam"]
    assert "CareTeam:participant" in entry["searchInclude"]
    assert {"identifier", "date", "start", "end", "participant-start", "participant-end", "status", "_lastUpdated"} <= {
        p["name"] for p in entry["searchParam"]
    }
