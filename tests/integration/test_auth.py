"""#13: the token endpoint, token checks at the edge (401 + WWW-Authenticate), scopes (403), discovery."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.cli import _exposed_without_auth
from gateway.config import Settings
from gateway.db.access import ClientRepo
from gateway.db.engine import transaction
from gateway.runtime import Runtime
from tests.auth_helpers import bearer, login, register, token

FORM = {"grant_type": "client_credentials"}


@pytest.fixture
def secured(runtime: Runtime) -> Iterator[TestClient]:
    """The API once a client is registered: authentication is on."""
    register(runtime, "operator", "ops")
    with TestClient(create_app(runtime, start_services=False), raise_server_exceptions=False) as c:
        yield c


def test_client_credentials_by_basic_and_by_form(secured: TestClient, runtime: Runtime) -> None:
    client_id, secret = register(runtime, "platform", "Parceo")
    by_basic = secured.post("/oauth/token", data=FORM, auth=(client_id, secret or ""))
    by_form = secured.post("/oauth/token", data={**FORM, "client_id": client_id, "client_secret": secret})
    for answer in (by_basic, by_form):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 300
        assert "system/Patient.rs" in body["scope"].split()
        assert answer.headers["cache-control"] == "no-store"
    with transaction(runtime.db) as conn:
        stored = ClientRepo(conn).get(client_id)
    assert stored is not None and stored.secret_hash and secret not in stored.secret_hash


def test_token_endpoint_errors_follow_rfc_6749(secured: TestClient, runtime: Runtime) -> None:
    client_id, secret = register(runtime, "platform", "Parceo")
    wrong = secured.post("/oauth/token", data=FORM, auth=(client_id, "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert secured.post("/oauth/token", data=FORM).json()["error"] == "invalid_client"
    grant = secured.post("/oauth/token", data={"grant_type": "password"}, auth=(client_id, secret or ""))
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    scope = secured.post("/oauth/token", data={**FORM, "scope": "system/*.cruds"}, auth=(client_id, secret or ""))
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"
    garbage = secured.post("/oauth/token", data={**FORM, "scope": "patient/everything"}, auth=(client_id, secret or ""))
    assert garbage.json()["error"] == "invalid_scope"
    narrowed = secured.post("/oauth/token", data={**FORM, "scope": "system/Patient.r"}, auth=(client_id, secret or ""))
    assert narrowed.json()["scope"] == "system/Patient.r"
    json_body = secured.post("/oauth/token", json=FORM, auth=(client_id, secret or ""))
    assert json_body.status_code == 400 and json_body.json()["error"] == "invalid_request"


def _assertion(client_id: str, key: ec.EllipticCurvePrivateKey, *, aud: str, jti: str, kid: str = "k1") -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240, "iat": now, "jti": jti}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": kid})


def test_private_key_jwt_as_smart_backend_services_with_replay_refused(secured: TestClient, runtime: Runtime) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    client_id, secret = register(
        runtime, "platform", "eTICSS", jwks={"keys": [{**public, "kid": "k1", "alg": "ES384"}]}
    )
    assert secret is None
    aud = runtime.settings.token_url()
    form = {
        **FORM,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _assertion(client_id, key, aud=aud, jti="once"),
    }
    first = secured.post("/oauth/token", data=form)
    assert first.status_code == 200, first.text
    assert secured.get("/fhir/Patient", headers=bearer(first.json()["access_token"])).status_code == 200
    replay = secured.post("/oauth/token", data=form)
    assert replay.status_code == 401 and "already used" in replay.json()["error_description"]
    other_key = ec.generate_private_key(ec.SECP384R1())
    forged = {**form, "client_assertion": _assertion(client_id, other_key, aud=aud, jti="x")}
    assert secured.post("/oauth/token", data=forged).json()["error"] == "invalid_client"
    elsewhere = {**form, "client_assertion": _assertion(client_id, key, aud="https://other.example/token", jti="y")}
    assert secured.post("/oauth/token", data=elsewhere).status_code == 401


def _forge(runtime: Runtime, claims: dict[str, object], *, key: str | None = None) -> str:
    _, signing = runtime.tokens._signing_key(now=datetime.now(UTC))
    return jwt.encode(claims, key or signing, algorithm="HS256")


def _assert_401(answer: Any) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith('Bearer realm="gateway"')
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_every_bad_token_is_401_with_www_authenticate(secured: TestClient, runtime: Runtime) -> None:
    client_id, secret = register(runtime, "platform", "Parceo")
    good = token(secured, client_id, secret)
    now = int(time.time())
    base = {
        "iss": runtime.tokens.issuer,
        "sub": client_id,
        "aud": runtime.tokens.audience,
        "iat": now,
        "exp": now + 300,
        "scope": "system/Patient.rs",
    }
    header, _, signature = good.split(".")
    tampered_payload = base64.urlsafe_b64encode(json.dumps({**base, "scope": "system/*.cruds"}).encode())
    unsigned = jwt.encode(base, key=None, algorithm="none")
    bad = {
        "missing": None,
        "not bearer": "Basic abc",
        "garbage": "Bearer not-a-jwt",
        "expired": f"Bearer {_forge(runtime, {**base, 'iat': now - 900, 'exp': now - 600})}",
        "tampered": f"Bearer {header}.{tampered_payload.decode().rstrip('=')}.{signature}",
        "alg none": f"Bearer {unsigned}",
        "wrong audience": f"Bearer {_forge(runtime, {**base, 'aud': 'https://elsewhere.example/fhir'})}",
        "other key": f"Bearer {_forge(runtime, base, key='another-key-of-sufficient-length-1234567')}",
        "unknown client": f"Bearer {_forge(runtime, {**base, 'sub': uuid.uuid4().hex})}",
    }
    for name, value in bad.items():
        headers = {"Authorization": value} if value else {}
        answer = secured.get("/fhir/Patient", headers=headers)
        assert answer.status_code == 401, name
        _assert_401(answer)
    non_ascii = secured.get("/fhir/Patient", headers={"Authorization": "Bearer é€".encode()})
    _assert_401(non_ascii)
    assert secured.get("/fhir/Patient", headers=bearer(good)).status_code == 200
    with transaction(runtime.db) as conn:
        ClientRepo(conn).set_status(client_id, "revoked")
    _assert_401(secured.get("/fhir/Patient", headers=bearer(good)))
    revoked = secured.post("/oauth/token", data=FORM, auth=(client_id, secret or ""))
    assert revoked.status_code == 401 and revoked.json()["error"] == "invalid_client"


def test_a_token_without_the_scope_gets_403(secured: TestClient, runtime: Runtime) -> None:
    client_id, secret = register(runtime, "platform", "Parceo")
    narrow = bearer(token(secured, client_id, secret, scope="system/Patient.rs"))
    assert secured.get("/fhir/Patient", headers=narrow).status_code == 200
    answer = secured.get("/fhir/Encounter", headers=narrow)
    assert answer.status_code == 403 and answer.json()["issue"][0]["code"] == "forbidden"
    assert secured.get("/admin/messages", headers=narrow).status_code == 403


def test_open_routes_and_discovery(secured: TestClient, runtime: Runtime) -> None:
    assert secured.get("/health").status_code == 200
    metadata = secured.get("/fhir/metadata").json()
    security = metadata["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == runtime.settings.token_url()
    smart = secured.get("/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == runtime.settings.token_url()
    assert "private_key_jwt" in smart["token_endpoint_auth_methods_supported"]
    for path in ("/fhir/Patient", "/admin/messages", "/metrics", "/fhir/Basic"):
        _assert_401(secured.get(path))
    answer = secured.post("/hl7v2", content=b"MSH|^~\\&|\r", headers={"Content-Type": "application/hl7-v2"})
    _assert_401(answer)


def test_auth_required_without_any_client(settings: Settings) -> None:
    rt = Runtime.build(settings.model_copy(update={"auth": "required"}), run_migrations=False)
    with TestClient(create_app(rt, start_services=False), raise_server_exceptions=False) as c:
        _assert_401(c.get("/fhir/Patient"))
        assert c.get("/fhir/metadata").status_code == 200
    rt.close()


def test_serve_refuses_a_public_address_without_clients_or_token(settings: Settings) -> None:
    exposed = Runtime.build(settings.model_copy(update={"http_host": "0.0.0.0"}), run_migrations=False)
    assert "not loopback" in (_exposed_without_auth(exposed) or "")
    local = Runtime.build(settings, run_migrations=False)
    assert _exposed_without_auth(local) is None
    tokened = Runtime.build(
        settings.model_copy(update={"http_host": "0.0.0.0", "api_token": "t"}), run_migrations=False
    )
    assert _exposed_without_auth(tokened) is None
    register(exposed, "operator", "ops")
    registered = Runtime.build(exposed.settings, run_migrations=False)
    assert _exposed_without_auth(registered) is None
    for rt in (exposed, local, tokened, registered):
        rt.close()


def test_expired_assertion_lifetime_is_bounded(secured: TestClient, runtime: Runtime) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    client_id, _ = register(runtime, "platform", "Long", jwks={"keys": [{**public, "kid": "k1"}]})
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": runtime.settings.token_url(),
        "exp": now + int(timedelta(hours=1).total_seconds()),
        "jti": "long",
    }
    form = {
        **FORM,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt.encode(claims, key, algorithm="ES384", headers={"kid": "k1"}),
    }
    assert secured.post("/oauth/token", data=form).status_code == 401


def test_login_helper_gives_a_working_platform_token(secured: TestClient, runtime: Runtime) -> None:
    headers = login(secured, runtime, "platform", "Helper")
    assert secured.get("/fhir/Patient", headers=headers).json()["total"] == 0


def test_instances_on_one_database_share_the_signing_key(secured: TestClient, runtime: Runtime) -> None:
    client_id, secret = register(runtime, "platform", "Shared")
    issued = token(secured, client_id, secret)
    other = Runtime.build(runtime.settings, run_migrations=False)  # a second gateway instance
    try:
        with TestClient(create_app(other, start_services=False), raise_server_exceptions=False) as second:
            assert second.get("/fhir/Patient", headers=bearer(issued)).status_code == 200
    finally:
        other.close()
