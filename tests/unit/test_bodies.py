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
