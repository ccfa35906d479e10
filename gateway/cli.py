"""The ``gateway`` command: serve | migrate | check-mappings | convert | send | replay | demo | openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway import __version__
from gateway.config import Settings
from gateway.errors import ConfigError, StartupError
from gateway.logs import LOG_FORMATS, LOG_LEVELS, configure

logger = logging.getLogger("gateway")


class UsageError(Exception):
    """A command-line mistake (a missing file, say): one line on stderr, exit status 2."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("database_url", "http_host", "http_port", "mllp_host", "mllp_port", "mappings_dir", "log_level"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (GATEWAY_DATABASE_URL)")
    parser.add_argument("--mappings-dir", type=Path, help="mapping tables directory (GATEWAY_MAPPINGS_DIR)")


def _add_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-host", help="HTTP bind address (GATEWAY_HTTP_HOST, default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, help="HTTP port (GATEWAY_HTTP_PORT, default 8000)")
    parser.add_argument("--mllp-host", help="MLLP bind address (GATEWAY_MLLP_HOST, default 127.0.0.1)")
    parser.add_argument("--mllp-port", type=int, help="MLLP port (GATEWAY_MLLP_PORT, default 2575)")


def _probe_port(host: str, port: int, what: str, setting: str) -> None:
    """Fail in one line, before anything starts, when the port is taken (or the address is not ours)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"{what} port {host}:{port} is not available ({exc.strerror}); set {setting}") from exc


def _bind_http(host: str, port: int) -> socket.socket:
    """The HTTP socket, bound before the app starts: uvicorn would say "startup complete" and then fail."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"HTTP port {host}:{port} is not available ({exc.strerror}); set --http-port or GATEWAY_HTTP_PORT"
        ) from exc
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app
    from gateway.api.server import uvicorn_config
    from gateway.runtime import Runtime

    settings = _settings(args)
    _probe_port(settings.mllp_host, settings.mllp_port, "MLLP", "--mllp-port or GATEWAY_MLLP_PORT")
    _probe_port(settings.http_host, settings.http_port, "HTTP", "--http-port or GATEWAY_HTTP_PORT")
    runtime = Runtime.build(settings)
    try:
        sock = _bind_http(settings.http_host, settings.http_port)
    except StartupError:
        runtime.close()
        raise
    app = create_app(runtime)
    # log_config=None: uvicorn's records go through our handler and format (text or JSON).
    config = uvicorn_config(app, settings, log_config=None, log_level=settings.log_level.lower(), access_log=False)
    logger.info(
        "gateway: HTTP on http://%s:%d (FHIR at /fhir), MLLP on %s:%d, store %s, public base %s",
        settings.http_host,
        settings.http_port,
        settings.mllp_host,
        settings.mllp_port,
        _safe_url(settings.database_url),
        settings.public_base(),
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        runtime.close()
    return 0


def _safe_url(url: str) -> str:
    from gateway.db.engine import safe_url

    return safe_url(url)


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.db.engine import make_engine, migrate

    settings = _settings(args)
    engine = make_engine(settings)
    migrate(engine)
    engine.dispose()
    print(f"schema up to date: {_safe_url(settings.database_url)}")
    return 0


def cmd_check_mappings(args: argparse.Namespace) -> int:
    from gateway.mapping.engine import Engine

    settings = _settings(args)
    engine = Engine.from_directory(settings.mappings_dir)
    tables = engine.tables
    print(
        f"mappings OK: {len(tables.codes)} code tables, {len(tables.segments)} segment maps, "
        f"{len(tables.events)} events, {len(tables.authorities.senders)} sender authority tables "
        f"({tables.source})"
    )
    return 0


def read_inputs(paths: list[Path]) -> list[tuple[str, bytes]]:
    """Message files as (name, bytes): ``-`` is stdin, a directory gives its ``*.hl7`` files in name order."""
    found: list[tuple[str, bytes]] = []
    for path in paths:
        if str(path) == "-":
            found.append(("<stdin>", sys.stdin.buffer.read()))
        elif path.is_dir():
            files = sorted(p for p in path.glob("*.hl7") if p.is_file())
            if not files:
                raise UsageError(f"{path} is a directory without *.hl7 files")
            found += [(str(p), p.read_bytes()) for p in files]
        elif not path.exists():
            raise UsageError(f"no such file: {path}")
        else:
            try:
                found.append((str(path), path.read_bytes()))
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    empty = [name for name, raw in found if not raw.strip()]
    if empty:
        raise UsageError(f"empty input: {', '.join(empty)}")
    return found


def cmd_convert(args: argparse.Namespace) -> int:
    """Run messages through parse and mapping, store nothing, print the ACK and the FHIR resources."""
    from gateway.convert import convert_files

    settings = _settings(args)
    inputs = read_inputs(args.files)
    return convert_files(inputs, mappings_dir=settings.mappings_dir, out=sys.stdout, report=sys.stderr)


def _ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK ("AA", "AE", "AR", or "?" when there is none)."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA") and len(segment) > 4:
            return segment[4:].split(segment[3:4])[0].decode("latin-1") or "?"
    return "?"


