"""SQL of #13: the client registry, signing keys, used assertions, the audit trail, and visibility filters.

A :class:`Visibility` is what the authorization policy (``gateway/auth/policy.py``) decides a caller may
see, as plain data; :func:`visible_clause` turns it into the WHERE clause that :class:`ResourceRepo`
adds to every read, version read, history and search. Filtering in SQL is what keeps searches from
leaking counts: a resource the caller may not see is never selected, so never counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    delete,
    false,
    insert,
    literal,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from gateway.clock import as_utc
from gateway.db import bodies
from gateway.db.indexing import indexed_param, lookup_forms, param_code, search_entries, stored_system, system_of
from gateway.db.schema import (
    audit_events,
    client_assertions,
    clients,
    index_id_text,
    index_reference,
    resources,
    search_index,
    signing_keys,
    subscriptions,
)
from gateway.token_lists import split_tokens

JSON = dict[str, Any]
#: Resource types whose content is about one patient, found through their ``patient`` search entry.
PATIENT_COMPARTMENT = frozenset({"Encounter", "CareTeam", "CommunicationRequest"})
#: Search entry naming the platform that added a care circle member (``platform:<client name>``).
PLATFORM_SOURCE_PARAM = "_platform-source"
#: Search entry of a patient's confidentiality label (``R`` for a PAM-FR protected patient, PD1-12 = Y).
SECURITY_PARAM = "_security"


@dataclass(frozen=True, slots=True)
class Visibility:
    """What one caller may see. ``everything`` is the operator's (and the unauthenticated local mode's)."""

    everything: bool = False
    #: Patient ids the caller follows (their encounters and care circles come with them)
    patients: frozenset[str] = frozenset()
    #: population grant: every patient (confidential ones aside, unless ``confidential``)
    all_patients: bool = False
    #: subscriptions of this owner only
    owner: str = ""
    #: types readable without a patient link (directory data: who the professionals and structures are)
    open_types: frozenset[str] = frozenset({"Practitioner", "PractitionerRole", "Organization"})
    #: may read patients labelled ``R`` (PD1-12 = Y)
    confidential: bool = False

    @property
    def patient_refs(self) -> frozenset[str]:
        return frozenset(f"Patient/{p}" for p in self.patients)


EVERYTHING = Visibility(everything=True)


def indexed_ids(code: Any, value: Any, *, system: Any = None) -> Select[Any]:
    """Ids (as ``resources.id`` holds them) indexed under (code, value[, system]), ``code`` naming a (type,
    param) pair (``indexing.param_code``): the lookup index's own shape (code, value), shared by searches,
    visibility and follows so that each stays an index lookup."""
    query = select(index_id_text(search_index.c.id).label("id")).where(
        search_index.c.code == code, search_index.c.value == value
    )
    if system is None:
        return query
    return query.where(search_index.c.system == (stored_system(system) if isinstance(system, str) else system))


def lookup_ids(code: Any, lookups: Sequence[tuple[Any, Any]]) -> Any:
    """Ids indexed under ``code`` by any of these (system or None, value) lookups (``indexing.lookup_forms``):
    one :func:`indexed_ids`, or a UNION ALL of each (an index lookup each)."""
    parts = [indexed_ids(code, value, system=system) for system, value in lookups]
    return parts[0] if len(parts) == 1 else union_all(*parts)


def _confidential_patients() -> Any:
    return indexed_ids(param_code("Patient", SECURITY_PARAM), "R")


def _with_patient(rtype: str, refs: Any) -> ColumnElement[bool]:
    return resources.c.id.in_(
        select(index_id_text(search_index.c.id)).where(
            search_index.c.code == param_code(rtype, indexed_param(rtype, "patient")),
            search_index.c.value.in_(refs),
        )
    )


def _confidential_refs() -> Any:
    """The ``patient`` entry values that name a confidential patient (compared as the index stores them)."""
    return select(index_reference(literal("Patient"), search_index.c.id)).where(
        search_index.c.code == param_code("Patient", SECURITY_PARAM), search_index.c.value == "R"
    )


def visible_clause(visibility: Visibility | None, rtype: str) -> ColumnElement[bool] | None:
    """The filter on ``resources`` for ``rtype``; None when nothing is filtered."""
    if visibility is None or visibility.everything:
        return None
    if rtype == "Subscription":
        return resources.c.id.in_(select(subscriptions.c.id).where(subscriptions.c.owner == visibility.owner))
    if rtype in visibility.open_types:
        return true()
    if rtype == "Patient":
        if visibility.all_patients:
            return true() if visibility.confidential else resources.c.id.not_in(_confidential_patients())
        return resources.c.id.in_(sorted(visibility.patients)) if visibility.patients else false()
    if rtype in PATIENT_COMPARTMENT:
        if visibility.all_patients:
            if visibility.confidential:
                return true()
            return ~_with_patient(rtype, _confidential_refs())
        return _with_patient(rtype, sorted(visibility.patient_refs)) if visibility.patients else false()
    return false()


# -- who a platform follows ------------------------------------------------------------------------


def _token(value: str) -> tuple[str | None, str]:
    system, sep, code = value.rpartition("|")
    return (system if sep else None), code


class FollowRepo:
    """The patients a platform follows: named by its subscriptions, or in a circle it added a member to."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _ids(self, rtype: str, param: str, value: str, *, system: str | None = None) -> list[str]:
        query = lookup_ids(param_code(rtype, param), lookup_forms(param, system, value))
        return list(dict.fromkeys(str(r[0]) for r in self.conn.execute(query)))

    def _patients_of(self, rtype: str, ids: Sequence[str]) -> set[str]:
        """The patients of these resources, from their current content by primary key: the index is keyed
        by value (which resources name a patient), not by owner (0006_compact_store)."""
        if not ids:
            return set()
        rows = self.conn.execute(
            select(resources.c.content, resources.c.body).where(
                resources.c.type == rtype, resources.c.id.in_(ids), resources.c.deleted == 0
            )
        )
        param = indexed_param(rtype, "patient")
        found: set[str] = set()
        for content, body in rows:
            resource = orjson.loads(bodies.decode(bytes(body)) if body is not None else content)
            found |= {value.removeprefix("Patient/") for name, _, value in search_entries(resource) if name == param}
        return found

    def _named(self, topic_resource: str, param: str, value: str) -> set[str]:
        """Patients one subscription filter names: a token list (an NdE Subject's INS and IPP) names each."""
        return set().union(*(self._named_one(topic_resource, param, token) for token in split_tokens(value)))

    def _named_one(self, topic_resource: str, param: str, value: str) -> set[str]:
        """Patients one filter value names (a reference, an identifier, a care circle member)."""
        if param == "patient":
            return {value.rstrip("/").split("/")[-1]}
        system, code = _token(value)
        if param == "patient.identifier" or (param == "identifier" and topic_resource == "Patient"):
            return set(self._ids("Patient", "identifier", code, system=system))
        if param == "identifier" and topic_resource == "Encounter":
            return self._patients_of("Encounter", self._ids("Encounter", "identifier", code, system=system))
        if param == "care-team-member":
            teams = self._ids("CareTeam", "participant.identifier", code, system=system)
            return self._patients_of("CareTeam", teams)
        return set()

    def followed(self, *, owner: str, platform: str, topic_resources: dict[str, str]) -> set[str]:
        """Patient ids; ``topic_resources`` maps a topic URL to the resource type it is about."""
        found: set[str] = set()
        rows = self.conn.execute(
            select(subscriptions.c.topic, subscriptions.c.filters).where(
                subscriptions.c.owner == owner, subscriptions.c.status != "off"
            )
        )
        for topic, filters in rows:
            for item in orjson.loads(filters):
                found |= self._named(topic_resources.get(topic, ""), str(item["param"]), str(item["value"]))
        teams = self._ids("CareTeam", PLATFORM_SOURCE_PARAM, f"platform:{platform}")
        found |= self._patients_of("CareTeam", teams)
        return found

    def confidential(self, patient_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(patient_ids))
        if not ids:
            return set()
        rows = self.conn.execute(_confidential_patients().where(search_index.c.id.in_(ids)))
        return {str(r[0]) for r in rows}


