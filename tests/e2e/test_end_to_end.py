"""The whole path over real sockets: MLLP in, FHIR store, signed rest-hook notifications out, FHIR reads.

Nothing is faked: the gateway app is served by uvicorn on a free port with its MLLP listener (port 0) and
delivery worker, the subscriber is a second uvicorn server, subscriptions are created over HTTP, and
messages travel over MLLP with :class:`MLLPClient`. Runs on SQLite and PostgreSQL through ``settings``.
Every wait is bounded; no assertion is about elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from fastapi import Request, Response

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.demo import DEMO_TOKEN, FIXTURES, Receiver, _subscription, free_port, serving
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime
from gateway.subscriptions.channels import IDEMPOTENCY_HEADER
from gateway.subscriptions.service import SIGNING_SECRET
from gateway.subscriptions.topics import TOPIC_BASE

pytestmark = pytest.mark.e2e

WAIT = 10.0  # upper bound of every single wait, seconds
SCENARIO = 20.0  # backstop for a whole scenario (server start-up and shutdown included)
ADMISSION = (FIXTURES / "01_A01_admission.hl7").read_bytes()
DISCHARGE = (FIXTURES / "02_A03_discharge.hl7").read_bytes()
VISIT = b"2026004512"  # PV1-19 of both demo messages
T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------------


async def bounded(awaitable: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout=WAIT)
    except TimeoutError:
        pytest.fail(f"timed out after {WAIT} s waiting for {what}")


@dataclass
class Gateway:
    runtime: Runtime
    http: httpx.AsyncClient
    mllp_port: int
    fhir_base: str


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """The gateway as ``gateway serve`` runs it: HTTP app, MLLP listener and worker, on real ports."""
    http_port = free_port(None)
    settings = settings.model_copy(update={"http_port": http_port, "mllp_port": 0})
    runtime = Runtime.build(settings)
    try:
        async with serving(create_app(runtime), http_port):
            assert runtime.mllp is not None
            base = f"http://127.0.0.1:{http_port}"
            async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
                yield Gateway(runtime, http, runtime.mllp.port, settings.public_base())
    finally:
        runtime.close()


def segments(message: bytes) -> dict[str, list[str]]:
    """First occurrence of each segment, split into fields (``[0]`` is the segment name)."""
    out: dict[str, list[str]] = {}
    for segment in message.decode("latin-1").replace("\n", "\r").split("\r"):
        if segment:
            out.setdefault(segment[:3], segment.split("|"))
    return out


def control_id(message: bytes) -> str:
    return segments(message)["MSH"][9]


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1 acknowledgment code, MSA-2 control id) of an ACK."""
    fields = segments(ack)["MSA"]
    return fields[1], fields[2] if len(fields) > 2 else ""


def new_stay(template: bytes, n: int) -> bytes:
    """The demo message for another stay of the same patient: new MSH-10, visit number and movement id."""
    return (
        template.replace(b"|DEMO-000", f"|E2E-{n:04d}-".encode())
        .replace(VISIT, f"{VISIT.decode()}{n:03d}".encode())
        .replace(b"MVT-100", f"MVT-{n:04d}-".encode())
    )


def status_params(bundle: dict[str, Any]) -> dict[str, Any]:
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    return {p["name"]: p for p in status["parameter"] if p["name"] != "notification-event"}


def events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    status = bundle["entry"][0]["resource"]
    return [
        {p["name"]: p for p in event.get("part", [])}
        for event in status["parameter"]
        if event["name"] == "notification-event"
    ]


def event_numbers(bundle: dict[str, Any]) -> list[int]:
    return [int(event["event-number"]["valueString"]) for event in events(bundle)]


def subscription_id(bundle: dict[str, Any]) -> str:
    return str(status_params(bundle)["subscription"]["valueReference"]["reference"]).rsplit("/", 1)[-1]


