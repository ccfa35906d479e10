"""Sender binding on MLLP (#13): which facilities (MSH-4) the peer of an MLLP connection may send as.

- Over TLS with client certificates (``--mllp-tls-client-ca``), the certificate's subject common name
  names the sender client (``gateway clients add --kind sender --name <CN>``): its registered facilities
  apply, and a certificate naming no active sender may claim none (every message AR, and kept).
- Plain MLLP is for loopback and the networks the operator declares trusted
  (``GATEWAY_MLLP_TRUSTED_NETWORKS``): their messages are not bound to a facility, as before. From any
  other address, once authentication is on, every message is answered AR (and kept).
- While no client is registered (the local mode), nothing is checked.

The peer's binding is resolved once per connection.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from gateway.auth.clients import SENDER
from gateway.auth.gate import Gate
from gateway.config import Settings
from gateway.db.access import ClientRepo
from gateway.db.engine import Database as Engine
from gateway.errors import ConfigError
from gateway.hl7.mllp import Peer

Facilities = frozenset[str] | None
NOTHING: frozenset[str] = frozenset()


def server_context(*, cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for the MLLP listener; with a client CA, a client certificate signed by it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MLLP TLS: cannot load the certificate, key or client CA: {exc}") from exc
    return context


def context_from(settings: Settings) -> ssl.SSLContext | None:
    if settings.mllp_tls_cert is None and settings.mllp_tls_key is None:
        return None
    if settings.mllp_tls_cert is None or settings.mllp_tls_key is None:
        raise ConfigError("MLLP TLS needs both --mllp-tls-cert and --mllp-tls-key")
    return server_context(cert=settings.mllp_tls_cert, key=settings.mllp_tls_key, client_ca=settings.mllp_tls_client_ca)


def common_name(certificate: dict[str, object]) -> str | None:
    """The subject CN of a certificate as ``ssl`` reports it (``((('commonName', 'x'),), ...)``)."""
    for rdn in certificate.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class MllpBinding:
    def __init__(self, db: Engine, settings: Settings, gate: Gate) -> None:
        self.db = db
        self.gate = gate
        try:
            self.trusted = [ipaddress.ip_network(n, strict=False) for n in settings.mllp_trusted_networks]
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_MLLP_TRUSTED_NETWORKS: {exc}") from exc

    def facilities(self, peer: Peer | None) -> Facilities:
        """None: not checked; otherwise the MSH-4 values the peer may claim."""
        if peer is None or not self.gate.enabled():
            return None
        if peer.resolved is None:
            peer.resolved = (self._resolve(peer),)
        resolved: tuple[Facilities] = peer.resolved  # type: ignore[assignment]
        return resolved[0]

    def _resolve(self, peer: Peer) -> Facilities:
        if peer.certificate:
            name = common_name(peer.certificate)
            with self.db.connect() as conn:
                client = ClientRepo(conn).by_name(name) if name else None
            if client is None or client.kind != SENDER or client.status != "active":
                return NOTHING
            return frozenset(client.facilities)
        return None if self._trusted(peer.host) else NOTHING

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or any(address in network for network in self.trusted)