def systems_starting(conn: Connection, prefix: str, *, limit: int = 1000) -> list[str]:
    """Identifier systems in the index that begin with ``prefix`` (minted ones: undeclared authorities).

    Systems are stored under their codes (``indexing.SYSTEM_CODES``), so the distinct ones are read back
    and compared whole; a scan either way (no index leads with ``system``), on the operator's pages only."""
    rows = conn.execute(select(search_index.c.system).where(search_index.c.value != "").distinct())
    return sorted({system for (stored,) in rows if (system := system_of(str(stored))).startswith(prefix)})[:limit]


# -- clients ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRecord:
    id: str
    kind: str
    name: str
    secret_hash: str | None
    jwks: JSON | None
    scopes: tuple[str, ...]
    facilities: tuple[str, ...]
    authorities: dict[str, str] = field(default_factory=dict)
    status: str = "active"
    created_at: datetime | None = None
    rotated_at: datetime | None = None


def _client(row: Any) -> ClientRecord:
    m = row._mapping
    return ClientRecord(
        id=m["id"],
        kind=m["kind"],
        name=m["name"],
        secret_hash=m["secret_hash"],
        jwks=orjson.loads(m["jwks"]) if m["jwks"] else None,
        scopes=tuple(str(m["scopes"]).split()),
        facilities=tuple(orjson.loads(m["facilities"])),
        authorities=dict(orjson.loads(m["authorities"])),
        status=m["status"],
        created_at=as_utc(m["created_at"]),
        rotated_at=as_utc(m["rotated_at"]),
    )


class ClientNameTakenError(Exception):
    """Another client already has this name (names identify platforms in care circles)."""


#: Bumped by every client registered in this process, so that a cached "no client yet" (see
#: :meth:`gateway.auth.gate.Gate.enabled`) is asked again at once; other processes' registrations are seen
#: when that cache expires.
_registrations = [0]


