"""Senders' identifier domains (#13): the assigning authorities a sender declared at registration or with
``gateway clients authorities ID --set AUTHORITY=SYSTEM``, merged into the per-sender authority table the
mapping engine already reads (``mappings/authorities.yaml`` ``senders``, keyed ``*|<MSH-4>``).

A declared authority wins over the file's entry for the same facility and namespace: the registry is
where operators onboard senders now. Authorities nobody declared still get a minted system (and the
ACK warning, as before); :func:`undeclared` lists them for the operator from the systems stored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.auth.clients import SENDER
from gateway.db.access import ClientRecord
from gateway.mapping.tables import Tables
from gateway.mapping.transforms import LOCAL_SID

MINTED_PREFIX = f"{LOCAL_SID}/authority/"


def _namespace(authority: str) -> str:
    """``CHU-X&000897406&N`` (HD as PID-3.4 carries it) → ``CHU-X``, the key the engine looks up."""
    return authority.split("&", 1)[0]


def sender_tables(clients: list[ClientRecord]) -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    for client in clients:
        if client.kind != SENDER or client.status != "active" or not client.authorities:
            continue
        declared = {_namespace(a): system for a, system in client.authorities.items()}
        for facility in client.facilities:
            tables.setdefault(f"*|{facility}", {}).update(declared)
    return tables


def with_declared(tables: Tables, clients: list[ClientRecord]) -> Tables:
    """``tables`` with the registry's declarations laid over the file's sender tables (a new object)."""
    senders = {key: dict(table) for key, table in tables.authorities.senders.items()}
    for key, declared in sender_tables(clients).items():
        senders[key] = {**senders.get(key, {}), **declared}
    return replace(tables, authorities=replace(tables.authorities, senders=senders))


def undeclared(systems: list[str]) -> list[dict[str, Any]]:
    """Minted systems ``…/sid/authority/<facility>/<namespace>`` → what the operator should declare."""
    found = []
    for system in sorted(set(systems)):
        facility, _, authority = system.removeprefix(MINTED_PREFIX).partition("/")
        found.append({"facility": facility, "authority": authority, "minted_system": system})
    return found
