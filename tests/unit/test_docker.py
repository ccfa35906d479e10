"""The container files, checked statically (no Docker engine in the test environment)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dependencies_are_installed_in_a_layer_before_the_code() -> None:
    steps = _instructions()
    copy_pyproject = next(i for i, (op, arg) in enumerate(steps) if op == "COPY" and "pyproject.toml" in arg)
    install_deps = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install ." in arg)
    copy_code = next(i for i, (op, arg) in enumerate(steps) if op == "COPY" and arg.startswith("gateway "))
    install_code = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "--no-deps" in arg)
    assert copy_pyproject < install_deps < copy_code < install_code


def test_health_check_uses_the_configured_port() -> None:
    health = next(arg for op, arg in _instructions() if op == "HEALTHCHECK")
    assert "GATEWAY_HTTP_PORT" in health and ":8000/" not in health


def test_dockerignore_keeps_stores_and_virtualenvs_out() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines() if line.strip()
    }
    assert {".venv", "var", "**/*.db", ".git", "tests"} <= ignored
    needed = [arg.split()[0] for op, arg in _instructions() if op == "COPY"]
    assert all(path.split("/")[0] not in ignored for path in needed)  # what the image copies is sent


def test_compose_runs_two_gateways_on_one_postgresql() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway")}
    assert len(gateways) == 2
    urls = {s["environment"]["GATEWAY_DATABASE_URL"] for s in gateways.values()}
    assert len(urls) == 1
    host = re.match(r"postgresql\+psycopg://[^@]+@([^:/]+)", urls.pop())
    assert host is not None and services[host.group(1)]["image"].startswith("postgres:")
    http_ports = set()
    for service in gateways.values():
        port = service["environment"]["GATEWAY_HTTP_PORT"]
        assert any(mapping.endswith(f":{port}") for mapping in service["ports"])  # published = listened on
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["build"] == "."
        http_ports.add(service["ports"][0].split(":")[0])
    assert len(http_ports) == 2  # two instances reachable side by side
