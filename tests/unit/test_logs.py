"""Log lines: JSON or text, correlation ids from the context and from ``extra=``, MSH-10 read safely."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from gateway import logs


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    yield out
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != logs.HANDLER_NAME]


def test_json_lines_carry_context_and_extra_fields(stream: io.StringIO) -> None:
    logs.configure(level="INFO", fmt="json", stream=stream)
    log = logging.getLogger("gateway.test")
    with logs.bound(request_id="r-1", control_id="MSG-7"):
        log.info("message %s", "applied", extra={"message_id": 42})
    log.debug("hidden at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["message"] == "message applied" and first["level"] == "INFO" and first["logger"] == "gateway.test"
    assert (first["request_id"], first["control_id"], first["message_id"]) == ("r-1", "MSG-7", 42)
    assert "request_id" not in lines[1] and "ValueError: boom" in lines[1]["exception"]


def test_text_lines_append_the_fields(stream: io.StringIO) -> None:
    logs.configure(level="DEBUG", fmt="text", stream=stream)
    with logs.bound(message_id=3):
        logging.getLogger("gateway.test").debug("stored")
    assert stream.getvalue().rstrip().endswith("gateway.test: stored [message_id=3]")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.configure(fmt="xml")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x0bMSH|^~\\&|APP|FAC|GW|GW|20260101||ADT^A01|CTRL-1|P|2.5\rPID|||1\r\x1c\r", "CTRL-1"),
        (b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|id with spaces|P\n", "id_with_spaces"),
        (b"PID|no header", None),
        (b"MSH|^~\\&|A|B", None),
    ],
)
def test_control_id_of(raw: bytes, expected: str | None) -> None:
    assert logs.control_id_of(raw) == expected
