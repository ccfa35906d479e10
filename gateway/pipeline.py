"""The ingest use case, shared by MLLP, HTTP, replay and the sandbox: parse → map → store and apply → ACK.

The ACK is built only after the transaction holding the raw message and all its effects has committed,
so AA always means "durably stored and applied". Every message is kept, including rejected ones: when
applying fails, the transaction is rolled back and the raw message is stored again alone, with its error.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from gateway.clock import utcnow
from gateway.db.engine import Database as DB
from gateway.db.engine import KeptConnection, reading, transaction
from gateway.db.repo import MessageRepo, StoredResource
from gateway.db.schema import MESSAGE_KEY_LENGTHS
from gateway.db.unit import UnitOfWork, batch, unit_of_work
from gateway.errors import (
    DuplicateControlIdError,
    GatewayError,
    KeyTooLongError,
    NotFoundError,
    ParseError,
    SenderNotAllowedError,
    StorageConflictError,
    StorageError,
    StorageUnavailableError,
)
from gateway.hl7 import er7
from gateway.hl7.ack import AckIssue, build_ack, encode_ack
from gateway.mapping.engine import Engine, Header, Mapped, read_header
from gateway.metrics import FOLD_SECONDS, timed
from gateway.state.apply import Applied, apply_message

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]
T = TypeVar("T")
MAX_ATTEMPTS = 3
#: Messages committed together at most (group commit); they come from different connections, since each
#: connection waits for its ACK before sending the next message.
MAX_GROUP = 64
#: Messages committed together by :meth:`Pipeline.ingest_groups` (``gateway import``), which has them all at
#: hand: on SQLite a quarter of the commits (and fsyncs) of groups of 64, for a transaction of a few MB of
#: WAL. PostgreSQL imported slower with 256 (77 / 77 against 87 / 91 msg/s for groups of 64, interleaved,
#: ``bench/import_files.py --messages 2000``): it keeps ``MAX_GROUP``.
IMPORT_GROUP = 256
#: Writer threads on PostgreSQL when GATEWAY_INGEST_WRITERS does not say (see :meth:`Pipeline.start_writer`).
DEFAULT_PG_WRITERS = 4


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
    return _header_fields(read_header(message)) if message is not None else {}


def _header_fields(header: Header) -> dict[str, str]:
    """The header's values stored with the message (its sender keys, type and trigger)."""
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


def _check_facility(header: Header, facilities: frozenset[str] | None) -> None:
    """Sender binding (#13): a sender posts only as one of its registered facilities (MSH-4, or its
    namespace id); any other claim is kept and answered AR."""
    if facilities is None:
        return
    claimed = header.sending_facility
    if claimed in facilities or claimed.split("^")[0] in facilities:
        return
    if not facilities:
        raise SenderNotAllowedError(
            "this connection may send for no facility: unregistered client certificate, or plain MLLP "
            "from a network the operator did not declare trusted",
            location="MSH-4",
        )
    raise SenderNotAllowedError(f"MSH-4 {claimed!r} is not a facility registered for this sender", location="MSH-4")


#: Where each stored sender key comes from, for the ERR location of a key that is too long.
_KEY_FIELDS = {"sending_application": "MSH-3", "sending_facility": "MSH-4", "control_id": "MSH-10"}
_SEGMENT_END = re.compile(rb"\r\n|\n|\r")


