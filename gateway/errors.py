"""The gateway's exception tree: each error says what happened, with a stable code for ACKs and outcomes.

Errors below the edges never choose an HTTP status: ``gateway.api.errors`` maps each class (by its MRO, as
Starlette looks up exception handlers) to a status and an OperationOutcome issue code, and the pipeline
maps the message branches to an ACK code and an HL7 table 0357 error code (``code`` / ``ack_code``).

GatewayError              anything unforeseen (ACK AE, 207)
├── ParseError            message unreadable (ACK AR, HL7 table 0357 code 100/102)
│   └── KeyTooLongError   MSH-3/4/10 longer than the store keeps (ACK AR, 102): refused, kept, never retried
├── UnsupportedError      message type not handled (ACK AR, 200)
│   └── UnsupportedEventError  trigger event not handled (ACK AR, 201)
├── MappingError          understood but a required element is missing/invalid (ACK AE, 101)
├── DuplicateControlIdError  MSH-10 reused with other content (ACK AE, 205)
├── StorageError          the database failed (translated once, in ``gateway.db.engine``)
│   ├── StorageConflictError     a concurrent writer won (unique index): retry, then see its work
│   └── StorageUnavailableError  database down, locked or serialization failure: nothing stored (ACK AR,
│                                207) — the sender must resend
├── SenderNotAllowedError    MSH-4 is not one of the authenticated sender's facilities (ACK AR, 207)
├── ConfigError           mapping tables or settings invalid (fails start-up; never answers a message)
│   └── StartupError      the database or a port cannot be had at start-up (fails start-up)
├── TransportError        a request body refused before anything read it (an HL7 one gets no ACK)
│   ├── MediaTypeError    Content-Type is not one the route takes
│   └── BodyTooLargeError larger than the route's limit
├── FhirError             a REST request refused (OperationOutcome): malformed in general
│   ├── StructureError           the body does not parse as the resource it must be
│   ├── RequiredElementError     an element the operation needs is absent
│   ├── ElementValueError        an element's value is refused
│   ├── EndpointRefusedError     a channel endpoint the gateway will not call (SSRF guard)
│   ├── NotSupportedError        a feature, channel or parameter this server does not offer
│   │   └── UnsupportedSearchError   a search (or criteria) parameter not supported
│   ├── NotAcceptableError       only application/fhir+json is answered (``_format`` / ``Accept``)
│   ├── UnsupportedMediaTypeError   a body in a media type the operation does not take
│   ├── TooCostlyError           more work than one request gets (a JSON body nested too deep)
│   │   └── SearchFormTooLargeError  a ``POST _search`` form over its bound
│   ├── NotFoundError            no such resource (or message)
│   │   └── UnknownTypeError     a resource type not served here
│   ├── GoneError                the resource (version) is a deletion
│   ├── PreconditionFailedError  ``If-Match`` names another version
│   ├── BusinessRuleError        well formed, but the care circle's rules refuse it
│   ├── ProfileViolationError    the resource breaks an invariant of the profile it claims
│   │   ├── ProfileRequiredError     … an element the profile requires is absent
│   │   ├── ProfileValueError        … an element's value is refused by the profile
│   │   ├── ProfileCodeError         … a code outside the profile's value set
│   │   └── ProfileUnsupportedError  … a profile feature this server does not offer
│   ├── AuthenticationError      no or bad credential (``WWW-Authenticate``)
│   └── ForbiddenError           authenticated, but not allowed
└── OAuthError            token endpoint errors (RFC 6749 JSON: invalid_client, invalid_scope…)
    └── InvalidClientError    the client failed to authenticate
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose; raised itself for the unforeseen (ACK AE, 207)."""

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


class DuplicateControlIdError(GatewayError):
    code = "205"
    ack_code = "AE"
    slug = "duplicate-control-id"


class StorageError(GatewayError):
    """The database refused a statement for a reason that retrying will not fix (a bug, not the input)."""

    code = "207"
    ack_code = "AE"
    slug = "storage-error"


