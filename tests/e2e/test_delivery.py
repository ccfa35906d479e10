"""Delivery over real sockets: outages, failed handshakes, gap recovery, email, two workers on one store.

The gateway runs as ``gateway serve`` does (uvicorn app, MLLP listener, worker started by the app's
lifespan through ``Runtime.start``); platforms are uvicorn servers from :mod:`gateway.demo` on free
ports; the SMTP relay is a minimal asyncio SMTP server. Every wait is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from fastapi import Request, Response
from sqlalchemy import text

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db.engine import make_engine, transaction
from gateway.db.repo import OutboxRepo
from gateway.db.schema import metadata
from gateway.demo import Receiver, _subscription, free_port, serving
from gateway.hl7.mllp import MLLPClient
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline, utcnow
from gateway.runtime import Runtime
from gateway.subscriptions.service import SIGNING_SECRET, create_subscription
from gateway.subscriptions.worker import DeliveryWorker
from tests.messages import IPP_SYSTEM, Adt

pytestmark = pytest.mark.e2e

WAIT = 10.0  # upper bound of each single wait, seconds
SCENARIO = 20.0  # backstop for a whole scenario
T = TypeVar("T")
JSON = dict[str, Any]
PATIENT = f"{IPP_SYSTEM}|100001"


async def bounded(awaitable: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout=WAIT)
    except TimeoutError:
        pytest.fail(f"timed out after {WAIT} s waiting for {what}")


async def until(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    async def poll() -> T:
        while True:
            value = await check()
            if value is not None:
                return value
            await asyncio.sleep(0.03)

    return await bounded(poll(), what)


# -- reading notifications -------------------------------------------------------------------------


def status_params(bundle: JSON) -> dict[str, JSON]:
    return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"] if p["name"] != "notification-event"}


def kind(bundle: JSON) -> str:
    return str(status_params(bundle)["type"]["valueCode"])


def event_parts(bundle: JSON) -> list[dict[str, JSON]]:
    params = bundle["entry"][0]["resource"]["parameter"]
    return [{p["name"]: p for p in e["part"]} for e in params if e["name"] == "notification-event"]


def event_numbers(bundle: JSON) -> list[int]:
    return [int(e["event-number"]["valueString"]) for e in event_parts(bundle)]


def focus_refs(bundle: JSON) -> list[str]:
    return [str(e["focus"]["valueReference"]["reference"]) for e in event_parts(bundle)]


# -- the gateway -----------------------------------------------------------------------------------


@dataclass
class Gateway:
    runtime: Runtime
    http: httpx.AsyncClient
    mllp_port: int
    admissions: int = 0

    async def subscribe(self, endpoint: str, *, receiver: Receiver | None = None, channel: JSON | None = None) -> str:
        resource = _subscription("encounter-start", endpoint, "id-only")
        resource["_criteria"]["extension"][0]["valueString"] = f"Encounter?patient.identifier={PATIENT}"
        if channel:
            resource["channel"] = channel
        answer = await self.http.post(
            "/fhir/Subscription", content=json.dumps(resource), headers={"Content-Type": "application/fhir+json"}
        )
        assert answer.status_code == 201, answer.text
        created = answer.json()
        if receiver is not None:
            secret = next(e["valueString"] for e in created["channel"]["extension"] if e["url"] == SIGNING_SECRET)
            receiver.secrets[created["id"]] = secret
        return str(created["id"])

    async def read(self, sub_id: str) -> JSON:
        answer = await self.http.get(f"/fhir/Subscription/{sub_id}")
        assert answer.status_code == 200, answer.text
        body: JSON = answer.json()
        return body

    async def wait_status(self, sub_id: str, status: str) -> JSON:
        async def check() -> JSON | None:
            body = await self.read(sub_id)
            return body if body["status"] == status else None

        return await until(check, f"Subscription/{sub_id} to become {status}")

    async def admit(self, count: int = 1, **fields: Any) -> None:
        """``count`` admissions of new stays of the followed patient, over one MLLP connection."""
        async with MLLPClient("127.0.0.1", self.mllp_port, timeout=WAIT) as mllp:
            for _ in range(count):
                self.admissions += 1
                n = self.admissions
                raw = Adt(control_id=f"E2E-{n}", visit=f"V-{n}", movement=f"MVT-{n}", **fields).bytes()
                ack = await mllp.send(raw)
                assert b"MSA|AA|" in ack, ack


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, **overrides: Any) -> AsyncIterator[Gateway]:
    http_port = free_port(None)
    settings = settings.model_copy(update={"http_port": http_port, "mllp_port": 0, **overrides})
    runtime = Runtime.build(settings)
    try:
        async with serving(create_app(runtime), http_port):
            assert runtime.mllp is not None
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=WAIT) as http:
                yield Gateway(runtime, http, runtime.mllp.port)
    finally:
        runtime.close()


def event_failures(runtime: Runtime, sub_id: str) -> tuple[int, set[str | None]]:
    """(failed attempts so far, last errors) of the subscription's pending events."""
    with runtime.db.connect() as conn:
        rows = OutboxRepo(conn).for_subscription(sub_id)
    pending = [r for r in rows if r.notification_type == "event-notification" and r.status == "pending"]
    return sum(r.attempts for r in pending), {r.last_error for r in pending if r.attempts}


