"""API fixtures shared by the integration tests: a runtime on the test store, and a client over its app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.runtime import Runtime
from tests.api_helpers import ValidatingClient


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.build(settings, run_migrations=False)  # the ``database_url`` fixture migrated it
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """The HTTP API without MLLP and worker (tests drive the worker themselves when they need it); every
    FHIR answer it gets is validated against the profiles its resources claim."""
    with ValidatingClient(create_app(runtime, start_services=False), raise_server_exceptions=False) as c:
        yield c
