"""``/metrics``: conventional names, messages by outcome/trigger/sender, store gauges read at scrape time."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.app import create_app
from gateway.hl7.mllp import MLLPClient
from gateway.metrics import MAX_LABEL_VALUES, OTHER, bounded
from gateway.runtime import Runtime
from tests.api_helpers import subscribe
from tests.messages import Adt

HL7 = {"Content-Type": "application/hl7-v2"}


def scrape(client: TestClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_metrics_after_traffic(client: TestClient) -> None:
    client.post("/hl7v2", content=Adt(control_id="M-1", facility="CH-METRICS").bytes(), headers=HL7)
    subscribe(client, "encounter-start", "Encounter?patient.identifier=urn:oid:1.2.3|9")
    metrics = scrape(client)
    messages = [
        labels
        for labels, value in metrics["gateway_messages_total"]
        if labels.get("sender") == "CH-METRICS" and value >= 1
    ]
    assert messages and messages[0]["trigger"] == "A01" and messages[0]["outcome"] == "AA"
    assert messages[0]["transport"] == "http"
    assert any(labels["transport"] == "http" for labels, _ in metrics["gateway_ack_latency_seconds_count"])
    assert metrics["gateway_fold_duration_seconds_count"][0][1] >= 1
    assert metrics["gateway_commit_duration_seconds_count"][0][1] >= 1
    statuses = {labels["status"]: value for labels, value in metrics["gateway_subscriptions"]}
    assert statuses["requested"] == 1 and statuses["active"] == 0
    pending = dict((labels["subscription"], value) for labels, value in metrics["gateway_outbox_pending"])
    assert list(pending.values()) == [1]  # the handshake waits: no worker runs here
    assert metrics["gateway_outbox_oldest_pending_age_seconds"][0][1] >= 0
    assert any(labels.get("route") == "/hl7v2" for labels, _ in metrics["gateway_http_request_duration_seconds_count"])


def test_label_values_from_messages_are_cleaned_and_bounded() -> None:
    assert bounded("test-kind", "CH TEST/<x>") == "CH_TEST__x_"
    for n in range(MAX_LABEL_VALUES + 5):
        last = bounded("test-flood", f"v{n}")
    assert last == OTHER
    assert bounded("test-flood", "v0") == "v0"  # known values keep their series


def test_mllp_and_worker_counters_reach_metrics(runtime: Runtime) -> None:
    """The MLLP listener's and delivery worker's own counters are series of ``/metrics`` (#15 item 7)."""

    async def scenario() -> None:
        await runtime.start(worker=False)
        assert runtime.mllp is not None
        try:
            async with MLLPClient("127.0.0.1", runtime.mllp.port, timeout=30) as mllp:
                await mllp.send(Adt(control_id="C-1").bytes())
                await mllp.send(Adt(control_id="C-2", visit="V-2").bytes())
        finally:
            await runtime.stop()

    asyncio.run(scenario())
    runtime.worker.delivered_total = 3  # as a worker that delivered three rows would have counted
    with TestClient(create_app(runtime, start_services=False)) as client:
        metrics = scrape(client)
    assert metrics["gateway_mllp_connections_total"] == [({}, 1.0)]
    assert metrics["gateway_mllp_frames_total"] == [({}, 2.0)]
    for name in ("refused", "oversize_frames", "timeouts"):
        series = "gateway_mllp_connections_refused_total" if name == "refused" else f"gateway_mllp_{name}_total"
        assert metrics[series] == [({}, 0.0)]
    assert metrics["gateway_outbox_rows_delivered_total"] == [({}, 3.0)]


def test_without_an_mllp_listener_there_are_no_mllp_series(client: TestClient) -> None:
    metrics = scrape(client)
    assert not [name for name in metrics if name.startswith("gateway_mllp_")]
    assert metrics["gateway_outbox_rows_delivered_total"] == [({}, 0.0)]