class StorageConflictError(StorageError):
    """Another transaction (perhaps another gateway instance) wrote the same unique key first."""

    slug = "storage-conflict"


class StorageUnavailableError(StorageError):
    code = "207"
    ack_code = "AR"
    slug = "storage-unavailable"


class SenderNotAllowedError(GatewayError):
    code = "207"
    ack_code = "AR"
    slug = "facility-not-allowed"


class ConfigError(GatewayError):
    """Invalid tables or settings: start-up fails, so no message is ever answered with it (no ACK code)."""

    slug = "invalid-configuration"


class StartupError(ConfigError):
    """The configuration is well formed but the world refuses it: database unreachable, port busy."""

    slug = "startup-failed"


class TransportError(GatewayError):
    """A request body refused before anything read it: for HL7 over HTTP, nothing stored and no ACK."""

    slug = "transport-refused"


class MediaTypeError(TransportError):
    slug = "body-media-type"


class BodyTooLargeError(TransportError):
    slug = "body-too-large"


class FhirError(GatewayError):
    """A REST request refused; answered as an OperationOutcome (status and issue code: ``gateway.api.errors``)."""

    slug = "invalid-request"


class StructureError(FhirError):
    slug = "invalid-structure"


class RequiredElementError(FhirError):
    slug = "required-element"


class ElementValueError(FhirError):
    slug = "invalid-element"


class EndpointRefusedError(FhirError):
    """A subscriber's endpoint the gateway will not call (private address, bad scheme): a security refusal."""

    slug = "endpoint-refused"


class NotSupportedError(FhirError):
    slug = "not-supported"


class UnsupportedSearchError(NotSupportedError):
    slug = "unsupported-search"


class NotAcceptableError(FhirError):
    slug = "not-acceptable"


class UnsupportedMediaTypeError(FhirError):
    slug = "unsupported-media-type"


class TooCostlyError(FhirError):
    """More work than the server will do for one request (a JSON body nested too deep)."""

    slug = "too-costly"


class SearchFormTooLargeError(TooCostlyError):
    slug = "search-form-too-large"


class NotFoundError(FhirError):
    slug = "not-found"


class UnknownTypeError(NotFoundError):
    slug = "unknown-resource-type"


class GoneError(FhirError):
    slug = "deleted"


class PreconditionFailedError(FhirError):
    slug = "version-conflict"


class BusinessRuleError(FhirError):
    """Well formed and valid, but a rule of the care circle (ownership, merged patient) refuses the change."""

    slug = "business-rule"


class ProfileViolationError(FhirError):
    """The resource breaks the profile it claims (NdE): the element at fault is in ``location``."""

    slug = "profile-invariant"


class ProfileRequiredError(ProfileViolationError):
    slug = "profile-required"


class ProfileValueError(ProfileViolationError):
    slug = "profile-value"


class ProfileCodeError(ProfileViolationError):
    slug = "profile-code"


class ProfileUnsupportedError(ProfileViolationError):
    slug = "profile-not-supported"


class AuthenticationError(FhirError):
    """Missing, malformed, expired, forged, revoked: answered with ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    slug = "invalid-token"

    def __init__(self, message: str, *, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.error = error

    def www_authenticate(self) -> str:
        text = self.message.replace('"', "'")
        return f'Bearer realm="gateway", error="{self.error}", error_description="{text}"'


class ForbiddenError(FhirError):
    """The caller is known but its kind or scopes do not allow this."""

    slug = "forbidden"


class OAuthError(GatewayError):
    """An RFC 6749 section 5.2 error from ``POST /oauth/token``."""

    slug = "oauth-error"

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


class InvalidClientError(OAuthError):
    """The client failed to authenticate (RFC 6749 5.2 ``invalid_client``, answered 401)."""

    slug = "invalid-client"

    def __init__(self, description: str) -> None:
        super().__init__("invalid_client", description)