def cmd_send(args: argparse.Namespace) -> int:
    """An MLLP client: exit 0 only when every ACK is AA (or CA); 1 on any AE/AR; 3 when unreachable."""
    from gateway.hl7.mllp import MLLPClient
    from gateway.progress import Progress

    settings = _settings(args)
    inputs = read_inputs(args.files)
    host = args.host or settings.mllp_host
    port = args.port or settings.mllp_port
    progress = Progress(len(inputs), what=f"sent to {host}:{port}")

    async def run() -> None:
        async with MLLPClient(host, port, timeout=args.timeout) as client:
            for name, raw in inputs:
                ack = await client.send(raw)
                progress.step(_ack_code(ack))
                print(f"--- {name}")
                print(ack.decode("latin-1").replace("\r", "\n").rstrip(), flush=True)

    try:
        asyncio.run(run())
    except (OSError, TimeoutError) as exc:
        progress.summary()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        print(f"gateway: MLLP {host}:{port}: {reason}", file=sys.stderr)
        return 3
    progress.summary()
    return 0 if set(progress.tally) <= {"AA", "CA"} else 1


def cmd_replay(args: argparse.Namespace) -> int:
    """Reprocess stored messages through the current mappings and say, per message, what changed."""
    from gateway.progress import Progress
    from gateway.runtime import Runtime

    runtime = Runtime.build(_settings(args))
    progress = Progress(len(args.ids), what="replayed")
    status = 0
    try:
        for message_id in args.ids:
            try:
                outcome = runtime.pipeline.replay(message_id)
            except LookupError:
                progress.step("missing")
                print(f"message {message_id}: not found", file=sys.stderr)
                status = 1
                continue
            progress.step(outcome.code)
            changed = ", ".join(f"{r.type}/{r.id} v{r.version_id}" for r in outcome.changed) or "nothing changed"
            stored = "" if outcome.message_id == message_id else f", stored as {outcome.message_id}"
            print(f"message {message_id}: {outcome.code} ({outcome.status}){stored}: {changed}")
            status = status or (0 if outcome.code == "AA" else 1)
    finally:
        runtime.close()
    progress.summary()
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return asyncio.run(run_demo(keep_running=args.keep_running, http_port=args.http_port, mllp_port=args.mllp_port))


def cmd_openapi(args: argparse.Namespace) -> int:
    from gateway.api.app import create_app
    from gateway.runtime import Runtime

    settings = Settings(database_url="sqlite://")
    runtime = Runtime.build(settings, run_migrations=False)
    spec = create_app(runtime, start_services=False).openapi()
    text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, help="DEBUG | INFO | WARNING | ERROR (GATEWAY_LOG_LEVEL)"
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text | json, one object a line (GATEWAY_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run HTTP API, MLLP listener and delivery worker")
    _add_common(serve)
    _add_ports(serve)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    _add_common(migrate)
    migrate.set_defaults(func=cmd_migrate)

    check = sub.add_parser("check-mappings", help="validate the mapping tables")
    _add_common(check)
    check.set_defaults(func=cmd_check_mappings)

    convert = sub.add_parser("convert", help="convert messages without storing; print ACK and FHIR")
    _add_common(convert)
    convert.add_argument("files", nargs="+", type=Path)
    convert.set_defaults(func=cmd_convert)

    send = sub.add_parser("send", help="send message files over MLLP (one connection) and print the ACKs")
    _add_common(send)
    send.add_argument("files", nargs="+", type=Path)
    send.add_argument("--host")
    send.add_argument("--port", type=int)
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=cmd_send)

    replay = sub.add_parser("replay", help="run stored messages through the pipeline again")
    _add_common(replay)
    replay.add_argument("ids", nargs="+", type=int)
    replay.set_defaults(func=cmd_replay)

    demo = sub.add_parser("demo", help="start everything, subscribe a demo receiver, send a stay, print all")
    demo.add_argument("--keep-running", action="store_true", help="keep the gateway up after the demo")
    demo.add_argument("--http-port", type=int, default=None, help="HTTP port (default 8000, else a free one)")
    demo.add_argument("--mllp-port", type=int, default=None, help="MLLP port (default 2575, else a free one)")
    demo.set_defaults(func=cmd_demo)

    openapi = sub.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--output", "-o")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper()
    fmt = args.log_format or os.environ.get("GATEWAY_LOG_FORMAT", "text").lower()
    if level not in LOG_LEVELS or fmt not in LOG_FORMATS:
        print(f"gateway: configuration error: log level {level!r} / format {fmt!r} not known", file=sys.stderr)
        return 2
    configure(level=level, fmt=fmt)
    args.log_level = level
    try:
        return int(args.func(args))
    except StartupError as exc:
        print(f"gateway: {_one_line(exc.message)}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"gateway: configuration error: {_one_line(exc.message)}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"gateway: configuration error: GATEWAY_{where.upper()}: {first['msg']}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an unreadable mappings file: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"gateway: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
