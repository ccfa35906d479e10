"""How bodies are stored: deflated against a frozen dictionary, one codec byte first (JSON resources and
facts; HL7 messages with their ACK under their own dictionary).

A FHIR resource of 1.5–3 KB deflates only 2.6x alone, and about 6x against a dictionary of typical
resources (shared keys, code systems, profile URLs): every version of every resource is stored, so this
is most of the store's size. The 8 KiB window keeps compression near 25 µs a body (the default 32 KiB one
costs 60–100 µs to set up per call). A dictionary is never changed once rows use it: a new one gets a
new codec byte, and rows keep saying which they need. Level 6 (1 before 0006) stores bodies 19 % smaller
for ~7 µs more a body; the level is not part of the format (any level inflates the same way).
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import zlib
from pathlib import Path

#: codec byte → (dictionary file, its sha256); the file is checked on import, so a dictionary changed by
#: accident (an editor adding a newline) stops the gateway at start-up instead of corrupting reads
_DICTIONARIES = {
    1: ("body_dictionary_1.bin", "16e407c1252c3f4ffa3f2c4327c293a155dec1ce5612982c3313ec6b77538e99"),
    2: ("message_dictionary_2.bin", "55109e43e195ba159c5ed2e79c12ef4c3c144d10e6b7f26a7a55716e0a33a420"),
}
#: the codec new resource and fact bodies are written with
CURRENT = 1
#: the codec new raw messages (and their ACK) are written with: HL7 v2 text shares nothing with FHIR JSON
MESSAGES = 2
WBITS, MEM_LEVEL, LEVEL = 13, 5, 6


def _load(codec: int) -> bytes:
    name, digest = _DICTIONARIES[codec]
    data = (Path(__file__).resolve().parent / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"gateway/db/{name} is not the dictionary stored bodies were written with")
    return data


_ZDICT = {codec: _load(codec) for codec in _DICTIONARIES}
#: a compressor primed with the dictionary once; each body starts from a copy of it (16 µs against 25 µs
#: for priming a new one: setting the dictionary hashes all of it)
_PRIMED = {
    codec: zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS, MEM_LEVEL, zdict=_ZDICT[codec])
    for codec in (CURRENT, MESSAGES)
}


#: how many bodies :class:`_Inflated` remembers (~2.5 KB each, text and body)
INFLATED_BODIES = 512
#: texts longer than this are not remembered, so that the cache stays a few MB whatever the bodies
REMEMBERED_TEXT = 16_384


class _Inflated:
    """The texts of the resource and fact bodies this process wrote or read last, by their stored bytes.

    A message reads back what the previous messages wrote (the stay's facts, the patient, the circle)
    and the same doctors and units every time; inflating a body costs ~7 µs, most of it setting the
    dictionary, against a hash of its ~300 bytes here. A body's bytes determine its text, so an entry
    is never stale. Writer threads and API reads share it without a lock (a dict's get and set are atomic
    under the GIL); the oldest entry goes first, and two threads dropping at once may leave one more.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._texts: dict[bytes, bytes] = {}

    def get(self, body: bytes) -> bytes | None:
        return self._texts.get(body)

    def keep(self, body: bytes, text: bytes) -> None:
        if len(text) > REMEMBERED_TEXT:
            return  # a resource swollen by a huge field: inflating it again is cheap beside its size
        texts = self._texts
        texts[body] = text
        if len(texts) > self._size:
            # another thread may have dropped it, or changed the dict meanwhile
            with contextlib.suppress(KeyError, RuntimeError):
                del texts[next(iter(texts))]


_INFLATED = _Inflated(INFLATED_BODIES)


def encode(text: bytes, *, codec: int = CURRENT) -> bytes:
    """A body as stored: the codec byte, then ``text`` deflated against that codec's dictionary."""
    packer = _PRIMED[codec].copy()
    body = bytes((codec,)) + packer.compress(text) + packer.flush()
    if codec == CURRENT:  # resources and facts are read back by the next messages; raw messages seldom
        _INFLATED.keep(body, text)
    return body


def decode(body: bytes) -> bytes:
    """The JSON text of a stored body, whichever codec wrote it."""
    known = _INFLATED.get(body)
    if known is not None:
        return known
    codec = body[0]
    if codec not in _ZDICT:
        raise ValueError(f"stored body written with an unknown codec ({codec}): a newer gateway wrote it")
    unpacker = zlib.decompressobj(WBITS, zdict=_ZDICT[codec])
    text = unpacker.decompress(body[1:]) + unpacker.flush()
    if codec == CURRENT:
        _INFLATED.keep(body, text)
    return text


#: before a stored message's deflated text: the length of its raw bytes, and whether an ACK follows
_MESSAGE_HEAD = struct.Struct("!IB")


def packed_message(raw: bytes, ack: str | None) -> bytes:
    """A message's raw bytes and ACK as ``messages.body`` holds them: HL7 deflates about 4x against the
    message dictionary, and the ACK, which repeats the header, costs a few bytes more after it."""
    tail = b"" if ack is None else ack.encode("utf-8", "surrogatepass")
    return encode(_MESSAGE_HEAD.pack(len(raw), ack is not None) + raw + tail, codec=MESSAGES)


def unpacked_message(body: bytes) -> tuple[bytes, str | None]:
    """(raw, ack) of a ``messages.body``."""
    text = decode(body)
    size, has_ack = _MESSAGE_HEAD.unpack_from(text)
    start = _MESSAGE_HEAD.size
    raw = text[start : start + size]
    return raw, text[start + size :].decode("utf-8", "surrogatepass") if has_ack else None
