"""The ingest use case, shared by MLLP, HTTP, replay and the sandbox: parse → map → store and apply → ACK.

The ACK is built only after the transaction holding the raw message and all its effects has committed,
so AA always means "durably stored and applied". Every message is kept, including rejected ones: when
applying fails, the transaction is rolled back and the raw message is stored again alone, with its error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine as DB
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway.db.engine import transaction
from gateway.db.repo import FactRepo, MessageRepo, StoredResource
from gateway.db.schema import MESSAGE_KEY_LENGTHS
from gateway.errors import (
    DuplicateControlIdError,
    GatewayError,
    KeyTooLongError,
    ParseError,
    StorageUnavailableError,
)
from gateway.hl7 import er7
from gateway.hl7.ack import AckIssue, build_ack, encode_ack
from gateway.mapping.engine import Engine, Mapped, read_header
from gateway.metrics import FOLD_SECONDS, timed
from gateway.state.apply import apply_message

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]
MAX_ATTEMPTS = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Outcome:
    """The result of one ingest: the ACK code and bytes, and what was stored."""

    code: str
    ack: bytes
    message_id: int | None
    status: str
    issues: list[AckIssue] = field(default_factory=list)
    changed: list[StoredResource] = field(default_factory=list)
    notifications: int = 0
    codec: str = "utf-8"

    @property
    def ack_text(self) -> str:
        return self.ack.decode("utf-8", errors="replace")


def _warnings(mapped: Mapped) -> list[AckIssue]:
    return [AckIssue(code="0", text=text, location=loc, severity="W") for loc, text in mapped.warnings]


def _error_issue(exc: GatewayError) -> AckIssue:
    return AckIssue(code=exc.code, text=exc.message, location=exc.location, severity="E")


def _header_values(message: er7.Message | None) -> dict[str, str]:
    if message is None:
        return {}
    header = read_header(message)
    return {
        "sending_application": header.sending_application,
        "sending_facility": header.sending_facility,
        "control_id": header.control_id,
        "message_type": header.message_type,
        "trigger": header.trigger,
    }


def _check_header(message: er7.Message) -> None:
    if not message.msh.get(10).strip():
        raise ParseError("MSH-10 (message control id) is empty", location="MSH-10")
    if not message.msh.get(9, 1).strip():
        raise ParseError("MSH-9 (message type) is empty", location="MSH-9")


#: Where each stored sender key comes from, for the ERR location of a key that is too long.
_KEY_FIELDS = {"sending_application": "MSH-3", "sending_facility": "MSH-4", "control_id": "MSH-10"}
_SEGMENT_END = re.compile(rb"\r\n|\n|\r")


def _check_key_lengths(message: er7.Message) -> None:
    """A key longer than its column would be stored cut and looked up whole: refuse it, precisely."""
    header = _header_values(message)
    for name, location in _KEY_FIELDS.items():
        limit = MESSAGE_KEY_LENGTHS[name]
        if limit and len(header[name]) > limit:
            raise KeyTooLongError(
                f"{location} is {len(header[name])} characters long; at most {limit} are accepted", location=location
            )


def normalised(raw: bytes) -> bytes:
    """The message with CR, LF or CRLF as CR and no trailing terminator: resends compare equal on this."""
    return _SEGMENT_END.sub(b"\r", raw).rstrip(b"\r")


def same_content(raw: bytes, previous: bytes) -> bool:
    return normalised(raw) == normalised(previous)


def _record(
    repo: MessageRepo,
    raw: bytes,
    message: er7.Message | None,
    *,
    transport: str,
    now: datetime,
    code: str,
    status: str,
    ack: str,
    error: GatewayError | None = None,
    duplicate_of: int | None = None,
) -> int:
    return repo.add(
        raw=raw,
        transport=transport,
        received_at=now,
        header=_header_values(message),
        outcome=code,
        status=status,
        ack=ack,
        error_code=error.code if error else None,
        error_text=error.message if error else None,
        duplicate_of=duplicate_of,
    )


def _outcome(
    code: str,
    ack: str,
    message: er7.Message | None,
    *,
    message_id: int | None,
    status: str,
    issues: list[AckIssue] | None = None,
) -> Outcome:
    codec = message.codec if message else "utf-8"
    return Outcome(code, encode_ack(ack, codec), message_id, status, issues or [], codec=codec)


class Pipeline:
    """One instance per process; thread-safe (each call opens its own transaction)."""

    def __init__(self, *, engine: Engine, db: DB, clock: Clock = utcnow, on_commit: Callable[[], None] | None = None):
        self.engine = engine
        self.db = db
        self.clock = clock
        self.on_commit = on_commit

    # -- ingest -----------------------------------------------------------------------------------

    def ingest(self, raw: bytes, *, transport: str) -> Outcome:
        """Store, apply and acknowledge one message. Never raises: every failure becomes an ACK.

        This is the loop boundary of one message: whatever escapes the steps below (a bug, a library
        surprise) still ends as an AE with an ERR and the raw message kept, so the feed goes on.
        """
        now = self.clock()
        try:
            return self._ingest(raw, transport=transport, now=now)
        except Exception as exc:
            logger.exception("unexpected error on ingest (%s)", transport)
            return self._last_resort(raw, exc, transport=transport, now=now)

    def _ingest(self, raw: bytes, *, transport: str, now: datetime) -> Outcome:
        message: er7.Message | None = None
        try:
            message = er7.parse(raw)
            _check_header(message)
            _check_key_lengths(message)
            mapped = self.engine.map(message)
        except GatewayError as exc:
            return self._store_rejected(raw, message, exc, transport=transport, now=now)
        except Exception as exc:
            logger.exception("unexpected error reading or mapping a message")
            error = GatewayError(f"internal error while reading the message ({type(exc).__name__})")
            return self._store_rejected(raw, message, error, transport=transport, now=now)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._apply(raw, message, mapped, transport=transport, now=now)
            except IntegrityError:
                # Another instance stored the same message or stream concurrently: try again, and the
                # duplicate check or the refold sees its committed work.
                logger.warning("concurrent write on ingest, retrying (attempt %d)", attempt)
                continue
            except OperationalError as exc:
                # Database down, locked past its timeout, or a serialization failure: transient.
                if attempt == MAX_ATTEMPTS:
                    return self._unavailable(message, exc, now=now)
                logger.warning("database error on ingest, retrying (attempt %d): %s", attempt, type(exc).__name__)
                continue
            except GatewayError as exc:
                return self._store_rejected(raw, message, exc, transport=transport, now=now)
            except Exception as exc:
                logger.exception("unexpected error applying message %s", mapped.header.control_id)
                error = GatewayError(f"internal error while applying the message ({type(exc).__name__})")
                return self._store_rejected(raw, message, error, transport=transport, now=now)
        return self._unavailable(message, None, now=now)

    def _last_resort(self, raw: bytes, exc: Exception, *, transport: str, now: datetime) -> Outcome:
        """Keep the raw message with an internal error; answer from its MSH if it can still be read."""
        error = GatewayError(f"internal error ({type(exc).__name__})")
        try:
            message: er7.Message | None = er7.parse(raw)
            return self._store_rejected(raw, message, error, transport=transport, now=now)
        except Exception:
            logger.exception("answering from the MSH failed too; answering without it")
        return self._store_rejected(raw, None, error, transport=transport, now=now)

    def _apply(self, raw: bytes, message: er7.Message, mapped: Mapped, *, transport: str, now: datetime) -> Outcome:
        header = _header_values(message)
        with transaction(self.db) as conn:
            repo = MessageRepo(conn)
            previous = repo.find_applied(
                sending_application=header["sending_application"],
                sending_facility=header["sending_facility"],
                control_id=header["control_id"],
            )
            if previous is not None:
                same = same_content(raw, previous.raw)
                return self._duplicate(repo, raw, message, previous.id, same=same, transport=transport, now=now)
            # The AA is written with the message: it only stands if the whole transaction commits.
            issues = _warnings(mapped)
            ack = build_ack(message, code="AA", issues=issues, now=now)
            message_id = repo.add(
                raw=raw,
                transport=transport,
                received_at=now,
                header=header,
                outcome="AA",
                status="applied",
                event_time=mapped.event_time,
                ack=ack,
            )
            with timed(FOLD_SECONDS):
                applied = apply_message(conn, mapped, message_id=message_id, now=now, tables=self.engine.tables)
        if applied.notifications and self.on_commit is not None:
            self.on_commit()
        logger.info("message applied", extra={"message_id": message_id, "changed": len(applied.changed)})
        outcome = _outcome("AA", ack, message, message_id=message_id, status="applied", issues=issues)
        outcome.changed, outcome.notifications = applied.changed, applied.notifications
        return outcome

    def _duplicate(
        self,
        repo: MessageRepo,
        raw: bytes,
        message: er7.Message,
        previous_id: int,
        *,
        same: bool,
        transport: str,
        now: datetime,
    ) -> Outcome:
        """Same sender + control id: a resend gets AA again and changes nothing; other content gets AE."""
        if same:
            ack = build_ack(message, code="AA", issues=[], now=now, text="duplicate: already applied")
            message_id = _record(
                repo,
                raw,
                message,
                transport=transport,
                now=now,
                code="AA",
                status="duplicate",
                ack=ack,
                duplicate_of=previous_id,
            )
            return _outcome("AA", ack, message, message_id=message_id, status="duplicate")
        error = DuplicateControlIdError(
            "MSH-10 was already used by this sender for a different message", location="MSH-10"
        )
        issue = _error_issue(error)
        ack = build_ack(message, code="AE", issues=[issue], now=now)
        message_id = _record(
            repo,
            raw,
            message,
            transport=transport,
            now=now,
            code="AE",
            status="rejected",
            ack=ack,
            error=error,
            duplicate_of=previous_id,
        )
        return _outcome("AE", ack, message, message_id=message_id, status="rejected", issues=[issue])

    def _store_rejected(
        self, raw: bytes, message: er7.Message | None, exc: GatewayError, *, transport: str, now: datetime
    ) -> Outcome:
        """Keep a message that could not be applied, with its error, so that it can be replayed later."""
        issue = _error_issue(exc)
        ack = build_ack(message, code=exc.ack_code, issues=[issue], now=now)
        status = "rejected" if exc.ack_code == "AR" else "error"
        try:
            with transaction(self.db) as conn:
                message_id = _record(
                    MessageRepo(conn),
                    raw,
                    message,
                    transport=transport,
                    now=now,
                    code=exc.ack_code,
                    status=status,
                    ack=ack,
                    error=exc,
                )
        except DBAPIError as db_exc:
            return self._unavailable(message, db_exc, now=now)
        except Exception as store_exc:
            logger.exception("storing a rejected message failed")
            return self._unavailable(message, store_exc, now=now)
        logger.info("message %s", status, extra={"message_id": message_id, "error_code": exc.code})
        return _outcome(exc.ack_code, ack, message, message_id=message_id, status=status, issues=[issue])

    def _unavailable(self, message: er7.Message | None, exc: Exception | None, *, now: datetime) -> Outcome:
        """Nothing could be stored: AR (HL7: rejected for reasons unrelated to content), so the sender resends."""
        logger.error("storage unavailable: %s", type(exc).__name__ if exc else "retries exhausted")
        error = StorageUnavailableError("the gateway cannot store messages right now; resend later")
        issue = _error_issue(error)
        ack = build_ack(message, code="AR", issues=[issue], now=now)
        return _outcome("AR", ack, message, message_id=None, status="unavailable", issues=[issue])

    # -- oversize frames and replay ---------------------------------------------------------------

    def reject_oversize(self, prefix: bytes, *, transport: str, limit: int) -> bytes:
        """A frame over the size limit: keep its head, answer AR from whatever MSH it carries."""
        now = self.clock()
        try:
            message: er7.Message | None = er7.parse(prefix.split(b"\r", 1)[0] + b"\r")
        except ParseError:
            message = None
        error = ParseError(f"message larger than {limit} bytes: not accepted", location="MSH")
        outcome = self._store_rejected(prefix, message, error, transport=transport, now=now)
        return outcome.ack

    def replay(self, message_id: int) -> Outcome:
        """Run a stored message through the pipeline again (after a mapping fix, say).

        An applied message is *reprocessed*: its facts are replaced by what the current mappings make of
        it, and what is refolded differently gets new versions (and notifications), listed in
        ``Outcome.changed``. Any other message (AE, AR) is ingested anew, as if resent.
        """
        with self.db.connect() as conn:
            record = MessageRepo(conn).get(message_id)
        if record is None:
            raise LookupError(message_id)
        if record.status != "applied":
            return self.ingest(record.raw, transport="replay")
        return self._reprocess(record.id, record.raw)

    def _reprocess(self, message_id: int, raw: bytes) -> Outcome:
        now = self.clock()
        message: er7.Message | None = None
        try:
            message = er7.parse(raw)
            mapped = self.engine.map(message)
            with transaction(self.db) as conn:
                FactRepo(conn).forget_message(message_id)
                applied = apply_message(conn, mapped, message_id=message_id, now=now, tables=self.engine.tables)
        except GatewayError as exc:  # the current mappings refuse it: the stored state stays as it was
            issue = _error_issue(exc)
            ack = build_ack(message, code=exc.ack_code, issues=[issue], now=now)
            return _outcome(exc.ack_code, ack, message, message_id=message_id, status="unchanged", issues=[issue])
        except DBAPIError as exc:
            return self._unavailable(message, exc, now=now)
        if applied.notifications and self.on_commit is not None:
            self.on_commit()
        logger.info("message reprocessed", extra={"message_id": message_id, "changed": len(applied.changed)})
        ack = build_ack(message, code="AA", issues=_warnings(mapped), now=now, text="reprocessed")
        outcome = _outcome("AA", ack, message, message_id=message_id, status="reprocessed", issues=_warnings(mapped))
        outcome.changed, outcome.notifications = applied.changed, applied.notifications
        return outcome
