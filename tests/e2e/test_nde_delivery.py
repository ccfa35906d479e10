"""ANS NdE and Backport discovery over real sockets: MLLP in, a real HTTP notification manager out.

An NdE subscription names one patient by INS; admissions and discharges arrive over MLLP; the platform,
a uvicorn server, receives ``POST /fhir/CommunicationRequest`` flux 4 orders (ADM, then SOR), nothing for
a patient it does not follow, and after a 500 the same order again until its 201, in order. A Backport
client finds the topics where the IG puts them (``rest.resource`` of the Subscription entry in
``/fhir/metadata``), subscribes to one and receives the notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import orjson
import pytest
from fastapi import FastAPI, Request, Response

from gateway.config import Settings
from gateway.demo import Receiver, free_port, serving
from gateway.hl7.mllp import MLLPClient
from gateway.subscriptions.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from gateway.subscriptions.notification import EVENT_CODE_EXTENSION_URL
from gateway.subscriptions.service import SIGNING_SECRET
from tests import nde_constraints
from tests.e2e.test_delivery import SCENARIO, WAIT, SmtpSink, bounded, event_parts, kind, running_gateway
from tests.integration.test_nde import INS, INS_SYSTEM, nde_subscription
from tests.messages import Adt

pytestmark = pytest.mark.e2e
JSON = dict[str, Any]
TOPIC_CANONICAL = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


class NotificationManager:
    """A platform's FHIR base receiving flux 4: answers each POST with the next status of its script."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.app = FastAPI()
        self.app.post("/fhir/CommunicationRequest")(self._order)

    async def _order(self, request: Request) -> Response:
        body = await request.body()
        status = self.statuses.pop(0) if self.statuses else 201
        await self.received.put({"body": body, "headers": dict(request.headers), "answered": status})
        return Response(content=body if status == 201 else b"", status_code=status, media_type="application/fhir+json")


def event_code(order: JSON) -> str:
    ext = next(e for e in order["extension"] if e["url"].endswith("/event-type"))
    return str(ext["valueCodeableConcept"]["coding"][0]["code"])


async def send(port: int, *messages: Adt) -> None:
    async with MLLPClient("127.0.0.1", port, timeout=WAIT) as mllp:
        for message in messages:
            ack = await mllp.send(message.bytes())
            assert b"MSA|AA|" in ack, ack


def test_nde_orders_reach_the_notification_manager_once_each_in_order(settings: Settings) -> None:
    async def scenario() -> None:
        platform = NotificationManager([500])  # the first order fails once, then everything is 201
        port = free_port(None)
        async with serving(platform.app, port), running_gateway(settings) as gw:
            sub = nde_subscription(endpoint=f"http://127.0.0.1:{port}/fhir")
            created = await gw.http.post("/fhir/Subscription", content=json.dumps(sub))
            assert created.status_code == 201, created.text
            body = created.json()
            secret = next(e["valueString"] for e in body["channel"]["extension"] if e["url"] == SIGNING_SECRET)
            await send(
                gw.mllp_port,
                Adt(control_id="N-1", reliability="VALI", ins=INS),
                Adt(control_id="N-2", ipp="200002", visit="V-OTHER", movement="MVT-O"),  # not followed
                Adt(control_id="N-3", reliability="VALI", ins=INS, trigger="A03", movement="MVT-2"),
            )
            deliveries = [await bounded(platform.received.get(), f"delivery #{i}") for i in (1, 2, 3)]
            with contextlib.suppress(TimeoutError):
                extra = await asyncio.wait_for(platform.received.get(), timeout=0.5)
                pytest.fail(f"unexpected extra order: {extra['body'][:200]!r}")

        orders = [orjson.loads(d["body"]) for d in deliveries]
        assert [d["answered"] for d in deliveries] == [500, 201, 201]
        assert [event_code(o) for o in orders] == ["ADM", "ADM", "SOR"]
        assert orders[0] == orders[1], "the retry sends the very same order"
        keys = [d["headers"][IDEMPOTENCY_HEADER.lower()] for d in deliveries]
        assert keys == [f"{body['id']}:1", f"{body['id']}:1", f"{body['id']}:2"]
        for delivery, order in zip(deliveries, orders, strict=True):
            nde_constraints.check(order)
            assert verify(delivery["body"], secret, delivery["headers"][SIGNATURE_HEADER.lower()])
            assert order["basedOn"][0]["reference"].endswith(f"/Subscription/{body['id']}")
            patient = next(c for c in order["contained"] if c["id"] == order["subject"]["reference"][1:])
            assert {"system": INS_SYSTEM, "value": INS} in [
                {k: i[k] for k in ("system", "value")} for i in patient["identifier"]
            ]

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))


