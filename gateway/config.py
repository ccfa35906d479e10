"""Settings: one pydantic-settings object (``GATEWAY_*`` variables), built once at start and passed in."""

from __future__ import annotations

import functools
import ipaddress
import socket
from contextvars import ContextVar
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/gateway.db"
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_MLLP_HOST = "127.0.0.1"
DEFAULT_MLLP_PORT = 2575
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
DEFAULT_MLLP_IDLE_TIMEOUT = 300.0
DEFAULT_MLLP_FRAME_TIMEOUT = 60.0
DEFAULT_MLLP_MAX_CONNECTIONS = 256
DEFAULT_MLLP_MAX_CONNECTIONS_PER_PEER = 32
DEFAULT_DELIVERY_TIMEOUT = 10.0
DEFAULT_WORKERS = 1
#: Database time limits: a hung or locked database must fail a request, never hold it (and a thread) forever.
DEFAULT_DB_CONNECT_TIMEOUT = 5.0
DEFAULT_DB_STATEMENT_TIMEOUT = 30.0
DEFAULT_DB_LOCK_TIMEOUT = 30.0
DEFAULT_HEALTH_TIMEOUT = 2.0
#: Limits at the API edge (bytes, nesting levels, seconds of CPU).
DEFAULT_MAX_FHIR_BODY_BYTES = 1_048_576
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_SANDBOX_MAX_BYTES = 2_097_152
DEFAULT_SESSION_LIFETIME = 1800
DEFAULT_SANDBOX_CPU_SECONDS = 5.0
#: HTTP server limits: request head size and the time a client has to send it.
DEFAULT_HTTP_MAX_HEADER_BYTES = 65_536
DEFAULT_HTTP_HEADER_TIMEOUT = 10.0
DEFAULT_HTTP_KEEPALIVE_TIMEOUT = 5.0
DEFAULT_HTTP_MAX_CONNECTIONS = 1000
#: Retries go on for a day by default: platforms may be down for a night (HAPI's one minute is the
#: weak spot we avoid). ``0`` means never give up.
DEFAULT_RETRY_HORIZON = 24 * 3600.0
DEFAULT_RETRY_BASE = 1.0
DEFAULT_RETRY_CAP = 600.0
DEFAULT_TOKEN_LIFETIME = 300
#: Sandbox limits beyond the edge's bytes and CPU seconds: messages per report, and calls per minute per
#: client (bursts of ``SANDBOX_BURST``). A day of a hospital feed is a few thousand messages.
DEFAULT_SANDBOX_MAX_MESSAGES = 2000
DEFAULT_SANDBOX_RATE_PER_MINUTE = 30.0
DEFAULT_SANDBOX_BURST = 10
DEFAULT_DATA_DIR = Path("var")
#: Bind addresses that mean "every interface": never a valid host in a link a client must follow.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})  # noqa: S104 - compared against, not bound
#: The public FHIR base of the request being served, when a trusted proxy said it (set by the HTTP edge).
REQUEST_BASE: ContextVar[str | None] = ContextVar("gateway_request_base", default=None)


@functools.cache
def _machine_name() -> str:
    """Looked up once: ``getfqdn`` may ask the resolver."""
    return socket.getfqdn() or socket.gethostname() or "localhost"


def _default_mappings_dir() -> Path:
    """``mappings/`` beside the package in a checkout, else the current directory's."""
    beside = Path(__file__).resolve().parent.parent / "mappings"
    return beside if beside.is_dir() else Path("mappings")


