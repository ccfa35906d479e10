"""Golden-file conversion tests over ``fixtures/adt``, with the invariant checks run on every case.

Each top-level ``fixtures/adt/*.hl7`` is one message: its golden holds the resources ``gateway convert``
shows (``resources_of``), the ACK code with its ERR segments, and the mapping warnings. Each sub-folder is
one stay sent as several messages: its golden holds each message's ACK and warnings and the resources
folded from all of them (``fold_patient`` / ``fold_visit``, as the store does). The ACK's MSH (time,
control id) is left out: it changes on every run. Regenerate with ``--update-golden`` and review the diff.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import permutations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.convert import resources_of
from gateway.hl7 import er7
from gateway.mapping.engine import Engine, Mapped
from gateway.pipeline import Conversion, dry_run
from gateway.state.apply import visit_fact
from gateway.state.patients import fold_patient, patient_payload
from gateway.state.visits import VisitFact, fold_visit
from tests.invariants import check_resources

if TYPE_CHECKING:
    from tests.unit.conftest import Golden

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "fixtures" / "adt"
GOLDEN_DIR = ROOT / "tests" / "golden" / "adt"
SINGLES = sorted(FIXTURES.glob("*.hl7"))
STAYS = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
# Two different clocks: the ACK time must never leak into the resources.
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2031, 6, 7, 8, 9, 10, tzinfo=UTC)

JSON = dict[str, Any]


def dump(document: JSON) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def convert(engine: Engine, path: Path, *, now: datetime = NOW) -> Conversion:
    return dry_run(engine, path.read_bytes(), now=now)


def accepted(conversion: Conversion, path: Path) -> Mapped:
    """The fixtures are all meant to be accepted; the ACK must echo the message's control id."""
    where = rel(path)
    assert conversion.code == "AA", f"{where} was not accepted: {conversion.ack!r}"
    assert conversion.mapped is not None
    msa = next(s for s in conversion.ack.split("\r") if s.startswith("MSA|"))
    control_id = er7.parse(path.read_bytes()).msh.get(10)
    assert msa.split("|")[2] == control_id, f"{where}: MSA-2 does not echo MSH-10"
    return conversion.mapped


def ack_summary(conversion: Conversion) -> JSON:
    """What of the ACK is stable: its code and its ERR segments (MSH-7/MSH-10 change on every run)."""
    return {
        "code": conversion.code,
        "err": [segment for segment in conversion.ack.split("\r") if segment.startswith("ERR|")],
    }


def warnings_of(mapped: Mapped) -> list[JSON]:
    return [{"location": location, "text": text} for location, text in mapped.warnings]


def fold_stay(mapped: list[Mapped]) -> list[JSON]:
    """The store's view after all the messages, fed in arrival order: patients and stays refolded from
    every fact. A practitioner seen in several messages is taken from the latest event."""
    patients: dict[str, list[JSON]] = defaultdict(list)
    visits: dict[str, list[VisitFact]] = defaultdict(list)
    practitioners: dict[str, tuple[tuple[datetime, str], JSON]] = {}
    for item in mapped:
        moment = (item.event_time, item.header.control_id)
        patients[item.patient["id"]].append(
            patient_payload(patient=item.patient, event_time=item.event_time, control_id=item.header.control_id)
        )
        for practitioner in item.practitioners:
            seen = practitioners.get(practitioner["id"])
            if seen is None or seen[0] < moment:
                practitioners[practitioner["id"]] = (moment, practitioner)
        if item.encounter is not None:
            visits[item.encounter["id"]].append(visit_fact(item, item.encounter))
    out = [p for key in sorted(patients) if (p := fold_patient(patients[key])) is not None]
    out += [practitioners[key][1] for key in sorted(practitioners)]
    out += [e for key in sorted(visits) if (e := fold_visit(visits[key])) is not None]
    return out


