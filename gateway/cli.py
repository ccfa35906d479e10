"""The ``gateway`` command: serve | worker | migrate | clients | check-mappings | convert | send | replay | import
| demo | openapi."""

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

from gateway import __version__, heap
from gateway.config import Settings
from gateway.errors import ConfigError, NotFoundError, StartupError
from gateway.logs import LOG_FORMATS, LOG_LEVELS, configure

logger = logging.getLogger("gateway")


class UsageError(Exception):
    """A command-line mistake (a missing file, say): one line on stderr, exit status 2."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in (
        "database_url",
        "http_host",
        "http_port",
        "mllp_host",
        "mllp_port",
        "mappings_dir",
        "mllp_tls_cert",
        "mllp_tls_key",
        "mllp_tls_client_ca",
        "log_level",
        "workers",
    ):
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
    parser.add_argument("--mllp-tls-cert", type=Path, help="MLLP over TLS: server certificate, PEM")
    parser.add_argument("--mllp-tls-key", type=Path, help="MLLP over TLS: server private key, PEM")
    parser.add_argument(
        "--mllp-tls-client-ca", type=Path, help="require client certificates signed by this CA (CN = sender name)"
    )


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
    if args.worker_child:
        return _serve_as_worker(settings, args.worker_child)
    if settings.workers < 1:
        raise UsageError(f"--workers (GATEWAY_WORKERS) must be at least 1, not {settings.workers}")
    if settings.workers > 1:
        return _serve_workers(settings, argv=args.argv)
    _probe_port(settings.mllp_host, settings.mllp_port, "MLLP", "--mllp-port or GATEWAY_MLLP_PORT")
    _probe_port(settings.http_host, settings.http_port, "HTTP", "--http-port or GATEWAY_HTTP_PORT")
    runtime = Runtime.build(settings)
    refusal = _exposed_without_auth(runtime)
    if refusal:
        runtime.close()
        raise StartupError(f"refusing to start: {refusal}")
    try:
        sock = _bind_http(settings.http_host, settings.http_port)
    except StartupError:
        runtime.close()
        raise
    app = create_app(runtime)
    heap.settle()
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


def _serve_workers(settings: Settings, *, argv: list[str]) -> int:
    """``serve --workers N``: check and migrate once here, bind both ports, then supervise N serving children
    (``gateway.workers``)."""
    from gateway import workers
    from gateway.auth.mllp import context_from
    from gateway.runtime import Runtime

    if settings.database_url.startswith("sqlite"):
        raise StartupError(
            f"refusing to start {settings.workers} workers on SQLite: it has one writer, so they would only wait "
            "for each other (measured: no gain); use PostgreSQL, or GATEWAY_WORKERS=1"
        )
    _probe_port(settings.mllp_host, settings.mllp_port, "MLLP", "--mllp-port or GATEWAY_MLLP_PORT")
    _probe_port(settings.http_host, settings.http_port, "HTTP", "--http-port or GATEWAY_HTTP_PORT")
    context_from(settings)  # a TLS mistake is said once here, not by each child at its start
    runtime = Runtime.build(settings)  # the tables checked and the stores migrated once, before any child
    try:
        refusal = _exposed_without_auth(runtime)
    finally:
        runtime.close()
    if refusal:
        raise StartupError(f"refusing to start: {refusal}")
    count = settings.workers
    http = _listen(settings.http_host, settings.http_port, "HTTP", count=count, backlog=workers.HTTP_BACKLOG)
    try:
        mllp = _listen(settings.mllp_host, settings.mllp_port, "MLLP", count=count, backlog=workers.MLLP_BACKLOG)
    except StartupError:
        _close(http)
        raise
    logger.info(
        "gateway: %d workers, HTTP on http://%s:%d (FHIR at /fhir), MLLP on %s:%d, store %s, public base %s",
        count,
        settings.http_host,
        http[0].getsockname()[1],
        settings.mllp_host,
        mllp[0].getsockname()[1],
        _safe_url(settings.database_url),
        settings.public_base(),
    )
    try:
        return workers.supervise(argv=argv, http=http, mllp=mllp)
    finally:
        _close(http + mllp)


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _listen(host: str, port: int, what: str, *, count: int, backlog: int) -> list[socket.socket]:
    from gateway.workers import bind_listeners

    try:
        return bind_listeners(host, port, count=count, backlog=backlog)
    except OSError as exc:
        setting = f"--{what.lower()}-port or GATEWAY_{what}_PORT"
        raise StartupError(f"{what} port {host}:{port} is not available ({exc.strerror}); set {setting}") from exc


def _serve_as_worker(settings: Settings, flag: str) -> int:
    """One child of ``serve --workers``: the whole serve on the sockets the parent bound (it migrated too)."""
    from gateway import workers
    from gateway.api.app import create_app
    from gateway.api.server import uvicorn_config
    from gateway.runtime import Runtime

    inherited = workers.Inherited.parse(flag)
    runtime = Runtime.build(settings, run_migrations=False)
    try:
        runtime.refresh_authorities()
        runtime.mllp_socket = socket.socket(fileno=inherited.mllp_fd)
        app = create_app(runtime, worker=str(inherited.index))
    except BaseException:
        runtime.close()
        raise
    heap.settle()
    config = uvicorn_config(app, settings, log_config=None, log_level=settings.log_level.lower(), access_log=False)
    return workers.serve_child(inherited, runtime=runtime, config=config)


def cmd_worker(args: argparse.Namespace) -> int:
    """Only the delivery worker, with serve's settings; ingest runs in ``gateway serve`` (or several)."""
    from gateway.subscriptions import standalone

    if args.poll_interval is not None and not args.poll_interval > 0:
        raise UsageError("--poll-interval must be a positive number of seconds")
    return standalone.run(_settings(args), poll=args.poll_interval)


