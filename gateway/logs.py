"""Logging: text or one JSON object per line, a level, and correlation ids carried by context.

A correlation id follows the work, not the logger call: the HTTP edge binds ``request_id``, the pipeline
binds ``message_id`` (the stored message's id) and ``control_id`` (MSH-10), and every record logged
meanwhile, in any module and in worker threads (``contextvars`` are copied to them), carries them.
Fields passed as ``extra=`` are kept too. Nothing here adds message bodies or resource contents: the
callers log ids and counts, never health data.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
HANDLER_NAME = "gateway"
#: What every ``LogRecord`` has; anything else on a record came through ``extra=`` or the context.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("gateway_log_context", default=None)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block (nested blocks add to the outer ones)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the current context until it ends (a request, a worker thread's task)."""
    _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


_SAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


def control_id_of(raw: bytes) -> str | None:
    """MSH-10 read from the first bytes, before any parsing (which may fail): the message's own id."""
    head = raw.lstrip(b"\x0b\r\n ")[:1024].split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not head.startswith(b"MSH") or len(head) < 4:
        return None
    fields = head.split(head[3:4])
    value = fields[9].decode("latin-1") if len(fields) > 9 else ""
    return _SAFE_ID.sub("_", value)[:64] or None


def current() -> dict[str, Any]:
    return dict(_CONTEXT.get() or {})


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (without overwriting what ``extra=`` set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


#: uvicorn's ANSI-coloured copy of its message: noise in any format.
_DROPPED = frozenset({"color_message"})
#: Fields the access log's text already spells out; kept in JSON, where they are the point.
_SAID_IN_TEXT = frozenset({"http_method", "http_path", "http_status", "duration_ms"})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k not in _DROPPED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the correlation and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The human format, with the correlation and extra fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items() if k not in _SAID_IN_TEXT)
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{extra}]{sep}{tail}"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per test)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(*, level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Set up the root logger once per process (the CLI calls it; tests leave logging alone)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler: others (a test runner's capture, say) stay.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != HANDLER_NAME] + [handler]
    root.setLevel(level.upper())
    # httpx logs request URLs, and search URLs can carry patient identifiers: keep them out of the logs.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # uvicorn's own handlers would print in their format: route its records through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
