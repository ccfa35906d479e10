"""Pure parts of the REST layer: _summary/_elements shaping, _lastUpdated ranges, _sort keys, HTTP dates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from starlette.datastructures import Headers

from gateway.api.edge import forwarded_base
from gateway.api.responses import http_date
from gateway.errors import FhirError
from gateway.fhir.search import parse_last_updated, parse_sort
from gateway.fhir.shaping import SUBSETTED, parse_elements, shape, summary_elements

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "2"},
    "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'>x</div>"},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "1"}],
    "_gender": {"extension": []},
    "gender": "female",
    "contact": [{"name": {"family": "X"}}],
}


def test_summary_true_keeps_the_specification_summary_elements() -> None:
    assert {"identifier", "gender", "name"} <= summary_elements("Patient")
    assert "contact" not in summary_elements("Patient")
    out = shape(PATIENT, summary="true", elements=None)
    assert "contact" not in out and "text" not in out and out["gender"] == "female" and "_gender" in out
    assert SUBSETTED in out["meta"]["tag"] and out["meta"]["versionId"] == "2"


def test_summary_data_text_and_false() -> None:
    assert "text" not in shape(PATIENT, summary="data", elements=None)
    assert set(shape(PATIENT, summary="text", elements=None)) == {"resourceType", "id", "meta", "text"}
    assert shape(PATIENT, summary="false", elements=None) is PATIENT


def test_elements_keep_or_leave_out() -> None:
    kept = shape(PATIENT, summary=None, elements=parse_elements("identifier, Patient.gender"))
    assert set(kept) == {"resourceType", "id", "meta", "identifier", "gender", "_gender"}
    dropped = shape(PATIENT, summary=None, elements=parse_elements("-contact"))
    assert "contact" not in dropped and "identifier" in dropped


def test_bundles_trim_matches_but_not_outcomes() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": PATIENT, "search": {"mode": "match"}},
            {"resource": outcome, "search": {"mode": "outcome"}},
        ],
    }
    out = shape(bundle, summary=None, elements=frozenset({"gender"}))
    assert "identifier" not in out["entry"][0]["resource"] and out["entry"][1]["resource"] is outcome


def test_last_updated_ranges_follow_the_precision() -> None:
    assert parse_last_updated(["2026-03"]) == [
        ("ge", datetime(2026, 3, 1, tzinfo=UTC)),
        ("lt", datetime(2026, 4, 1, tzinfo=UTC)),
    ]
    assert parse_last_updated(["gt2026-12"]) == [("ge", datetime(2027, 1, 1, tzinfo=UTC))]
    assert parse_last_updated(["le2026-03-01T10:00:00+02:00"])[0][1].hour == 8  # in UTC
    for bad in ("ge2026-13", "9999-12-31", "ge9999-12-31T23:59:59.9999+00:00", "ge", "abcd", "2026-02-30"):
        with pytest.raises(FhirError):
            parse_last_updated([bad])


def test_sort_keys() -> None:
    assert parse_sort("Encounter", "-date,_id") == [("date", True), ("_id", False)]
    with pytest.raises(FhirError, match="not supported"):
        parse_sort("Patient", "date")


def test_http_date() -> None:
    assert http_date("2026-03-01T09:30:00.250+01:00") == "Sun, 01 Mar 2026 08:30:00 GMT"
    assert http_date("not a date") is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"forwarded": 'for=1.2.3.4;proto=https;host="gw.example"'}, "https://gw.example/fhir"),
        (
            {"x-forwarded-host": "gw.example", "x-forwarded-port": "8443", "x-forwarded-proto": "https"},
            "https://gw.example:8443/fhir",
        ),
        (
            {"x-forwarded-host": "gw.example", "x-forwarded-port": "443", "x-forwarded-proto": "https"},
            "https://gw.example/fhir",
        ),
        ({"x-forwarded-host": "0.0.0.0:8000"}, None),
        ({"x-forwarded-host": "evil.example/path"}, None),
        ({}, None),
    ],
)
def test_forwarded_base(headers: dict[str, str], expected: str | None) -> None:
    assert forwarded_base(Headers(headers), fallback_scheme="http") == expected
