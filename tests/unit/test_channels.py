"""RestHookChannel: headers, signature, idempotency key, retryable classification; never raises."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import respx

from gateway.subscriptions.channels import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    DeliveryResult,
    RestHookChannel,
    idempotency_key,
    parse_channel_headers,
    sign,
    verify,
)

ENDPOINT = "https://platform.example/notify?token=s3cret"
BODY = b'{"resourceType":"Bundle","type":"history"}'
SECRET = "whsec_test"


def deliver(
    *, headers: tuple[str, ...] = (), secret: str = SECRET, key: str = "sub1:7", endpoint: str = ENDPOINT
) -> DeliveryResult:
    async def run() -> DeliveryResult:
        async with httpx.AsyncClient() as client:
            return await RestHookChannel(client, timeout=2.0).send(
                endpoint=endpoint, body=BODY, headers=headers, secret=secret, idempotency_key=key
            )

    return asyncio.run(run())


def test_sign_and_verify() -> None:
    sig = sign(BODY, SECRET)
    assert sig.startswith("sha256=")
    assert len(sig) == len("sha256=") + 64
    assert verify(BODY, SECRET, sig)
    assert verify(BODY, SECRET, f" {sig} ")
    assert not verify(BODY + b" ", SECRET, sig)
    assert not verify(BODY, "other", sig)
    assert not verify(BODY, SECRET, "sha256=é")
    assert not verify(BODY, SECRET, "")


def test_idempotency_key_helper() -> None:
    assert idempotency_key(subscription_id="s", event_number=7, notification_type="x", bundle_id="b") == "s:7"
    assert (
        idempotency_key(subscription_id="s", event_number=None, notification_type="heartbeat", bundle_id="b")
        == "s:heartbeat:b"
    )


@respx.mock
def test_success_sends_body_headers_signature_and_key() -> None:
    route = respx.post(ENDPOINT).mock(return_value=httpx.Response(200, text="ok"))
    result = deliver(headers=("Authorization: Bearer abc:def", "X-Platform:  p1 "), key="sub1:7")
    assert result == DeliveryResult(ok=True, status_code=200, error=None, retryable=False)
    request = route.calls.last.request
    assert request.content == BODY
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Authorization"] == "Bearer abc:def"
    assert request.headers["X-Platform"] == "p1"
    assert request.headers[IDEMPOTENCY_HEADER] == "sub1:7"
    assert verify(request.content, SECRET, request.headers[SIGNATURE_HEADER])


@respx.mock
def test_malformed_and_reserved_channel_headers_ignored(caplog: pytest.LogCaptureFixture) -> None:
    route = respx.post(ENDPOINT).mock(return_value=httpx.Response(204))
    caplog.set_level(logging.WARNING, logger="gateway.subscriptions.channels")
    result = deliver(
        headers=(
            "no colon here",
            ": empty name",
            "Bad Name: x",
            "X-Inject: a\r\nX-Evil: 1",
            "Content-Type: text/plain",
            f"{SIGNATURE_HEADER}: forged",
            "X-Ok: fine",
        )
    )
    assert result.ok
    request = route.calls.last.request
    assert request.headers["X-Ok"] == "fine"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers[SIGNATURE_HEADER] == sign(BODY, SECRET)
    assert "X-Evil" not in request.headers
    assert "X-Inject" not in request.headers
    # Header values (often credentials) never reach the logs.
    assert "forged" not in caplog.text


def test_parse_channel_headers_splits_on_first_colon() -> None:
    assert parse_channel_headers(["Authorization: Basic a:b:c"]) == {"Authorization": "Basic a:b:c"}


@respx.mock
def test_empty_secret_sends_no_signature() -> None:
    route = respx.post(ENDPOINT).mock(return_value=httpx.Response(200))
    assert deliver(secret="").ok
    assert SIGNATURE_HEADER not in route.calls.last.request.headers


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (302, False),
    ],
)
@respx.mock
def test_http_errors_classified(status: int, retryable: bool) -> None:
    respx.post(ENDPOINT).mock(
        return_value=httpx.Response(status, text="Patient DUPONT Jean", headers={"Location": "https://x/"})
    )
    result = deliver()
    assert result == DeliveryResult(ok=False, status_code=status, error=f"HTTP {status}", retryable=retryable)
    assert result.error is not None
    assert "DUPONT" not in result.error


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (httpx.ReadTimeout, True),
        (httpx.ConnectTimeout, True),
        (httpx.ConnectError, True),
        (httpx.ReadError, True),
        (httpx.RemoteProtocolError, True),
        (httpx.LocalProtocolError, False),
    ],
)
@respx.mock
def test_network_errors_do_not_raise(exc: type[Exception], retryable: bool) -> None:
    respx.post(ENDPOINT).mock(side_effect=exc)
    result = deliver()
    assert result == DeliveryResult(ok=False, status_code=None, error=exc.__name__, retryable=retryable)


def test_unsupported_scheme_is_permanent() -> None:
    result = deliver(endpoint="ftp://platform.example/x")
    assert result.ok is False
    assert result.retryable is False
    assert result.status_code is None


@respx.mock
def test_endpoint_query_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    respx.post(ENDPOINT).mock(return_value=httpx.Response(500))
    caplog.set_level(logging.DEBUG, logger="gateway.subscriptions.channels")
    deliver()
    assert "platform.example" in caplog.text
    assert "s3cret" not in caplog.text
