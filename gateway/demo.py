"""``gateway demo``: the whole path on one machine, printed step by step.

Starts the gateway (HTTP + MLLP + worker) on a fresh SQLite store in a temporary directory (removed at the
end), registers a platform and a sender client (as ``gateway clients add`` does), gets their tokens from
``POST /oauth/token`` (the curl command is printed), subscribes the platform's receiver to the entry and exit
topics for the demo patient with the platform's token, sends the admission over HTTP with the sender's token
and the discharge over MLLP (loopback), and prints each ACK and each notification received. Ports given with
``--http-port``/``--mllp-port`` are used as given, or it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from gateway.api.app import create_app
from gateway.auth.clients import add_client
from gateway.canonical import BACKPORT_SD
from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.errors import StartupError
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime
from gateway.subscriptions.channels import SIGNATURE_HEADER, verify
from gateway.subscriptions.service import SIGNING_SECRET
from gateway.subscriptions.topics import TOPIC_BASE


def _fixtures() -> Path:
    """``fixtures/demo`` of the checkout, else of the current directory (an installed package)."""
    beside = Path(__file__).resolve().parent.parent / "fixtures" / "demo"
    return beside if beside.is_dir() else Path("fixtures/demo")


FIXTURES = _fixtures()
DEMO_PATIENT = "urn:oid:1.2.250.1.999.1.1|480001"
DEMO_TOKEN = "demo-platform-token"  # noqa: S105 - a visible demo value, not a credential


class Receiver:
    """A minimal webhook endpoint: records each notification and whether its signature verifies."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.secrets: dict[str, str] = {}
        self.app = FastAPI()
        self.app.post("/notify")(self._notify)

    async def _notify(self, request: Request) -> Response:
        body = await request.body()
        bundle = orjson.loads(body)
        status = bundle["entry"][0]["resource"]
        params = {p["name"]: p for p in status["parameter"]}
        sub_id = params["subscription"]["valueReference"]["reference"].rsplit("/", 1)[-1]
        secret = self.secrets.get(sub_id, "")
        signed = bool(secret) and verify(body, secret, request.headers.get(SIGNATURE_HEADER, ""))
        await self.received.put(
            {"bundle": bundle, "signed": signed, "authorization": request.headers.get("authorization", "")}
        )
        return Response(status_code=200)


