"""Stored resource bodies: compressed against a frozen dictionary, read back byte for byte."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.db import bodies


def test_a_body_reads_back_exactly_and_is_smaller() -> None:
    resource = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "text": "é" * 40,
    }
    text = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    stored = bodies.encode(text)
    assert stored[0] == bodies.CURRENT
    assert bodies.decode(stored) == text
    assert len(stored) < len(text) / 2


def test_an_unknown_codec_is_refused_not_misread() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        bodies.decode(bytes((200,)) + b"anything")


def test_a_body_reads_back_the_same_whether_remembered_or_inflated() -> None:
    text = orjson.dumps({"resourceType": "Patient", "id": "p-remembered"}, option=orjson.OPT_SORT_KEYS)
    stored = bodies.encode(text)
    assert bodies.decode(stored) == text  # remembered by encode
    bodies._INFLATED._texts.clear()
    assert bodies.decode(stored) == text  # inflated again, then remembered
    assert bodies._INFLATED.get(stored) == text


def test_the_remembered_texts_are_bounded_oldest_first() -> None:
    inflated = bodies._Inflated(2)
    for n in range(3):
        inflated.keep(bytes((n,)), b"text %d" % n)
    assert inflated.get(bytes((0,))) is None
    assert [inflated.get(bytes((n,))) for n in (1, 2)] == [b"text 1", b"text 2"]


def test_raw_messages_are_not_remembered() -> None:
    stored = bodies.packed_message(b"MSH|^~\\&|A|B", None)
    assert bodies._INFLATED.get(stored) is None
    assert bodies.unpacked_message(stored) == (b"MSH|^~\\&|A|B", None)
    assert bodies._INFLATED.get(stored) is None


def test_a_huge_text_is_not_remembered_but_reads_back() -> None:
    text = orjson.dumps({"resourceType": "Patient", "id": "p", "text": "x" * (bodies.REMEMBERED_TEXT + 1)})
    stored = bodies.encode(text)
    assert bodies._INFLATED.get(stored) is None
    assert bodies.decode(stored) == text
    assert bodies._INFLATED.get(stored) is None


# Written by the gateway before codecs 3 and 4 (zlib deflate against body_dictionary_1.bin and
# message_dictionary_2.bin, level 6): such rows stay in stores as they are, and must read back forever.
OLD_RESOURCE = (
    b'{"class":{"code":"IMP","system":"http://terminology.hl7.org/CodeSystem/v3-ActCode"},"id":"e-old",'
    b'"name":"H\xc3\xa9l\xc3\xa8ne","resourceType":"Encounter","status":"finished","subject":{"reference":"Patient/p-old"}}'
)
OLD_RESOURCE_BODY = bytes.fromhex(
    "0158a412065678c35501505ec0a7eae6e7808620a1032b1e8757e61c5e91978a39b28d12fe307f828a83e28cd414c29e2c00db535b0b"
    "00494b45c5"
)
OLD_RAW = (
    b"MSH|^~\\&|GAM|CH|GATEWAY|ARS|20260101||ADT^A01^ADT_A01|C1|P|2.5\rPID|1||123^^^CH&1.2&ISO^PI||H\xc9L\xc8NE^ANNE\r"
)
OLD_ACK = "MSH|^~\\&|GATEWAY|ARS|GAM|CH|20260101||ACK^A01^ACK|C1-ACK|P|2.5\rMSA|AA|C1\r"
OLD_MESSAGE_BODY = bytes.fromhex(
    "0258a4eff0820f6360604867442e4e812e407622dc199865a633d43e5861062c96c061020a0c68a15553e371d2e70430b13b02533cd6"
    "20805989640d923f9d0d754114c41aa8079c0d790110c735cf"
)


def test_bodies_written_with_the_deflate_codecs_read_back_byte_for_byte() -> None:
    bodies._INFLATED._texts.clear()
    assert OLD_RESOURCE_BODY[0] == 1
    assert bodies.decode(OLD_RESOURCE_BODY) == OLD_RESOURCE
    assert orjson.loads(bodies.decode(OLD_RESOURCE_BODY))["name"] == "Hélène"
    assert OLD_MESSAGE_BODY[0] == 2
    assert bodies.unpacked_message(OLD_MESSAGE_BODY) == (OLD_RAW, OLD_ACK)


def test_new_bodies_are_written_with_the_zstd_codecs() -> None:
    bodies._INFLATED._texts.clear()
    stored = bodies.encode(OLD_RESOURCE)
    assert (stored[0], bodies.CURRENT) == (3, 3)
    message = bodies.packed_message(OLD_RAW, OLD_ACK)
    assert (message[0], bodies.MESSAGES) == (4, 4)
    bodies._INFLATED._texts.clear()
    assert bodies.decode(stored) == OLD_RESOURCE
    assert bodies.unpacked_message(message) == (OLD_RAW, OLD_ACK)


@pytest.mark.parametrize("codec", sorted(bodies._DICTIONARIES))
def test_a_dictionary_that_is_not_the_one_rows_were_written_with_stops_the_start(
    codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, digest = bodies._DICTIONARIES[codec]
    assert bodies._load(codec) == bodies._ZDICT[codec]  # the committed file is the one named
    monkeypatch.setitem(bodies._DICTIONARIES, codec, (name, "0" * len(digest)))
    with pytest.raises(RuntimeError, match=name):
        bodies._load(codec)


def test_a_damaged_body_fails_instead_of_reading_wrong() -> None:
    stored = bodies.encode(OLD_RESOURCE)
    wrong = []
    for at in range(1, len(stored)):
        for bit in range(8):
            damaged = bytearray(stored)
            damaged[at] ^= 1 << bit
            bodies._INFLATED._texts.clear()
            try:
                text = bodies.decode(bytes(damaged))
            except ValueError:
                continue
            if text not in (OLD_RESOURCE, b""):  # b"": not JSON, refused by whoever reads it
                wrong.append((at, bit))
    assert wrong == []
    with pytest.raises(ValueError, match="codec 3"):
        bodies.decode(stored[:-1])  # the checksum cut


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values, remembered=st.booleans())
def test_any_json_reads_back_exactly(value: object, remembered: bool) -> None:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    stored = bodies.encode(text)
    if not remembered:
        bodies._INFLATED._texts.clear()
    assert bodies.decode(stored) == text


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=3000), ack=st.none() | st.text(max_size=200))
def test_any_message_and_ack_read_back_exactly(raw: bytes, ack: str | None) -> None:
    assert bodies.unpacked_message(bodies.packed_message(raw, ack)) == (raw, ack)


def test_threads_compress_and_inflate_at_once_without_mixing_bodies() -> None:
    texts = [orjson.dumps({"resourceType": "Patient", "id": f"p{n}", "name": "x" * n}) for n in range(400)]

    def round_trips(start: int) -> list[bool]:
        out = []
        for text in texts[start:] + texts[:start]:
            stored = bodies.encode(text)
            bodies._INFLATED._texts.pop(stored, None)  # inflated, not remembered
            out.append(bodies.decode(stored) == text)
        return out

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(round_trips, (0, 100, 200, 300)))
    assert [all(r) for r in results] == [True] * 4
    assert all(len(r) == len(texts) for r in results)


def test_deflated_writes_the_deflate_codecs_byte_for_byte_as_before_zstd() -> None:
    """What ``0010_zstd_bodies``'s downgrade writes is what the gateway before it wrote."""
    assert bodies.deflated(OLD_RESOURCE, codec=1) == OLD_RESOURCE_BODY
    assert bodies.deflated(bodies.decode(OLD_MESSAGE_BODY), codec=2) == OLD_MESSAGE_BODY
    with pytest.raises(ValueError, match="not a deflate codec"):
        bodies.deflated(OLD_RESOURCE, codec=bodies.CURRENT)
