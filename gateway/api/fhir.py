"""FHIR R4 routes under ``/fhir``: metadata, read, vread, history, search, Subscription create and $status."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import AccessDep, RuntimeDep
from gateway.api.limits import json_body
from gateway.api.responses import fhir_response, versioned
from gateway.auth.audit import audit_event, event_patient
from gateway.auth.policy import Access
from gateway.clock import utcnow
from gateway.db.access import AuditRepo
from gateway.db.engine import DbConnection as Connection
from gateway.db.engine import transaction
from gateway.db.repo import OutboxRepo, StoredResource, SubscriptionRecord
from gateway.errors import (
    FhirError,
    GoneError,
    NotFoundError,
    NotSupportedError,
    PreconditionFailedError,
    UnknownTypeError,
)
from gateway.fhir.capability import SEARCH_PARAMS, capability_statement
from gateway.fhir.outcome import operation_outcome
from gateway.fhir.search import history_bundle, search
from gateway.fhir.topics import topic_resources
from gateway.runtime import Runtime
from gateway.state import platform as platform_edits
from gateway.state.apply import Unit
from gateway.subscriptions.nde_inbox import receive as receive_nde
from gateway.subscriptions.notification import (
    NotificationContext,
    build_notification_bundle,
    build_status_parameters,
)
from gateway.subscriptions.service import (
    SIGNING_SECRET,
    create_subscription,
    delete_subscription,
    update_subscription,
)
from gateway.subscriptions.worker import notification_events

router = APIRouter(prefix="/fhir", tags=["fhir"])
JSON = dict[str, Any]
MAX_EVENTS = 1000


def _check_type(rtype: str) -> None:
    if rtype not in SEARCH_PARAMS:
        raise UnknownTypeError(f"resource type {rtype!r} is not served here")


@router.get("/metadata", summary="CapabilityStatement")
async def metadata(runtime: RuntimeDep) -> Response:
    statement = capability_statement(base_url=runtime.settings.public_base(), now=utcnow())
    if await run_in_threadpool(runtime.gate.enabled):
        # Declared only when tokens are required: FHIR clients that read oauth-uris then insist on OAuth.
        for rest in statement.get("rest", []):
            rest["security"] = security_block(runtime.settings.token_url())
    return fhir_response(statement)


TERMINOLOGY = "http://terminology.hl7.org"


def security_block(token_url: str) -> JSON:
    """SMART Backend Services: OAuth client credentials at the token endpoint (SMART oauth-uris extension)."""
    return {
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": token_url}],
            }
        ],
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth 2.0 client credentials (SMART Backend Services); see /.well-known/smart-configuration",
            }
        ],
        "description": "Every request but metadata needs a bearer token from POST /oauth/token.",
    }


async def _json_body(request: Request) -> JSON:
    settings = request.app.state.runtime.settings
    return await json_body(request, max_bytes=settings.max_fhir_body_bytes, max_depth=settings.max_json_depth)


def _check_channel(runtime: Runtime, body: JSON) -> None:
    if (body.get("channel") or {}).get("type") == "email" and not runtime.settings.smtp_host:
        raise NotSupportedError("email channels need an SMTP relay (GATEWAY_SMTP_HOST)")


@router.post("/Subscription", summary="Create a subscription (R4, Subscriptions R5 Backport IG shape)")
async def post_subscription(request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    body = await _json_body(request)
    _check_channel(runtime, body)

    def work() -> tuple[JSON, str | None]:
        with transaction(runtime.db) as conn:
            stored, secret = create_subscription(
                conn,
                body,
                allowlist=runtime.settings.endpoint_allowlist,
                now=utcnow(),
                owner=access.owner,
                may_select_population=access.may_select_population,
                tables=runtime.engine.tables,
            )
        return stored.content, secret

    content, secret = await run_in_threadpool(work)
    runtime.worker.wake()
    shown = content
    if secret:
        # The generated signing secret is shown once, here; reads never return it.
        channel = dict(content.get("channel", {}))
        channel["extension"] = [*channel.get("extension", []), {"url": SIGNING_SECRET, "valueString": secret}]
        shown = {**content, "channel": channel}
    base = runtime.settings.public_base()
    return versioned(shown, status=201, location=f"{base}/Subscription/{content['id']}/_history/1")


@router.put("/Subscription/{sub_id}", summary="Update a subscription (pause with status off, reactivate)")
async def put_subscription(sub_id: str, request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    body = await _json_body(request)
    _check_channel(runtime, body)
    if body.get("id") not in (None, sub_id):
        raise FhirError("the body's id does not match the URL")
    if_match = request.headers.get("if-match")

    def work() -> JSON:
        with transaction(runtime.db) as conn:
            current = access.resources(conn).get("Subscription", sub_id, for_update=True)
            if current is None or current.deleted:
                raise NotFoundError(f"Subscription/{sub_id} not found")
            if if_match and if_match.strip().removeprefix("W/").strip('"') != str(current.version_id):
                raise PreconditionFailedError(f"Subscription/{sub_id} is at version {current.version_id}")
            stored = update_subscription(
                conn,
                sub_id,
                body,
                allowlist=runtime.settings.endpoint_allowlist,
                now=utcnow(),
                tables=runtime.engine.tables,
                owner=access.subscriptions(conn).owner,
                may_select_population=access.may_select_population,
            )
        return stored.content

    content = await run_in_threadpool(work)
    runtime.worker.wake()
    return versioned(content)


@router.delete("/Subscription/{sub_id}", summary="Delete a subscription")
async def delete_subscription_route(sub_id: str, runtime: RuntimeDep, access: AccessDep) -> Response:
    def work() -> None:
        with transaction(runtime.db) as conn:
            delete_subscription(conn, sub_id, now=utcnow(), owner=access.subscriptions(conn).owner)

    await run_in_threadpool(work)
    # 200 with an OperationOutcome: ANS NdE flux 2 expects « 200 deleted » (FHIR allows 200 or 204)
    return fhir_response(operation_outcome(f"Subscription/{sub_id} deleted", code="deleted", severity="information"))


def _status_context(
    runtime: Runtime, sub: SubscriptionRecord, *, kind: str, content: str | None = None
) -> NotificationContext:
    return NotificationContext(
        subscription_id=sub.id,
        topic_url=sub.topic,
        status=sub.status,
        notification_type=kind,
        events_since_start=sub.events_since_start,
        payload_content=content or sub.payload_content,
        base_url=runtime.settings.public_base(),
        error=sub.error,
    )


@router.get("/Subscription/$status", summary="Status of several subscriptions (Backport $status, type level)")
async def subscriptions_status(request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    """``id`` (repeatable, comma-separated) names the subscriptions; without it, every one the caller owns."""
    wanted = [i for raw in request.query_params.getlist("id") for i in raw.split(",") if i.strip()]

    def work() -> JSON:
        with runtime.db.connect() as conn:
            repo = access.subscriptions(conn)
            subs = [s for s in (repo.get(i.strip()) for i in wanted) if s] if wanted else repo.all()
        entries = [
            {"resource": build_status_parameters(_status_context(runtime, sub, kind="query-status"), [])}
            for sub in subs
        ]
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    return fhir_response(await run_in_threadpool(work))


@router.get("/Subscription/{sub_id}/$status", summary="Subscription status (Backport $status)")
async def subscription_status(sub_id: str, runtime: RuntimeDep, access: AccessDep) -> Response:
    def work() -> JSON:
        with runtime.db.connect() as conn:
            sub = access.subscriptions(conn).get(sub_id)
        if sub is None:
            raise NotFoundError(f"Subscription/{sub_id} not found")
        params = build_status_parameters(_status_context(runtime, sub, kind="query-status"), [])
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": params}]}

    return fhir_response(await run_in_threadpool(work))


@router.get("/Subscription/{sub_id}/$events", summary="Past events of a subscription (Backport $events)")
async def subscription_events(
    sub_id: str,
    *,
    runtime: RuntimeDep,
    access: AccessDep,
    events_since: int = Query(default=1, ge=1, alias="eventsSinceNumber"),
    events_until: int | None = Query(default=None, ge=1, alias="eventsUntilNumber"),
    content: str | None = Query(default=None, pattern="^(empty|id-only|full-resource)$"),
) -> Response:
    """Receivers that see a gap in event numbers fetch what they missed here, in order."""

    def work() -> JSON:
        with runtime.db.connect() as conn:
            sub = access.subscriptions(conn).get(sub_id)
            if sub is None:
                raise NotFoundError(f"Subscription/{sub_id} not found")
            level = content or sub.payload_content
            rows = OutboxRepo(conn).events(sub_id, since=events_since, until=events_until)[:MAX_EVENTS]
            events = notification_events(conn, rows, payload_content=level)
        access.trail.events(
            [
                (f"{r.focus_type}/{r.focus_id}", event_patient(r.focus_type, r.focus_id, r.context))
                for r in rows
                if r.focus_type and r.focus_id
            ]
        )
        ctx = _status_context(runtime, sub, kind="query-event", content=level)
        return build_notification_bundle(ctx, events, bundle_id=uuid.uuid4().hex, now=utcnow())

    return fhir_response(await run_in_threadpool(work))


@router.post("/CommunicationRequest", summary="Receive an ANS NdE event declaration (flux 3) or order (flux 4)")
async def post_communication_request(request: Request, runtime: RuntimeDep) -> Response:
    body = await _json_body(request)

    def work() -> JSON:
        with transaction(runtime.db) as conn:
            stored = receive_nde(conn, body, tables=runtime.engine.tables, now=utcnow())
        return stored.content

    content = await run_in_threadpool(work)
    runtime.worker.wake()
    base = runtime.settings.public_base()
    return versioned(content, status=201, location=f"{base}/CommunicationRequest/{content['id']}/_history/1")


def _platform(request: Request, access: Access) -> str:
    """Who edits a care circle: the authenticated platform; for an operator (or the local mode) the
    ``X-Platform`` header (e.g. Parceo, eTICSS). It is recorded as the members' source."""
    if access.platform_name is not None:
        return access.platform_name
    name = request.headers.get("x-platform", "").strip()
    return "".join(ch for ch in name if ch.isalnum() or ch in "-_. ")[:64] or "platform"