def free_port(preferred: int | None) -> int:
    """``preferred`` when it is free, else any free port (for defaults, not for ports a user asked for)."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def demo_port(asked: int | None, default: int, what: str) -> int:
    """A port given on the command line is used as given, or the demo stops: never silently another."""
    if asked is None:
        return free_port(default)
    if free_port(asked) != asked:
        raise StartupError(f"demo: {what} port {asked} is busy; choose another with --{what.lower()}-port")
    return asked


@contextlib.asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[uvicorn.Server]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("server failed to start")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def describe(bundle: dict[str, Any]) -> str:
    status = bundle["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    kind = params["type"]["valueCode"]
    topic = params["topic"]["valueCanonical"].rsplit("/", 1)[-1]
    lines = [
        f"{kind} on topic {topic} (events since start: {params['events-since-subscription-start']['valueString']})"
    ]
    for event in (p for p in status["parameter"] if p["name"] == "notification-event"):
        parts = {p["name"]: p for p in event.get("part", [])}
        focus = parts.get("focus", {}).get("valueReference", {}).get("reference", "-")
        codes = [e["valueCoding"]["code"] for e in event.get("extension", []) if "valueCoding" in e]
        lines.append(f"    event #{parts['event-number']['valueString']} {'/'.join(codes)} focus {focus}")
    for entry in bundle["entry"][1:]:
        resource = entry.get("resource")
        if resource and resource.get("resourceType") == "Encounter":
            period = resource.get("period", {})
            lines.append(
                f"    Encounter status={resource['status']} start={period.get('start')} end={period.get('end', '-')}"
            )
    return "\n".join(lines)


def _register(runtime: Runtime, kind: str, name: str, **options: Any) -> tuple[str, str]:
    with transaction(runtime.db) as conn:
        created = add_client(conn, kind=kind, name=name, now=datetime.now(UTC), **options)
    return created.record.id, created.secret or ""


async def _token(client: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, str]:
    answer = await client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _subscription(topic: str, endpoint: str, content: str) -> dict[str, Any]:
    backport = BACKPORT_SD
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": f"demo platform follows patient {DEMO_PATIENT}",
        "criteria": f"{TOPIC_BASE}/{topic}",
        "_criteria": {
            "extension": [
                {
                    "url": f"{backport}/backport-filter-criteria",
                    "valueString": f"Encounter?patient.identifier={DEMO_PATIENT}",
                }
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{backport}/backport-payload-content", "valueCode": content}]},
            "header": [f"Authorization: Bearer {DEMO_TOKEN}"],
        },
    }


def _print_ack(what: str, ack: bytes) -> None:
    print(f"{what}; ACK:")
    for segment in ack.decode("latin-1").strip("\r").split("\r"):
        print(f"       {segment}")


async def run_demo(*, keep_running: bool = False, http_port: int | None = None, mllp_port: int | None = None) -> int:
    """The store lives in a temporary directory, removed when the demo ends (even on Ctrl-C)."""
    settings_ports = (demo_port(http_port, 8000, "HTTP"), demo_port(mllp_port, 2575, "MLLP"))
    var = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        return await _demo(var, ports=settings_ports, keep_running=keep_running)
    finally:
        shutil.rmtree(var, ignore_errors=True)


async def _demo(var: Path, *, ports: tuple[int, int], keep_running: bool) -> int:
    receiver = Receiver()
    receiver_port = free_port(None)
    settings = Settings(
        database_url=f"sqlite:///{var / 'gateway.db'}",
        data_dir=var,
        http_port=ports[0],
        mllp_port=ports[1],
        endpoint_allowlist=["127.0.0.1", "localhost"],
        worker_poll_interval=0.2,
    )
    runtime = Runtime.build(settings)
    try:
        base = f"http://127.0.0.1:{settings.http_port}"
        print(f"1. gateway up: HTTP {base} (FHIR {base}/fhir), MLLP 127.0.0.1:{settings.mllp_port}, store {var}")
        platform_id, platform_secret = _register(runtime, "platform", "demo-platform")
        sender_id, sender_secret = _register(runtime, "sender", "demo-hospital", facilities=["CH-DEMO"])
        print(
            f"   registered platform demo-platform ({platform_id}) "
            f"and sender demo-hospital ({sender_id}, MSH-4 CH-DEMO)"
        )
        print(
            f"   token, as a platform would get it: curl -u {platform_id}:{platform_secret} "
            f"-d grant_type=client_credentials {base}/oauth/token"
        )
        async with serving(receiver.app, receiver_port), serving(create_app(runtime), settings.http_port):
            print(f"2. demo receiver (stands in for an e-parcours platform) on http://127.0.0.1:{receiver_port}/notify")
            async with httpx.AsyncClient(base_url=base) as client:
                as_platform = await _token(client, platform_id, platform_secret)
                as_sender = await _token(client, sender_id, sender_secret)
                for topic, content in (("encounter-start", "full-resource"), ("encounter-end", "id-only")):
                    answer = await client.post(
                        "/fhir/Subscription",
                        content=json.dumps(_subscription(topic, f"http://127.0.0.1:{receiver_port}/notify", content)),
                        headers={"Content-Type": "application/fhir+json", **as_platform},
                    )
                    answer.raise_for_status()
                    created = answer.json()
                    secret = next(
                        e["valueString"] for e in created["channel"]["extension"] if e["url"] == SIGNING_SECRET
                    )
                    receiver.secrets[created["id"]] = secret
                    print(
                        f"3. subscribed to {topic} ({content}): Subscription/{created['id']} status={created['status']}"
                    )
                for _ in range(2):
                    note = await asyncio.wait_for(receiver.received.get(), timeout=15)
                    print(f"   receiver got a {describe(note['bundle'])}; signature ok: {note['signed']}")
                first, *rest = sorted(FIXTURES.glob("*.hl7"))
                posted = await client.post(
                    "/hl7v2", content=first.read_bytes(), headers={"Content-Type": "application/hl7-v2", **as_sender}
                )
                _print_ack(f"4. sent {first.name} over HTTP with the sender's token", posted.content)
                async with MLLPClient("127.0.0.1", settings.mllp_port) as mllp:
                    for path in rest:
                        _print_ack(f"4. sent {path.name} over MLLP (loopback)", await mllp.send(path.read_bytes()))
                for _ in range(2):
                    note = await asyncio.wait_for(receiver.received.get(), timeout=15)
                    print(f"5. receiver got an {describe(note['bundle'])}")
                    print(
                        f"   signature ok: {note['signed']}, Authorization header passed: {bool(note['authorization'])}"
                    )
                encounters = (
                    await client.get("/fhir/Encounter", params={"identifier": "2026004512"}, headers=as_platform)
                ).json()
                for entry in encounters.get("entry", []):
                    enc = entry["resource"]
                    print(
                        f"6. GET /fhir/Encounter?identifier=2026004512 → Encounter/{enc['id']} "
                        f"status={enc['status']} version={enc['meta']['versionId']}"
                    )
            if keep_running:
                print("gateway keeps running; Ctrl-C to stop")
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
    finally:
        runtime.close()
    print("demo done.")
    return 0
