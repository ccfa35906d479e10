"""FHIR REST behaviours every ``/fhir`` route gets without writing them: one ASGI middleware.

Routes answer plain JSON; this layer does what the FHIR RESTful API and HTTP add around it, so that a
route added later (by anyone) gets the same behaviour with no edit:

- ``POST [type]/_search`` (form body) is run as ``GET [type]?…`` with the form merged into the query;
- ``_format`` / ``Accept``: JSON only; XML (or anything else) is refused with 406 and an OperationOutcome;
- conditional reads: ``If-None-Match`` against the ``ETag``, ``If-Modified-Since`` against ``Last-Modified``
  → ``304 Not Modified``;
- ``_summary`` (``true``, ``text``, ``data``, ``false``; ``count`` is the search's) and ``_elements`` on a
  resource or on each matched resource of a Bundle; ``_pretty=true`` indents;
- ``Prefer: return=minimal | representation | OperationOutcome`` on create and update, and
  ``Prefer: handling=lenient`` on a search (unknown parameters dropped rather than refused).

Responses of ``/fhir`` are buffered (they are small JSON documents built in one piece anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import outcome_of
from gateway.api.responses import FHIR_JSON
from gateway.errors import FhirError, NotAcceptableError, SearchFormTooLargeError, UnsupportedMediaTypeError
from gateway.fhir.capability import SEARCH_PARAMS
from gateway.fhir.outcome import operation_outcome
from gateway.fhir.search import CONTROL
from gateway.fhir.shaping import parse_elements, parse_summary, shape

PREFIX = "/fhir"
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
#: Media types a client may accept for a JSON answer (``*/*`` and friends included).
JSON_ACCEPTS = frozenset({*JSON_FORMATS, "*/*", "application/*", "text/*", "text/json"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})
FORM = "application/x-www-form-urlencoded"
MAX_SEARCH_FORM_BYTES = 64 * 1024


def _accepts_json(accept: str) -> bool:
    """True unless the ``Accept`` header names only types we do not produce (XML, Turtle…)."""
    if not accept.strip():
        return True
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & JSON_ACCEPTS) or "" in types


def _check_format(query: list[tuple[str, str]], headers: Headers) -> None:
    for name, value in query:
        if name == "_format" and value.strip() and value.strip().lower() not in JSON_FORMATS:
            raise NotAcceptableError(
                f"_format={value} is not available: this server answers application/fhir+json only"
            )
    if not _accepts_json(headers.get("accept", "")):
        raise NotAcceptableError("this server answers application/fhir+json only (Accept)")


async def _read_body(receive: Receive) -> bytes:
    """A ``_search`` form, bounded: search parameters fit in far less than this."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_SEARCH_FORM_BYTES:
            raise SearchFormTooLargeError(f"a _search form is limited to {MAX_SEARCH_FORM_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _not_modified(headers: Headers, response: MutableHeaders) -> bool:
    """RFC 9110 §13.1: ``If-None-Match`` wins over ``If-Modified-Since``; weak comparison for GET."""
    etag = response.get("etag")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if etag is None:
            return False
        wanted = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in wanted or etag.removeprefix("W/") in wanted
    since, modified = headers.get("if-modified-since"), response.get("last-modified")
    if since and modified:
        try:
            return parsedate_to_datetime(modified) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False


@dataclass(frozen=True, slots=True)
class Asked:
    """What the request asked of the answer's shape."""

    method: str
    headers: Headers
    summary: str | None
    elements: frozenset[str] | None
    pretty: bool
    prefer: str | None


class FhirRestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        try:
            scope, receive, query = await self._post_search(scope, receive, headers, query)
            query = _lenient(scope, headers, query)
            _check_format(query, headers)
            params = dict(query)
            summary, elements = parse_summary(params.get("_summary")), parse_elements(params.get("_elements"))
        except FhirError as exc:
            await _send_outcome(send, exc)
            return
        asked = Asked(
            method=str(scope["method"]),
            headers=headers,
            summary=summary,
            elements=elements,
            pretty=params.get("_pretty") == "true",
            prefer=_prefer_return(headers.get("prefer", "")),
        )
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def buffered(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    await _finish(send, start, b"".join(body), asked)
            else:  # pragma: no cover - trailers and the like: nothing of ours
                await send(message)

        await self.app(scope, receive, buffered)

    async def _post_search(
        self, scope: Scope, receive: Receive, headers: Headers, query: list[tuple[str, str]]
    ) -> tuple[Scope, Receive, list[tuple[str, str]]]:
        """``POST /fhir/Patient/_search`` with a form body becomes ``GET /fhir/Patient?query&form``."""
        path = str(scope["path"])
        if scope["method"] != "POST" or not path.endswith("/_search"):
            return scope, receive, query
        raw = await _read_body(receive)
        media = headers.get("content-type", FORM).split(";")[0].strip().lower()
        if raw.strip() and media != FORM:
            raise UnsupportedMediaTypeError(f"POST _search takes {FORM}, not {media}")
        merged = [*query, *parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)]
        target = path.removesuffix("/_search") or PREFIX
        # In place, so that the edge sees which route answered (metrics).
        scope.update(method="GET", path=target, raw_path=target.encode(), query_string=urlencode(merged).encode())
        return scope, _replay(b""), merged


async def _finish(send: Send, start: dict[str, Any], body: bytes, asked: Asked) -> None:
    status = int(start.get("status", 200))
    headers = MutableHeaders(raw=list(start.get("headers", [])))
    is_json = headers.get("content-type", "").startswith(FHIR_JSON)
    if asked.method == "GET" and status == 200 and _not_modified(asked.headers, headers):
        status, body = 304, b""
        for name in ("content-type", "content-length"):
            del headers[name]
    elif is_json and body and 200 <= status < 300:
        body = _reshape(body, asked)
        if not body:
            del headers["content-type"]
    if "content-length" in headers or body:
        headers["content-length"] = str(len(body))
    await send({"type": "http.response.start", "status": status, "headers": headers.raw})
    await send({"type": "http.response.body", "body": body})


def _reshape(body: bytes, asked: Asked) -> bytes:
    if asked.method in WRITE_METHODS and asked.prefer == "minimal":
        return b""
    if asked.method in WRITE_METHODS and asked.prefer == "OperationOutcome":
        return orjson.dumps(operation_outcome("request succeeded", severity="information", code="informational"))
    if asked.summary in (None, "false") and asked.elements is None and not asked.pretty:
        return body
    document = shape(orjson.loads(body), summary=asked.summary, elements=asked.elements)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 if asked.pretty else 0)


