"""Request limits at the API edge, in one place: body size, JSON nesting depth, CPU of sandbox runs.

Every JSON body the API accepts is read here, so no route can forget a limit: a 200 MB POST is refused
(413) as soon as it is known to be too large, without being held in memory, and a body nested deeper
than ``GATEWAY_MAX_JSON_DEPTH`` is refused (400) before any model or recursive code sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request

from gateway.errors import BodyTooLargeError, StructureError, TooCostlyError

JSON = dict[str, Any]


async def read_limited(request: Request, *, limit: int) -> bytes:
    """The request body, refused (413) once it is over ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``{}`` is 1); iterative, so depth cannot overflow the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


async def json_body(request: Request, *, max_bytes: int, max_depth: int) -> JSON:
    """A JSON object body within the size and depth limits, or a FHIR error (400/413)."""
    raw = await read_limited(request, limit=max_bytes)
    try:
        body = orjson.loads(raw)  # orjson stops at 1024 levels by itself, in C
    except orjson.JSONDecodeError as exc:
        raise StructureError("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise StructureError("the body must be a JSON object")
    if json_depth(body) > max_depth:
        raise TooCostlyError(f"the body is nested deeper than {max_depth} levels")
    return body


def cpu_budget(seconds: float) -> Callable[[], bool]:
    """A check that turns true once this thread has used ``seconds`` of CPU since the call."""
    start = time.thread_time()
    return lambda: time.thread_time() - start > seconds