# -- a platform that is down for a while -----------------------------------------------------------


def test_events_sent_while_the_platform_is_down_arrive_in_order_once_it_is_back(settings: Settings) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        port = free_port(None)
        endpoint = f"http://127.0.0.1:{port}/notify"
        async with running_gateway(settings) as gw:
            async with serving(receiver.app, port):
                sub_id = await gw.subscribe(endpoint, receiver=receiver)
                note = await bounded(receiver.received.get(), "the handshake")
                assert kind(note["bundle"]) == "handshake"
                await gw.wait_status(sub_id, "active")
            # Nothing listens on the port now: connections are refused.
            await gw.admit(3)

            async def retried() -> set[str | None] | None:
                attempts, errors = await asyncio.to_thread(event_failures, gw.runtime, sub_id)
                return errors if attempts >= 3 else None

            errors = await until(retried, "the worker to retry while the platform is down")
            assert errors == {"ConnectError"}  # connection refused, retried
            assert receiver.received.empty()
            assert (await gw.read(sub_id))["status"] == "active"  # far from the horizon: still trying

            async with serving(receiver.app, port):  # back, on the same port
                notes = [await bounded(receiver.received.get(), f"event #{i}") for i in (1, 2, 3)]
                assert [event_numbers(n["bundle"]) for n in notes] == [[1], [2], [3]]
                assert all(n["signed"] for n in notes)
                assert len(set().union(*(focus_refs(n["bundle"]) for n in notes))) == 3
                with contextlib.suppress(TimeoutError):
                    extra = await asyncio.wait_for(receiver.received.get(), timeout=0.3)
                    pytest.fail(f"unexpected extra notification: {extra['bundle']}")
            assert (await gw.read(sub_id))["status"] == "active"

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))


# -- a handshake that fails ------------------------------------------------------------------------


class FailingReceiver(Receiver):
    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.attempts: list[str] = []

    async def _notify(self, request: Request) -> Response:
        self.attempts.append(kind(orjson.loads(await request.body())))
        return Response(status_code=self.status)


def test_a_failed_handshake_shows_as_error_on_read_and_status(settings: Settings) -> None:
    async def scenario() -> FailingReceiver:
        receiver = FailingReceiver(500)
        port = free_port(None)
        async with serving(receiver.app, port), running_gateway(settings) as gw:
            sub_id = await gw.subscribe(f"http://127.0.0.1:{port}/notify")
            read = await gw.wait_status(sub_id, "error")
            assert "handshake" in read["error"] and "HTTP 500" in read["error"]

            answer = await gw.http.get(f"/fhir/Subscription/{sub_id}/$status")
            assert answer.status_code == 200
            params = {p["name"]: p for p in answer.json()["entry"][0]["resource"]["parameter"]}
            assert params["status"]["valueCode"] == "error"
            assert "HTTP 500" in params["error"]["valueCodeableConcept"]["text"]
            found = (await gw.http.get("/fhir/Subscription", params={"status": "error"})).json()
            assert [e["resource"]["id"] for e in found["entry"]] == [sub_id]

            await gw.admit(1)  # recorded for later, never sent while in error
            answer = await gw.http.get(f"/fhir/Subscription/{sub_id}/$events")
            assert [int(e["event-number"]["valueString"]) for e in event_parts(answer.json())] == [1]
            await asyncio.sleep(0.3)  # a window in which a wrong extra attempt would show
        return receiver

    receiver = asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))
    assert receiver.attempts == ["handshake"] * 3


# -- gap recovery ----------------------------------------------------------------------------------


