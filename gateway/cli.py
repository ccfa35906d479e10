"""The ``gateway`` command: serve | migrate | check-mappings | convert | send | replay | import | demo | openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.config import Settings
from gateway.errors import ConfigError

logger = logging.getLogger("gateway")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("database_url", "http_host", "http_port", "mllp_host", "mllp_port", "mappings_dir"):
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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app
    from gateway.runtime import Runtime

    settings = _settings(args)
    runtime = Runtime.build(settings)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=args.log_level.lower(),
        access_log=False,
    )
    print(
        f"gateway: HTTP on http://{settings.http_host}:{settings.http_port} (FHIR at /fhir), "
        f"MLLP on {settings.mllp_host}:{settings.mllp_port}, store {_safe_url(settings.database_url)}"
    )
    uvicorn.Server(config).run()
    runtime.close()
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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


def cmd_convert(args: argparse.Namespace) -> int:
    """Run messages through parse and mapping, store nothing, print the ACK and the FHIR resources."""
    from gateway.convert import convert_files

    settings = _settings(args)
    return convert_files(args.files, mappings_dir=settings.mappings_dir, out=sys.stdout)


def cmd_send(args: argparse.Namespace) -> int:
    from gateway.hl7.mllp import send_messages

    settings = _settings(args)
    payloads = [Path(f).read_bytes() for f in args.files]
    host = args.host or settings.mllp_host
    port = args.port or settings.mllp_port
    acks = asyncio.run(send_messages(host, port, payloads, timeout=args.timeout))
    for name, ack in zip(args.files, acks, strict=True):
        print(f"--- {name}")
        print(ack.decode("latin-1").replace("\r", "\n").rstrip())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from gateway.runtime import Runtime

    runtime = Runtime.build(_settings(args))
    status = 0
    for message_id in args.ids:
        try:
            outcome = runtime.pipeline.replay(message_id)
        except LookupError:
            print(f"message {message_id}: not found", file=sys.stderr)
            status = 1
            continue
        print(f"message {message_id}: {outcome.code} ({outcome.status}), stored as {outcome.message_id}")
    runtime.close()
    return status


def cmd_import(args: argparse.Namespace) -> int:
    """Bulk onboarding: every message of the files and folders named, in event order; exit 1 if any is not AA."""
    from gateway.importer import Progress, collect, print_summary, run_import
    from gateway.runtime import Runtime

    sources = collect(args.paths)
    runtime = Runtime.build(_settings(args))
    try:
        progress = None if args.quiet else Progress(len(sources), out=sys.stderr)
        summary = run_import(runtime.pipeline, sources, progress=progress)
    finally:
        runtime.close()
    print_summary(summary)
    return 0 if summary.codes.get("AA", 0) == summary.total else 1


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
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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

    importer = sub.add_parser("import", help="bulk-load message files and folders, in event order")
    _add_common(importer)
    importer.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    importer.add_argument("--quiet", "-q", action="store_true", help="no progress bar, only the summary")
    importer.set_defaults(func=cmd_import)

    demo = sub.add_parser("demo", help="start everything, subscribe a demo receiver, send a stay, print all")
    demo.add_argument("--keep-running", action="store_true", help="keep the gateway up after the demo")
    demo.add_argument("--http-port", type=int, default=None)
    demo.add_argument("--mllp-port", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    openapi = sub.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--output", "-o")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs request URLs, and search URLs can carry patient identifiers: keep them out of the logs.
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
