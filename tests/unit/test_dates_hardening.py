"""Issue 12 item 1: a DTM that is not a real instant is read as "no date", never as an exception."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mapping.transforms import fhir_datetime, parse_dtm


@pytest.mark.parametrize(
    "text",
    [
        "20260301080000+2400",
        "20260301080000+9999",
        "20260301080000-9999",
        "20260301080000+0060",
        "00010101",
        "00010101000000-0100",
        "99991231235959+1400",
        "0000",
    ],
)
def test_impossible_instants_are_not_dates(text: str) -> None:
    assert parse_dtm(text) is None
    assert fhir_datetime(text) is None


def test_real_offsets_still_read() -> None:
    parsed = parse_dtm("20260301080000+1400")
    assert parsed is not None
    assert parsed[0].utcoffset() == timedelta(hours=14)
    assert parse_dtm("20260301080000-0930") is not None


@given(st.from_regex(r"\A[0-9]{4,14}(\.[0-9]{1,4})?([+-][0-9]{4})?\Z"))
def test_any_dtm_shaped_text_parses_or_is_none_and_converts_to_utc(text: str) -> None:
    parsed = parse_dtm(text)
    if parsed is not None:
        assert parsed[0].astimezone(UTC).year >= 1
        assert fhir_datetime(text) is not None