async def subscribe(gw: Gateway, receiver: Receiver, port: int, topic: str, content: str) -> tuple[str, str]:
    """POST a Subscription; returns (id, signing secret shown once in the create response)."""
    endpoint = f"http://127.0.0.1:{port}/notify"
    answer = await gw.http.post(
        "/fhir/Subscription",
        content=json.dumps(_subscription(topic, endpoint, content)),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["status"] == "requested"
    secret = next(e["valueString"] for e in created["channel"].get("extension", []) if e["url"] == SIGNING_SECRET)
    assert secret
    receiver.secrets[created["id"]] = secret
    return str(created["id"]), str(secret)


async def wait_active(gw: Gateway, sub_id: str) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            answer = await gw.http.get(f"/fhir/Subscription/{sub_id}")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            assert body["status"] in ("requested", "active"), body
            if body["status"] == "active":
                return body
            await asyncio.sleep(0.05)

    return await bounded(poll(), f"Subscription/{sub_id} to become active")


async def next_note(receiver: Receiver, what: str) -> dict[str, Any]:
    return await bounded(receiver.received.get(), what)


async def handshakes(receiver: Receiver, gw: Gateway, sub_ids: list[str]) -> None:
    """Each new subscription gets one signed handshake, then turns active."""
    seen = []
    for _ in sub_ids:
        note = await next_note(receiver, "a handshake")
        params = status_params(note["bundle"])
        assert params["type"]["valueCode"] == "handshake"
        assert note["signed"]
        seen.append(subscription_id(note["bundle"]))
    assert sorted(seen) == sorted(sub_ids)
    for sub_id in sub_ids:
        await wait_active(gw, sub_id)


# -- the nominal path ------------------------------------------------------------------------------


def test_admission_and_discharge_flow_to_signed_notifications_and_fhir_reads(settings: Settings) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        port = free_port(None)
        async with serving(receiver.app, port), running_gateway(settings) as gw:
            start_id, _ = await subscribe(gw, receiver, port, "encounter-start", "full-resource")
            end_id, _ = await subscribe(gw, receiver, port, "encounter-end", "id-only")
            await handshakes(receiver, gw, [start_id, end_id])

            async with MLLPClient("127.0.0.1", gw.mllp_port, timeout=WAIT) as mllp:
                for message in (ADMISSION, DISCHARGE):
                    ack = await mllp.send(message)
                    assert msa(ack) == ("AA", control_id(message)), ack

            notes = [await next_note(receiver, f"event notification #{i + 1}") for i in range(2)]
            by_sub = {subscription_id(note["bundle"]): note for note in notes}
            assert set(by_sub) == {start_id, end_id}

            found = await gw.http.get("/fhir/Encounter", params={"identifier": VISIT.decode()})
            assert found.status_code == 200
            matches = [e["resource"] for e in found.json().get("entry", [])]
            assert len(matches) == 1
            encounter = matches[0]
            assert encounter["status"] == "finished"
            assert encounter["meta"]["versionId"] == "2"  # created by A01, closed by A03
            focus = f"{gw.fhir_base}/Encounter/{encounter['id']}"

            for sub_id, topic in ((start_id, "encounter-start"), (end_id, "encounter-end")):
                note = by_sub[sub_id]
                bundle = note["bundle"]
                assert bundle["resourceType"] == "Bundle"
                assert bundle["type"] == "history"
                params = status_params(bundle)
                assert params["subscription"]["valueReference"]["reference"].endswith(f"Subscription/{sub_id}")
                assert params["topic"]["valueCanonical"] == f"{TOPIC_BASE}/{topic}"
                assert params["status"]["valueCode"] == "active"
                assert params["type"]["valueCode"] == "event-notification"
                assert params["events-since-subscription-start"]["valueString"] == "1"
                (event,) = events(bundle)
                assert event["event-number"]["valueString"] == "1"
                assert event["focus"]["valueReference"]["reference"] == focus
                assert note["signed"], "X-Gateway-Signature does not verify with the secret from creation"
                assert note["authorization"] == f"Bearer {DEMO_TOKEN}"

            full = next(e for e in by_sub[start_id]["bundle"]["entry"][1:] if e["fullUrl"] == focus)
            assert full["resource"]["resourceType"] == "Encounter"
            assert full["resource"]["status"] == "in-progress"  # the version the admission produced
            ids_only = next(e for e in by_sub[end_id]["bundle"]["entry"][1:] if e["fullUrl"] == focus)
            assert "resource" not in ids_only

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))


# -- retries keep the order ------------------------------------------------------------------------


