"""Wiring the pages into the FastAPI app: static assets, the page routers, the live view's sampler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY, CollectorRegistry

from gateway.auth.sessions import SignInRequired
from gateway.web import console, pages, signin
from gateway.web.live import LiveSampler

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install(app: FastAPI, *, registries: Sequence[CollectorRegistry] = (REGISTRY,)) -> None:
    """Mount the static assets and the page routers; the live view's sampler goes on ``app.state``.

    ``registries`` are those ``/metrics`` serves (pass any per-app registry too): the live view plots
    exactly the figures ``/metrics`` exposes.
    """
    app.state.live = LiveSampler(registries=registries)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(pages.router)
    app.include_router(console.router)
    app.include_router(signin.router)
    app.add_exception_handler(SignInRequired, signin.to_sign_in)
