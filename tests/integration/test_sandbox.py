"""The sandbox runs a whole stay on a throw-away store and keeps nothing."""

from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.api.sandbox import split_messages
from gateway.runtime import Runtime
from gateway.web.present import _validate
from tests.auth_helpers import login
from tests.messages import Adt
from tests.nde_constraints import order_problems
from tests.validation import validate


def test_a_stay_in_the_sandbox_shows_acks_and_resources_and_stores_nothing(client: TestClient) -> None:
    admission = Adt(control_id="S1").bytes()
    discharge = Adt(trigger="A03", control_id="S2", movement="MVT-2", event_time="20260305120000").bytes()
    answer = client.post(
        "/sandbox/convert", content=admission + b"\r\n\r\n" + discharge, headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert [m["code"] for m in body["messages"]] == ["AA", "AA"]
    stays = [
        e["resource"]
        for e in body["bundle"]["entry"]
        if e["resource"]["resourceType"] == "Encounter" and "partOf" not in e["resource"]
    ]
    assert [s["status"] for s in stays] == ["finished"]
    assert client.get("/fhir/Encounter", params={"identifier": "V-5001"}).json()["total"] == 0
    assert client.get("/admin/messages").json()["counts"] == {}


def test_bad_messages_get_their_ack_in_the_sandbox(client: TestClient) -> None:
    answer = client.post("/sandbox/convert", content=b"\x0bnot hl7\x1c\r", headers={"Content-Type": "text/plain"})
    assert answer.json()["messages"][0]["code"] == "AR"


def test_split_accepts_frames_and_blank_lines() -> None:
    assert split_messages(b"\x0bMSH|a\rPID|1\x1c\r\x0bMSH|b\x1c\r") == [b"MSH|a\rPID|1", b"MSH|b"]
    assert split_messages(b"MSH|a\rPID|1\r\n\r\nMSH|b\n") == [b"MSH|a\rPID|1", b"MSH|b"]


def test_the_convert_answer_shows_timeline_care_circle_notifications_and_validation(client: TestClient) -> None:
    admission = Adt(control_id="S1").bytes()
    transfer = Adt(trigger="A02", control_id="S2", movement="MVT-2", event_time="20260302090000").bytes()
    body = client.post(
        "/sandbox/convert", content=admission + b"\n\n" + transfer, headers={"Content-Type": "text/plain"}
    ).json()

    assert [m["number"] for m in body["messages"]] == [1, 2]
    assert body["messages"][0]["message"].startswith("MSH|")
    assert {c["reference"].split("/")[0] for c in body["messages"][0]["changed"]} >= {"Patient", "Encounter"}
    [stay] = body["timeline"]
    assert [m["kind"].split(" ")[0] for m in stay["movements"]] == ["admit", "transfer"]
    assert body["care_circle"][0]["after_message"] == 1
    assert all(v["valid"] for v in body["validation"]), body["validation"]
    topics = [
        n["entry"][0]["resource"]["parameter"][1]["valueCanonical"].rsplit("/", 1)[-1] for n in body["notifications"]
    ]
    assert "encounter-start" in topics
    assert body["skipped"] == 0
    assert len(body["summaries"]) == len(body["bundle"]["entry"])


def test_the_convert_answer_previews_the_nde_orders_and_checks_the_nde_rules(client: TestClient) -> None:
    stay = Adt(control_id="N1").bytes() + b"\n\n" + Adt(trigger="A03", control_id="N2", movement="M3").bytes()
    body = client.post("/sandbox/convert", content=stay, headers={"Content-Type": "text/plain"}).json()
    orders = body["nde_orders"]
    codes = [o["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] for o in orders]
    assert codes == ["ADM", "SOR"] and [m["nde_orders"] for m in body["messages"]] == [1, 1]
    for order in orders:
        assert order_problems(order) == []  # the suite's own NdE rules, and FR Core for what the order contains
        assert [e for c in order["contained"] for e in validate(c)] == []
        assert order["basedOn"] == [{"reference": "https://sandbox.invalid/fhir/Subscription/sandbox-nde"}]
    checked = {v["reference"]: v for v in body["validation"]}
    assert all(checked[f"CommunicationRequest/{o['id']}"]["valid"] for o in orders)


def test_nde_rules_broken_show_as_validation_findings() -> None:
    [finding] = [
        f
        for f in _validate({"resourceType": "CommunicationRequest", "status": "active"})["findings"]
        if f["location"] == "NdE profile" and "subject" in f["text"]
    ][:1]
    assert finding["severity"] == "error"


def test_a_file_gets_a_report_as_json_or_csv(client: TestClient) -> None:
    feed = Adt(control_id="F1").bytes() + b"\n\n" + b"MSH|^~\\&|A|B|C|D|20260301||ADT^A99|F2|P|2.5\rPID|1\r"
    headers = {"Content-Type": "text/plain"}
    report = client.post("/sandbox/report", content=feed, headers=headers).json()
    assert report["outcomes"] == {"AA": 1, "AR": 1}
    assert report["worst"][0]["control_id"] == "F2"
    as_csv = client.post("/sandbox/report", params={"format": "csv"}, content=feed, headers=headers)
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[2].startswith("2,F2,A99,AR")


def test_sandbox_calls_are_rate_limited_per_client(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"sandbox_rate_per_minute": 1, "sandbox_burst": 2})
    with TestClient(create_app(runtime, start_services=False)) as client:
        headers = {"Content-Type": "text/plain"}
        codes = [client.post("/sandbox/convert", content=Adt().bytes(), headers=headers).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        throttled = client.post("/sandbox/report", content=Adt().bytes(), headers=headers)
        assert throttled.json()["issue"][0]["code"] == "throttled"
        assert int(throttled.headers["Retry-After"]) > 0
        rotated = {**headers, "Authorization": "Bearer a-new-token-per-call"}
        assert client.post("/sandbox/convert", content=Adt().bytes(), headers=rotated).status_code == 429


def test_with_authentication_the_sandbox_needs_its_scope_and_limits_each_client(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"sandbox_rate_per_minute": 1, "sandbox_burst": 1})
    with TestClient(create_app(runtime, start_services=False)) as client:
        plain = login(client, runtime, "platform", "no-sandbox")
        first = login(client, runtime, "platform", "integrator-a", scopes=["system/Patient.rs", "gateway/sandbox"])
        second = login(client, runtime, "sender", "integrator-b", facilities=["CH-B"], sandbox=True)
        body = {"content": Adt().bytes(), "headers": {"Content-Type": "text/plain"}}
        assert client.post("/sandbox/convert", **body).status_code == 401
        refused = client.post("/sandbox/convert", content=Adt().bytes(), headers={**body["headers"], **plain})
        assert refused.status_code == 403 and "gateway/sandbox" in refused.text
        assert client.get("/sandbox/samples").status_code == 200 and client.get("/sandbox").status_code == 200
        # the same address, two clients: each has its own budget
        calls = [(first, 200), (first, 429), (second, 200), (second, 429)]
        for headers, expected in calls:
            answer = client.post("/sandbox/convert", content=Adt().bytes(), headers={**body["headers"], **headers})
            assert answer.status_code == expected, answer.text
        assert int(answer.headers["Retry-After"]) >= 1


def test_text_typed_in_utf8_is_sent_in_the_charset_msh18_declares(client: TestClient) -> None:
    latin = Adt(family="BÉRANGER", charset="8859/15").build()
    answer = client.post(
        "/sandbox/convert", content=latin.encode("utf-8"), headers={"Content-Type": "text/plain; charset=utf-8"}
    ).json()
    patient = next(e["resource"] for e in answer["bundle"]["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["name"][0]["family"] == "BÉRANGER"
    assert "BÉRANGER" in answer["messages"][0]["message"]
    as_bytes = client.post(
        "/sandbox/convert", content=latin.encode("iso-8859-15"), headers={"Content-Type": "text/plain"}
    )
    assert "BÉRANGER" in as_bytes.text


def test_sandbox_bodies_are_bounded(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"sandbox_max_bytes": 100})
    with TestClient(create_app(runtime, start_services=False)) as client:
        answer = client.post("/sandbox/convert", content=Adt().bytes(), headers={"Content-Type": "text/plain"})
        assert answer.status_code == 413


def test_the_samples_are_listed(client: TestClient) -> None:
    samples = client.get("/sandbox/samples").json()
    assert {"A01", "A03", "A11", "A40", "Z99"} <= {s["trigger"] for s in samples}


def test_the_pages_allow_only_their_own_assets(client: TestClient) -> None:
    for path in ("/sandbox", "/console/messages", "/console/subscriptions", "/console/live"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert "default-src 'self'" in answer.headers["content-security-policy"], path
        assert answer.headers["cache-control"] == "no-store", path
    docs = client.get("/docs")
    assert "/static/swagger/swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    assert client.get("/static/swagger/swagger-ui.css").status_code == 200
