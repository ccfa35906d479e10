"""Vetting of subscriber endpoint URLs so a Subscription cannot turn the gateway into an SSRF relay."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: ``socket.getaddrinfo``-compatible: ``(host, port)`` → tuples whose last item is the sockaddr.
Resolver = Callable[[str, int | None], Iterable[tuple[Any, ...]]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: IPv6 prefixes whose last 32 bits are an IPv4 address: NAT64 well-known and local-use (RFC 6052,
#: RFC 8215) and IPv4-translated (RFC 2765). 6to4, Teredo and IPv4-mapped have their own accessors.
_EMBEDDING_96 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_HINT = "; allow-list it to permit this"


@dataclass(frozen=True, slots=True)
class Vetted:
    """The outcome of vetting a URL: a refusal, or the host and the one address to connect to.

    Delivery connects to ``address`` (resolved once, here) rather than resolving ``host`` again, so a
    DNS answer that changes between the check and the connection (rebinding) cannot redirect it.
    ``address`` is ``None`` only for a host name the operator allow-listed: that one is resolved as usual.
    """

    host: str
    address: str | None = None
    refusal: str | None = None


def check_endpoint(url: str, *, allowlist: Sequence[str], resolver: Resolver = socket.getaddrinfo) -> str | None:
    """``None`` if the gateway may POST to ``url``, else a reason a human can act on (see :func:`vet_endpoint`)."""
    return vet_endpoint(url, allowlist=allowlist, resolver=resolver).refusal


def vet_endpoint(url: str, *, allowlist: Sequence[str], resolver: Resolver = socket.getaddrinfo) -> Vetted:
    """Check ``url`` and pick the address to connect to.

    https is required, except for hosts in ``allowlist`` (exact host names or IP literals, case-
    insensitive), which are accepted as they are: that is how an operator permits a platform on the
    hospital network or a local test receiver. Every other host must resolve only to globally
    routable addresses, IPv6 forms that wrap an IPv4 address (6to4, NAT64, Teredo, IPv4-mapped and
    -compatible) included: the wrapped address is judged too.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        return Vetted(host="", refusal=f"invalid URL: {exc}")
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        return Vetted(host="", refusal=f"scheme {scheme or '(none)'!r} is not allowed; use https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return Vetted(host="", refusal="credentials in the URL are not allowed; use Subscription.channel.header")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return Vetted(host="", refusal="the URL has no host")
    allowed = host in {entry.strip().rstrip(".").lower().strip("[]") for entry in allowlist}
    if not allowed and scheme != "https":
        refusal = f"https is required: plain http is only allowed for allow-listed hosts and {host!r} is not one"
        return Vetted(host=host, refusal=refusal)
    literal = _parse_ip(host)
    if literal is not None:
        return Vetted(host=host, address=str(literal), refusal=None if allowed else _refusal(host, literal))
    if allowed:
        return Vetted(host=host)  # trusted by the operator as a name: resolved when connecting
    try:
        infos = list(resolver(host, port))
    except (OSError, UnicodeError) as exc:
        return Vetted(host=host, refusal=f"cannot resolve {host!r}: {type(exc).__name__}")
    addresses = [addr for addr in (_sockaddr_ip(info) for info in infos) if addr is not None]
    if not addresses:
        return Vetted(host=host, refusal=f"{host!r} resolves to no usable address")
    for address in addresses:
        reason = _refusal(host, address)
        if reason is not None:
            return Vetted(host=host, refusal=reason)
    return Vetted(host=host, address=str(addresses[0]))


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries by a standard transition scheme."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in _EMBEDDING_96) or (int(address) >> 32 == 0 and int(address) > 1):
        found.append(low32)  # NAT64 well-known, IPv4-translated, IPv4-compatible (::a.b.c.d)
    if address in _NAT64_LOCAL:
        # RFC 6052 /48 layout: 16 bits of the IPv4 address before the "u" octet (bits 64-71), 16 after.
        value = int(address)
        found.append(ipaddress.IPv4Address(((value >> 64) & 0xFFFF) << 16 | ((value >> 40) & 0xFFFF)))
    return found


def _refusal(host: str, address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        for inner in embedded_ipv4(address):
            reason = _refusal(host, inner)
            if reason is not None:
                inner_reason = reason.removesuffix(_HINT)
                return f"{inner_reason}, wrapped in {address}{_HINT}"
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
            return f"{host!r} resolves to a {label} address ({address}){_HINT}"
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
