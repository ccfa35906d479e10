"""Hostile inputs for the fuzz suite and ``bench/fuzz``: mutations of the fixtures and the checks an answer must pass.

A mutation keeps most of a real message (so it gets past the first checks and reaches mapping, folding
and storage) and breaks one thing the way senders and networks do: bit flips, truncations, stray
separators, other encodings, impossible dates, huge fields, MLLP framing bytes, segment terminators.
Everything is driven by a ``random.Random`` so a failing input is reproduced from its seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import GatewayError
from gateway.hl7 import er7
from gateway.hl7.ack import AckIssue, build_ack
from gateway.mapping.engine import Engine, read_header
from gateway.pipeline import _check_header, _check_key_lengths

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIRS = (ROOT / "fixtures" / "adt", ROOT / "fixtures" / "demo")

#: Dates that broke or could break date handling: offsets of 24 h and more, year 1 and 9999, impossible
#: days, fractions, truncated forms, signs alone.
HOSTILE_DATES = (
    "20260301080000+2400",
    "20260301080000+9999",
    "20260301080000-9999",
    "20260301080000+0060",
    "20260301080000-1459",
    "00010101",
    "00010101000000-0100",
    "99991231235959+1400",
    "99991231235959-1200",
    "0000",
    "20261301",
    "20260230",
    "20260229",
    "2026030125",
    "202603010861",
    "20260301080000.12345",
    "20260301080000.1+0100",
    "2026-03-01",
    "+0100",
    "2026030108000",
    "9" * 40,
)
SEPARATORS = ("|", "^", "~", "\\", "&", "\r", "\n", "\r\n", "\x0b", "\x1c", "\x1c\r", "\x00")
ENCODINGS = ("UNICODE UTF-8", "8859/1", "8859/15", "ASCII", "UTF-16", "", "8859/99", "\\E\\")
_TIMESTAMP = re.compile(rb"(?<![0-9])(19|20)[0-9]{6,12}(?![0-9])")
_FIELD = re.compile(rb"\|")

Mutator = Callable[[bytes, random.Random], bytes]
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def load_seeds() -> list[bytes]:
    """Every fixture message (one per file; stay folders hold one per file too)."""
    files = sorted(p for d in FIXTURE_DIRS for p in d.rglob("*.hl7"))
    return [p.read_bytes() for p in files]


def _spot(data: bytes, rng: random.Random) -> int:
    return rng.randrange(len(data) + 1)


def bit_flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: _spot(data, rng)]


def chop_middle(data: bytes, rng: random.Random) -> bytes:
    a, b = sorted((_spot(data, rng), _spot(data, rng)))
    return data[:a] + data[b:]


def separator(data: bytes, rng: random.Random) -> bytes:
    sep = rng.choice(SEPARATORS).encode("latin-1")
    i = _spot(data, rng)
    if rng.random() < 0.5 and i < len(data):
        return data[:i] + sep + data[i + 1 :]
    return data[:i] + sep * rng.randint(1, 20) + data[i:]


def encoding(data: bytes, rng: random.Random) -> bytes:
    """Change MSH-18, re-encode the text, or drop in bytes that are not valid in the declared charset."""
    choice = rng.randrange(4)
    if choice == 0:
        fields = data.split(b"|")
        if len(fields) > 17:
            fields[17] = rng.choice(ENCODINGS).encode("latin-1")
        return b"|".join(fields)
    if choice == 1:
        text = data.decode("latin-1")
        return text.encode(rng.choice(("utf-8", "utf-16", "utf-16-le", "utf-32", "cp1252")), errors="replace")
    if choice == 2:
        return b"\xef\xbb\xbf" + data
    i = _spot(data, rng)
    junk = rng.choice((b"\xff\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80" * 5, bytes(rng.randbytes(6))))
    return data[:i] + junk + data[i:]


def date(data: bytes, rng: random.Random) -> bytes:
    """Replace one timestamp-looking value (or a random field) with a hostile date."""
    hostile = rng.choice(HOSTILE_DATES).encode("ascii")
    stamps = list(_TIMESTAMP.finditer(data))
    if stamps and rng.random() < 0.85:
        m = rng.choice(stamps)
        return data[: m.start()] + hostile + data[m.end() :]
    return _replace_field(data, rng, hostile)


def huge_field(data: bytes, rng: random.Random) -> bytes:
    size = rng.choice((256, 300, 4_096, 65_536, 300_000))
    filler = rng.choice((b"X", b"9", b"^", b"~", b"&", b"\xe9", b"A^B~"))
    return _replace_field(data, rng, (filler * size)[:size])


def control_id(data: bytes, rng: random.Random) -> bytes:
    """MSH-10 (and sender keys) at and around the stored length."""
    fields = data.split(b"|")
    if len(fields) > 9:
        index = rng.choice((2, 3, 9))
        fields[index] = b"K" * rng.choice((0, 1, 254, 255, 256, 1_000))
    return b"|".join(fields)


def framing(data: bytes, rng: random.Random) -> bytes:
    mark = rng.choice((b"\x0b", b"\x1c", b"\x1c\x0d", b"\x0b\x0b", b"\x0d\x1c"))
    if rng.random() < 0.3:
        return data + mark
    i = _spot(data, rng)
    return data[:i] + mark + data[i:]


def terminators(data: bytes, rng: random.Random) -> bytes:
    text = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    style = rng.choice((b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r"))
    text = text.replace(b"\r", style)
    if rng.random() < 0.5:
        text = text.rstrip(b"\r\n")
    return text


def segments(data: bytes, rng: random.Random) -> bytes:
    """Drop, duplicate or swap segments; or empty MSH-9 parts."""
    segs = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    if len(segs) < 2:
        return data
    choice = rng.randrange(4)
    i = rng.randrange(len(segs))
    if choice == 0:
        del segs[i]
    elif choice == 1:
        segs.insert(i, segs[rng.randrange(len(segs))])
    elif choice == 2:
        j = rng.randrange(len(segs))
        segs[i], segs[j] = segs[j], segs[i]
    else:
        segs[i] = segs[i][:3] + b"|" * rng.randint(0, 60)
    return b"\r".join(segs)


def _replace_field(data: bytes, rng: random.Random, value: bytes) -> bytes:
    bars = [m.start() for m in _FIELD.finditer(data)]
    if len(bars) < 2:
        return data + b"|" + value
    k = rng.randrange(len(bars) - 1)
    return data[: bars[k] + 1] + value + data[bars[k + 1] :]


MUTATORS: dict[str, Mutator] = {
    "bit_flip": bit_flip,
    "truncate": truncate,
    "chop_middle": chop_middle,
    "separator": separator,
    "encoding": encoding,
    "date": date,
    "huge_field": huge_field,
    "control_id": control_id,
    "framing": framing,
    "terminators": terminators,
    "segments": segments,
}


def mutate(seed: bytes, rng: random.Random, *, max_rounds: int = 3) -> tuple[bytes, list[str]]:
    """One to ``max_rounds`` mutations of ``seed``; returns the input and the mutators applied."""
    names = [rng.choice(list(MUTATORS)) for _ in range(rng.randint(1, max_rounds))]
    data = seed
    for name in names:
        data = MUTATORS[name](data, rng)
    return data, names


#: Key fields (segment, field index) made distinct per input, so that stays do not pile up in one stream.
_KEY_FIELDS = ((b"MSH", 9), (b"PID", 3), (b"PV1", 19), (b"ZBE", 1), (b"MRG", 1))


def distinct_keys(data: bytes, tag: str) -> bytes:
    """Suffix MSH-10, the IPP, the visit number, the movement id and MRG-1 with ``tag`` (first component)."""
    segs = re.split(rb"(\r\n|\r|\n)", data)
    suffix = b"-" + tag.encode("ascii")
    for i, seg in enumerate(segs):
        for name, index in _KEY_FIELDS:
            if seg.startswith(name + b"|"):
                fields = seg.split(b"|")
                if len(fields) > index and fields[index]:
                    head, caret, rest = fields[index].partition(b"^")
                    fields[index] = head + suffix + caret + rest
                segs[i] = b"|".join(fields)
    return b"".join(segs)


def unique_ids(data: bytes, tag: str) -> bytes:
    """Make MSH-10 unique (so most inputs are applied, not duplicates) while keeping the rest as is."""
    fields = data.split(b"|", 10)
    if len(fields) > 10 and fields[0].endswith(b"MSH"):
        fields[9] = fields[9][:200] + b"-" + tag.encode("ascii")
    return b"|".join(fields)


def ack_code(ack: bytes) -> str:
    """MSA-1 of ``ack``, read with the ACK's own field separator (MSH-1), not an assumed ``|``."""
    text = ack.decode("utf-8", errors="replace")
    if len(text) < 4 or not text.startswith("MSH"):
        return ""
    segs = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    msa = next((s for s in segs if s.startswith("MSA" + text[3])), "")
    return msa[4:].split(text[3], 1)[0]