def stay_messages(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.hl7"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- known gateway bugs ----------------------------------------------------------------------
#
# A case listed here is xfail(strict): its golden holds the *correct* output, which is the actual output
# with the correction below applied (``--update-golden`` writes it that way, so a bug is never blessed).
# When the gateway is fixed the case passes, strict xfail reports it, and the entry must be removed.


def _single_deceased(document: JSON) -> JSON:
    """R4 Patient.deceased[x] is a choice: PID-29 (date) wins over PID-30 (indicator)."""
    for resource in document["resources"]:
        if resource["resourceType"] == "Patient" and "deceasedDateTime" in resource:
            resource.pop("deceasedBoolean", None)
    return document


def _nia_type(document: JSON) -> JSON:
    """An INS under the INS-NIA OID is a temporary NIR: FR Core type INS-NIA, not INS-NIR."""
    for resource in document["resources"]:
        for ident in resource.get("identifier", []):
            if ident.get("system") == "urn:oid:1.2.250.1.213.1.4.9":
                ident["type"] = {
                    "coding": [
                        {
                            "code": "INS-NIA",
                            "display": "NIR temporaire",
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                        }
                    ]
                }
    return document


#: Cases whose output is wrong because of a gateway bug: name -> (reason, the corrected output). The
#: golden holds the corrected output, so a fix shows up as an unexpected pass. Empty when none is known.
KNOWN_BUGS: dict[str, tuple[str, Callable[[JSON], JSON]]] = {}


def cases(paths: list[Path], name: Callable[[Path], str]) -> list[Any]:
    return [
        pytest.param(p, id=name(p), marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name(p)][0]))
        if name(p) in KNOWN_BUGS
        else pytest.param(p, id=name(p))
        for p in paths
    ]


def expected_text(name: str, document: JSON) -> str:
    """What the golden must hold: the output, corrected when the case is a known gateway bug."""
    if name not in KNOWN_BUGS:
        return dump(document)
    return dump(KNOWN_BUGS[name][1](json.loads(dump(document))))


# -- the cases --------------------------------------------------------------------------------


def test_fixtures_are_discovered() -> None:
    """Guards against an empty parametrization silently testing nothing."""
    assert SINGLES, f"no single-message fixture in {FIXTURES}"
    assert STAYS, f"no stay folder in {FIXTURES}"
    assert all(stay_messages(stay) for stay in STAYS), "a stay folder holds no .hl7 message"


def test_every_golden_has_its_fixture() -> None:
    """A golden whose fixture was renamed or removed would otherwise linger unchecked."""
    cases = {p.stem for p in SINGLES} | {p.name for p in STAYS}
    orphans = sorted(g.name for g in GOLDEN_DIR.glob("*.json") if g.stem not in cases)
    assert not orphans, f"golden files without a fixture in {rel(FIXTURES)}: {orphans}"
    assert set(KNOWN_BUGS) <= cases, f"KNOWN_BUGS names no fixture: {sorted(set(KNOWN_BUGS) - cases)}"


@pytest.mark.parametrize("path", cases(SINGLES, lambda p: p.stem))
def test_single_message_golden(path: Path, mapping_engine: Engine, golden: Golden) -> None:
    conversion = convert(mapping_engine, path)
    mapped = accepted(conversion, path)
    resources = resources_of(mapped)
    document = {
        "fixture": rel(path),
        "ack": ack_summary(conversion),
        "warnings": warnings_of(mapped),
        "resources": resources,
    }
    golden.check(GOLDEN_DIR / f"{path.stem}.json", dump(document), expected=expected_text(path.stem, document))

    check_resources(resources)
    again = convert(mapping_engine, path, now=LATER)
    assert again.mapped is not None
    assert dump({"r": resources_of(again.mapped)}) == dump({"r": resources}), "conversion is not deterministic"
    assert ack_summary(again) == ack_summary(conversion)


