"""Tolerant ER7 (pipe-and-hat) reading: bytes → decoded text → lazily split segments.

Why by hand: hl7apy takes ~25 ms a message and drops ZBE when it builds groups; python-hl7 takes
~1.3 ms and wants CR-only input. A plain split is ~0.1 ms, and the gateway needs only positional
access plus charset and separator tolerance, so this module does exactly that and no more.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.errors import ParseError

#: MSH-18 values seen in French feeds, mapped to Python codecs.
CHARSETS: dict[str, str] = {
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "ASCII": "ascii",
    "": "utf-8",
}
FALLBACK_CODECS = ("utf-8", "cp1252", "latin-1")

_SEGMENT_SPLIT = re.compile(r"\r\n|\n\r|\r|\n")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass(frozen=True, slots=True)
class Encoding:
    """The five delimiters declared in MSH-1/MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass(frozen=True, slots=True)
class Path:
    """A position such as ``PV1-3.4.2``: segment, field, component, subcomponent (1-based)."""

    segment: str
    field: int
    component: int = 0
    subcomponent: int = 0

    @classmethod
    def parse(cls, text: str) -> Path:
        match = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
        if match is None:
            raise ValueError(f"not an HL7 position: {text!r}")
        seg, fld, comp, sub = match.groups()
        return cls(seg, int(fld), int(comp or 0), int(sub or 0))

    def __str__(self) -> str:
        parts = [f"{self.segment}-{self.field}"]
        if self.component:
            parts.append(str(self.component))
        if self.subcomponent:
            parts.append(str(self.subcomponent))
        return ".".join(parts)


class Repetition:
    """One repetition of a field, split into components and subcomponents on demand."""

    __slots__ = ("_comps", "_enc", "raw")

    def __init__(self, raw: str, enc: Encoding) -> None:
        self.raw = raw
        self._enc = enc
        self._comps: list[str] | None = None

    # component_raw and get are the mapping's innermost calls (~250 a message): the split is inlined, and
    # get returns text without an escape character as it is, without calling unescape.

    def component_raw(self, c: int) -> str:
        comps = self._comps
        if comps is None:
            comps = self._comps = self.raw.split(self._enc.component)
        return comps[c - 1] if 0 < c <= len(comps) else ""

    def get(self, c: int = 1, s: int = 0) -> str:
        """Unescaped text of component ``c`` (subcomponent ``s``, 0 = the whole component)."""
        comps = self._comps
        if comps is None:
            comps = self._comps = self.raw.split(self._enc.component)
        raw = comps[c - 1] if 0 < c <= len(comps) else ""
        enc = self._enc
        if s:
            subs = raw.split(enc.subcomponent)
            raw = subs[s - 1] if s <= len(subs) else ""
        esc = enc.escape
        return raw if not esc or esc not in raw else unescape(raw, enc)

    @property
    def encoding(self) -> Encoding:
        return self._enc

    def subcomponents(self, c: int) -> list[str]:
        return [unescape(p, self._enc) for p in self.component_raw(c).split(self._enc.subcomponent)]

    def __bool__(self) -> bool:
        return bool(self.raw.strip(self._enc.component + self._enc.subcomponent))


class Segment:
    """One segment; ``fields[n]`` is HL7 field n (MSH is shifted so that MSH-1 is the field separator)."""

    __slots__ = ("_enc", "_reps", "fields", "name")

    def __init__(self, name: str, fields: list[str], enc: Encoding) -> None:
        self.name = name
        self.fields = fields
        self._enc = enc
        #: field number → its repetitions, split once: the header checks, the map and its rules read
        #: the same fields several times (a repetition splits its components once, too)
        self._reps: dict[int, list[Repetition]] = {}

    def raw(self, n: int) -> str:
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[Repetition]:
        """Field ``n``'s non-empty repetitions: one list per field, shared by every caller (read it only)."""
        reps = self._reps.get(n)
        if reps is None:
            reps = self._reps[n] = self._split(n)
        return reps

    def _split(self, n: int) -> list[Repetition]:
        fields = self.fields
        raw = fields[n] if 0 < n < len(fields) else ""
        if not raw:
            return []
        enc = self._enc
        separator = enc.repetition
        # most fields do not repeat: one repetition, without a split and a comprehension
        if separator not in raw or (n < 3 and self.name == "MSH"):
            return [Repetition(raw, enc)]
        return [Repetition(r, enc) for r in raw.split(separator) if r]

    def first(self, n: int) -> Repetition:
        reps = self._reps.get(n)
        if reps is None:
            reps = self._reps[n] = self._split(n)
        return reps[0] if reps else Repetition("", self._enc)

    def get(self, n: int, c: int = 1, s: int = 0) -> str:
        """Unescaped value of the first repetition of field ``n``, component ``c``, subcomponent ``s``."""
        if n < 3 and self.name == "MSH" and n > 0:
            return self.raw(n)
        reps = self._reps.get(n)
        if reps is None:
            reps = self._reps[n] = self._split(n)
        return reps[0].get(c, s) if reps else ""

    def __repr__(self) -> str:  # never prints content: segments carry health data
        return f"<Segment {self.name} fields={len(self.fields) - 1}>"