def ack_problem(ack: bytes) -> str | None:
    """Why ``ack`` is not an acceptable answer, or ``None``: MSH with five distinct delimiters, MSA with
    AA/AE/AR, ERR unless AA."""
    text = ack.decode("utf-8", errors="replace")
    segs = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    if not segs or not segs[0].startswith("MSH") or len(segs[0]) < 8:
        return "ACK does not start with MSH"
    if len(set(segs[0][3:8])) < 5 or segs[0][8:9] != segs[0][3]:
        return f"ACK delimiters {segs[0][3:8]!r} are not five distinct characters"
    sep = segs[0][3]
    msa = next((s for s in segs if s.startswith("MSA" + sep)), None)
    if msa is None or len(msa) < 6:
        return "ACK has no MSA"
    code = ack_code(ack)
    if code not in {"AA", "AE", "AR"}:
        return f"ACK code {code!r}"
    if code != "AA" and not any(s.startswith("ERR" + sep) for s in segs):
        return f"{code} without ERR"
    return None


def pure_step(engine: Engine, raw: bytes) -> bytes:
    """The ingest without storage: what it would answer; raises only what the pipeline would catch."""
    message = None
    try:
        message = er7.parse(raw)
        _check_header(message)
        header = read_header(message)
        _check_key_lengths(header)
        mapped = engine.map(message, header=header)
    except GatewayError as exc:
        issue = AckIssue(code=exc.code, text=exc.message, location=exc.location)
        return build_ack(message, code=exc.ack_code, issues=[issue], now=NOW).encode("utf-8")
    issues = [AckIssue(code="0", text=text, location=loc, severity="W") for loc, text in mapped.warnings]
    return build_ack(message, code="AA", issues=issues, now=NOW).encode("utf-8")
