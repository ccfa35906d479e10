"""FHIR R4 routes under ``/fhir``: metadata, read, vread, history, search, Subscription create and $status."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import RuntimeDep, require_token
from gateway.api.responses import fhir_response, versioned
from gateway.db.repo import ResourceRepo, SubscriptionRepo
from gateway.errors import FhirError, NotFoundError
from gateway.fhir.capability import SEARCH_PARAMS, capability_statement
from gateway.fhir.search import history_bundle, search
from gateway.pipeline import utcnow
from gateway.runtime import Runtime
from gateway.subscriptions.notification import NotificationContext, build_status_parameters
from gateway.subscriptions.service import SIGNING_SECRET, create_subscription

router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(require_token)])
JSON = dict[str, Any]


def _check_type(rtype: str) -> None:
    if rtype not in SEARCH_PARAMS:
        raise FhirError(f"resource type {rtype!r} is not served here", status=404, issue_code="not-supported")


@router.get("/metadata", summary="CapabilityStatement")
async def metadata(runtime: RuntimeDep) -> Response:
    return fhir_response(capability_statement(base_url=runtime.settings.public_base(), now=utcnow()))


@router.post("/Subscription", summary="Create a subscription (R4, Subscriptions R5 Backport IG shape)")
async def post_subscription(request: Request, runtime: RuntimeDep) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise FhirError("the body is not valid JSON", issue_code="structure") from exc
    if not isinstance(body, dict):
        raise FhirError("the body must be a JSON object", issue_code="structure")

    def work() -> tuple[JSON, str | None]:
        with runtime.db.begin() as conn:
            stored, secret = create_subscription(
                conn, body, allowlist=runtime.settings.endpoint_allowlist, now=utcnow()
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
    location = f"{runtime.settings.public_base()}/Subscription/{content['id']}/_history/{content['meta']['versionId']}"
    return versioned(shown, status=201, location=location)


@router.get("/Subscription/{sub_id}/$status", summary="Subscription status (Backport $status)")
async def subscription_status(sub_id: str, runtime: RuntimeDep) -> Response:
    def work() -> JSON:
        with runtime.db.connect() as conn:
            sub = SubscriptionRepo(conn).get(sub_id)
            if sub is None:
                raise NotFoundError(f"Subscription/{sub_id} not found")
            ctx = NotificationContext(
                subscription_id=sub.id,
                topic_url=sub.topic,
                status=sub.status,
                notification_type="query-status",
                events_since_start=sub.events_since_start,
                payload_content=sub.payload_content,
                base_url=runtime.settings.public_base(),
                error=sub.error,
            )
        params = build_status_parameters(ctx, [])
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": params}]}

    return fhir_response(await run_in_threadpool(work))


@router.get("/{rtype}", summary="Search")
async def search_type(rtype: str, request: Request, runtime: RuntimeDep) -> Response:
    _check_type(rtype)
    params = list(request.query_params.multi_items())

    def work() -> JSON:
        with runtime.db.connect() as conn:
            return search(ResourceRepo(conn), rtype, params, base_url=runtime.settings.public_base())

    return fhir_response(await run_in_threadpool(work))


@router.get("/{rtype}/{rid}", summary="Read")
async def read(rtype: str, rid: str, runtime: RuntimeDep) -> Response:
    _check_type(rtype)
    stored = await run_in_threadpool(_get, runtime, rtype, rid)
    return versioned(stored)


@router.get("/{rtype}/{rid}/_history", summary="Instance history")
async def history(rtype: str, rid: str, runtime: RuntimeDep) -> Response:
    _check_type(rtype)

    def work() -> JSON:
        with runtime.db.connect() as conn:
            versions = ResourceRepo(conn).history(rtype, rid)
        if not versions:
            raise NotFoundError(f"{rtype}/{rid} not found")
        return history_bundle(versions, base_url=runtime.settings.public_base())

    return fhir_response(await run_in_threadpool(work))


@router.get("/{rtype}/{rid}/_history/{vid}", summary="Version read")
async def vread(rtype: str, rid: str, vid: str, runtime: RuntimeDep) -> Response:
    _check_type(rtype)
    if not vid.isdigit():
        raise NotFoundError(f"{rtype}/{rid}/_history/{vid} not found")

    def work() -> JSON:
        with runtime.db.connect() as conn:
            found = ResourceRepo(conn).vread(rtype, rid, int(vid))
        if found is None:
            raise NotFoundError(f"{rtype}/{rid}/_history/{vid} not found")
        return found.content

    return versioned(await run_in_threadpool(work))


def _get(runtime: Runtime, rtype: str, rid: str) -> JSON:
    with runtime.db.connect() as conn:
        found = ResourceRepo(conn).get(rtype, rid)
    if found is None or found.deleted:
        raise NotFoundError(f"{rtype}/{rid} not found")
    return found.content