@dataclass(slots=True)
class Message:
    """A decoded message: its segments, the codec used and what was odd while reading it."""

    segments: list[Segment]
    encoding: Encoding
    codec: str
    text: str
    warnings: list[str] = field(default_factory=list)

    def segment(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def all(self, name: str) -> Iterator[Segment]:
        return (seg for seg in self.segments if seg.name == name)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def value(self, path: Path) -> str:
        seg = self.segment(path.segment)
        if seg is None:
            return ""
        return seg.get(path.field, path.component or 1, path.subcomponent)


def unescape(text: str, enc: Encoding) -> str:
    """Replace HL7 escape sequences (\\F\\, \\S\\, \\T\\, \\R\\, \\E\\, \\Xhh\\, \\.br\\)."""
    esc = enc.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        end = text.find(esc, i + 1) if ch == esc else -1
        if end == -1:
            out.append(ch)
            i += 1
            continue
        out.append(_escape_value(text[i + 1 : end], enc))
        i = end + 1
    return "".join(out)


def _escape_value(code: str, enc: Encoding) -> str:
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": enc.escape}
    if code in simple:
        return simple[code]
    if code in (".br", "H", "N"):
        return "\n" if code == ".br" else ""
    if code.startswith("X") and len(code) % 2 == 1:
        try:
            return bytes.fromhex(code[1:]).decode("latin-1")
        except ValueError:
            pass
    return enc.escape + code + enc.escape


def sniff_charset(raw: bytes) -> str:
    """MSH-18 read from the raw bytes (the header is ASCII in every charset we accept)."""
    head = raw[:2048].lstrip(b"\xef\xbb\xbf\x0b \t\r\n")
    line = head.decode("latin-1").split("\r", 1)[0].split("\n", 1)[0]  # up to the first CR or LF
    if not line.startswith("MSH") or len(line) < 4:
        return ""
    parts = line.split(line[3])
    return parts[17].split(line[4] if len(line) > 4 else "^")[0].strip().upper() if len(parts) > 17 else ""


def decode(raw: bytes) -> tuple[str, str, list[str]]:
    """Decode by MSH-18; if that fails or is unknown, fall back to UTF-8, cp1252, then latin-1."""
    warnings: list[str] = []
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    declared = sniff_charset(raw)
    codec = CHARSETS.get(declared)
    if codec is None:
        warnings.append(f"unknown character set in MSH-18: {declared!r}")
    else:
        try:
            return raw.decode(codec), codec, warnings
        except UnicodeDecodeError:
            warnings.append(f"message is not valid {declared or 'UTF-8'}; decoded with a fallback")
    for fallback in FALLBACK_CODECS:
        try:
            return raw.decode(fallback), fallback, warnings
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def parse(raw: bytes | str) -> Message:
    """Parse one ER7 message. Raises :class:`ParseError` when there is no usable MSH."""
    if isinstance(raw, bytes):
        text, codec, warnings = decode(raw)
    else:
        text, codec, warnings = raw, "utf-8", []
    text = text.lstrip("\ufeff\x0b \t\r\n").rstrip("\x1c\x00 \t\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        raise ParseError("message does not start with an MSH segment", location="MSH")
    enc = _encoding(text)
    # CR-only text (what MLLP carries) needs no regular expression, which scans every character
    pieces = _SEGMENT_SPLIT.split(text) if "\n" in text else text.split("\r")
    lines = [line for line in pieces if line.strip()]
    segments: list[Segment] = []
    for index, line in enumerate(lines):
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != enc.field):
            if index == 0:
                raise ParseError("MSH segment is malformed", location="MSH")
            warnings.append(f"segment {index + 1} has an invalid name and was skipped")
            continue
        parts = line.split(enc.field)
        if name == "MSH":
            parts = ["MSH", enc.field, *parts[1:]]
        segments.append(Segment(name, parts, enc))
    return Message(segments=segments, encoding=enc, codec=codec, text=text, warnings=warnings)


#: Encodings kept, by MSH-1 and MSH-2 (a feed has one or two); a declaration longer than
#: ``ENCODING_MEMO_LONGEST`` (never a sane one: MSH-2 has four characters, five from v2.7) is read each time
ENCODING_MEMO_SIZE = 32
ENCODING_MEMO_LONGEST = 8


def _encoding(text: str) -> Encoding:
    """The delimiters MSH-1 and MSH-2 declare, checked.

    Read once per declaration and shared (``Encoding`` is frozen): building and checking it cost ~4 µs a
    message, for the same five characters every time. A malformed one raises each time (nothing is kept).
    """
    end = text.find(text[3], 4)
    declared = text[3:end] if end != -1 else text[3]
    if len(declared) > ENCODING_MEMO_LONGEST:
        return _read_encoding(declared)
    return _known_encoding(declared)


def _read_encoding(declared: str) -> Encoding:
    """``declared`` is MSH-1 then MSH-2 (only MSH-1 when no second field separator follows)."""
    sep = declared[0]
    if sep.isalnum() or sep in "\r\n":
        raise ParseError("MSH-1 field separator is missing", location="MSH-1")
    chars = declared[1:]
    if len(chars) < 2 or any(c.isalnum() for c in chars):
        raise ParseError("MSH-2 encoding characters are malformed", location="MSH-2")
    defaults = Encoding()
    enc = Encoding(
        field=sep,
        component=chars[0],
        repetition=chars[1],
        escape=chars[2] if len(chars) > 2 else defaults.escape,
        subcomponent=chars[3] if len(chars) > 3 else defaults.subcomponent,
    )
    # Five delimiters, five distinct characters: a field separator equal to the escape character (a bit
    # flip turns ``|`` into ``\``) would make the message, and the ACK echoing its delimiters, unreadable.
    # A control character or a space among them (a CR in MSH-2) would end the ACK's header early.
    delimiters = {enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent}
    if len(delimiters) < 5 or not all(c.isprintable() and not c.isspace() for c in delimiters):
        raise ParseError("MSH-1 and MSH-2 delimiters are not five distinct printable characters", location="MSH-2")
    return enc


_known_encoding = functools.lru_cache(maxsize=ENCODING_MEMO_SIZE)(_read_encoding)