def _careteam_edit(
    runtime: Runtime, access: Access, team_id: str, work: Callable[[Connection], tuple[StoredResource, Unit]]
) -> Response:
    with transaction(runtime.db) as conn:
        if not access.resources(conn).exists("CareTeam", team_id):
            raise NotFoundError(f"CareTeam/{team_id} not found")
        stored, unit = work(conn)
    if unit.result.notifications:
        runtime.worker.wake()
    return versioned(stored.content)


@router.put("/CareTeam/{team_id}", summary="Replace a care circle's platform members (If-Match aware)")
async def put_careteam(team_id: str, request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    body = await _json_body(request)
    platform, if_match = _platform(request, access), request.headers.get("if-match")

    def work(conn: Connection) -> tuple[StoredResource, Unit]:
        return platform_edits.replace(
            conn,
            team_id,
            body,
            tables=runtime.engine.tables,
            now=utcnow(),
            platform=platform,
            if_match=if_match,
            own_only=access.platform_name is not None,
        )

    return await run_in_threadpool(_careteam_edit, runtime, access, team_id, work)


@router.post("/CareTeam/{team_id}/$add-member", summary="Add one platform member to a care circle")
async def add_member(team_id: str, request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    params, platform = await _json_body(request), _platform(request, access)

    def work(conn: Connection) -> tuple[StoredResource, Unit]:
        return platform_edits.add_member(
            conn, team_id, params, tables=runtime.engine.tables, now=utcnow(), platform=platform
        )

    return await run_in_threadpool(_careteam_edit, runtime, access, team_id, work)


@router.post("/CareTeam/{team_id}/$end-member", summary="End one platform member's participation")
async def end_member(team_id: str, request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    params, platform = await _json_body(request), _platform(request, access)

    def work(conn: Connection) -> tuple[StoredResource, Unit]:
        return platform_edits.end_member(
            conn,
            team_id,
            params,
            tables=runtime.engine.tables,
            now=utcnow(),
            platform=platform,
            own_only=access.platform_name is not None,
        )

    return await run_in_threadpool(_careteam_edit, runtime, access, team_id, work)


@router.get("/Basic", summary="Subscription topics (Backport IG: R5 SubscriptionTopic as Basic)")
async def list_topics(runtime: RuntimeDep, url: str | None = None) -> Response:
    base = runtime.settings.public_base()
    found = [t for t in topic_resources() if url is None or _topic_url(t) == url]
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"fullUrl": f"{base}/Basic/{t['id']}", "resource": t, "search": {"mode": "match"}} for t in found
            ],
        }
    )


