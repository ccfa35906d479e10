"""How bodies are stored: compressed against a frozen dictionary, one codec byte first (JSON resources and
facts; HL7 messages with their ACK under their own dictionary).

A FHIR resource of 1.5–3 KB deflates only 2.6x alone, and about 6x against a dictionary of typical
resources (shared keys, code systems, profile URLs): every version of every resource is stored, so this
is most of the store's size. A dictionary is never changed once rows use it: a new one gets a new codec
byte, and rows keep saying which they need.

Codecs 3 and 4 (new rows, from the sixth session of issue 14 on) are Zstandard against a dictionary
trained on the gateway's own bodies (``bench/body_dictionary.py --zstd``): on the demo stays they store
resources and facts 27 % smaller than codec 1 (1,800 against 2,460 bytes a message) and messages 10 %
smaller than codec 2 (262 against 290), compress in ~3–6 µs a body against 15–30 µs, and inflate in
~2 µs against 5–8. A frame is magicless (the codec byte says what follows), without the dictionary's id
(the codec byte says which), with the text's length (so a body inflates in one call, into a buffer of
the right size) and a checksum (as deflate's adler32 did: a damaged body fails instead of reading wrong).

Codecs 1 and 2 (zlib deflate, 8 KiB window, against their own dictionaries) are read forever and written
no more: rows written with them stay as they are, no migration rewrites them, and a store holds both
kinds side by side. The level is not part of either format (any level inflates the same way). The other
way does not work: a gateway from before codecs 3 and 4 refuses their rows ("unknown codec"), and the
schema's revision did not change with them, so no older instance may run on a store this one wrote.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import struct
import threading
import zlib
from pathlib import Path

import zstandard

#: codec byte → (dictionary file, its sha256); the file is checked on import, so a dictionary changed by
#: accident (an editor adding a newline) stops the gateway at start-up instead of corrupting reads
_DICTIONARIES = {
    1: ("body_dictionary_1.bin", "16e407c1252c3f4ffa3f2c4327c293a155dec1ce5612982c3313ec6b77538e99"),
    2: ("message_dictionary_2.bin", "55109e43e195ba159c5ed2e79c12ef4c3c144d10e6b7f26a7a55716e0a33a420"),
    3: ("body_dictionary_3.bin", "58dc25aafbac550b0504d1b68fd4e2650e645ea8e69d54c39f65ab9174cb2c7c"),
    4: ("message_dictionary_4.bin", "642dc7570525f3f5416e812a432d291946a824aa274bcb5683f304a823e19fe7"),
}
#: the codec new resource and fact bodies are written with
CURRENT = 3
#: the codec new raw messages (and their ACK) are written with: HL7 v2 text shares nothing with FHIR JSON
MESSAGES = 4
#: codecs read, never written: deflate (zlib format, 8 KiB window) against their dictionary
DEFLATED = frozenset({1, 2})
#: the codecs of raw messages, which are seldom read back (not remembered by :class:`_Inflated`)
MESSAGE_CODECS = frozenset({2, MESSAGES})
WBITS = 13
#: what codecs 1 and 2 were written with (``deflated``: a store taken back below 0010)
DEFLATE_LEVEL, DEFLATE_MEM_LEVEL = 6, 5
#: the zstd level of each codec (not part of the format): 3 for bodies (as small as 4, twice as fast as 5,
#: which stores 5 % smaller), 5 for messages (7 % smaller than 3 for 2 µs more, one a message)
ZSTD_LEVELS = {CURRENT: 3, MESSAGES: 5}
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS
_PARAMETERS = {
    codec: zstandard.ZstdCompressionParameters.from_level(
        level, format=_FORMAT, write_content_size=True, write_checksum=True, write_dict_id=False
    )
    for codec, level in ZSTD_LEVELS.items()
}


def _load(codec: int) -> bytes:
    name, digest = _DICTIONARIES[codec]
    data = (Path(__file__).resolve().parent / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"gateway/db/{name} is not the dictionary stored bodies were written with")
    return data


_ZDICT = {codec: _load(codec) for codec in _DICTIONARIES}


def _digested(codec: int) -> zstandard.ZstdCompressionDict:
    """A dictionary prepared once for compressing at the level in use, shared by every thread's context."""
    dictionary = zstandard.ZstdCompressionDict(_ZDICT[codec])
    dictionary.precompute_compress(compression_params=_PARAMETERS[codec])
    return dictionary


_ZSTD = {codec: _digested(codec) for codec in (CURRENT, MESSAGES)}