class Settings(BaseSettings):
    """Everything an operator can set; see the README for the table."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    #: SQLite ``synchronous`` pragma: FULL survives power loss with WAL; NORMAL only process crashes.
    sqlite_synchronous: str = "FULL"
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    mllp_host: str = DEFAULT_MLLP_HOST
    mllp_port: int = DEFAULT_MLLP_PORT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Seconds from the connection (or the last ACK) to the next complete message; bytes do not reset it.
    mllp_idle_timeout: float = DEFAULT_MLLP_IDLE_TIMEOUT
    #: Seconds from a frame's start block to its end block.
    mllp_frame_timeout: float = DEFAULT_MLLP_FRAME_TIMEOUT
    mllp_max_connections: int = DEFAULT_MLLP_MAX_CONNECTIONS
    mllp_max_connections_per_peer: int = DEFAULT_MLLP_MAX_CONNECTIONS_PER_PEER
    mappings_dir: Path = Field(default_factory=_default_mappings_dir)
    base_url: str = ""
    #: Operator shortcut for local use: this bearer token acts as an operator. With no client registered
    #: it guards FHIR and admin routes as before; registered clients use ``POST /oauth/token``.
    api_token: str = ""
    #: ``auto``: authentication is on once one client is registered; ``required``: always on.
    auth: str = "auto"
    #: access-token lifetime, seconds
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    #: lifetime of a browser session on the pages (sign-in at ``/sign-in``), seconds; absolute, not sliding
    session_lifetime: int = DEFAULT_SESSION_LIFETIME
    #: HS256 key for access tokens; empty = a random key kept in the database, shared by all instances
    token_signing_key: str = ""
    #: PD1-12 = Y patients: platforms neither read them nor hear of them unless this is true
    confidential_platform_access: bool = False
    #: MLLP over TLS: server certificate and key (PEM); client CA to require client certificates
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    #: networks (CIDR) whose senders may use plain MLLP beside loopback, e.g. ["10.1.2.0/24"]
    mllp_trusted_networks: list[str] = Field(default_factory=list)
    #: Hosts a subscription endpoint may use over plain http or on a private address (demo, tests).
    endpoint_allowlist: list[str] = Field(default_factory=list)
    #: Seconds for a whole rest-hook request (connection, upload, answer), not per read.
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    db_connect_timeout: float = DEFAULT_DB_CONNECT_TIMEOUT
    #: PostgreSQL ``statement_timeout`` (SQLite has none).
    db_statement_timeout: float = DEFAULT_DB_STATEMENT_TIMEOUT
    #: PostgreSQL ``lock_timeout``; SQLite's busy timeout.
    db_lock_timeout: float = DEFAULT_DB_LOCK_TIMEOUT
    #: PostgreSQL server-side prepared statements (psycopg's, after a statement's 5th run); false behind a
    #: connection pooler in transaction mode that cannot carry them (PgBouncer before 1.21)
    db_prepared_statements: bool = True
    #: How long ``/health`` and ``/health/ready`` wait for the database before answering 503.
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    max_fhir_body_bytes: int = DEFAULT_MAX_FHIR_BODY_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    sandbox_max_bytes: int = DEFAULT_SANDBOX_MAX_BYTES
    sandbox_cpu_seconds: float = DEFAULT_SANDBOX_CPU_SECONDS
    http_max_header_bytes: int = DEFAULT_HTTP_MAX_HEADER_BYTES
    http_header_timeout: float = DEFAULT_HTTP_HEADER_TIMEOUT
    http_keepalive_timeout: float = DEFAULT_HTTP_KEEPALIVE_TIMEOUT
    http_max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS
    retry_horizon: float = DEFAULT_RETRY_HORIZON
    retry_base: float = DEFAULT_RETRY_BASE
    retry_cap: float = DEFAULT_RETRY_CAP
    worker_poll_interval: float = 0.5
    #: SMTP relay for ``email`` subscriptions (an MSSanté operator's relay in production); empty = no email.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "gateway@localhost"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    run_worker: bool = True
    #: ``gateway serve`` processes sharing one HTTP and one MLLP port (PostgreSQL only beyond 1; about the
    #: machine's cores: one process is held by its GIL, PostgreSQL takes several writers)
    workers: int = DEFAULT_WORKERS
    #: Threads committing MLLP/HTTP messages in groups; 0: one on SQLite, four on PostgreSQL.
    ingest_writers: int = Field(default=0, ge=0, le=64)
    #: Where the gateway may create its SQLite store's directories; a path elsewhere must exist already.
    data_dir: Path = DEFAULT_DATA_DIR
    #: Browser origins allowed by CORS (``["*"]`` for any); empty: no CORS headers at all.
    cors_origins: list[str] = Field(default_factory=list)
    #: Proxies (addresses or networks) whose ``Forwarded`` / ``X-Forwarded-*`` headers are believed.
    trusted_proxies: list[str] = Field(default_factory=list)
    log_level: str = "INFO"
    log_format: str = "text"  # text | json
    sandbox_max_messages: int = DEFAULT_SANDBOX_MAX_MESSAGES
    #: ``0`` turns the per-client rate limit off.
    sandbox_rate_per_minute: float = DEFAULT_SANDBOX_RATE_PER_MINUTE
    sandbox_burst: int = DEFAULT_SANDBOX_BURST
    #: The isolated store of sandbox senders (empty: no sandbox tenants), e.g. ``sqlite:///./var/sandbox.db``.
    sandbox_database_url: str = ""
    #: Sandbox senders as ``MSH-3|MSH-4`` (``MSH-3`` alone: any facility), until the client registry says so.
    sandbox_senders: list[str] = Field(default_factory=list)

    def public_base(self) -> str:
        """``BASE_URL``; else what a trusted proxy said for this request; else the bind address.

        A wildcard bind address (``0.0.0.0``) is never put in a link: the machine's name stands in.
        """
        if self.base_url:
            return self.base_url.rstrip("/")
        forwarded = REQUEST_BASE.get()
        if forwarded:
            return forwarded
        host = self.http_host
        if host in WILDCARD_HOSTS:
            host = _machine_name()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http_port}/fhir"

    def is_trusted_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        for entry in self.trusted_proxies:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False

    def public_origin(self) -> str:
        """The public base without ``/fhir``: where ``/oauth/token`` lives."""
        return self.public_base().removesuffix("/fhir")

    def token_url(self) -> str:
        return f"{self.public_origin()}/oauth/token"

    @property
    def auth_required(self) -> bool:
        return self.auth.strip().lower() == "required"