@router.get("/Basic/{topic_id}", summary="One subscription topic")
async def read_topic(topic_id: str) -> Response:
    for topic in topic_resources():
        if topic["id"] == topic_id:
            return fhir_response(topic)
    raise NotFoundError(f"Basic/{topic_id} not found")


def _topic_url(resource: JSON) -> str:
    return next(str(e["valueUri"]) for e in resource["extension"] if e["url"].endswith(".url"))


@router.get("/AuditEvent", summary="The audit trail (operators): AuditEvent?patient=&agent=&date=")
async def search_audit(
    *,
    runtime: RuntimeDep,
    patient: str | None = None,
    agent: str | None = None,
    date: Annotated[list[str] | None, Query()] = None,
    count: int = Query(default=100, ge=1, le=1000, alias="_count"),
    offset: int = Query(default=0, ge=0, alias="_offset"),
) -> Response:
    since, until = _date_range(date or [])
    patient_id = patient.rstrip("/").split("/")[-1] if patient else None

    def work() -> list[JSON]:
        with runtime.db.connect() as conn:
            rows = AuditRepo(conn).search(
                patient=patient_id, agent=agent, since=since, until=until, limit=count, offset=offset
            )
        return [audit_event(r, base_url=runtime.settings.public_base()) for r in rows]

    events = await run_in_threadpool(work)
    base = runtime.settings.public_base()
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"fullUrl": f"{base}/AuditEvent/{e['id']}", "resource": e, "search": {"mode": "match"}} for e in events
            ],
        }
    )


