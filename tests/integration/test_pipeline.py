"""The ingest pipeline on a real store (SQLite and PostgreSQL): storage, ACKs, duplicates, order, outbox."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from gateway.config import Settings
from gateway.db import schema
from gateway.db.engine import make_engine
from gateway.db.repo import MessageRepo, OutboxRepo, ResourceRepo, SubscriptionRecord, SubscriptionRepo
from gateway.hl7 import er7
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.subscriptions.topics import TOPIC_BASE
from tests.conftest import MAPPINGS
from tests.messages import IPP_SYSTEM, VISIT_SYSTEM, Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def pipeline(db: Engine, mapping_engine: MappingEngine) -> Pipeline:
    return Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)


def msa(outcome_ack: bytes) -> tuple[str, str]:
    ack = er7.parse(outcome_ack)
    seg = ack.segment("MSA")
    assert seg is not None
    return seg.get(1), seg.get(2)


def err_codes(outcome_ack: bytes) -> list[str]:
    return [seg.get(3) for seg in er7.parse(outcome_ack).all("ERR")]


def count(db: Engine, table: schema.Table) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def encounter_of(db: Engine, visit: str) -> dict | None:
    """The stay (the movements, ``partOf`` it, carry the ZBE-1 identifier, not the visit number)."""
    with db.connect() as conn:
        found, _ = ResourceRepo(conn).search("Encounter", [("identifier", VISIT_SYSTEM, visit)], limit=5)
    assert len(found) <= 1
    return found[0].content if found else None


def test_admission_is_stored_applied_and_acknowledged(pipeline: Pipeline, db: Engine) -> None:
    outcome = pipeline.ingest(Adt().bytes(), transport="http")
    assert outcome.code == "AA"
    assert msa(outcome.ack) == ("AA", "MSG-1")
    # CommunicationRequest: the ANS NdE admission declaration (flux 3), in the same transaction;
    # PractitionerRole and Organization: what the care circle's members point at (ANS CDS 2.0.1)
    assert {r.type for r in outcome.changed} == {
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Encounter",
        "CareTeam",
        "CommunicationRequest",
    }
    encounter = encounter_of(db, "V-5001")
    assert encounter is not None
    assert encounter["status"] == "in-progress"
    assert encounter["meta"]["versionId"] == "1"
    assert encounter["period"]["start"] == "2026-03-01T08:00:00+01:00"
    with db.connect() as conn:
        record = MessageRepo(conn).get(outcome.message_id or 0)
        patients, _ = ResourceRepo(conn).search("Patient", [("identifier", IPP_SYSTEM, "100001")], limit=5)
    assert record is not None and record.raw == Adt().bytes()
    assert (record.outcome, record.status, record.control_id) == ("AA", "applied", "MSG-1")
    assert record.ack is not None and "MSA|AA|MSG-1" in record.ack
    assert encounter["subject"]["reference"] == f"Patient/{patients[0].id}"


def test_the_same_message_twice_is_acknowledged_and_applied_once(pipeline: Pipeline, db: Engine) -> None:
    first = pipeline.ingest(Adt().bytes(), transport="mllp")
    second = pipeline.ingest(Adt().bytes(), transport="mllp")
    assert (first.code, second.code) == ("AA", "AA")
    assert second.status == "duplicate" and second.changed == []
    assert count(db, schema.messages) == 2
    assert count(db, schema.resource_versions) == 0  # nothing got a 2nd version: no version was replaced
    with db.connect() as conn:
        record = MessageRepo(conn).get(second.message_id or 0)
    assert record is not None and record.duplicate_of == first.message_id


def test_a_reused_control_id_with_other_content_gets_ae_and_is_kept(pipeline: Pipeline, db: Engine) -> None:
    pipeline.ingest(Adt().bytes(), transport="mllp")
    other = pipeline.ingest(Adt(trigger="A03", discharge_time="20260302100000").bytes(), transport="mllp")
    assert msa(other.ack) == ("AE", "MSG-1")
    assert err_codes(other.ack)[0].startswith("205")
    assert encounter_of(db, "V-5001")["status"] == "in-progress"  # type: ignore[index]
    with db.connect() as conn:
        assert MessageRepo(conn).counts() == {"AA": 1, "AE": 1}


@pytest.mark.parametrize(
    ("raw", "code", "err"),
    [
        (b"this is not HL7 at all", "AR", "102"),
        (b"MSH|^~\\&|LAB|CH-TEST|GW|GW|20260301||ORU^R01^ORU_R01|L-1|P|2.5\rPID|1||1^^^X^PI\r", "AR", "200"),
        (Adt(trigger="A18").bytes(), "AR", "201"),
        (Adt(visit="").bytes(), "AE", "101"),
        (b"MSH|^~\\&|GAM|CH||||20260301||ADT^A01|\rPID|1\r", "AR", "102"),
    ],
    ids=["garbage", "non-adt", "unsupported-event", "no-visit-number", "no-control-id"],
)
def test_bad_input_gets_a_clear_ack_and_is_kept(
    pipeline: Pipeline, db: Engine, raw: bytes, code: str, err: str
) -> None:
    outcome = pipeline.ingest(raw, transport="http")
    assert outcome.code == code
    assert msa(outcome.ack)[0] == code
    assert err_codes(outcome.ack)[0].split("^")[0] == err
    with db.connect() as conn:
        record = MessageRepo(conn).get(outcome.message_id or 0)
    assert record is not None and record.raw == raw and record.outcome == code
    assert count(db, schema.resources) == 0


def test_a_failure_while_applying_rolls_back_and_keeps_the_message(
    pipeline: Pipeline, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("gateway.pipeline.apply_message", explode)
    outcome = pipeline.ingest(Adt().bytes(), transport="mllp")
    assert outcome.code == "AE" and err_codes(outcome.ack)[0].startswith("207")
    assert count(db, schema.resources) == 0 and count(db, schema.facts) == 0
    with db.connect() as conn:
        record = MessageRepo(conn).get(outcome.message_id or 0)
    assert record is not None and record.status == "error" and record.raw == Adt().bytes()

    monkeypatch.undo()
    replayed = pipeline.replay(outcome.message_id or 0)
    assert replayed.code == "AA" and replayed.status == "applied"
    assert encounter_of(db, "V-5001") is not None


def test_replaying_an_applied_message_with_the_same_mappings_changes_nothing(pipeline: Pipeline, db: Engine) -> None:
    first = pipeline.ingest(Adt().bytes(), transport="mllp")
    facts_before = count(db, schema.facts)
    again = pipeline.replay(first.message_id or 0)
    assert (again.code, again.status, again.changed) == ("AA", "reprocessed", [])
    assert again.message_id == first.message_id
    assert encounter_of(db, "V-5001")["meta"]["versionId"] == "1"  # type: ignore[index]
    assert count(db, schema.facts) == facts_before  # replaced, not added


def test_replay_after_a_mapping_fix_reprocesses_and_says_what_changed(
    pipeline: Pipeline, db: Engine, tmp_path: Path
) -> None:
    first = pipeline.ingest(Adt(patient_class="I").bytes(), transport="mllp")
    assert encounter_of(db, "V-5001")["class"]["code"] == "IMP"  # type: ignore[index]
    fixed = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, fixed)
    table = fixed / "codes" / "PatientClass_to_EncounterClass.csv"
    table.write_text(table.read_text(encoding="utf-8").replace("I,IMP,", "I,ACUTE,"), encoding="utf-8")
    pipeline.engine = MappingEngine.from_directory(fixed)
    again = pipeline.replay(first.message_id or 0)
    assert (again.code, again.status) == ("AA", "reprocessed")
    assert "Encounter" in {r.type for r in again.changed}
    stay = encounter_of(db, "V-5001")
    assert stay is not None and stay["class"]["code"] == "ACUTE" and stay["meta"]["versionId"] == "2"


def test_storage_down_answers_ar_so_the_sender_resends(mapping_engine: MappingEngine) -> None:
    # Nothing listens on port 1: every connection attempt fails, as with a database that is down.
    broken = make_engine(Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"))
    pipeline = Pipeline(engine=mapping_engine, db=broken, clock=lambda: NOW)
    outcome = pipeline.ingest(Adt().bytes(), transport="mllp")
    assert outcome.code == "AR" and outcome.message_id is None
    assert msa(outcome.ack) == ("AR", "MSG-1")
    assert err_codes(outcome.ack)[0].startswith("207")


def test_discharge_before_admission_ends_in_the_right_state(pipeline: Pipeline, db: Engine) -> None:
    discharge = Adt(
        trigger="A03",
        control_id="M2",
        movement="MVT-2",
        event_time="20260305120000",
        discharge_time="20260305120000",
        disposition="5",
    )
    assert pipeline.ingest(discharge.bytes(), transport="mllp").code == "AA"
    assert encounter_of(db, "V-5001")["status"] == "finished"  # type: ignore[index]
    assert pipeline.ingest(Adt(control_id="M1").bytes(), transport="mllp").code == "AA"
    encounter = encounter_of(db, "V-5001")
    assert encounter is not None and encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2026-03-01T08:00:00+01:00", "end": "2026-03-05T12:00:00+01:00"}


def test_a_cancel_for_a_stay_never_seen_creates_nothing(pipeline: Pipeline, db: Engine) -> None:
    cancel = Adt(trigger="A11", control_id="C1", action="CANCEL", original_trigger="A01", event_time="20260301090000")
    outcome = pipeline.ingest(cancel.bytes(), transport="mllp")
    assert outcome.code == "AA"
    assert encounter_of(db, "V-5001") is None
    # once the admission it cancels arrives, the stay exists, cancelled
    pipeline.ingest(Adt(control_id="A1").bytes(), transport="mllp")
    assert encounter_of(db, "V-5001")["status"] == "cancelled"  # type: ignore[index]


def test_cancel_discharge_reopens_the_stay(pipeline: Pipeline, db: Engine) -> None:
    pipeline.ingest(Adt(control_id="M1").bytes(), transport="mllp")
    pipeline.ingest(
        Adt(
            trigger="A03",
            control_id="M2",
            movement="MVT-2",
            event_time="20260305120000",
            discharge_time="20260305120000",
        ).bytes(),
        transport="mllp",
    )
    pipeline.ingest(
        Adt(
            trigger="A13",
            control_id="M3",
            movement="MVT-2",
            action="CANCEL",
            original_trigger="A03",
            event_time="20260305130000",
        ).bytes(),
        transport="mllp",
    )
    encounter = encounter_of(db, "V-5001")
    assert encounter is not None
    assert encounter["status"] == "in-progress" and "end" not in encounter["period"]
    assert encounter["meta"]["versionId"] == "3"
    with db.connect() as conn:
        assert len(ResourceRepo(conn).history("Encounter", encounter["id"])) == 3


def test_same_visit_number_at_two_facilities_stays_separate(pipeline: Pipeline, db: Engine) -> None:
    pipeline.ingest(Adt(control_id="X1").bytes(), transport="mllp")
    other = (
        Adt(control_id="X1", sender="GAM-B", facility="CH-B")
        .build()
        .replace("CH-TEST&1.2.250.1.999.9.2&ISO", "CH-B&1.2.250.1.999.8.2&ISO")
    )
    assert pipeline.ingest(other.encode(), transport="mllp").code == "AA"
    with db.connect() as conn:
        found, total = ResourceRepo(conn).search("Encounter", [("identifier", None, "V-5001")], limit=5)
    assert total == 2 and len({r.id for r in found}) == 2


def _subscribe(db: Engine, *, sub_id: str, topic: str, filters: list[dict[str, str]]) -> None:
    with db.begin() as conn:
        SubscriptionRepo(conn).add(
            SubscriptionRecord(
                id=sub_id,
                status="active",
                topic=f"{TOPIC_BASE}/{topic}",
                endpoint="http://127.0.0.1:9/n",
                channel_type="rest-hook",
                payload_content="id-only",
                headers=[],
                filters=filters,
                secret="s",
                events_since_start=0,
                error=None,
                created_at=NOW,
            )
        )


def test_notifications_are_queued_in_the_ingest_transaction_only_for_matching_subscriptions(
    pipeline: Pipeline, db: Engine
) -> None:
    _subscribe(
        db,
        sub_id="follows",
        topic="encounter-start",
        filters=[{"param": "patient.identifier", "value": f"{IPP_SYSTEM}|100001"}],
    )
    _subscribe(
        db,
        sub_id="other",
        topic="encounter-start",
        filters=[{"param": "patient.identifier", "value": f"{IPP_SYSTEM}|999999"}],
    )
    _subscribe(db, sub_id="ends", topic="encounter-end", filters=[])
    pipeline.ingest(Adt(control_id="M1").bytes(), transport="mllp")
    pipeline.ingest(Adt(control_id="M1").bytes(), transport="mllp")  # duplicate: no new event
    pipeline.ingest(Adt(control_id="M2", visit="V-5002", movement="MVT-9").bytes(), transport="mllp")
    pipeline.ingest(
        Adt(trigger="A03", control_id="M3", movement="MVT-2", event_time="20260305120000").bytes(),
        transport="mllp",
    )
    with db.connect() as conn:
        outbox = OutboxRepo(conn)
        follows = outbox.for_subscription("follows")
        assert [r.event_number for r in follows] == [1, 2]
        assert {r.focus_type for r in follows} == {"Encounter"}
        assert outbox.for_subscription("other") == []
        ends = outbox.for_subscription("ends")
        assert [r.event_number for r in ends] == [1]
        assert SubscriptionRepo(conn).get("follows").events_since_start == 2  # type: ignore[union-attr]


def test_latin1_message_is_decoded_and_acknowledged_in_its_charset(pipeline: Pipeline, db: Engine) -> None:
    raw = Adt(family="LEFÈVRE", charset="8859/1").build().encode("latin-1")
    outcome = pipeline.ingest(raw, transport="mllp")
    assert outcome.code == "AA" and outcome.codec == "latin-1"
    with db.connect() as conn:
        patients, _ = ResourceRepo(conn).search("Patient", [("identifier", IPP_SYSTEM, "100001")], limit=1)
    assert patients[0].content["name"][0]["family"] == "LEFÈVRE"
