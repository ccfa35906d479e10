"""Stored resource bodies: deflated against a frozen dictionary, read back byte for byte."""

from __future__ import annotations

import orjson
import pytest

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
