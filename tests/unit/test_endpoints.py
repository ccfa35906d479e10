"""check_endpoint: scheme, userinfo, allowlist, and refusal of non-public addresses (SSRF)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from gateway.subscriptions.endpoints import check_endpoint


def resolver_for(*addresses: str) -> Callable[[str, int | None], list[tuple[Any, ...]]]:
    def resolve(host: str, port: int | None) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for addr in addresses:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port or 443, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port or 443)))
        return out

    return resolve


def failing_resolver(host: str, port: int | None) -> list[tuple[Any, ...]]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


PUBLIC = resolver_for("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")


def test_public_https_accepted() -> None:
    assert check_endpoint("https://platform.example/fhir/notify", allowlist=[], resolver=PUBLIC) is None
    assert check_endpoint("https://platform.example:8443/x?a=b", allowlist=[], resolver=PUBLIC) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.5",
        "192.168.1.10",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1%eth0",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
    ],
)
def test_non_public_addresses_refused(address: str) -> None:
    reason = check_endpoint("https://evil.example/x", allowlist=[], resolver=resolver_for(address))
    assert reason is not None
    assert "evil.example" in reason


def test_any_bad_address_among_several_refused() -> None:
    resolver = resolver_for("93.184.215.14", "10.0.0.1")
    assert check_endpoint("https://mixed.example/", allowlist=[], resolver=resolver) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.1",
    ],
)
def test_ip_literals_checked_without_resolving(url: str) -> None:
    assert check_endpoint(url, allowlist=[], resolver=failing_resolver) is not None


def test_public_ip_literal_accepted() -> None:
    assert check_endpoint("https://93.184.215.14/x", allowlist=[], resolver=failing_resolver) is None


def test_http_refused_unless_allowlisted() -> None:
    reason = check_endpoint("http://platform.example/x", allowlist=[], resolver=PUBLIC)
    assert reason is not None
    assert "https" in reason


def test_allowlisted_hosts_accepted_as_is() -> None:
    allow = ["LocalHost", "10.0.0.8", "[::1]", "platform.chu.local."]
    assert check_endpoint("http://localhost:9000/hook", allowlist=allow, resolver=failing_resolver) is None
    assert check_endpoint("http://10.0.0.8/hook", allowlist=allow, resolver=failing_resolver) is None
    assert check_endpoint("http://[::1]:8080/hook", allowlist=allow, resolver=failing_resolver) is None
    assert check_endpoint("https://platform.chu.local/h", allowlist=allow, resolver=failing_resolver) is None
    assert check_endpoint("https://other.chu.local/h", allowlist=allow, resolver=failing_resolver) is not None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://platform.example/x",
        "file:///etc/passwd",
        "gopher://platform.example/",
        "platform.example/x",
        "javascript:alert(1)",
    ],
)
def test_other_schemes_refused(url: str) -> None:
    assert check_endpoint(url, allowlist=["platform.example"], resolver=PUBLIC) is not None


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@platform.example/x", "https://user@platform.example/x", "https://@platform.example/"],
)
def test_userinfo_refused(url: str) -> None:
    reason = check_endpoint(url, allowlist=["platform.example"], resolver=PUBLIC)
    assert reason is not None
    assert "credentials" in reason


def test_unresolvable_host_refused() -> None:
    reason = check_endpoint("https://nowhere.example/", allowlist=[], resolver=failing_resolver)
    assert reason is not None
    assert "resolve" in reason


def test_empty_resolution_refused() -> None:
    assert check_endpoint("https://empty.example/", allowlist=[], resolver=resolver_for()) is not None


@pytest.mark.parametrize("url", ["https:///path", "https://platform.example:99999/", "https://[::1/"])
def test_malformed_urls_refused(url: str) -> None:
    assert check_endpoint(url, allowlist=[], resolver=PUBLIC) is not None


def test_resolver_receives_host_and_port() -> None:
    seen: list[tuple[str, int | None]] = []

    def spy(host: str, port: int | None) -> list[tuple[Any, ...]]:
        seen.append((host, port))
        return PUBLIC(host, port)

    assert check_endpoint("https://Platform.Example.:8443/x", allowlist=[], resolver=spy) is None
    assert seen == [("platform.example", 8443)]


def test_default_resolver_refuses_localhost() -> None:
    assert check_endpoint("https://localhost/x", allowlist=[]) is not None