@pytest.mark.parametrize("folder", cases(STAYS, lambda p: p.name))
def test_stay_golden(folder: Path, mapping_engine: Engine, golden: Golden) -> None:
    messages = []
    mapped = []
    for path in stay_messages(folder):
        conversion = convert(mapping_engine, path)
        item = accepted(conversion, path)
        mapped.append(item)
        messages.append(
            {
                "file": path.name,
                "trigger": item.header.trigger,
                "ack": ack_summary(conversion),
                "warnings": warnings_of(item),
            }
        )
    resources = fold_stay(mapped)
    document = {"fixture": rel(folder), "messages": messages, "resources": resources}
    golden.check(GOLDEN_DIR / f"{folder.name}.json", dump(document), expected=expected_text(folder.name, document))

    check_resources(resources)
    kinds = sorted(r["resourceType"] for r in resources if r["resourceType"] != "Practitioner")
    assert kinds == ["Encounter", "Patient"], f"{rel(folder)} should fold into one patient and one stay"
    again = fold_stay([accepted(convert(mapping_engine, p, now=LATER), p) for p in stay_messages(folder)])
    assert dump({"r": again}) == dump({"r": resources}), "conversion is not deterministic"


@pytest.mark.parametrize("folder", STAYS, ids=lambda p: p.name)
def test_stay_fold_is_order_independent(folder: Path, mapping_engine: Engine) -> None:
    """Messages may arrive in any order: every arrival order must fold into the same resources."""
    paths = stay_messages(folder)
    expected = dump({"r": fold_stay([accepted(convert(mapping_engine, p), p) for p in paths])})
    for order in permutations(paths):
        mapped = [accepted(convert(mapping_engine, p), p) for p in order]
        actual = dump({"r": fold_stay(mapped)})
        assert actual == expected, f"arrival order {[p.name for p in order]} folds differently"


def _encounter(resources: list[JSON]) -> JSON:
    return next(r for r in resources if r["resourceType"] == "Encounter")


def _patient(resources: list[JSON]) -> JSON:
    return next(r for r in resources if r["resourceType"] == "Patient")


BREAKAGES: dict[str, tuple[Callable[[list[JSON]], None], str]] = {
    "dangling reference": (
        lambda rs: _encounter(rs).update(subject={"reference": "Patient/nowhere"}),
        "does not resolve",
    ),
    "absolute reference": (
        lambda rs: _encounter(rs).update(subject={"reference": "http://x.test/Patient/1"}),
        "not a relative",
    ),
    "duplicate id": (lambda rs: rs.append(dict(_patient(rs))), "appears twice"),
    "bad id": (lambda rs: _patient(rs).update(id="has space"), "is not [A-Za-z0-9-.]"),
    "empty string": (lambda rs: _patient(rs)["name"][0].update(family=""), "empty or blank string"),
    "empty list": (lambda rs: _patient(rs).update(address=[]), "empty array"),
    "empty object": (lambda rs: _encounter(rs).update(hospitalization={}), "empty object"),
    "null": (lambda rs: _patient(rs).update(birthDate=None), "is null"),
    "invalid FHIR": (lambda rs: _patient(rs).update(birthDate="14/03/1985"), "not a valid R4B Patient"),
    "encounter status": (lambda rs: _encounter(rs).update(status="discharged"), "encounter-status"),
    "encounter class": (lambda rs: _encounter(rs)["class"].update(code="INPATIENT"), "PatientClass"),
    "gender": (lambda rs: _patient(rs).update(gender="F"), "administrative-gender"),
    "identifier type": (
        lambda rs: _patient(rs)["identifier"][0]["type"]["coding"][0].update(code="MR"),
        "is not a target of an identifier type table",
    ),
    "missing profile": (lambda rs: _encounter(rs).pop("meta"), "meta.profile"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_invariants_catch_a_broken_resource(breakage: str, mapping_engine: Engine) -> None:
    """The checks are not vacuous: each kind of breakage in a good case is reported."""
    path = FIXTURES / "A01_admission.hl7"
    resources = json.loads(dump({"r": resources_of(accepted(convert(mapping_engine, path), path))}))["r"]
    check_resources(resources)
    breaker, message = BREAKAGES[breakage]
    breaker(resources)
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_resources(resources)
