"""Building ACK messages (original acknowledgment mode): MSA echoes MSH-10, ERR says what and where."""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from datetime import datetime

from gateway.hl7.er7 import Encoding, Message

SEVERITY = {"error": "E", "warning": "W", "information": "I"}
_counter = itertools.count(1)
_LOCATION = re.compile(r"^([A-Z][A-Z0-9]{2})(?:-(\d+))?(?:\.(\d+))?(?:\.(\d+))?$")
CODE_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}


#: ACK stamps kept (one a second of the clock): a few, so that clocks that step back and forth stay cheap
STAMP_MEMO_SIZE = 8


def ack_stamp(now: datetime) -> str:
    """``now`` as MSH-7's ``YYYYMMDDHHMMSS``, which also starts the ACK's control id.

    Every ACK of one second has the same stamp: it is formatted once a second (``strftime`` is ~1.5 µs,
    twice an ACK) and shared. The key is the wall-clock fields alone, naive: two aware moments that are
    equal as instants but in different zones format differently, and would hash alike.
    """
    return _stamp(now.replace(microsecond=0, tzinfo=None))


@functools.lru_cache(maxsize=STAMP_MEMO_SIZE)
def _stamp(second: datetime) -> str:
    return second.strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True, slots=True)
class AckIssue:
    """One ERR segment: HL7 table 0357 code, location such as ``PV1-19``, severity E/W/I, human text."""

    code: str
    text: str
    location: str = ""
    severity: str = "E"


def escape(text: str, enc: Encoding) -> str:
    """Escape delimiters so that human text cannot break the ACK's structure."""
    out = text.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for char, code in (
        (enc.field, "F"),
        (enc.component, "S"),
        (enc.subcomponent, "T"),
        (enc.repetition, "R"),
    ):
        out = out.replace(char, f"{enc.escape}{code}{enc.escape}")
    return out.replace("\r", " ").replace("\n", " ")


def escape_clipped(text: str, enc: Encoding, limit: int) -> str:
    """``escape`` cut to ``limit`` characters without splitting an escape sequence such as ``\\F\\``."""
    out: list[str] = []
    size = 0
    for char in text:
        piece = escape(char, enc)
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _erl(location: str, enc: Encoding) -> str:
    match = _LOCATION.match(location)
    if not match:
        return ""
    seg, fld, comp, sub = match.groups()
    parts = [seg, "1", fld or "", "1" if fld else "", comp or "", sub or ""]
    return enc.component.join(parts).rstrip(enc.component)


def build_ack(
    message: Message | None,
    *,
    code: str,
    issues: list[AckIssue],
    now: datetime,
    text: str = "",
    control_id_hint: str = "",
) -> str:
    """The ACK for ``message`` (or, when it could not be parsed, a best-effort one with MSA-2 empty)."""
    enc = message.encoding if message else Encoding()
    msh = message.msh if message else None
    f = enc.field
    original_control = msh.get(10) if msh else control_id_hint
    trigger = msh.get(9, 2) if msh else ""
    stamp = ack_stamp(now)
    header = [
        "MSH",
        enc.component + enc.repetition + enc.escape + enc.subcomponent,
        msh.raw(5) if msh else "",
        msh.raw(6) if msh else "",
        msh.raw(3) if msh else "",
        msh.raw(4) if msh else "",
        stamp,
        "",
        enc.component.join(["ACK", trigger, "ACK"]),
        f"ACK{stamp}{next(_counter):06d}",
        (msh.raw(11) if msh else "") or "P",
        (msh.raw(12) if msh else "") or "2.5",
    ]
    charset = msh.raw(18) if msh else ""
    if charset:
        header += ["", "", "", "", "", charset]
    segments = [f.join(header), f.join(["MSA", code, escape(original_control, enc), escape_clipped(text, enc, 80)])]
    for issue in issues:
        segments.append(
            f.join(
                [
                    "ERR",
                    "",
                    _erl(issue.location, enc),
                    enc.component.join([issue.code, escape(CODE_TEXT.get(issue.code, ""), enc), "HL70357"]),
                    issue.severity,
                    "",
                    "",
                    "",
                    escape(issue.text, enc),
                ]
            )
        )
    return "\r".join(segments) + "\r"


def encode_ack(ack: str, codec: str) -> bytes:
    """Encode in the sender's charset (MSH-18); text it cannot hold degrades to '?' rather than failing."""
    return ack.encode(codec, errors="replace")
