"""Real FHIR clients written elsewhere (fhirpy, fhirclient) against the gateway on a real socket.

What they do is what integrators' code will do: read the CapabilityStatement, search with sort, count
and elements, read by id, page. Nothing here is tailored to the gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import AsyncFHIRClient

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.demo import free_port, serving
from gateway.runtime import Runtime
from tests.messages import IPP_SYSTEM, Adt

pytestmark = pytest.mark.e2e

WAIT = 15.0


async def _load(base: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
        for n in range(count):
            adt = Adt(control_id=f"C-{n}", ipp=f"3000{n}", visit=f"V-C{n}", event_time=f"2026030{n + 1}080000")
            answer = await http.post("/hl7v2", content=adt.build(), headers={"Content-Type": "application/hl7-v2"})
            assert answer.headers["X-Ack-Code"] == "AA"


def _fhirclient_reads(base: str, patient_id: str) -> dict[str, Any]:
    """fhirclient (SMART on FHIR's Python client) is synchronous: it fetches metadata first, then reads."""
    smart = smart_client.FHIRClient(settings={"app_id": "gateway-test", "api_base": base})
    assert smart.ready or smart.prepare()  # an open server: no authorization needed
    patient = SmartPatient.read(patient_id, smart.server)
    search = SmartPatient.where(struct={"identifier": f"{IPP_SYSTEM}|30001"}).perform_resources_iter(smart.server)
    return {"read": patient.as_json(), "found": [p.id for p in search]}


def test_fhirpy_and_fhirclient_work_against_the_gateway(settings: Settings) -> None:
    async def scenario() -> None:
        port = free_port(None)
        runtime = Runtime.build(settings.model_copy(update={"http_port": port}))
        try:
            async with serving(create_app(runtime, start_services=False), port):
                base = f"http://127.0.0.1:{port}"
                await _load(base, 3)
                fhir = AsyncFHIRClient(f"{base}/fhir", extra_headers={"Accept-Encoding": "gzip"})
                patients = fhir.resources("Patient")
                assert await patients.count() == 3
                newest = await patients.sort("-_lastUpdated").fetch()
                stamps = [p["meta"]["lastUpdated"] for p in newest]
                assert stamps == sorted(stamps, reverse=True)
                trimmed = await patients.elements("identifier").fetch_all()
                assert len(trimmed) == 3 and all("gender" not in p for p in trimmed)
                one = await patients.search(identifier=f"{IPP_SYSTEM}|30001").first()
                assert one is not None
                page = await patients.limit(2).fetch_all()  # follows the next links
                assert len(page) == 3
                stays = await fhir.resources("Encounter").search(patient=f"Patient/{one['id']}").fetch()
                assert stays and stays[0]["subject"]["reference"] == f"Patient/{one['id']}"
                smart = await asyncio.to_thread(_fhirclient_reads, f"{base}/fhir", str(one["id"]))
                assert smart["read"]["id"] == one["id"] and smart["found"] == [one["id"]]
        finally:
            runtime.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