class _Contexts(threading.local):
    """Each thread's compressors and decompressors: a zstd context is reused call after call (setting one
    up with the dictionary costs ~10 µs), and must not be used by two threads at once."""

    def __init__(self) -> None:
        self.packers = {
            c: zstandard.ZstdCompressor(dict_data=d, compression_params=_PARAMETERS[c]) for c, d in _ZSTD.items()
        }
        self.unpackers = {c: zstandard.ZstdDecompressor(dict_data=d, format=_FORMAT) for c, d in _ZSTD.items()}


_CONTEXTS = _Contexts()


#: how many bodies :class:`_Inflated` remembers (~2.5 KB each, text and body)
INFLATED_BODIES = 512
#: texts longer than this are not remembered, so that the cache stays a few MB whatever the bodies
REMEMBERED_TEXT = 16_384


class _Inflated:
    """The texts of the resource and fact bodies this process wrote or read last, by their stored bytes.

    A message reads back what the previous messages wrote (the stay's facts, the patient, the circle)
    and the same doctors and units every time; inflating a body costs ~1.5 µs (codec 3; ~7 µs for codec 1,
    most of it setting the dictionary), against a hash of its ~300 bytes here. A body's bytes determine
    its text, so an entry is never stale. Writer threads and API reads share it without a lock (a dict's
    get and set are atomic under the GIL); the oldest entry goes first, and two threads dropping at once
    may leave one more.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        #: ordered by insertion: ``popitem(last=False)`` drops the oldest in constant time, where a dict's
        #: ``del texts[next(iter(texts))]`` first walks past the slots its earlier deletions left (3.4
        #: against 0.3 µs a call, ~8 calls a message)
        self._texts: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()

    def get(self, body: bytes) -> bytes | None:
        return self._texts.get(body)

    def keep(self, body: bytes, text: bytes) -> None:
        if len(text) > REMEMBERED_TEXT:
            return  # a resource swollen by a huge field: inflating it again is cheap beside its size
        texts = self._texts
        texts[body] = text
        if len(texts) > self._size:
            with contextlib.suppress(KeyError):  # another thread emptied it meanwhile
                texts.popitem(last=False)


_INFLATED = _Inflated(INFLATED_BODIES)


def encode(text: bytes, *, codec: int = CURRENT) -> bytes:
    """A body as stored: the codec byte (:data:`CURRENT` or :data:`MESSAGES`), then ``text`` compressed
    against that codec's dictionary."""
    body = bytes((codec,)) + _CONTEXTS.packers[codec].compress(text)
    if codec == CURRENT:  # resources and facts are read back by the next messages; raw messages seldom
        _INFLATED.keep(body, text)
    return body


def deflated(text: bytes, *, codec: int) -> bytes:
    """``text`` as the deflate codec ``codec`` (1 or 2) stored it, byte for byte as before codecs 3 and 4:
    only for taking a store back below ``0010_zstd_bodies``, where a gateway reads no zstd."""
    if codec not in DEFLATED:
        raise ValueError(f"codec {codec} is not a deflate codec")
    packer = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, WBITS, DEFLATE_MEM_LEVEL, zdict=_ZDICT[codec])
    return bytes((codec,)) + packer.compress(text) + packer.flush()


def decode(body: bytes) -> bytes:
    """The JSON text of a stored body, whichever codec wrote it."""
    known = _INFLATED.get(body)
    if known is not None:
        return known
    codec = body[0]
    unpacker = _CONTEXTS.unpackers.get(codec)
    if unpacker is not None:
        try:
            text = unpacker.decompress(memoryview(body)[1:])
        except zstandard.ZstdError as exc:  # its checksum or its structure: a body changed since it was written
            raise ValueError(f"stored body (codec {codec}) is damaged: {exc}") from exc
    elif codec in DEFLATED:
        inflater = zlib.decompressobj(WBITS, zdict=_ZDICT[codec])
        text = inflater.decompress(body[1:]) + inflater.flush()
    else:
        raise ValueError(f"stored body written with an unknown codec ({codec}): a newer gateway wrote it")
    if codec not in MESSAGE_CODECS:
        _INFLATED.keep(body, text)
    return text


#: before a stored message's compressed text: the length of its raw bytes, and whether an ACK follows
_MESSAGE_HEAD = struct.Struct("!IB")


def packed_message(raw: bytes, ack: str | None) -> bytes:
    """A message's raw bytes and ACK as ``messages.body`` holds them: HL7 compresses about 4x against the
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