@router.get("/AuditEvent/{audit_id}", summary="One audit record (operators)")
async def read_audit(audit_id: str, runtime: RuntimeDep) -> Response:
    def work() -> JSON:
        record = None
        if audit_id.isdigit():
            with runtime.db.connect() as conn:
                record = AuditRepo(conn).get(int(audit_id))
        if record is None:
            raise NotFoundError(f"AuditEvent/{audit_id} not found")
        return audit_event(record, base_url=runtime.settings.public_base())

    return fhir_response(await run_in_threadpool(work))


_DATE_PREFIXES = ("ge", "gt", "le", "lt", "eq")


def _date_range(values: list[str]) -> tuple[datetime | None, datetime | None]:
    """``date=ge2026-12-01&date=lt2026-12-02`` (or one day, ``date=2026-12-01``) → [since, until)."""
    since = until = None
    for value in values:
        prefix = value[:2] if value[:2] in _DATE_PREFIXES else "eq"
        text = value[2:] if value[:2] in _DATE_PREFIXES else value
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise FhirError(f"date must be [ge|gt|le|lt]YYYY-MM-DD[Thh:mm:ss]: {value!r}") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if prefix in ("ge", "gt"):
            since = moment
        elif prefix in ("le", "lt"):
            until = moment
        else:
            since, until = moment, moment + timedelta(days=1)
    return since, until


@router.get("/{rtype}", summary="Search")
async def search_type(rtype: str, request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    _check_type(rtype)
    params = list(request.query_params.multi_items())

    def work() -> JSON:
        with runtime.db.connect() as conn:
            return search(access.resources(conn), rtype, params, base_url=runtime.settings.public_base())

    return fhir_response(await run_in_threadpool(work))


@router.get("/{rtype}/{rid}", summary="Read")
async def read(rtype: str, rid: str, runtime: RuntimeDep, access: AccessDep) -> Response:
    _check_type(rtype)
    stored = await run_in_threadpool(_get, runtime, access, rtype, rid)
    return versioned(stored)


@router.get("/{rtype}/{rid}/_history", summary="Instance history")
async def history(rtype: str, rid: str, runtime: RuntimeDep, access: AccessDep) -> Response:
    _check_type(rtype)

    def work() -> JSON:
        with runtime.db.connect() as conn:
            versions = access.resources(conn).history(rtype, rid)
        if not versions:
            raise NotFoundError(f"{rtype}/{rid} not found")
        return history_bundle(versions, base_url=runtime.settings.public_base())

    return fhir_response(await run_in_threadpool(work))


@router.get("/{rtype}/{rid}/_history/{vid}", summary="Version read")
async def vread(rtype: str, rid: str, vid: str, runtime: RuntimeDep, access: AccessDep) -> Response:
    _check_type(rtype)
    if not vid.isdigit():
        raise NotFoundError(f"{rtype}/{rid}/_history/{vid} not found")

    def work() -> JSON:
        with runtime.db.connect() as conn:
            found = access.resources(conn).vread(rtype, rid, int(vid))
        if found is None:
            raise NotFoundError(f"{rtype}/{rid}/_history/{vid} not found")
        if found.deleted:
            raise GoneError(f"{rtype}/{rid}/_history/{vid} is a deletion")
        return found.content

    return versioned(await run_in_threadpool(work))


def _get(runtime: Runtime, access: Access, rtype: str, rid: str) -> JSON:
    with runtime.db.connect() as conn:
        found = access.resources(conn).get(rtype, rid)
    if found is None:
        raise NotFoundError(f"{rtype}/{rid} not found")
    if found.deleted:
        raise GoneError(f"{rtype}/{rid} was deleted")
    return found.content
