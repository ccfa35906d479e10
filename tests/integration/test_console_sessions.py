"""Signing in on the pages: a server-side session cookie, CSRF on every state-changing form, sign-out."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.auth.clients import revoke
from gateway.auth.sessions import SESSION_COOKIE
from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.runtime import Runtime
from tests.auth_helpers import bearer, register, subscribe_as, token
from tests.messages import Adt

HL7 = {"Content-Type": "application/hl7-v2"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_SIGN_IN_FORM = re.compile(r'action="/sign-in"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"')


def form_token(client: TestClient, path: str = "/sign-in") -> str:
    """The sign-in form's own token on ``/sign-in`` (the header's sign-out form has the session's), else the
    session's CSRF token as the page's forms carry it."""
    found = (_SIGN_IN_FORM if path == "/sign-in" else _CSRF).search(client.get(path).text)
    assert found is not None, f"no CSRF field on {path}"
    return found.group(1)


def sign_in(client: TestClient, client_id: str, secret: str, *, next_path: str = "/console/messages") -> str:
    """Signs in and returns the session's CSRF token, as the next page's forms carry it."""
    answer = client.post(
        "/sign-in",
        data={"client_id": client_id, "client_secret": secret, "csrf_token": form_token(client), "next": next_path},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == next_path
    return form_token(client, "/console/subscriptions") if next_path.startswith("/console") else ""


def test_an_operator_signs_in_replays_with_the_csrf_token_and_signs_out(client: TestClient, runtime: Runtime) -> None:
    operator_id, secret = register(runtime, "operator", "ops")
    assert secret is not None
    fed = client.post(
        "/hl7v2", content=Adt(control_id="S1").bytes(), headers={**HL7, **bearer(token(client, operator_id, secret))}
    )
    assert fed.headers["X-Ack-Code"] == "AA"

    to_sign_in = client.get("/console/messages", params={"outcome": "AA"}, headers=BROWSER, follow_redirects=False)
    assert to_sign_in.status_code == 303
    assert to_sign_in.headers["location"] == "/sign-in?next=/console/messages%3Foutcome%3DAA"

    wrong = client.post(
        "/sign-in", data={"client_id": operator_id, "client_secret": "nope", "csrf_token": form_token(client)}
    )
    assert wrong.status_code == 401 and "sign-in failed" in wrong.text
    assert SESSION_COOKIE not in client.cookies

    answer = client.post(
        "/sign-in",
        data={"client_id": operator_id, "client_secret": secret, "csrf_token": form_token(client), "next": "/console"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=1800" in cookie and "secure" not in cookie
    page = client.get("/console/messages")
    assert page.status_code == 200 and "Signed in as <strong>ops</strong>" in page.text and "S1" in page.text
    csrf = form_token(client, "/console/messages/1")
    trail = client.get("/fhir/AuditEvent", params={"agent": "ops"}).json()  # the session reads it, as the operator
    viewed = [e["resource"] for e in trail["entry"] if e["resource"]["subtype"][0]["code"] == "raw"]
    assert viewed and viewed[0]["agent"][0]["name"] == "ops"  # who opened the message page: audited

    refused = client.post("/console/messages/1/replay", follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = client.post("/console/messages/1/replay", data={"csrf_token": "forged"}, follow_redirects=False)
    assert forged.status_code == 403
    replayed = client.post("/console/messages/1/replay", data={"csrf_token": csrf}, follow_redirects=False)
    assert replayed.status_code == 303 and replayed.headers["location"] == "/console/messages/1?replayed=AA"
    by_header = client.post("/console/messages/1/replay", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert by_header.status_code == 303

    sub_id = subscribe_as(client, bearer(token(client, operator_id, secret)), "encounter-start", None)
    assert client.post(f"/console/subscriptions/{sub_id}/resend", follow_redirects=False).status_code == 403
    resent = client.post(f"/console/subscriptions/{sub_id}/resend", data={"csrf_token": csrf}, follow_redirects=False)
    assert resent.status_code == 303

    too_big = {"csrf_token": csrf, "pad": "x" * 20_000}
    assert client.post("/console/messages/1/replay", data=too_big, follow_redirects=False).status_code == 413
    assert client.post("/sign-in", data=too_big).status_code == 413

    session_id = client.cookies[SESSION_COOKIE]
    assert client.post("/sign-out", data={}, follow_redirects=False).status_code == 403  # CSRF there too
    out = client.post("/sign-out", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"].startswith("/sign-in")
    client.cookies.set(SESSION_COOKIE, session_id)  # the old cookie, kept by a careless browser
    assert client.get("/console/messages", headers=BROWSER, follow_redirects=False).status_code == 303  # ended
    assert client.get("/console/messages").status_code == 401  # not a browser navigation: a plain 401


def test_a_session_has_the_rights_of_its_client_and_ends_with_it(client: TestClient, runtime: Runtime) -> None:
    sender_id, secret = register(runtime, "sender", "engine", facilities=["CH-TEST"])
    assert secret is not None
    sign_in(client, sender_id, secret, next_path="/sandbox")
    assert client.get("/console/messages", follow_redirects=False).status_code == 403  # a sender, not an operator
    operator_id, operator_secret = register(runtime, "operator", "ops")
    assert operator_secret is not None
    sign_in(client, operator_id, operator_secret)
    assert client.get("/console/messages").status_code == 200
    with transaction(runtime.db) as conn:
        revoke(conn, operator_id)
    assert client.get("/console/messages", follow_redirects=False).status_code == 401


def test_the_sandbox_pages_calls_with_a_session_need_its_csrf_header(client: TestClient, runtime: Runtime) -> None:
    tenant_id, secret = register(runtime, "sender", "trial", facilities=["CH-TRIAL"], sandbox=True)
    assert secret is not None
    sign_in(client, tenant_id, secret, next_path="/sandbox")
    page = client.get("/sandbox").text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found is not None and "Signed in as <strong>trial</strong>" in page
    body = {"content": Adt().bytes(), "headers": {"Content-Type": "text/plain"}}
    assert client.post("/sandbox/convert", **body).status_code == 403
    headers = {**body["headers"], "X-CSRF-Token": found.group(1)}
    assert client.post("/sandbox/convert", content=Adt().bytes(), headers=headers).status_code == 200


def test_the_sign_in_form_needs_its_own_signed_nonce(client: TestClient, runtime: Runtime) -> None:
    operator_id, secret = register(runtime, "operator", "ops")
    assert secret is not None
    token_text = form_token(client)
    client.cookies.clear()  # a form posted from another site: the browser has no nonce cookie for it
    answer = client.post("/sign-in", data={"client_id": operator_id, "client_secret": secret, "csrf_token": token_text})
    assert answer.status_code == 403 and SESSION_COOKIE not in client.cookies
    forged = client.post("/sign-in", data={"client_id": operator_id, "client_secret": secret, "csrf_token": "x.y.z"})
    assert forged.status_code == 403


@pytest.mark.parametrize("target", ["https://evil.test/", "//evil.test/", "/\\evil.test", "/\t/evil.test", "/\n/x"])
def test_sign_in_only_sends_the_browser_to_this_gateway(client: TestClient, runtime: Runtime, target: str) -> None:
    operator_id, secret = register(runtime, "operator", "ops")
    assert secret is not None
    answer = client.post(
        "/sign-in",
        data={"client_id": operator_id, "client_secret": secret, "csrf_token": form_token(client), "next": target},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/console/messages"


@pytest.fixture
def local_client(settings: Settings) -> Iterator[TestClient]:
    local = settings.model_copy(update={"api_token": "local-secret", "base_url": "https://gw.example/fhir"})
    runtime = Runtime.build(local, run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False), base_url="https://testserver") as client:
            yield client
    finally:
        runtime.close()


def test_in_local_mode_the_api_token_signs_in_with_a_secure_cookie(local_client: TestClient) -> None:
    assert local_client.get("/console/messages", headers=BROWSER, follow_redirects=False).status_code == 303
    answer = local_client.post(
        "/sign-in",
        data={"client_secret": "local-secret", "csrf_token": form_token(local_client)},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()
    assert "Signed in as <strong>operator (API token)</strong>" in local_client.get("/console/messages").text
    wrong = local_client.post("/sign-in", data={"client_secret": "guess", "csrf_token": form_token(local_client)})
    assert wrong.status_code == 401


def test_sign_in_attempts_are_rate_limited_per_address(client: TestClient) -> None:
    answers = [
        client.post("/sign-in", data={"client_id": "x", "client_secret": "guess", "csrf_token": form_token(client)})
        for _ in range(6)
    ]
    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert int(answers[-1].headers["Retry-After"]) >= 1 and "Too many attempts" in answers[-1].text