class LossyReceiver(Receiver):
    """Answers 200 to every notification but loses event #2 (as a crashed consumer would)."""

    async def _notify(self, request: Request) -> Response:
        bundle = orjson.loads(await request.body())
        if event_numbers(bundle) == [2]:
            return Response(status_code=200)
        return await super()._notify(request)


class Platform:
    """A receiving client: notices gaps in event numbers and fetches the missing events with $events."""

    def __init__(self, http: httpx.AsyncClient, sub_id: str) -> None:
        self.http, self.sub_id = http, sub_id
        self.last = 0
        self.events: dict[int, str] = {}  # event number → focus reference
        self.recovered: list[int] = []

    async def take(self, bundle: JSON) -> None:
        numbers, focuses = event_numbers(bundle), focus_refs(bundle)
        if numbers and numbers[0] > self.last + 1:
            await self.recover(self.last + 1, numbers[0] - 1)
        for number, focus in zip(numbers, focuses, strict=True):
            self.events[number] = focus
            self.last = max(self.last, number)

    async def recover(self, since: int, until: int) -> None:
        answer = await self.http.get(
            f"/fhir/Subscription/{self.sub_id}/$events",
            params={"eventsSinceNumber": since, "eventsUntilNumber": until},
        )
        assert answer.status_code == 200, answer.text
        bundle = answer.json()
        assert status_params(bundle)["type"]["valueCode"] == "query-event"
        for number, focus in zip(event_numbers(bundle), focus_refs(bundle), strict=True):
            self.events[number] = focus
            self.recovered.append(number)


def test_a_lost_event_is_detected_from_numbers_and_fetched_with_events(settings: Settings) -> None:
    async def scenario() -> None:
        receiver = LossyReceiver()
        port = free_port(None)
        async with serving(receiver.app, port), running_gateway(settings) as gw:
            sub_id = await gw.subscribe(f"http://127.0.0.1:{port}/notify", receiver=receiver)
            assert kind((await bounded(receiver.received.get(), "the handshake"))["bundle"]) == "handshake"
            platform = Platform(gw.http, sub_id)
            await gw.admit(3)
            for _ in range(2):  # #1 and #3; #2 was answered 200 and dropped
                note = await bounded(receiver.received.get(), "an event notification")
                await platform.take(note["bundle"])

            assert platform.recovered == [2]  # exactly the missing event, nothing more
            assert sorted(platform.events) == [1, 2, 3]
            assert len(set(platform.events.values())) == 3
            visits = []
            for number in (1, 2, 3):
                encounter = (await gw.http.get(platform.events[number])).json()
                visits.append(encounter["identifier"][0]["value"])
            assert visits == ["V-1", "V-2", "V-3"]  # #2 is the second admission

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))


# -- email -----------------------------------------------------------------------------------------


