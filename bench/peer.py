"""The naive peer: an MLLP → FHIR gateway written the obvious way, to compare the gateway with.

hl7apy parses the whole message into its typed tree, fhir.resources builds and validates a Patient and an
Encounter, the SQLAlchemy ORM stores the message and both resources (``Session.merge``) in one
transaction, one commit per message, with the gateway's durability (SQLite WAL ``synchronous=FULL``;
PostgreSQL's default commit), then AA. One thread per message in flight, as the floor's ``one`` mode. No
state beyond the last version of each resource: no cancellations, merges, care circle or notifications.
That is what "the same job, done naively" costs; ``mllp_ingest.py --peer`` runs it beside the gateway
on the same messages and sender and prints the gateway's ratio to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.reference import Reference
from floor import ack, serve_frames
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class PeerMessage(Base):
    __tablename__ = "peer_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    control_id: Mapped[str] = mapped_column(String(64))
    raw: Mapped[str] = mapped_column(Text)


class PeerResource(Base):
    __tablename__ = "peer_resources"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    body: Mapped[str] = mapped_column(Text)


def _engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def durable(conn: Any, record: Any) -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")

        return engine
    return create_engine(database_url, pool_size=16)


def _id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def resources(raw: bytes) -> tuple[str, list[Any]]:
    """(MSH-10, [Patient, Encounter]) through hl7apy and fhir.resources."""
    text = raw.decode("latin-1").replace("\n", "\r")
    message = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    control = message.msh.msh_10.value
    pid, pv1 = message.pid, message.pv1
    ipp = pid.pid_3[0].cx_1.value
    name = pid.pid_5[0]
    patient_id = _id("ipp", ipp)
    patient = Patient(
        id=patient_id,
        identifier=[Identifier(system="urn:oid:1.2.250.1.999.1.1", value=ipp)],
        name=[HumanName(family=name.xpn_1.value, given=[name.xpn_2.value])],
        gender={"F": "female", "M": "male"}.get(pid.pid_8.value, "unknown"),
        birthDate=f"{pid.pid_7.value[:4]}-{pid.pid_7.value[4:6]}-{pid.pid_7.value[6:8]}",
    )
    visit = pv1.pv1_19.cx_1.value
    trigger = message.msh.msh_9.msg_2.value
    encounter = Encounter(
        id=_id("visit", visit),
        status="finished" if trigger == "A03" else "in-progress",
        class_fhir=Coding(system="http://terminology.hl7.org/CodeSystem/v3-ActCode", code="IMP"),
        identifier=[Identifier(system="urn:oid:1.2.250.1.999.1.2", value=visit)],
        subject=Reference(reference=f"Patient/{patient_id}"),
    )
    return control, [patient, encounter]


class Peer:
    def __init__(self, database_url: str) -> None:
        self.engine = _engine(database_url)
        Base.metadata.drop_all(self.engine)
        Base.metadata.create_all(self.engine)
        # SQLite has one writer: threads take turns rather than fail on a busy database
        self.lock = threading.Lock() if database_url.startswith("sqlite") else contextlib.nullcontext()

    def handle(self, raw: bytes) -> bytes:
        control, built = resources(raw)
        with self.lock, Session(self.engine) as session, session.begin():
            session.add(PeerMessage(control_id=control, raw=raw.decode("latin-1")))
            for resource in built:
                key = f"{resource.get_resource_type()}/{resource.id}"
                session.merge(PeerResource(key=key, body=resource.model_dump_json()))
        return ack(control.encode())


@contextlib.asynccontextmanager
async def peer_server(database_url: str) -> AsyncIterator[int]:
    """Run the naive peer on a free port; yields the port."""
    peer = Peer(database_url)

    async def answer(message: bytes) -> bytes:
        return await asyncio.to_thread(peer.handle, message)

    server = await asyncio.start_server(lambda r, w: serve_frames(r, w, answer), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        peer.engine.dispose()