class FlakyReceiver(Receiver):
    """Answers 503 to the first ``failures`` event notifications; records every attempt it sees."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures_left = failures
        #: (event numbers, Idempotency-Key, HTTP status answered), in arrival order.
        self.attempts: list[tuple[list[int], str, int]] = []

    async def _notify(self, request: Request) -> Response:
        bundle = orjson.loads(await request.body())  # Starlette caches the body for the base class
        numbers = event_numbers(bundle)
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if status_params(bundle)["type"]["valueCode"] == "event-notification" and self.failures_left > 0:
            self.failures_left -= 1
            self.attempts.append((numbers, key, 503))
            return Response(status_code=503)
        self.attempts.append((numbers, key, 200))
        return await super()._notify(request)


def test_failed_deliveries_are_retried_in_order_without_duplicates(settings: Settings) -> None:
    async def scenario() -> FlakyReceiver:
        receiver = FlakyReceiver(failures=2)
        port = free_port(None)
        async with serving(receiver.app, port), running_gateway(settings) as gw:
            sub_id, _ = await subscribe(gw, receiver, port, "encounter-start", "id-only")
            await handshakes(receiver, gw, [sub_id])

            first, second = new_stay(ADMISSION, 1), new_stay(ADMISSION, 2)
            async with MLLPClient("127.0.0.1", gw.mllp_port, timeout=WAIT) as mllp:
                for message in (first, second):
                    ack = await mllp.send(message)
                    assert msa(ack) == ("AA", control_id(message)), ack

            delivered = [await next_note(receiver, f"event notification #{i + 1}") for i in range(2)]
            assert [event_numbers(note["bundle"]) for note in delivered] == [[1], [2]]
            assert all(note["signed"] for note in delivered)
            since = [status_params(n["bundle"])["events-since-subscription-start"] for n in delivered]
            assert [s["valueString"] for s in since] == ["1", "2"]
            # Two distinct stays, so two distinct focus Encounters.
            focuses = {events(note["bundle"])[0]["focus"]["valueReference"]["reference"] for note in delivered}
            assert len(focuses) == 2
            # A short quiet period: a duplicate delivery would show up here.
            with contextlib.suppress(TimeoutError):
                extra = await asyncio.wait_for(receiver.received.get(), timeout=0.5)
                pytest.fail(f"unexpected extra notification: {extra['bundle']}")
            return receiver

    receiver = asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))
    event_attempts = [a for a in receiver.attempts if a[0]]
    # Event 1 failed twice then went through; event 2 never overtook it and went through once.
    assert [(numbers, status) for numbers, _, status in event_attempts] == [
        ([1], 503),
        ([1], 503),
        ([1], 200),
        ([2], 200),
    ]
    keys = [key for _, key, _ in event_attempts]
    assert keys[0] == keys[1] == keys[2] != keys[3]  # redeliveries of one event share the Idempotency-Key
    successes = [numbers[0] for numbers, _, status in event_attempts if status == 200]
    assert sorted(set(successes)) == successes == [1, 2]


# -- bad input over MLLP ---------------------------------------------------------------------------

NON_ADT = (
    b"MSH|^~\\&|LAB|CH-DEMO|GATEWAY|ARS-DEMO|20261110090000||ORU^R01^ORU_R01|E2E-ORU-1|P|2.5\r"
    b"PID|1||480001^^^CH-DEMO&1.2.250.1.999.1.1&ISO^PI||LEFEVRE^HELENE\r"
    b"OBR|1||LAB-1|1234-5^Glucose^LN\r"
    b"OBX|1|NM|1234-5^Glucose^LN||5.4|mmol/L\r"
)


def test_bad_messages_get_ar_and_the_connection_stays_usable(settings: Settings) -> None:
    async def scenario() -> None:
        async with running_gateway(settings) as gw:
            async with MLLPClient("127.0.0.1", gw.mllp_port, timeout=WAIT) as mllp:
                garbage = await mllp.send(b"\x00\xff this is not HL7 at all \x01\x02\r\n")
                assert msa(garbage)[0] == "AR", garbage

                other = await mllp.send(NON_ADT)
                assert msa(other) == ("AR", "E2E-ORU-1"), other

                good = new_stay(ADMISSION, 7)
                ack = await mllp.send(good)
                assert msa(ack) == ("AA", control_id(good)), ack

            found = await gw.http.get("/fhir/Encounter", params={"identifier": f"{VISIT.decode()}007"})
            assert found.status_code == 200
            (entry,) = found.json()["entry"]
            assert entry["resource"]["status"] == "in-progress"
            assert gw.runtime.mllp is not None
            assert gw.runtime.mllp.connections_total == 1

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))