def _check_key_lengths(header: Header) -> None:
    """A key longer than its column would be stored cut and looked up whole: refuse it, precisely."""
    values = _header_fields(header)
    for name, location in _KEY_FIELDS.items():
        limit = MESSAGE_KEY_LENGTHS[name]
        if limit and len(values[name]) > limit:
            raise KeyTooLongError(
                f"{location} is {len(values[name])} characters long; at most {limit} are accepted", location=location
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


@dataclass(slots=True)
class _Pending:
    """A mapped message waiting for the group commit; ``outcome`` stays None if it must go alone."""

    raw: bytes
    message: er7.Message
    mapped: Mapped
    transport: str
    now: datetime
    outcome: Outcome | None = None
    #: the submitter's context (log correlation ids), when the writer thread applies it
    context: contextvars.Context | None = None


@dataclass(slots=True)
class _Refused:
    """A message refused before it is applied (parse, header, sender binding, map). Reading never writes:
    the refusal is stored by :meth:`Pipeline._commit_reads`, with its group, in the group's order."""

    raw: bytes
    message: er7.Message | None
    error: GatewayError
    transport: str
    now: datetime
    context: contextvars.Context | None = None


@dataclass(slots=True)
class _Failed:
    """Reading a message raised unexpectedly (a bug, the sender binding's store): the writer keeps it
    (:meth:`Pipeline._last_resort`)."""

    raw: bytes
    error: Exception
    transport: str
    now: datetime
    context: contextvars.Context | None = None


#: What reading a message gives: ready to apply, refused, or failed.
_Read = _Pending | _Refused | _Failed


@dataclass(slots=True)
class _Job:
    """A message handed to the writer thread (:meth:`Pipeline.submit`), answered through ``future``."""

    raw: bytes
    transport: str
    now: datetime
    facilities: Callable[[], frozenset[str] | None] | None
    #: where the outcome goes: :meth:`Pipeline.submit`'s future, or :meth:`Pipeline.ingest_async`'s waiter
    future: Future[Outcome] | asyncio.Future[Outcome]
    #: the submitter's context, so that what the writer logs for it carries its correlation ids
    context: contextvars.Context


def _logged(outcome: Outcome) -> Outcome:
    """Log an applied message once its transaction has committed (a group tried without savepoints may be
    rolled back and applied again: it would otherwise be logged twice, once under an id that never was)."""
    if outcome.status == "applied":
        logger.info("message applied", extra={"message_id": outcome.message_id, "changed": len(outcome.changed)})
    return outcome


def _in_context(item: _Read, call: Callable[..., Outcome], *args: object) -> Outcome:
    """``call(*args)`` in the context the message was submitted in (its log correlation ids), if any."""
    return item.context.run(call, *args) if item.context is not None else call(*args)


#: Put on the writers' queue by :meth:`Pipeline.stop_writer`, once per thread: each ends after what came before it.
_STOP = None
#: Seconds a writer keeps a SAVEPOINT per message after a message of a group failed (:meth:`Pipeline._commit_group`).
SAVEPOINT_SECONDS = 10.0


def _answer(jobs: list[_Job], outcomes: list[Outcome]) -> None:
    """Give each job its outcome: a :meth:`Pipeline.submit` future at once, the waiters of each event loop
    in one call on that loop. A waiter cancelled meanwhile (its connection closed, the server stopping)
    is skipped: its message stands as committed, and the writer goes on."""
    waiters: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outcome], Outcome]]] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(job.future, asyncio.Future):
            waiters.setdefault(job.future.get_loop(), []).append((job.future, outcome))
        elif job.future.set_running_or_notify_cancel():
            job.future.set_result(outcome)
    for loop, answers in waiters.items():
        try:
            loop.call_soon_threadsafe(_resolve, answers)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            logger.warning("%d outcomes not delivered: their event loop is closed", len(answers))


def _resolve(answers: list[tuple[asyncio.Future[Outcome], Outcome]]) -> None:
    """On the waiters' loop: set each outcome, unless its waiter was cancelled."""
    for waiter, outcome in answers:
        if not waiter.done():
            waiter.set_result(outcome)


def _take(source: queue.SimpleQueue[T | None], most: int) -> tuple[list[T], bool]:
    """Wait for one entry, then take every other one waiting, up to ``most``; and whether :data:`_STOP`
    came (nothing after it is taken: it is for whoever reads the queue next)."""
    first = source.get()
    if first is _STOP:
        return [], True
    taken = [first]
    while len(taken) < most:
        try:
            entry = source.get_nowait()
        except queue.Empty:
            break
        if entry is _STOP:
            return taken, True
        taken.append(entry)
    return taken, False


class _Abandoned(Exception):
    """A message of a group without savepoints failed: the group's transaction is rolled back whole."""


