"""The gateway's exception tree; each error carries a stable code that reaches ACKs and OperationOutcomes.

GatewayError
├── ParseError            message unreadable (ACK AR, HL7 table 0357 code 100/102)
│   └── KeyTooLongError   MSH-3/4/10 longer than the store keeps (ACK AR, 102): refused, kept, never retried
├── UnsupportedError      message type or event not handled (ACK AR, 200/201)
├── MappingError          understood but a required element is missing/invalid (ACK AE, 101/103)
├── StateError            cannot be applied to the stored state (ACK AE, 207)
├── DuplicateControlIdError  MSH-10 reused with other content (ACK AE, 205)
├── StorageUnavailableError  database down: nothing stored (ACK AR, 207) — the sender must resend
├── ConfigError           mapping tables or settings invalid (fails start-up)
│   └── StartupError      the database or a port cannot be had at start-up (fails start-up)
└── FhirError             REST API problems (OperationOutcome, HTTP status)
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    code: ClassVar[str] = "207"  # HL7 table 0357 code
    ack_code: ClassVar[str] = "AE"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location


class ParseError(GatewayError):
    code = "102"
    ack_code = "AR"
    slug = "malformed-message"


class KeyTooLongError(ParseError):
    slug = "key-too-long"


class UnsupportedError(GatewayError):
    code = "200"
    ack_code = "AR"
    slug = "unsupported-message"


class UnsupportedEventError(UnsupportedError):
    code = "201"
    slug = "unsupported-event"


class MappingError(GatewayError):
    code = "101"
    ack_code = "AE"
    slug = "required-field-missing"


class InvalidValueError(MappingError):
    code = "103"
    slug = "invalid-value"


class StateError(GatewayError):
    code = "207"
    ack_code = "AE"
    slug = "cannot-apply"


class DuplicateControlIdError(GatewayError):
    code = "205"
    ack_code = "AE"
    slug = "duplicate-control-id"


class StorageUnavailableError(GatewayError):
    code = "207"
    ack_code = "AR"
    slug = "storage-unavailable"


class ConfigError(GatewayError):
    slug = "invalid-configuration"


class StartupError(ConfigError):
    """The configuration is well formed but the world refuses it: database unreachable, port busy."""

    slug = "startup-failed"


class FhirError(GatewayError):
    """An error answered as an OperationOutcome with ``status``."""

    slug = "processing"

    def __init__(self, message: str, *, status: int = 400, issue_code: str = "invalid", location: str = "") -> None:
        super().__init__(message, location=location)
        self.status = status
        self.issue_code = issue_code


class NotFoundError(FhirError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=404, issue_code="not-found")


class PreconditionFailedError(FhirError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=412, issue_code="conflict")
