"""Settings: one pydantic-settings object (``GATEWAY_*`` variables), built once at start and passed in."""

from __future__ import annotations

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
DEFAULT_DELIVERY_TIMEOUT = 10.0
#: Retries go on for a day by default: platforms may be down for a night (HAPI's one minute is the
#: weak spot we avoid). ``0`` means never give up.
DEFAULT_RETRY_HORIZON = 24 * 3600.0
DEFAULT_RETRY_BASE = 1.0
DEFAULT_RETRY_CAP = 600.0
DEFAULT_TOKEN_LIFETIME = 300


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
    mllp_idle_timeout: float = DEFAULT_MLLP_IDLE_TIMEOUT
    mappings_dir: Path = Field(default_factory=_default_mappings_dir)
    base_url: str = ""
    #: Operator shortcut for local use: this bearer token acts as an operator. With no client registered
    #: it guards FHIR and admin routes as before; registered clients use ``POST /oauth/token``.
    api_token: str = ""
    #: ``auto``: authentication is on once one client is registered; ``required``: always on.
    auth: str = "auto"
    #: access-token lifetime, seconds
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
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
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
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

    def public_base(self) -> str:
        return self.base_url.rstrip("/") or f"http://{self.http_host}:{self.http_port}/fhir"

    def public_origin(self) -> str:
        """The public base without ``/fhir``: where ``/oauth/token`` lives."""
        return self.public_base().removesuffix("/fhir")

    def token_url(self) -> str:
        return f"{self.public_origin()}/oauth/token"

    @property
    def auth_required(self) -> bool:
        return self.auth.strip().lower() == "required"
