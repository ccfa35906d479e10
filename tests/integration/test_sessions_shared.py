"""Browser sessions are kept in the database: two instances on one store serve the same signed-in browser.

A balancer may send each request of a browser to another instance; the sign-in form served by one may be
posted to the other, the session opened on one is honoured by the other, and signing out on either ends it
for both. The cookie's id is never stored as such.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.api.app import create_app
from gateway.auth.sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from gateway.config import Settings
from gateway.db.engine import reading
from gateway.db.schema import browser_sessions
from gateway.runtime import Runtime
from tests.auth_helpers import register
from tests.integration.test_console_sessions import form_token


@pytest.fixture
def second(settings: Settings) -> Iterator[TestClient]:
    """Another gateway instance (its own runtime, memory and keys in memory) on the same database."""
    other = Runtime.build(settings, run_migrations=False)
    with TestClient(create_app(other, start_services=False), raise_server_exceptions=False) as c:
        yield c
    other.close()


def test_a_session_opened_on_one_instance_is_honoured_and_ended_on_another(
    client: TestClient, second: TestClient, runtime: Runtime
) -> None:
    operator_id, secret = register(runtime, "operator", "ops")
    assert secret is not None

    token = form_token(client)  # the form served by the first instance …
    second.cookies.set(SIGN_IN_COOKIE, client.cookies[SIGN_IN_COOKIE], path="/sign-in")
    answer = second.post(  # … posted to the second
        "/sign-in",
        data={"client_id": operator_id, "client_secret": secret, "csrf_token": token, "next": "/console/messages"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    session_id = second.cookies[SESSION_COOKIE]

    with reading(runtime.db) as conn:
        stored = conn.execute(select(browser_sessions.c.id_sha256, browser_sessions.c.client_id)).all()
    assert [tuple(r) for r in stored] == [(hashlib.sha256(session_id.encode()).hexdigest(), operator_id)]
    assert session_id not in {r[0] for r in stored}

    client.cookies.set(SESSION_COOKIE, session_id)
    page = client.get("/console/messages")  # the first instance knows the session
    assert page.status_code == 200 and "Signed in as <strong>ops</strong>" in page.text

    csrf = form_token(second, "/console/subscriptions")
    assert second.post("/sign-out", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    gone = client.get("/console/messages", headers={"Accept": "application/json"})
    assert gone.status_code == 401  # signed out on the second: refused on the first at once
    with reading(runtime.db) as conn:
        assert conn.execute(select(browser_sessions)).first() is None


def test_a_forged_or_overlong_session_cookie_is_no_session(client: TestClient, runtime: Runtime) -> None:
    register(runtime, "operator", "ops")
    for value in ("not-a-session", "x" * 10_000):
        client.cookies.set(SESSION_COOKIE, value)
        answer = client.get("/console/messages", headers={"Accept": "application/json"})
        assert answer.status_code == 401