def _preference(prefer: str, name: str) -> str | None:
    """One preference of an RFC 7240 ``Prefer`` header (``return=minimal, handling=lenient``)."""
    for part in prefer.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None


def _prefer_return(prefer: str) -> str | None:
    """``Prefer: return=minimal | representation | OperationOutcome``; anything else is ignored."""
    value = _preference(prefer, "return")
    return value if value in {"minimal", "representation", "OperationOutcome"} else None


def _lenient(scope: Scope, headers: Headers, query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``Prefer: handling=lenient`` on a search: unknown parameters are dropped instead of refused.

    The FHIR default (``strict``, and ours without the header) refuses them, so that a mistyped filter never
    returns everyone; a client that asks for leniency gets it, and the self link shows what was used.
    """
    if scope["method"] != "GET" or _preference(headers.get("prefer", ""), "handling") != "lenient":
        return query
    rtype = str(scope["path"]).removeprefix(PREFIX).strip("/")
    if rtype not in SEARCH_PARAMS:
        return query
    known = {name for name, _, _ in SEARCH_PARAMS[rtype]} | CONTROL
    kept = [(k, v) for k, v in query if k in known]
    if len(kept) != len(query):
        scope["query_string"] = urlencode(kept).encode()
    return kept


async def _send_outcome(send: Send, exc: FhirError) -> None:
    status, outcome = outcome_of(exc)
    body = orjson.dumps(outcome)
    headers = [(b"content-type", FHIR_JSON.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
