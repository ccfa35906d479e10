"""FHIR REST behaviours around every route: conditional reads, HEAD, gzip, CORS, _search by POST, result
parameters, Prefer, _format, Allow, deletions in _history, public base behind proxies, request ids."""

from __future__ import annotations

import gzip
import logging
from email.utils import parsedate_to_datetime

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.runtime import Runtime
from tests.api_helpers import subscribe
from tests.integration.test_api import subscription
from tests.messages import IPP_SYSTEM, Adt

HL7 = {"Content-Type": "application/hl7-v2"}


def admit(client: TestClient, n: int, *, day: int = 1) -> None:
    adt = Adt(control_id=f"R-{n}", ipp=f"2000{n}", visit=f"V-R{n}", event_time=f"202603{day:02d}080000")
    assert client.post("/hl7v2", content=adt.build(), headers=HL7).headers["X-Ack-Code"] == "AA"


def first_patient(client: TestClient) -> dict:
    bundle = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|20001"}).json()
    return bundle["entry"][0]["resource"]


def test_conditional_read_and_http_date(client: TestClient) -> None:
    admit(client, 1)
    patient = first_patient(client)
    read = client.get(f"/fhir/Patient/{patient['id']}")
    etag, modified = read.headers["ETag"], read.headers["Last-Modified"]
    assert parsedate_to_datetime(modified).tzinfo is not None and modified.endswith("GMT")
    again = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert client.get(f"/fhir/Patient/{patient['id']}", headers={"If-None-Match": 'W/"999"'}).status_code == 200
    since = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-Modified-Since": modified})
    assert since.status_code == 304
    older = client.get(f"/fhir/Patient/{patient['id']}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert older.status_code == 200 and older.json()["id"] == patient["id"]


def test_head_gives_the_headers_without_a_body(client: TestClient) -> None:
    admit(client, 1)
    patient = first_patient(client)
    head = client.head(f"/fhir/Patient/{patient['id']}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == 'W/"1"' and "Last-Modified" in head.headers
    assert client.head("/fhir/metadata").status_code == 200


def test_gzip_when_asked(client: TestClient) -> None:
    answer = client.get("/fhir/metadata", headers={"Accept-Encoding": "gzip"})
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.json()["resourceType"] == "CapabilityStatement"  # httpx decoded it
    raw = client.get("/fhir/metadata", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in raw.headers
    assert len(gzip.compress(raw.content)) < len(raw.content)


def test_cors_preflight_and_headers_for_configured_origins(settings: Settings) -> None:
    runtime = Runtime.build(settings.model_copy(update={"cors_origins": ["https://app.example"]}), run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False)) as client:
            pre = client.options(
                "/fhir/Patient",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
            )
            assert pre.status_code == 200
            assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
            got = client.get("/fhir/metadata", headers={"Origin": "https://app.example"})
            assert got.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "ETag" in got.headers["Access-Control-Expose-Headers"]
            other = client.get("/fhir/metadata", headers={"Origin": "https://evil.example"})
            assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        runtime.close()


def test_post_search_equals_get_search(client: TestClient) -> None:
    admit(client, 1)
    admit(client, 2)
    form = {"identifier": f"{IPP_SYSTEM}|20002"}
    posted = client.post("/fhir/Patient/_search", data=form)
    assert posted.status_code == 200, posted.text
    got = client.get("/fhir/Patient", params=form).json()
    assert posted.json()["total"] == got["total"] == 1
    assert posted.json()["entry"][0]["resource"]["id"] == got["entry"][0]["resource"]["id"]
    bad = client.post("/fhir/Patient/_search", content=b"{}", headers={"Content-Type": "application/json"})
    assert bad.status_code == 415 and bad.json()["resourceType"] == "OperationOutcome"
    huge = client.post("/fhir/Patient/_search", data={"identifier": "x" * 70_000})
    assert huge.status_code == 413 and huge.json()["resourceType"] == "OperationOutcome"


def test_summary_count_elements_and_total(client: TestClient) -> None:
    for n in (1, 2, 3):
        admit(client, n)
    counted = client.get("/fhir/Patient", params={"_summary": "count"}).json()
    assert (counted["total"] == 3 and "entry" not in counted) or counted["entry"] == []
    Bundle.model_validate(counted)
    summary = client.get("/fhir/Patient", params={"_summary": "true"}).json()
    resource = summary["entry"][0]["resource"]
    assert "identifier" in resource and "text" not in resource
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in (
        resource["meta"]["tag"]
    )
    elements = client.get("/fhir/Patient", params={"_elements": "identifier"}).json()
    trimmed = elements["entry"][0]["resource"]
    assert set(trimmed) == {"resourceType", "id", "meta", "identifier"}
    no_total = client.get("/fhir/Patient", params={"_total": "none", "_count": "2"}).json()
    assert "total" not in no_total and len(no_total["entry"]) == 2
    assert any(link["relation"] == "next" for link in no_total["link"])
    assert client.get("/fhir/Patient", params={"_summary": "maybe"}).status_code == 400
    assert client.get("/fhir/Patient", params={"_pretty": "true"}).text.startswith("{\n")


def test_sort_and_last_updated(client: TestClient) -> None:
    admit(client, 1, day=3)
    admit(client, 2, day=1)
    admit(client, 3, day=2)
    by_date = client.get("/fhir/Encounter", params={"_sort": "date"})
    starts = [e["resource"].get("period", {}).get("start", "") for e in by_date.json()["entry"]]
    assert starts == sorted(starts)
    newest = client.get("/fhir/Patient", params={"_sort": "-_lastUpdated"}).json()["entry"]
    stamps = [e["resource"]["meta"]["lastUpdated"] for e in newest]
    assert stamps == sorted(stamps, reverse=True)
    oldest = client.get("/fhir/Patient", params={"_sort": "_lastUpdated"}).json()["entry"]
    assert [e["resource"]["id"] for e in oldest] == [e["resource"]["id"] for e in reversed(newest)]
    assert client.get("/fhir/Patient", params={"_sort": "family"}).status_code == 400
    assert client.get("/fhir/Patient", params={"_lastUpdated": "ge2000-01-01"}).json()["total"] == 3
    assert client.get("/fhir/Patient", params={"_lastUpdated": "lt2000-01-01"}).json()["total"] == 0
    assert client.get("/fhir/Patient", params={"_lastUpdated": "gt2999"}).json()["total"] == 0
    assert client.get("/fhir/Patient", params={"_lastUpdated": "ge-nonsense"}).status_code == 400


def test_format_json_only_and_xml_is_406(client: TestClient) -> None:
    assert client.get("/fhir/metadata", params={"_format": "json"}).status_code == 200
    assert client.get("/fhir/metadata", params={"_format": "application/fhir+json"}).status_code == 200
    xml = client.get("/fhir/metadata", params={"_format": "xml"})
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"
    accept = client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert accept.status_code == 406
    assert client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml, */*;q=0.1"}).status_code == 200


def test_prefer_return(client: TestClient) -> None:
    sub = client.post(
        "/fhir/Subscription",
        json=_subscription_body(),
        headers={"Prefer": "return=minimal"},
    )
    assert sub.status_code == 201 and sub.content == b"" and sub.headers["Location"]
    outcome = client.post(
        "/fhir/Subscription", json=_subscription_body(), headers={"Prefer": "return=OperationOutcome"}
    )
    assert outcome.status_code == 201 and outcome.json()["resourceType"] == "OperationOutcome"
    full = client.post("/fhir/Subscription", json=_subscription_body(), headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Subscription"


def _subscription_body() -> dict:
    return subscription()


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    answer = client.patch("/fhir/Subscription/abc")
    assert answer.status_code == 405
    allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
    assert {"GET", "HEAD", "PUT", "DELETE"} <= allowed
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_deletion_in_history_and_410_on_its_version(client: TestClient) -> None:
    sub_id = subscribe(client, "encounter-start", "Encounter?patient.identifier=urn:oid:1.2.3|1")
    assert client.delete(f"/fhir/Subscription/{sub_id}").status_code == 200  # NdE flux 2: « 200 deleted »
    history = client.get(f"/fhir/Subscription/{sub_id}/_history").json()
    latest = history["entry"][0]
    assert latest["request"]["method"] == "DELETE" and "resource" not in latest
    version = latest["response"]["etag"].split('"')[1]
    assert client.get(f"/fhir/Subscription/{sub_id}/_history/{version}").status_code == 410
    assert client.get(f"/fhir/Subscription/{sub_id}/_history/1").status_code == 200
    Bundle.model_validate(history)


def test_public_base_and_client_address_from_trusted_proxy_only(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    proxied = settings.model_copy(update={"trusted_proxies": ["testclient", "127.0.0.0/8"], "http_host": "0.0.0.0"})
    runtime = Runtime.build(proxied, run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False), client=("127.0.0.1", 5000)) as client:
            admit(client, 1)
            headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example", "X-Forwarded-Prefix": "/api"}
            links = client.get("/fhir/Patient", headers=headers).json()["link"]
            assert links[0]["url"].startswith("https://gw.example/api/fhir/Patient?")
            forwarded = client.get("/fhir/Patient", headers={"Forwarded": 'for=1.2.3.4;proto=https;host="h.example"'})
            assert forwarded.json()["link"][0]["url"].startswith("https://h.example/fhir/Patient?")
            plain = client.get("/fhir/Patient").json()["link"][0]["url"]
            assert "0.0.0.0" not in plain
            with caplog.at_level(logging.INFO, logger="gateway.access"):
                caplog.clear()  # only this request's access line (earlier requests may be logged too)
                client.get("/fhir/metadata", headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.1"})
            assert [getattr(r, "client", None) for r in caplog.records if r.name == "gateway.access"] == [
                "198.51.100.7"
            ]
        with TestClient(create_app(runtime, start_services=False), client=("10.1.1.1", 5000)) as outsider:
            url = outsider.get("/fhir/Patient", headers={"X-Forwarded-Host": "evil.example"}).json()["link"][0]["url"]
            assert "evil.example" not in url and "0.0.0.0" not in url
    finally:
        runtime.close()


def test_wildcard_bind_never_leaks_into_links_without_a_request() -> None:
    assert "0.0.0.0" not in Settings(http_host="0.0.0.0").public_base()
    assert Settings(http_host="0.0.0.0", base_url="https://gw.example/fhir/").public_base() == "https://gw.example/fhir"


def test_request_id_echoed_or_made(client: TestClient) -> None:
    assert client.get("/fhir/metadata", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/fhir/metadata", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert made != "bad id with spaces" and len(made) == 32


def test_admin_replay_of_an_applied_message_reprocesses_it(client: TestClient) -> None:
    admit(client, 1)
    entry = client.get("/admin/messages").json()["messages"][0]
    replayed = client.post(f"/admin/messages/{entry['id']}/replay").json()
    assert (replayed["code"], replayed["status"], replayed["changed"]) == ("AA", "reprocessed", [])
    assert replayed["message_id"] == entry["id"]


def test_lenient_handling_drops_unknown_search_parameters(client: TestClient) -> None:
    admit(client, 1)
    assert client.get("/fhir/Patient", params={"family": "X"}).status_code == 400  # strict by default
    lenient = client.get("/fhir/Patient", params={"family": "X"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200 and lenient.json()["total"] == 1
    assert "family" not in lenient.json()["link"][0]["url"]


RESULT_PARAMS = ["_summary", "_elements", "_sort", "_lastUpdated", "_total", "_format", "_pretty", "_count", "_offset"]


@settings_(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.lists(st.tuples(st.sampled_from(RESULT_PARAMS), st.text(max_size=30)), max_size=4),
    prefer=st.sampled_from(["", "handling=lenient", "return=minimal", "handling=strict, return=OperationOutcome"]),
    accept=st.sampled_from(["", "*/*", "application/fhir+xml", "application/fhir+json;q=0.5, text/html"]),
)
def test_result_parameters_never_crash(client: TestClient, params: list, prefer: str, accept: str) -> None:
    headers = {k: v for k, v in (("Prefer", prefer), ("Accept", accept)) if v}
    for path in ("/fhir/Patient", "/fhir/Encounter", "/fhir/metadata"):
        answer = client.get(path, params=params, headers=headers)
        assert answer.status_code in (200, 400, 406), answer.text
        assert answer.headers["content-type"].startswith("application/fhir+json")
