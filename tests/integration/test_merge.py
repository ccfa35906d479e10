"""Patient merges (A40) and identifier changes (A47) through the HTTP API (DOMAIN.md §7.7).

The surviving patient keeps the merged one's stays and care circle; the merged Patient points at him;
late messages and subscriptions that name the merged patient land on the survivor's side; an A47 that
changes only the INS keeps the same Patient. Every expectation follows from the messages sent here.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.runtime import Runtime
from tests.api_helpers import empty_store, events, subscribe, without_meta_versions
from tests.messages import IPP_AUTH, IPP_SYSTEM, RPPS, VISIT_SYSTEM, Adt

JSON = dict[str, Any]
HL7 = {"Content-Type": "application/hl7-v2"}
SOURCE_EXT = "https://gateway.e-parcours.example/fhir/StructureDefinition/careteam-participant-source"
PS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
INS_AUTH = "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO"
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"
PROFILE_PATIENT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"
PROFILE_PATIENT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"
HOSPITAL = "hospital:CH-TEST"
SURVIVOR, MERGED = "200001", "200002"
INS_1, INS_2 = "280017512345602", "180027512345688"  # fictional 15-digit NIR-shaped values


def xcn(rpps: str, family: str, given: str) -> str:
    return f"{rpps}^{family}^{given}^^^DR^^^{RPPS}^D^^^RPPS"


JEAN = xcn("10001234567", "MEDECIN", "JEAN")  # the Adt builder's attending
LUC = xcn("10005555555", "AUTRE", "LUC")
MARTIN = xcn("10003456789", "MARTIN", "PAUL")
DUPONT = xcn("10002222222", "DUPONT", "ANNE")


# -- messages ------------------------------------------------------------------------------------


def rol(action: str, person: str, *, start: str = "", role: str = "ODRP") -> str:
    return f"ROL||{action}|{role}^^HL70443|{person}|{start}|"


def cx(ipp: str) -> str:
    return f"{ipp}^^^{IPP_AUTH}^PI"


def ins(value: str) -> str:
    return f"{value}^^^{INS_AUTH}^INS"


def pid_segment(ipp: str, *, pid3: str | None = None, reliability: str = "PROV") -> str:
    """PID laid out as tests/messages.py lays it out, with PID-3 replaced when given."""
    (pid,) = [s for s in Adt(ipp=ipp, reliability=reliability).build().split("\r") if s.startswith("PID|")]
    if pid3 is None:
        return pid
    fields = pid.split("|")
    fields[3] = pid3
    return "|".join(fields)


def identity(trigger: str, structure: str, control_id: str, event_time: str, pid: str, mrg: str) -> str:
    """A visitless identity message (A40, A47): MSH, EVN, PID, MRG."""
    return (
        "\r".join(
            [
                f"MSH|^~\\&|GAM-TEST|CH-TEST|GATEWAY|ARS|{event_time}||ADT^{trigger}^{structure}|{control_id}|P|"
                "2.5^FRA^2.11|||||FRA|UNICODE UTF-8",
                f"EVN||{event_time}||||{event_time}",
                pid,
                f"MRG|{mrg}",
            ]
        )
        + "\r"
    )


def a40(control_id: str = "X1", event_time: str = "20260303080000", *, survivor: str = SURVIVOR) -> str:
    return identity("A40", "ADT_A39", control_id, event_time, pid_segment(survivor), cx(MERGED))


def admission(ipp: str, visit: str, control_id: str, event_time: str, **fields: Any) -> Adt:
    return Adt(
        ipp=ipp, visit=visit, movement=f"MVT-{control_id}", control_id=control_id, event_time=event_time, **fields
    )


def person(ipp: str, control_id: str, event_time: str, *segments: str) -> Adt:
    """An A31 (demographics, no visit) carrying care circle statements."""
    return Adt(
        trigger="A31", ipp=ipp, control_id=control_id, event_time=event_time, with_zbe=False, extra_segments=[*segments]
    )


def discharge(ipp: str, visit: str, control_id: str, event_time: str, **fields: Any) -> Adt:
    return Adt(
        trigger="A03",
        ipp=ipp,
        visit=visit,
        movement=f"MVT-{control_id}",
        control_id=control_id,
        event_time=event_time,
        discharge_time=event_time,
        **fields,
    )


# -- the API ---------------------------------------------------------------------------------------


def send(client: TestClient, message: Adt | str) -> None:
    raw = message.bytes() if isinstance(message, Adt) else message.encode("utf-8")
    answer = client.post("/hl7v2", content=raw, headers=HL7)
    assert answer.status_code == 200 and answer.headers["x-ack-code"] == "AA", answer.text


def patient(client: TestClient, ipp: str) -> JSON:
    found = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|{ipp}"}).json()
    assert found["total"] == 1, found
    resource: JSON = found["entry"][0]["resource"]
    return resource


def patient_id(client: TestClient, ipp: str) -> str:
    return str(patient(client, ipp)["id"])


def encounters(client: TestClient, pid: str) -> list[JSON]:
    """Every Encounter (stays and movements) whose subject is ``Patient/<pid>``."""
    found = client.get("/fhir/Encounter", params={"patient": f"Patient/{pid}", "_count": "100"}).json()
    assert found["total"] == len(found.get("entry", []))
    return [e["resource"] for e in found.get("entry", [])]


def stay(client: TestClient, visit: str) -> JSON:
    found = client.get("/fhir/Encounter", params={"identifier": f"{VISIT_SYSTEM}|{visit}"}).json()
    assert found["total"] == 1, found
    resource: JSON = found["entry"][0]["resource"]
    return resource


def circle(client: TestClient, pid: str) -> JSON:
    found = client.get("/fhir/CareTeam", params={"patient": f"Patient/{pid}"}).json()
    assert found["total"] == 1, found
    team: JSON = found["entry"][0]["resource"]
    return team


def summary(team: JSON) -> list[tuple[str, str, str, JSON]]:
    """(member, role, source, period) of every participant, sorted."""
    out = []
    for p in team.get("participant", []):
        (source,) = [e["valueString"] for e in p["extension"] if e["url"] == SOURCE_EXT]
        out.append((p["member"].get("display", ""), p["role"][0]["coding"][0]["code"], source, p.get("period", {})))
    return sorted(out)


def visits(resources: list[JSON]) -> list[str]:
    return sorted(r["identifier"][0]["value"] for r in resources if "partOf" not in r)


# -- A40 -------------------------------------------------------------------------------------------


def test_a40_links_the_patients_and_moves_the_stays(client: TestClient) -> None:
    send(client, admission(SURVIVOR, "V-S", "S1", "20260301080000"))
    send(client, admission(MERGED, "V-M", "M1", "20260302080000", attending=LUC))
    survivor_id, merged_id = patient_id(client, SURVIVOR), patient_id(client, MERGED)
    assert survivor_id != merged_id
    assert stay(client, "V-M")["subject"] == {"reference": f"Patient/{merged_id}"}

    send(client, a40())

    merged = client.get(f"/fhir/Patient/{merged_id}").json()
    assert merged["active"] is False
    assert merged["link"] == [{"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}]
    assert {"system": IPP_SYSTEM, "value": MERGED} in [
        {"system": i["system"], "value": i["value"]} for i in merged["identifier"]
    ]
    survivor = client.get(f"/fhir/Patient/{survivor_id}").json()
    assert survivor["active"] is True
    assert survivor["link"] == [{"other": {"reference": f"Patient/{merged_id}"}, "type": "replaces"}]

    moved = encounters(client, survivor_id)
    assert visits(moved) == ["V-M", "V-S"]
    assert len(moved) == 4  # two stays, each with its admission movement
    assert {r["subject"]["reference"] for r in moved} == {f"Patient/{survivor_id}"}
    assert encounters(client, merged_id) == []

    # a late discharge for the merged patient's stay, still sent under his IPP, lands on the survivor
    send(client, discharge(MERGED, "V-M", "M2", "20260304080000", attending=LUC))
    late = stay(client, "V-M")
    assert late["status"] == "finished"
    assert late["period"] == {"start": "2026-03-02T08:00:00+01:00", "end": "2026-03-04T08:00:00+01:00"}
    assert late["subject"] == {"reference": f"Patient/{survivor_id}"}
    assert encounters(client, merged_id) == []
    assert len(encounters(client, survivor_id)) == 5
    merged = client.get(f"/fhir/Patient/{merged_id}").json()  # the late message does not revive him
    assert merged["active"] is False and merged["link"][0]["type"] == "replaced-by"
    assert client.get("/fhir/Patient").json()["total"] == 2


def test_the_survivor_gets_both_circles_without_duplicates(client: TestClient) -> None:
    send(client, person(SURVIVOR, "S0", "20260201090000", rol("AD", MARTIN, start="20250101")))
    send(client, admission(SURVIVOR, "V-S", "S1", "20260301080000"))
    both = [rol("AD", MARTIN, start="20250301"), rol("AD", DUPONT, start="20260201", role="RT")]
    send(client, person(MERGED, "M0", "20260202090000", *both))
    send(client, admission(MERGED, "V-M", "M1", "20260302080000"))  # the same attending, the same unit
    survivor_id, merged_id = patient_id(client, SURVIVOR), patient_id(client, MERGED)
    assert len(circle(client, merged_id)["participant"]) == 4

    send(client, a40())

    merged_team = circle(client, merged_id)
    assert merged_team["status"] == "inactive"
    assert "participant" not in merged_team
    assert f"Patient/{survivor_id}" in merged_team["note"][0]["text"]
    team = circle(client, survivor_id)
    assert team["status"] == "active"
    start = "2026-03-01T08:00:00+01:00"
    assert summary(team) == [
        ("ANNE DUPONT", "CORRE", HOSPITAL, {"start": "2026-02-01"}),
        ("JEAN MEDECIN", "ATTPHYS", HOSPITAL, {"start": start}),  # one entry over both stays
        ("Médecine", "UF-RESP", HOSPITAL, {"start": start}),
        ("PAUL MARTIN", "PCP", HOSPITAL, {"start": "2025-01-01"}),  # named by both: once, the first start
    ]

    found = client.get("/fhir/CareTeam", params={"participant.identifier": f"{PS_SYSTEM}|10002222222"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [team["id"]]
    params = {"resourceType": "Parameters", "parameter": [{"name": "member", "valueReference": {"display": "X"}}]}
    refused = client.post(f"/fhir/CareTeam/{merged_team['id']}/$add-member", json=params)
    assert refused.status_code == 422  # edit the survivor's circle, not the merged one's


def test_a_late_message_of_the_merged_patient_updates_the_survivors_circle(client: TestClient) -> None:
    send(client, admission(SURVIVOR, "V-S", "S1", "20260301080000"))
    send(client, admission(MERGED, "V-M", "M1", "20260302080000", attending=LUC))
    send(client, a40())
    survivor_id = patient_id(client, SURVIVOR)
    luc = [p for p in circle(client, survivor_id)["participant"] if p["member"].get("display") == "LUC AUTRE"]
    assert [p["period"] for p in luc] == [{"start": "2026-03-02T08:00:00+01:00"}]

    send(client, discharge(MERGED, "V-M", "M2", "20260304080000", attending=LUC))
    assert stay(client, "V-M")["status"] == "finished"
    luc = [p for p in circle(client, survivor_id)["participant"] if p["member"].get("display") == "LUC AUTRE"]
    assert [p["period"] for p in luc] == [{"start": "2026-03-02T08:00:00+01:00", "end": "2026-03-04T08:00:00+01:00"}]


def test_a_subscription_on_the_merged_ipp_follows_the_survivor(client: TestClient, runtime: Runtime) -> None:
    sub_id = subscribe(client, "encounter-start", f"Encounter?patient.identifier={IPP_SYSTEM}|{MERGED}")
    send(client, admission(SURVIVOR, "V-S", "S1", "20260301080000"))  # not followed (yet)
    send(client, admission(MERGED, "V-M", "M1", "20260302080000"))
    send(client, a40())
    send(client, admission(SURVIVOR, "V-S2", "S2", "20260310080000"))  # the survivor, after the merge
    send(client, admission("300003", "V-O", "O1", "20260310090000"))  # someone else

    got = events(runtime, sub_id)
    assert [r.event_number for r in got] == [1, 2]
    subjects = [client.get(f"/fhir/{r.focus_type}/{r.focus_id}").json() for r in got]
    assert [s["identifier"][0]["value"] for s in subjects] == ["V-M", "V-S2"]
    assert subjects[1]["subject"] == {"reference": f"Patient/{patient_id(client, SURVIVOR)}"}


# -- A47 -------------------------------------------------------------------------------------------


def test_a47_with_a_new_ipp_merges_the_old_patient_into_the_new(client: TestClient) -> None:
    send(client, admission("400001", "V-A", "A1", "20260301080000", extra_segments=[rol("AD", MARTIN)]))
    old_id = patient_id(client, "400001")
    send(client, identity("A47", "ADT_A30", "X1", "20260303080000", pid_segment("400009"), cx("400001")))

    new = patient(client, "400009")
    assert new["id"] != old_id
    assert new["active"] is True
    assert new["link"] == [{"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"}]
    old = client.get(f"/fhir/Patient/{old_id}").json()
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": f"Patient/{new['id']}"}, "type": "replaced-by"}]
    assert stay(client, "V-A")["subject"] == {"reference": f"Patient/{new['id']}"}
    assert encounters(client, old_id) == []
    assert circle(client, old_id)["status"] == "inactive"
    assert [(m, r) for m, r, _, _ in summary(circle(client, new["id"]))] == [
        ("JEAN MEDECIN", "ATTPHYS"),
        ("Médecine", "UF-RESP"),
        ("PAUL MARTIN", "PCP"),
    ]


def ins_values(resource: JSON) -> list[str]:
    return [i["value"] for i in resource.get("identifier", []) if i["system"] == INS_SYSTEM]


def with_ins(control_id: str, event_time: str, value: str) -> str:
    """An A28 creating the patient with a qualified INS (PID-32 VALI)."""
    adt = Adt(trigger="A28", ipp="500001", control_id=control_id, event_time=event_time, with_zbe=False)
    pid = pid_segment("500001", pid3=f"{cx('500001')}~{ins(value)}", reliability="VALI")
    return "\r".join(pid if s.startswith("PID|") else s for s in adt.build().split("\r"))


def test_a47_changing_only_the_ins_keeps_the_patient(client: TestClient) -> None:
    send(client, with_ins("P1", "20260301080000", INS_1))
    before = patient(client, "500001")
    assert ins_values(before) == [INS_1]
    # no birth place (PID-11 BDL): the patient cannot be an FR Core PatientINS, whatever its INS
    assert before["meta"]["profile"] == [PROFILE_PATIENT]

    pid = pid_segment("500001", pid3=f"{cx('500001')}~{ins(INS_2)}", reliability="VALI")
    send(client, identity("A47", "ADT_A30", "X1", "20260302080000", pid, ins(INS_1)))

    after = patient(client, "500001")
    assert after["id"] == before["id"]
    assert ins_values(after) == [INS_2]
    assert after["meta"]["profile"] == before["meta"]["profile"]
    assert after["active"] is True and "link" not in after
    assert client.get("/fhir/Patient", params={"identifier": f"{INS_SYSTEM}|{INS_2}"}).json()["total"] == 1
    assert client.get("/fhir/Patient", params={"identifier": f"{INS_SYSTEM}|{INS_1}"}).json()["total"] == 0
    assert client.get("/fhir/Patient").json()["total"] == 1  # no patient made out of the old INS


def test_a47_deleting_the_ins_drops_it_and_the_ins_profile(client: TestClient) -> None:
    send(client, with_ins("P1", "20260301080000", INS_1))
    before = patient(client, "500001")
    pid = pid_segment("500001", pid3=f'{cx("500001")}~""^^^{INS_AUTH}^INS', reliability="VALI")
    send(client, identity("A47", "ADT_A30", "X1", "20260302080000", pid, ins(INS_1)))

    after = patient(client, "500001")
    assert after["id"] == before["id"]
    assert ins_values(after) == []
    assert [i["value"] for i in after["identifier"]] == ["500001"]
    assert after["meta"]["profile"] == [PROFILE_PATIENT]
    assert client.get("/fhir/Patient", params={"identifier": f"{INS_SYSTEM}|{INS_1}"}).json()["total"] == 0
    assert client.get("/fhir/Patient").json()["total"] == 1


# -- arrival order ---------------------------------------------------------------------------------

ORDER_MESSAGES: list[Adt | str] = [
    admission(SURVIVOR, "V-S", "S1", "20260301080000", extra_segments=[rol("AD", MARTIN, start="20250101")]),
    admission(MERGED, "V-M", "M1", "20260302080000", attending=LUC, extra_segments=[rol("AD", DUPONT, role="RT")]),
    a40(),
    discharge(MERGED, "V-M", "M2", "20260304080000", attending=LUC),
]
IN_ORDER = [0, 1, 2, 3]
#: the merge first, then the merged patient's discharge before his admission and the survivor's admission last;
#: or the merge first, then the survivor's admission, then the merged patient's messages
MERGE_FIRST = [
    pytest.param([2, 3, 1, 0], id="merge-discharge-admissions"),
    pytest.param([2, 0, 1, 3], id="merge-survivor-merged"),
]


def replay(client: TestClient, runtime: Runtime, order: list[int]) -> dict[str, JSON]:
    """Send the messages in ``order`` on an empty store; the resulting patients, stays and circles."""
    empty_store(runtime)
    for index in order:
        send(client, ORDER_MESSAGES[index])
    survivor_id, merged_id = patient_id(client, SURVIVOR), patient_id(client, MERGED)
    state = {}
    for pid in (survivor_id, merged_id):
        state[f"Patient/{pid}"] = client.get(f"/fhir/Patient/{pid}").json()
        state[f"CareTeam?patient={pid}"] = circle(client, pid)
        for resource in encounters(client, pid):
            state[f"Encounter/{resource['id']}"] = resource
    return {key: without_meta_versions(value) for key, value in state.items()}


@pytest.mark.parametrize("order", MERGE_FIRST)
def test_a_merge_before_the_merged_patients_messages_gives_the_same_patients_and_stays(
    client: TestClient, runtime: Runtime, order: list[int]
) -> None:
    expected = replay(client, runtime, IN_ORDER)
    survivor_id = patient_id(client, SURVIVOR)
    assert len([k for k in expected if k.startswith("Encounter/")]) == 5  # two stays, three movements
    assert expected[f"Patient/{survivor_id}"]["link"][0]["type"] == "replaces"

    got = replay(client, runtime, order)
    assert {k: v for k, v in got.items() if not k.startswith("CareTeam")} == {
        k: v for k, v in expected.items() if not k.startswith("CareTeam")
    }


@pytest.mark.parametrize("order", MERGE_FIRST)
def test_a_merge_before_the_merged_patients_messages_gives_the_same_circles(
    client: TestClient, runtime: Runtime, order: list[int]
) -> None:
    expected = replay(client, runtime, IN_ORDER)
    got = replay(client, runtime, order)
    teams = sorted(k for k in expected if k.startswith("CareTeam"))
    assert [got[k] for k in teams] == [expected[k] for k in teams]