class SmtpSink:
    """A minimal SMTP server (RFC 5321 happy path) on 127.0.0.1 that queues the messages it accepts."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[list[str], EmailMessage]] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> SmtpSink:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recipients: list[str] = []
        writer.write(b"220 sink.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line.decode("ascii", "replace").strip().split(" ", 1)[0].upper()
                if verb == "EHLO":
                    writer.write(b"250-sink.test\r\n250 8BITMIME\r\n")
                elif verb == "RCPT":
                    recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                    writer.write(b"250 OK\r\n")
                elif verb == "DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = bytearray()
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    parsed = email.message_from_bytes(bytes(data), policy=email.policy.default)
                    assert isinstance(parsed, EmailMessage)
                    await self.messages.put((recipients, parsed))
                    recipients = []
                    writer.write(b"250 queued\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                elif verb in ("HELO", "MAIL", "RSET", "NOOP"):
                    writer.write(b"250 OK\r\n")
                else:
                    writer.write(b"502 not implemented\r\n")
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def test_email_channel_end_to_end(settings: Settings) -> None:
    async def scenario() -> None:
        async with (
            SmtpSink() as smtp,
            running_gateway(
                settings, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="gateway@ars.example.fr"
            ) as gw,
        ):
            address = "coordination@dac.mssante.example.fr"
            channel = {"type": "email", "endpoint": f"mailto:{address}", "payload": "text/plain"}
            sub_id = await gw.subscribe("", channel=channel)

            to, handshake = await bounded(smtp.messages.get(), "the handshake mail")
            assert to == [address] and handshake["To"] == address
            assert "handshake" in handshake["Subject"]
            await gw.wait_status(sub_id, "active")

            await gw.admit(1, family="MARTINEAU", given="GERTRUDE")
            to, mail = await bounded(smtp.messages.get(), "the event mail")
            assert to == [address]
            subject, content = str(mail["Subject"]), mail.get_content()
            assert "Entrée" in subject and "#1" in subject  # topic and event number
            assert "Entrée" in content and "#1 at " in content
            assert f"Subscription/{sub_id}/$status" in content
            encounter = (await gw.http.get("/fhir/Encounter", params={"identifier": "V-1"})).json()["entry"][0]
            assert f"Encounter/{encounter['resource']['id']}" in content  # id-only: the reference, no more
            raw = mail.as_string().upper()
            assert "MARTINEAU" not in raw and "GERTRUDE" not in raw and "100001" not in raw
            assert mail["Message-ID"] != handshake["Message-ID"]
            sent_at = parsedate_to_datetime(str(mail["Date"]))  # RFC 5322: every mail has a Date
            assert sent_at.tzinfo is not None and sent_at.utcoffset() is not None

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))


# -- two workers on one PostgreSQL database --------------------------------------------------------


@pytest.fixture
def pg_settings(pg_database: str) -> Settings:
    engine = make_engine(Settings(database_url=pg_database))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(t.name for t in metadata.sorted_tables)} RESTART IDENTITY"))
    engine.dispose()
    return Settings(
        database_url=pg_database,
        endpoint_allowlist=["127.0.0.1"],
        worker_poll_interval=0.05,
        retry_base=0.01,
        retry_cap=0.05,
    )


class CountingReceiver(Receiver):
    """Records event numbers in arrival order; a little latency lets the two workers interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[int] = []
        self.handshakes = 0

    async def _notify(self, request: Request) -> Response:
        bundle = orjson.loads(await request.body())
        self.handshakes += kind(bundle) == "handshake"
        self.numbers += event_numbers(bundle)
        await asyncio.sleep(0.005)
        return await super()._notify(request)


@pytest.mark.postgres
def test_two_workers_on_postgresql_deliver_each_event_once_in_order(
    pg_settings: Settings, mapping_engine: MappingEngine
) -> None:
    n = 30

    async def scenario() -> tuple[CountingReceiver, list[DeliveryWorker]]:
        receiver = CountingReceiver()
        port = free_port(None)
        engines = [make_engine(pg_settings), make_engine(pg_settings)]  # two gateway instances
        workers = [DeliveryWorker(db=engine, settings=pg_settings) for engine in engines]

        def wake() -> None:
            for w in workers:
                w.wake()

        pipeline = Pipeline(engine=mapping_engine, db=engines[0], on_commit=wake)
        try:
            async with serving(receiver.app, port):
                tasks = [asyncio.create_task(w.run()) for w in workers]
                try:
                    with transaction(engines[1]) as conn:
                        body = _subscription("encounter-start", f"http://127.0.0.1:{port}/notify", "id-only")
                        body["_criteria"]["extension"][0]["valueString"] = "Encounter?class=IMP"
                        stored, secret = create_subscription(conn, body, allowlist=["127.0.0.1"], now=utcnow())
                    assert secret
                    receiver.secrets[stored.id] = secret
                    wake()

                    async def feed(start: int) -> None:
                        for k in range(start, n + 1, 3):
                            raw = Adt(control_id=f"W-{k}", visit=f"V-{k}", movement=f"MVT-{k}", ipp=f"7{k:05d}").bytes()
                            outcome = await asyncio.to_thread(pipeline.ingest, raw, transport="test")
                            assert outcome.code == "AA"

                    await asyncio.gather(feed(1), feed(2), feed(3))  # three feeds at once

                    async def all_in() -> bool | None:
                        return True if len(receiver.numbers) >= n else None

                    await until(all_in, f"{n} events")
                    await asyncio.sleep(0.3)  # a duplicate sent late would show up here
                finally:
                    for w in workers:
                        w.stop()
                    await asyncio.gather(*tasks)
        finally:
            for w in workers:
                await w.client.aclose()
            for engine in engines:
                engine.dispose()
        return receiver, workers

    receiver, workers = asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))
    assert receiver.handshakes == 1
    assert receiver.numbers == list(range(1, n + 1))  # each once, in order
    assert sum(w.delivered_total for w in workers) == n + 1  # the handshake and n events, none twice