def test_a_backport_client_discovers_topics_where_the_ig_puts_them_subscribes_and_receives(
    settings: Settings,
) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        port = free_port(None)
        async with serving(receiver.app, port), running_gateway(settings) as gw:
            metadata = (await gw.http.get("/fhir/metadata")).json()
            topics = [
                e["valueCanonical"]
                for rest in metadata["rest"]
                if rest["mode"] == "server"
                for resource in rest["resource"]
                if resource["type"] == "Subscription"
                for e in resource.get("extension", [])
                if e["url"] == TOPIC_CANONICAL
            ]
            start = next(t for t in topics if t.endswith("/encounter-start"))
            subscription = {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "a Backport client",
                "criteria": start,
                "_criteria": {
                    "extension": [
                        {
                            "url": f"{BACKPORT}/backport-filter-criteria",
                            "valueString": f"Encounter?patient.identifier={INS_SYSTEM}|{INS}",
                        }
                    ]
                },
                "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{port}/notify"},
            }
            created = (await gw.http.post("/fhir/Subscription", content=json.dumps(subscription))).json()
            receiver.secrets[created["id"]] = next(
                e["valueString"] for e in created["channel"]["extension"] if e["url"] == SIGNING_SECRET
            )
            handshake = await bounded(receiver.received.get(), "the handshake")
            assert kind(handshake["bundle"]) == "handshake"
            await gw.wait_status(created["id"], "active")
            await send(gw.mllp_port, Adt(control_id="B-1", reliability="VALI", ins=INS))
            note = await bounded(receiver.received.get(), "the admission notification")
        assert kind(note["bundle"]) == "event-notification" and note["signed"]
        (event,) = [p for p in note["bundle"]["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"]
        assert event_parts(note["bundle"])[0]["focus"]["valueReference"]["reference"].split("/")[-2] == "Encounter"
        (code,) = [e for e in event["extension"] if e["url"] == EVENT_CODE_EXTENSION_URL]
        assert code["valueCodeableConcept"]["coding"][0]["code"] == "ADM"

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))


def test_an_nde_email_subscription_gets_the_short_flux_5_mail(settings: Settings) -> None:
    async def scenario() -> None:
        async with (
            SmtpSink() as smtp,
            running_gateway(settings, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="gw@ars.example.fr") as gw,
        ):
            address = "coordination@dac.mssante.example.fr"
            sub = nde_subscription(codes="ADM", type="email", endpoint=f"mailto:{address}")
            created = await gw.http.post("/fhir/Subscription", content=json.dumps(sub))
            assert created.status_code == 201 and created.json()["status"] == "active", created.text
            await send(gw.mllp_port, Adt(control_id="M-1", reliability="VALI", ins=INS, family="MARTINEAU"))
            to, mail = await bounded(smtp.messages.get(), "the flux 5 mail")  # no handshake mail: NdE has none
        assert to == [address] and "#1" in str(mail["Subject"])
        content = mail.get_content()
        assert "CommunicationRequest/" in content  # the declaration's reference, no more
        raw = mail.as_string().upper()
        assert "MARTINEAU" not in raw and INS not in raw

    asyncio.run(asyncio.wait_for(scenario(), timeout=SCENARIO))