class Pipeline:
    """One instance per process; thread-safe.

    Group commit: :meth:`submit` (MLLP and HTTP) hands a message to a writer thread, which takes every
    message waiting, parses and maps each, applies each in a SAVEPOINT of one transaction, commits once, and
    only then answers them all. One thread doing all the work (on SQLite) avoids threads contending for the
    GIL and the write lock, and the group is whatever arrived while the previous one was committed;
    :meth:`ingest_many` (``gateway import``) groups the messages it is given. A message that fails rolls
    back alone and is then taken again on its own (:meth:`_ingest_alone`), where it is stored as rejected
    or retried exactly as before. :meth:`ingest` (replay, the sandbox's trials, ``gateway convert``)
    applies one message in its own transaction.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        db: DB,
        clock: Clock = utcnow,
        on_commit: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self.db = db
        self.clock = clock
        self.on_commit = on_commit
        #: GATEWAY_CONFIDENTIAL_PLATFORM_ACCESS: platforms hear of PD1-12 = Y patients too (#13)
        self.confidential_to_platforms = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writers: list[threading.Thread] = []
        #: writer threads (GATEWAY_INGEST_WRITERS); 0: one on SQLite, ``DEFAULT_PG_WRITERS`` on PostgreSQL
        self.writers = 0
        #: ``time.monotonic()`` until which groups are applied with a SAVEPOINT per message
        self._savepoints_until = 0.0

    # -- the writer thread ------------------------------------------------------------------------

    def start_writer(self, writers: int | None = None) -> None:
        """Start the writer threads that :meth:`submit` feeds (idempotent).

        One on SQLite, which has one writer at a time anyway. On PostgreSQL a message's ~30 statements are
        as many round trips, during which a thread holds no CPU: several writers, each committing its own
        group on its own connection, overlap them (the per-stream locks keep a patient's messages in order).
        """
        if self._writers:
            return
        count = writers or self.writers or (1 if self.db.dialect.name == "sqlite" else DEFAULT_PG_WRITERS)
        self._writers = [
            threading.Thread(target=self._write_loop, name=f"ingest-writer-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._writers:
            thread.start()

    def stop_writer(self, timeout: float = 30.0) -> None:
        """Answer what was submitted, then end the writer threads; a later :meth:`submit` starts them again."""
        writers, self._writers = self._writers, []
        for _ in writers:
            self._jobs.put(_STOP)
        for thread in writers:
            thread.join(timeout)

    def submit(
        self,
        raw: bytes,
        *,
        transport: str,
        facilities: Callable[[], frozenset[str] | None] | None = None,
    ) -> Future[Outcome]:
        """Queue one message for the writer thread; the future's outcome is set once it is committed.

        ``facilities`` is called in the writer thread (it may read the store): the authenticated sender's
        registered MSH-4 values, or None when not checked.
        """
        future: Future[Outcome] = Future()
        self._queue(_Job(raw, transport, self.clock(), facilities, future, contextvars.copy_context()))
        return future

    async def ingest_async(
        self,
        raw: bytes,
        *,
        transport: str,
        facilities: Callable[[], frozenset[str] | None] | None = None,
    ) -> Outcome:
        """:meth:`submit`, awaited: the event loop only waits, all the work is in the writer thread, which
        answers a whole group's waiters on one loop in one call (one wake-up of the loop, not one each)."""
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue(_Job(raw, transport, self.clock(), facilities, waiter, contextvars.copy_context()))
        return await waiter

    def _queue(self, job: _Job) -> None:
        if not self._writers:
            self.start_writer()
        self._jobs.put(job)

    def _write_loop(self) -> None:
        """Take and write groups until :data:`_STOP`, on one connection kept across them (given back at the end)."""
        kept = KeptConnection(self.db)
        try:
            with kept.used():
                while True:
                    jobs, stop = _take(self._jobs, MAX_GROUP)
                    if jobs:
                        self._write(jobs)
                    if stop:
                        return
        finally:
            kept.close()

    def _write(self, jobs: list[_Job]) -> None:
        """Read, commit and answer one group. A loop boundary: every job gets an outcome."""
        outcomes = self._commit_reads([job.context.run(self._read_job, job) for job in jobs])
        _answer(jobs, outcomes)

    def _commit_reads(self, items: list[_Read]) -> list[Outcome]:
        """Store the refused and failed reads (each in its own transaction, as always), apply and commit the
        others in one group; every item gets an outcome (:meth:`_settle` never raises)."""
        settled = [item if isinstance(item, _Pending) else _in_context(item, self._store_read, item) for item in items]
        group = [item for item in settled if isinstance(item, _Pending)]
        if group:
            try:
                self._commit_group(group)
            except Exception:  # a loop boundary: each message is taken again alone below
                logger.exception("group commit failed unexpectedly")
        return [item if isinstance(item, Outcome) else self._settle(item) for item in settled]

    def _store_read(self, item: _Refused | _Failed) -> Outcome:
        try:
            return self._stored_read(item)
        except Exception as exc:  # a loop boundary: the message is still kept, and answered
            logger.exception("unexpected error storing a refused message (%s)", item.transport)
            return self._last_resort(item.raw, exc, transport=item.transport, now=item.now)

    def _stored_read(self, item: _Refused | _Failed) -> Outcome:
        if isinstance(item, _Refused):
            return self._store_rejected(item.raw, item.message, item.error, transport=item.transport, now=item.now)
        return self._last_resort(item.raw, item.error, transport=item.transport, now=item.now)

    def _read_job(self, job: _Job) -> _Read:
        try:
            facilities = job.facilities() if job.facilities is not None else None
            item = self._read(job.raw, transport=job.transport, now=job.now, facilities=facilities)
        except Exception as exc:
            logger.exception("unexpected error preparing a message (%s)", job.transport)
            return _Failed(job.raw, exc, job.transport, job.now, job.context)
        item.context = job.context
        return item

    def _settle(self, item: _Pending) -> Outcome:
        """The outcome of a group member: its own, or, when it failed in the group, that of going alone."""
        if item.outcome is not None:
            return item.outcome
        return _in_context(item, self._alone, item)

    def _alone(self, item: _Pending) -> Outcome:
        try:
            return self._ingest_alone(item.raw, item.message, item.mapped, transport=item.transport, now=item.now)
        except Exception as exc:
            logger.exception("unexpected error on ingest (%s)", item.transport)
            return self._last_resort(item.raw, exc, transport=item.transport, now=item.now)

    # -- ingest -----------------------------------------------------------------------------------

    def ingest(self, raw: bytes, *, transport: str, facilities: frozenset[str] | None = None) -> Outcome:
        """Store, apply and acknowledge one message. Never raises: every failure becomes an ACK.

        This is the loop boundary of one message: whatever escapes the steps below (a bug, a library
        surprise) still ends as an AE with an ERR and the raw message kept, so the feed goes on.

        ``facilities``: the authenticated sender's registered MSH-4 values (None: not checked).
        """
        now = self.clock()
        try:
            return self._ingest(raw, transport=transport, now=now, facilities=facilities)
        except Exception as exc:
            logger.exception("unexpected error on ingest (%s)", transport)
            return self._last_resort(raw, exc, transport=transport, now=now)

    def _ingest(
        self, raw: bytes, *, transport: str, now: datetime, facilities: frozenset[str] | None = None
    ) -> Outcome:
        item = self._prepare(raw, transport=transport, now=now, facilities=facilities)
        if isinstance(item, Outcome):
            return item
        return self._ingest_alone(item.raw, item.message, item.mapped, transport=transport, now=now)

    def _prepare(
        self, raw: bytes, *, transport: str, now: datetime | None = None, facilities: frozenset[str] | None = None
    ) -> _Pending | Outcome:
        """Parse and map; a message that fails here is stored as rejected at once."""
        item = self._read(raw, transport=transport, now=now or self.clock(), facilities=facilities)
        return item if isinstance(item, _Pending) else self._store_read(item)

    def _read(
        self, raw: bytes, *, transport: str, now: datetime, facilities: frozenset[str] | None = None
    ) -> _Pending | _Refused:
        """Parse, check and map, without storing anything (so that it may run beside a writer)."""
        message: er7.Message | None = None
        try:
            message = er7.parse(raw)
            _check_header(message)
            header = read_header(message)  # once: the checks, the map and the stored row all use it
            _check_key_lengths(header)
            _check_facility(header, facilities)
            mapped = self.engine.map(message, header=header)
        except GatewayError as exc:
            return _Refused(raw, message, exc, transport, now)
        except Exception as exc:
            logger.exception("unexpected error reading or mapping a message")
            error = GatewayError(f"internal error while reading the message ({type(exc).__name__})")
            return _Refused(raw, message, error, transport, now)
        return _Pending(raw, message, mapped, transport, now)

    def ingest_many(self, raws: Sequence[bytes], *, transport: str) -> list[Outcome]:
        """The bulk path (``gateway import``): messages in the given order, up to ``IMPORT_GROUP`` per commit.

        Same guarantees as :meth:`ingest` message by message (a failing one rolls back alone and is stored
        as rejected); only the commits are shared.
        """
        return [outcome for group in self.ingest_groups(raws, transport=transport) for outcome in group]

    def ingest_groups(
        self, raws: Sequence[bytes], *, transport: str, size: int | None = None
    ) -> Iterator[list[Outcome]]:
        """:meth:`ingest_many`, group by group (``IMPORT_GROUP`` messages on SQLite, ``MAX_GROUP`` on
        PostgreSQL), each group's outcomes once it is committed, so that ``gateway import`` shows its
        progress."""
        size = size or (IMPORT_GROUP if self.db.dialect.name == "sqlite" else MAX_GROUP)
        kept = KeptConnection(self.db)  # one connection for all the groups (kept only while a group is written)
        try:
            for offset in range(0, len(raws), size):
                with kept.used():
                    outcomes = self._commit_reads(self._read_all(raws[offset : offset + size], transport))
                yield outcomes
        finally:
            kept.close()

    def _read_all(self, raws: Sequence[bytes], transport: str) -> list[_Read]:
        return [self._read_one(raw, transport) for raw in raws]

    def _read_one(self, raw: bytes, transport: str) -> _Read:
        now = self.clock()
        try:
            return self._read(raw, transport=transport, now=now)
        except Exception as exc:  # a loop boundary: the message is kept by the writer (_last_resort)
            logger.exception("unexpected error preparing a message (%s)", transport)
            return _Failed(raw, exc, transport, now)

    def _ingest_alone(
        self, raw: bytes, message: er7.Message, mapped: Mapped, *, transport: str, now: datetime
    ) -> Outcome:
        """One message in its own transaction, with retries; every failure becomes an ACK."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._apply(raw, message, mapped, transport=transport, now=now)
            except StorageConflictError:
                # Another instance stored the same message or stream concurrently: try again, and the
                # duplicate check or the refold sees its committed work.
                logger.warning("concurrent write on ingest, retrying (attempt %d)", attempt)
                continue
            except StorageUnavailableError as exc:
                # Database down, locked past its timeout, or a serialization failure: transient.
                if attempt == MAX_ATTEMPTS:
                    return self._unavailable(message, exc, now=now)
                logger.warning("database error on ingest, retrying (attempt %d): %s", attempt, exc.message)
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

    def _commit_group(self, group: list[_Pending]) -> None:
        """Apply ``group`` in one transaction, first without savepoints: most groups have no message that
        fails while it is applied (bad input is refused before, by the parse and the map). When one does,
        the whole transaction is rolled back and the group applied again with a SAVEPOINT per message,
        as are the groups of the next :data:`SAVEPOINT_SECONDS` (a feed sending such messages sends more).

        A message alone takes the ordinary path (no savepoint). In a group, a message whose outcome is left
        None (it failed, or the commit did) is taken again alone by :meth:`_settle`.
        """
        if len(group) == 1:
            group[0].outcome = self._settle(group[0])
            return
        outcomes = None
        if time.monotonic() >= self._savepoints_until:
            outcomes = self._group_transaction(group, savepoints=False)
            if outcomes is None:
                self._savepoints_until = time.monotonic() + SAVEPOINT_SECONDS
        if outcomes is None:  # (with savepoints a failing message rolls back alone: never None)
            outcomes = self._group_transaction(group, savepoints=True) or [None] * len(group)
        for item, outcome in zip(group, outcomes, strict=True):
            item.outcome = outcome if outcome is None else _in_context(item, _logged, outcome)
        if self.on_commit is not None and any(o is not None and o.notifications for o in outcomes):
            self.on_commit()

    def _group_transaction(self, group: list[_Pending], *, savepoints: bool) -> list[Outcome | None] | None:
        """The group's outcomes (None for a message that failed under its savepoint), or, without
        savepoints, None as soon as one message fails: the transaction is then rolled back whole."""
        try:
            with batch(self.db) as tx:
                outcomes = []
                for item in group:
                    outcome = self._apply_in_group(tx.message(savepoint=savepoints), item)
                    if outcome is None and not savepoints:
                        raise _Abandoned
                    outcomes.append(outcome)
                return outcomes
        except _Abandoned:
            return None
        except GatewayError as exc:
            # The commit itself failed: nothing of the group stands, each message goes again alone.
            logger.warning("group commit of %d messages failed: %s", len(group), exc.message)
            return [None] * len(group)

    def _apply_in_group(self, unit: AbstractContextManager[UnitOfWork], item: _Pending) -> Outcome | None:
        """Apply one message of a group under its savepoint; None when it failed (it rolled back alone)."""
        try:
            with unit as uow:
                return _in_context(item, self._apply_pending, uow, item)
        except Exception:  # a loop boundary: the message is taken again alone, and reported there
            return None

    def _apply_pending(self, uow: UnitOfWork, item: _Pending) -> Outcome:
        return self._apply_in(uow, item.raw, item.message, item.mapped, transport=item.transport, now=item.now)

    def _apply(self, raw: bytes, message: er7.Message, mapped: Mapped, *, transport: str, now: datetime) -> Outcome:
        with unit_of_work(self.db) as uow:
            outcome = self._apply_in(uow, raw, message, mapped, transport=transport, now=now)
        _logged(outcome)
        if outcome.notifications and self.on_commit is not None:
            self.on_commit()
        return outcome

    def _apply_in(
        self, uow: UnitOfWork, raw: bytes, message: er7.Message, mapped: Mapped, *, transport: str, now: datetime
    ) -> Outcome:
        """The one place a message is applied: duplicate check, the message row with its AA, the state."""
        header = _header_fields(mapped.header)
        repo = uow.messages
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
        applied = self._fold(uow, mapped, message_id=message_id, now=now)
        outcome = _outcome("AA", ack, message, message_id=message_id, status="applied", issues=issues)
        outcome.changed, outcome.notifications = applied.changed, applied.notifications
        return outcome

    def _fold(self, uow: UnitOfWork, mapped: Mapped, *, message_id: int, now: datetime) -> Applied:
        """The state change of one message (ingest and reprocessing alike), timed for ``/metrics``."""
        with timed(FOLD_SECONDS):
            return apply_message(
                uow,
                mapped,
                message_id=message_id,
                now=now,
                tables=self.engine.tables,
                confidential_to_platforms=self.confidential_to_platforms,
            )

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
        except StorageError as db_exc:
            return self._unavailable(message, db_exc, now=now)
        except Exception as store_exc:
            logger.exception("storing a rejected message failed")
            return self._unavailable(message, store_exc, now=now)
        logger.info("message %s", status, extra={"message_id": message_id, "error_code": exc.code})
        return _outcome(exc.ack_code, ack, message, message_id=message_id, status=status, issues=[issue])

    def _unavailable(self, message: er7.Message | None, exc: Exception | None, *, now: datetime) -> Outcome:
        """Nothing could be stored: AR (HL7: rejected for reasons unrelated to content), so the sender resends."""
        reason = (exc.message if isinstance(exc, GatewayError) else type(exc).__name__) if exc else "retries exhausted"
        logger.error("storage unavailable: %s", reason)
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
        with reading(self.db) as conn:
            record = MessageRepo(conn).get(message_id)
        if record is None:
            raise NotFoundError(f"message {message_id} not found")
        if record.status != "applied":
            return self.ingest(record.raw, transport="replay")
        return self._reprocess(record.id, record.raw)

    def _reprocess(self, message_id: int, raw: bytes) -> Outcome:
        now = self.clock()
        message: er7.Message | None = None
        try:
            message = er7.parse(raw)
            mapped = self.engine.map(message)
            with unit_of_work(self.db) as uow:
                uow.facts.forget_message(message_id)
                applied = self._fold(uow, mapped, message_id=message_id, now=now)
        except StorageError as exc:
            return self._unavailable(message, exc, now=now)
        except GatewayError as exc:  # the current mappings refuse it: the stored state stays as it was
            issue = _error_issue(exc)
            ack = build_ack(message, code=exc.ack_code, issues=[issue], now=now)
            return _outcome(exc.ack_code, ack, message, message_id=message_id, status="unchanged", issues=[issue])
        if applied.notifications and self.on_commit is not None:
            self.on_commit()
        logger.info("message reprocessed", extra={"message_id": message_id, "changed": len(applied.changed)})
        ack = build_ack(message, code="AA", issues=_warnings(mapped), now=now, text="reprocessed")
        outcome = _outcome("AA", ack, message, message_id=message_id, status="reprocessed", issues=_warnings(mapped))
        outcome.changed, outcome.notifications = applied.changed, applied.notifications
        return outcome