def registrations() -> int:
    """How many clients this process has registered (a generation, compared, never shown)."""
    return _registrations[0]


class ClientRepo:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def any(self) -> bool:
        return self.conn.execute(select(clients.c.id).limit(1)).first() is not None

    def add(self, record: ClientRecord, *, now: datetime) -> None:
        _registrations[0] += 1
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    insert(clients).values(
                        id=record.id,
                        kind=record.kind,
                        name=record.name,
                        secret_hash=record.secret_hash,
                        jwks=orjson.dumps(record.jwks).decode() if record.jwks else None,
                        scopes=" ".join(record.scopes),
                        facilities=orjson.dumps(list(record.facilities)).decode(),
                        authorities=orjson.dumps(record.authorities).decode(),
                        status=record.status,
                        created_at=now,
                    )
                )
        except IntegrityError as exc:
            raise ClientNameTakenError(record.name) from exc

    def get(self, client_id: str) -> ClientRecord | None:
        row = self.conn.execute(select(clients).where(clients.c.id == client_id)).first()
        return _client(row) if row else None

    def list(self) -> list[ClientRecord]:
        return [_client(r) for r in self.conn.execute(select(clients).order_by(clients.c.created_at, clients.c.id))]

    def set_secret(self, client_id: str, secret_hash: str, *, now: datetime) -> bool:
        result = self.conn.execute(
            update(clients).where(clients.c.id == client_id).values(secret_hash=secret_hash, rotated_at=now)
        )
        return result.rowcount == 1

    def set_status(self, client_id: str, status: str) -> bool:
        return self.conn.execute(update(clients).where(clients.c.id == client_id).values(status=status)).rowcount == 1

    def set_authorities(self, client_id: str, authorities: dict[str, str]) -> bool:
        result = self.conn.execute(
            update(clients)
            .where(clients.c.id == client_id)
            .values(authorities=orjson.dumps(authorities, option=orjson.OPT_SORT_KEYS).decode())
        )
        return result.rowcount == 1

    def by_name(self, name: str) -> ClientRecord | None:
        row = self.conn.execute(select(clients).where(clients.c.name == name)).first()
        return _client(row) if row else None


class SigningKeyRepo:
    """The shared token-signing key: the first instance that needs one creates it, the others read it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def current(self) -> tuple[str, str] | None:
        row = self.conn.execute(
            select(signing_keys.c.kid, signing_keys.c.secret).order_by(signing_keys.c.created_at.desc()).limit(1)
        ).first()
        return (str(row[0]), str(row[1])) if row else None

    def add(self, kid: str, secret: str, *, now: datetime) -> None:
        """Insert unless a concurrent instance already did (then :meth:`current` returns its key)."""
        try:
            with self.conn.begin_nested():
                self.conn.execute(insert(signing_keys).values(kid=kid, secret=secret, created_at=now))
        except IntegrityError:
            return


class AssertionRepo:
    """Used client-assertion ``jti``: a second use is a replay."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def use(self, client_id: str, jti: str, *, expires_at: datetime, now: datetime) -> bool:
        self.conn.execute(delete(client_assertions).where(client_assertions.c.expires_at < now))
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    insert(client_assertions).values(client_id=client_id, jti=jti[:255], expires_at=expires_at)
                )
        except IntegrityError:
            return False
        return True


# -- audit -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRecord:
    recorded_at: datetime
    client_id: str
    client_name: str
    action: str
    subtype: str
    entity: str
    patient: str | None
    outcome: str
    detail: str | None = None
    id: int | None = None


class AuditRepo:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "recorded_at": r.recorded_at,
                "client_id": r.client_id[:64],
                "client_name": r.client_name[:128],
                "action": r.action,
                "subtype": r.subtype[:32],
                "entity": r.entity[:160],
                "patient": r.patient[:64] if r.patient else None,
                "outcome": r.outcome,
                "detail": r.detail,
            }
            for r in records
        ]
        self.conn.execute(insert(audit_events), rows)

    def search(
        self,
        *,
        patient: str | None = None,
        agent: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditRecord]:
        query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit).offset(offset)
        if patient:
            query = query.where(audit_events.c.patient == patient)
        if agent:
            query = query.where((audit_events.c.client_id == agent) | (audit_events.c.client_name == agent))
        if since:
            query = query.where(audit_events.c.recorded_at >= since)
        if until:
            query = query.where(audit_events.c.recorded_at < until)
        return [_audit(r) for r in self.conn.execute(query)]

    def get(self, audit_id: int) -> AuditRecord | None:
        row = self.conn.execute(select(audit_events).where(audit_events.c.id == audit_id)).first()
        return _audit(row) if row else None


def _audit(row: Any) -> AuditRecord:
    m = row._mapping
    return AuditRecord(
        id=int(m["id"]),
        recorded_at=as_utc(m["recorded_at"]) or datetime.now(UTC),
        client_id=m["client_id"],
        client_name=m["client_name"],
        action=m["action"],
        subtype=m["subtype"],
        entity=m["entity"],
        patient=m["patient"],
        outcome=m["outcome"],
        detail=m["detail"],
    )