def _exposed_without_auth(runtime: Any) -> str | None:
    """Bound beyond loopback with no client and no token, anyone could read every patient: refuse."""
    import ipaddress

    settings = runtime.settings
    host = settings.http_host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or settings.api_token or runtime.gate.enabled():
        return None
    return (
        f"HTTP bound to {settings.http_host} (not loopback) with no client registered and no API token; "
        "register one with 'gateway clients add' or bind to 127.0.0.1"
    )


def cmd_clients(args: argparse.Namespace) -> int:
    """``gateway clients add|list|rotate|revoke|authorities``: the client registry."""
    from gateway.db.engine import make_engine, migrate

    settings = _settings(args)
    engine = make_engine(settings)
    migrate(engine)
    try:
        return int(CLIENT_ACTIONS[args.action](engine, args))
    finally:
        engine.dispose()


def _clients_add(engine: Any, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gateway.auth.clients import add_client, parse_authorities, public_view
    from gateway.db.engine import transaction

    jwks = None
    if args.jwks:
        try:
            jwks = json.loads(Path(args.jwks).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the JWKS file {args.jwks}: {exc}") from exc
    with transaction(engine) as conn:
        created = add_client(
            conn,
            kind=args.kind,
            name=args.name,
            now=datetime.now(UTC),
            facilities=args.facility,
            scopes=args.scope,
            jwks=jwks,
            authorities=parse_authorities(args.authority),
            sandbox=args.sandbox,
        )
    view = public_view(created.record)
    if created.secret:
        view["client_secret"] = created.secret
    if args.json:
        print(json.dumps(view, sort_keys=True))
    else:
        print(f"client {view['client_id']} ({args.kind} {args.name!r}), scope: {view['scope'] or '-'}")
        if created.secret:
            print(f"client_secret: {created.secret}  (shown once: store it now)")
    return 0


def _clients_list(engine: Any, args: argparse.Namespace) -> int:
    from gateway.auth.clients import public_view
    from gateway.db.access import ClientRepo

    with engine.connect() as conn:
        views = [public_view(r) for r in ClientRepo(conn).list()]
    if args.json:
        print(json.dumps(views, sort_keys=True))
        return 0
    for v in views:
        facilities = ",".join(v["facilities"]) or "-"
        print(f"{v['client_id']}  {v['kind']:<8} {v['status']:<7} {v['auth']:<15} {v['name']}  facilities={facilities}")
    return 0


def _clients_rotate(engine: Any, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gateway.auth.clients import rotate_secret
    from gateway.db.engine import transaction

    with transaction(engine) as conn:
        secret = rotate_secret(conn, args.id, now=datetime.now(UTC))
    if args.json:
        print(json.dumps({"client_id": args.id, "client_secret": secret}))
    else:
        print(f"client_secret: {secret}  (shown once; the old secret no longer works)")
    return 0


def _clients_revoke(engine: Any, args: argparse.Namespace) -> int:
    from gateway.auth.clients import revoke
    from gateway.db.engine import transaction

    with transaction(engine) as conn:
        revoke(conn, args.id)
    print(f"client {args.id} revoked: its tokens are refused from now on")
    return 0


def _clients_authorities(engine: Any, args: argparse.Namespace) -> int:
    from gateway.auth.clients import parse_authorities, set_authorities
    from gateway.db.access import ClientRepo
    from gateway.db.engine import transaction

    with transaction(engine) as conn:
        if args.set:
            merged = set_authorities(conn, args.id, parse_authorities(args.set))
        else:
            record = ClientRepo(conn).get(args.id)
            if record is None:
                raise ConfigError(f"no client {args.id!r}")
            merged = record.authorities
    for authority, system in sorted(merged.items()):
        print(f"{authority} = {system}")
    _print_undeclared(engine, args.id)
    return 0


def _print_undeclared(engine: Any, client_id: str) -> None:
    """Authorities this sender's messages used that nobody declared (a system was minted for them)."""
    import re

    from gateway.auth.authorities import MINTED_PREFIX, undeclared
    from gateway.db.access import ClientRepo, systems_starting

    with engine.connect() as conn:
        record = ClientRepo(conn).get(client_id)
        minted = undeclared(systems_starting(conn, MINTED_PREFIX))
    slugs = {re.sub(r"[^A-Za-z0-9.-]+", "-", f).strip("-") for f in (record.facilities if record else ())}
    for item in minted:
        if item["facility"] in slugs:
            print(f"undeclared: {item['authority']} (seen from {item['facility']}, minted {item['minted_system']})")


CLIENT_ACTIONS = {
    "add": _clients_add,
    "list": _clients_list,
    "rotate": _clients_rotate,
    "revoke": _clients_revoke,
    "authorities": _clients_authorities,
}


def _add_clients_parser(sub: Any) -> None:
    clients = sub.add_parser("clients", help="register and manage clients (platforms, senders, operators)")
    actions = clients.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a client; prints its id and, once, its secret")
    add.add_argument("--kind", required=True, choices=["platform", "sender", "operator"])
    add.add_argument("--name", required=True, help="unique; a platform's name is recorded on its care circle edits")
    add.add_argument("--facility", action="append", default=[], help="MSH-4 a sender may claim (repeatable)")
    add.add_argument("--scope", action="append", default=[], help="SMART scope, e.g. system/Patient.rs (repeatable)")
    add.add_argument("--jwks", help="JWKS file of public keys: the client signs assertions (private_key_jwt)")
    add.add_argument("--authority", action="append", default=[], help="AUTHORITY=SYSTEM identifier domain")
    add.add_argument(
        "--sandbox",
        action="store_true",
        help="a sandbox sender: its HTTP and MLLP messages go to the isolated sandbox store, never to real data",
    )
    add.add_argument("--json", action="store_true", help="print one JSON object")
    listing = actions.add_parser("list", help="list clients (never their secrets)")
    listing.add_argument("--json", action="store_true")
    rotate = actions.add_parser("rotate", help="replace a client's secret; prints the new one once")
    rotate.add_argument("id")
    rotate.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a client: its tokens are refused at once")
    revoke.add_argument("id")
    authorities = actions.add_parser("authorities", help="a sender's identifier domains (AUTHORITY=SYSTEM)")
    authorities.add_argument("id")
    authorities.add_argument("--set", action="append", default=[], metavar="AUTHORITY=SYSTEM")
    for parser in (clients, add, listing, rotate, revoke, authorities):
        _add_common(parser)
    clients.set_defaults(func=cmd_clients)


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
            except NotFoundError:
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


def cmd_import(args: argparse.Namespace) -> int:
    """Bulk onboarding: every message of the files and folders named, in event order; exit 1 if any is not AA."""
    from gateway.importer import Progress, collect, print_summary, run_import
    from gateway.runtime import Runtime

    sources = collect(args.paths)
    runtime = Runtime.build(_settings(args))
    heap.settle()
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, help="DEBUG | INFO | WARNING | ERROR (GATEWAY_LOG_LEVEL)"
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text | json, one object a line (GATEWAY_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run HTTP API, MLLP listener and delivery worker")
    _add_common(serve)
    _add_ports(serve)
    serve.add_argument(
        "--workers",
        type=int,
        help="serving processes sharing the HTTP and MLLP ports (GATEWAY_WORKERS, default 1); PostgreSQL only "
        "beyond 1, about one a core",
    )
    serve.add_argument("--worker-child", help=argparse.SUPPRESS)  # one of --workers' children (gateway.workers)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run only the delivery worker (beside 'gateway serve' with GATEWAY_RUN_WORKER=false; several may run)",
    )
    _add_common(worker)
    worker.add_argument(
        "--poll-interval",
        type=float,
        help="seconds between looks at the outbox when nothing woke it (GATEWAY_WORKER_POLL_INTERVAL, 0.5); it "
        "is woken by NOTIFY on PostgreSQL, by commits seen in SQLite's data_version every 0.05 s",
    )
    worker.set_defaults(func=cmd_worker)

    _add_clients_parser(sub)

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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # serve --workers starts its children with them
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
