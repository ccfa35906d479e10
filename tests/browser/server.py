"""The gateway app served by uvicorn in a thread (Playwright's sync API wants the main thread's loop free)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.demo import free_port
from gateway.runtime import Runtime

START_TIMEOUT = 10.0


@dataclass
class Served:
    runtime: Runtime
    app: FastAPI
    base: str
    host: str


@contextlib.contextmanager
def serve_in_thread(settings: Settings) -> Iterator[Served]:
    """HTTP only (no MLLP listener, no worker): the pages and the APIs they call."""
    port = free_port(None)
    runtime = Runtime.build(settings)
    app = create_app(runtime, start_services=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="gateway-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield Served(runtime=runtime, app=app, base=f"http://127.0.0.1:{port}", host=f"127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT)
        runtime.close()
