"""Notification Bundle and SubscriptionStatus Parameters: IG shape, payload levels, FHIR validity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters

from gateway.subscriptions.notification import (
    EVENT_CODE_EXTENSION_URL,
    EVENT_CODE_SYSTEM,
    NOTIFICATION_PROFILE,
    STATUS_PROFILE,
    NotificationContext,
    NotificationEvent,
    build_notification_bundle,
    build_status_parameters,
)

BASE = "http://127.0.0.1:8000/fhir"
TOPIC = "https://gateway.example/fhir/SubscriptionTopic/encounter-admission"
BUNDLE_ID = "8f0e7a3c-5a8e-4d0c-9f3e-1c2b3a4d5e6f"
NOW = datetime(2024, 5, 1, 8, 30, 15, tzinfo=UTC)

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "abc",
    "meta": {"versionId": "3"},
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "subject": {"reference": "Patient/p1"},
}
PATIENT: dict[str, Any] = {"resourceType": "Patient", "id": "p1", "name": [{"family": "DUPONT"}]}


def ctx(payload: str = "id-only", **overrides: Any) -> NotificationContext:
    values: dict[str, Any] = {
        "subscription_id": "sub1",
        "topic_url": TOPIC,
        "status": "active",
        "notification_type": "event-notification",
        "events_since_start": 7,
        "payload_content": payload,
        "base_url": BASE,
    }
    values.update(overrides)
    return NotificationContext(**values)


def event(number: int = 7, **overrides: Any) -> NotificationEvent:
    values: dict[str, Any] = {
        "event_number": number,
        "timestamp": NOW - timedelta(seconds=5),
        "focus_reference": "Encounter/abc",
        "focus_resource": ENCOUNTER,
        "additional_context": ("Patient/p1",),
        "context_resources": (PATIENT,),
        "event_code": "ADM",
    }
    values.update(overrides)
    return NotificationEvent(**values)


def validated(bundle: dict[str, Any]) -> dict[str, Any]:
    """Validate with fhir.resources, JSON round-trip through orjson, and return the parsed copy."""
    raw = orjson.dumps(bundle)
    parsed: dict[str, Any] = orjson.loads(raw)
    assert parsed == bundle
    Bundle.model_validate(parsed)
    Parameters.model_validate(parsed["entry"][0]["resource"])
    return parsed


def params_by_name(parameters: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in parameters["parameter"] if p["name"] == name]


def parts(param: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in param["part"] if p["name"] == name]


def test_bundle_envelope_and_status_entry() -> None:
    bundle = validated(build_notification_bundle(ctx(), [event()], bundle_id=BUNDLE_ID, now=NOW))
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert bundle["meta"]["profile"] == [NOTIFICATION_PROFILE]
    assert bundle["timestamp"] == "2024-05-01T08:30:15+00:00"
    first = bundle["entry"][0]
    assert first["fullUrl"] == f"urn:uuid:{BUNDLE_ID}"
    assert first["request"] == {"method": "GET", "url": f"{BASE}/Subscription/sub1/$status"}
    status = first["resource"]
    assert status["resourceType"] == "Parameters"
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    names = [p["name"] for p in status["parameter"]]
    assert names == [
        "subscription",
        "topic",
        "status",
        "type",
        "events-since-subscription-start",
        "notification-event",
    ]
    assert status["parameter"][0]["valueReference"] == {"reference": f"{BASE}/Subscription/sub1"}
    assert status["parameter"][1]["valueCanonical"] == TOPIC
    assert status["parameter"][2]["valueCode"] == "active"
    assert status["parameter"][3]["valueCode"] == "event-notification"
    assert status["parameter"][4]["valueString"] == "7"


def test_id_only_payload() -> None:
    bundle = validated(build_notification_bundle(ctx("id-only"), [event()], bundle_id=BUNDLE_ID, now=NOW))
    (ne,) = params_by_name(bundle["entry"][0]["resource"], "notification-event")
    assert parts(ne, "event-number") == [{"name": "event-number", "valueString": "7"}]
    assert parts(ne, "timestamp")[0]["valueInstant"] == "2024-05-01T08:30:10+00:00"
    assert parts(ne, "focus")[0]["valueReference"] == {"reference": f"{BASE}/Encounter/abc"}
    assert parts(ne, "additional-context")[0]["valueReference"] == {"reference": f"{BASE}/Patient/p1"}
    assert ne["extension"] == [
        {
            "url": EVENT_CODE_EXTENSION_URL,
            "valueCodeableConcept": {"coding": [{"system": EVENT_CODE_SYSTEM, "code": "ADM"}]},
        }
    ]
    entries = bundle["entry"][1:]
    assert [e["fullUrl"] for e in entries] == [f"{BASE}/Encounter/abc", f"{BASE}/Patient/p1"]
    for entry in entries:
        assert "resource" not in entry
        assert entry["response"] == {"status": "200"}
    assert entries[0]["request"] == {"method": "PUT", "url": "Encounter/abc"}
    assert entries[1]["request"] == {"method": "PUT", "url": "Patient/p1"}
    # id-only must not leak any content of the resources.
    assert b"DUPONT" not in orjson.dumps(bundle)


def test_full_resource_payload() -> None:
    bundle = validated(build_notification_bundle(ctx("full-resource"), [event()], bundle_id=BUNDLE_ID, now=NOW))
    enc, pat = bundle["entry"][1:]
    assert enc["fullUrl"] == f"{BASE}/Encounter/abc"
    assert enc["resource"] == ENCOUNTER
    assert enc["request"] == {"method": "PUT", "url": "Encounter/abc"}
    assert enc["response"] == {"status": "200", "etag": 'W/"3"'}
    assert pat["resource"] == PATIENT
    assert pat["response"] == {"status": "200"}


def test_full_resource_without_resource_falls_back_to_reference_entry() -> None:
    ev = event(focus_resource=None, context_resources=())
    bundle = validated(build_notification_bundle(ctx("full-resource"), [ev], bundle_id=BUNDLE_ID, now=NOW))
    assert [e["fullUrl"] for e in bundle["entry"][1:]] == [f"{BASE}/Encounter/abc", f"{BASE}/Patient/p1"]
    assert all("resource" not in e for e in bundle["entry"][1:])


def test_focus_reference_derived_from_resource_and_context_resources_listed() -> None:
    ev = event(focus_reference=None, additional_context=())
    bundle = validated(build_notification_bundle(ctx("full-resource"), [ev], bundle_id=BUNDLE_ID, now=NOW))
    (ne,) = params_by_name(bundle["entry"][0]["resource"], "notification-event")
    assert parts(ne, "focus")[0]["valueReference"]["reference"] == f"{BASE}/Encounter/abc"
    assert parts(ne, "additional-context")[0]["valueReference"]["reference"] == f"{BASE}/Patient/p1"
    assert [e["resource"]["id"] for e in bundle["entry"][1:]] == ["abc", "p1"]


def test_empty_payload_reveals_no_reference() -> None:
    bundle = validated(build_notification_bundle(ctx("empty"), [event()], bundle_id=BUNDLE_ID, now=NOW))
    assert len(bundle["entry"]) == 1
    (ne,) = params_by_name(bundle["entry"][0]["resource"], "notification-event")
    assert [p["name"] for p in ne["part"]] == ["event-number", "timestamp"]
    raw = orjson.dumps(bundle)
    assert b"Encounter" not in raw
    assert b"Patient" not in raw


@pytest.mark.parametrize("kind", ["handshake", "heartbeat"])
def test_handshake_and_heartbeat_carry_no_event(kind: str) -> None:
    c = ctx("full-resource", notification_type=kind, status="requested" if kind == "handshake" else "active")
    bundle = validated(build_notification_bundle(c, [event()], bundle_id=BUNDLE_ID, now=NOW))
    assert len(bundle["entry"]) == 1
    status = bundle["entry"][0]["resource"]
    assert params_by_name(status, "notification-event") == []
    assert params_by_name(status, "type")[0]["valueCode"] == kind


def test_error_parameter() -> None:
    c = ctx(status="error", notification_type="heartbeat", error="endpoint unreachable since 08:00")
    bundle = validated(build_notification_bundle(c, [], bundle_id=BUNDLE_ID, now=NOW))
    status = bundle["entry"][0]["resource"]
    assert status["parameter"][-1] == {
        "name": "error",
        "valueCodeableConcept": {"text": "endpoint unreachable since 08:00"},
    }
    assert params_by_name(status, "status")[0]["valueCode"] == "error"


def test_multiple_events_order_preserved_and_no_duplicate_full_url() -> None:
    events = [
        event(5, focus_reference="Encounter/e5", focus_resource=None),
        event(6, focus_reference="Encounter/e6", focus_resource=None, event_code="SOR"),
        event(7, focus_reference="Encounter/e5", focus_resource=None, event_code=None),
    ]
    bundle = validated(build_notification_bundle(ctx("id-only"), events, bundle_id=BUNDLE_ID, now=NOW))
    status = bundle["entry"][0]["resource"]
    nes = params_by_name(status, "notification-event")
    assert [parts(ne, "event-number")[0]["valueString"] for ne in nes] == ["5", "6", "7"]
    codes = [
        ne.get("extension", [{}])[0].get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code") for ne in nes
    ]
    assert codes == [
        "ADM",
        "SOR",
        None,
    ]
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(full_urls) == len(set(full_urls))
    assert full_urls[1:] == [f"{BASE}/Encounter/e5", f"{BASE}/Patient/p1", f"{BASE}/Encounter/e6"]


def test_status_parameters_alone_for_status_operation() -> None:
    params = build_status_parameters(ctx(notification_type="query-status"), [])
    Parameters.model_validate(orjson.loads(orjson.dumps(params)))
    assert "id" not in params
    assert params_by_name(params, "type")[0]["valueCode"] == "query-status"
    assert params_by_name(params, "notification-event") == []


def test_query_event_lists_events() -> None:
    params = build_status_parameters(ctx(notification_type="query-event"), [event(1), event(2)])
    Parameters.model_validate(params)
    assert len(params_by_name(params, "notification-event")) == 2


def test_non_utc_timestamp_keeps_offset_and_naive_is_refused() -> None:
    paris = timezone(timedelta(hours=2))
    params = build_status_parameters(ctx(), [event(timestamp=datetime(2024, 5, 1, 10, 0, tzinfo=paris))])
    (ne,) = params_by_name(params, "notification-event")
    assert parts(ne, "timestamp")[0]["valueInstant"] == "2024-05-01T10:00:00+02:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        build_status_parameters(ctx(), [event(timestamp=datetime(2024, 5, 1, 10, 0))])


def test_absolute_references_untouched_and_trailing_slash_in_base() -> None:
    ev = event(focus_reference="https://other.example/fhir/Encounter/x", additional_context=())
    bundle = validated(
        build_notification_bundle(ctx("id-only", base_url=BASE + "/"), [ev], bundle_id=BUNDLE_ID, now=NOW)
    )
    assert bundle["entry"][0]["resource"]["parameter"][0]["valueReference"]["reference"] == (
        f"{BASE}/Subscription/sub1"
    )
    assert bundle["entry"][1]["fullUrl"] == "https://other.example/fhir/Encounter/x"


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", "paused"), ("notification_type", "event"), ("payload_content", "full")],
)
def test_context_rejects_unknown_codes(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        ctx(**{field: value})
