"""Vetting of subscriber endpoint URLs so a Subscription cannot turn the gateway into an SSRF relay."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

#: ``socket.getaddrinfo``-compatible: ``(host, port)`` → tuples whose last item is the sockaddr.
Resolver = Callable[[str, int | None], Iterable[tuple[Any, ...]]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_endpoint(url: str, *, allowlist: Sequence[str], resolver: Resolver = socket.getaddrinfo) -> str | None:
    """``None`` if the gateway may POST to ``url``, else a reason a human can act on.

    https is required, except for hosts in ``allowlist`` (exact host names or IP literals, case-
    insensitive), which are accepted as they are: that is how an operator permits a platform on the
    hospital network or a local test receiver. Every other host must resolve only to globally
    routable addresses. Resolution can change after this check (DNS rebinding), so delivery should
    check again before each send.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        return f"scheme {scheme or '(none)'!r} is not allowed; use https"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "credentials in the URL are not allowed; use Subscription.channel.header"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "the URL has no host"
    if host in {entry.strip().rstrip(".").lower().strip("[]") for entry in allowlist}:
        return None
    if scheme != "https":
        return f"https is required: plain http is only allowed for allow-listed hosts and {host!r} is not one"
    literal = _parse_ip(host)
    if literal is not None:
        return _refusal(host, literal)
    try:
        infos = list(resolver(host, port))
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host!r}: {type(exc).__name__}"
    addresses = [addr for addr in (_sockaddr_ip(info) for info in infos) if addr is not None]
    if not addresses:
        return f"{host!r} resolves to no usable address"
    for address in addresses:
        reason = _refusal(host, address)
        if reason is not None:
            return reason
    return None


def _refusal(host: str, address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for label, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    ):
        if flag:
            return f"{host!r} resolves to a {label} address ({address}); allow-list it to permit this"
    return None


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _sockaddr_ip(info: tuple[Any, ...]) -> IPAddress | None:
    sockaddr = info[-1] if info else None
    if isinstance(sockaddr, tuple) and sockaddr and isinstance(sockaddr[0], str):
        return _parse_ip(sockaddr[0])
    return None
