"""Golden-file conversion tests over ``fixtures/adt``, with the invariant checks run on every case.

Each case runs through the real pipeline on a throw-away in-memory store (``gateway convert``), with a
fixed clock: each top-level ``fixtures/adt/*.hl7`` alone, each sub-folder's messages in file order (one
stay or one identity story sent as several messages). The golden holds each message's ACK code, ERR
segments and warnings, and every resource the store then holds. The ACK's MSH (time, control id) is left
out: it changes on every run. Regenerate with ``--update-golden`` and review the diff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice, permutations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.convert import Converted, convert_messages
from gateway.hl7 import er7
from gateway.mapping.engine import Engine
from tests.invariants import check_resources

if TYPE_CHECKING:
    from tests.unit.conftest import Golden

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "fixtures" / "adt"
GOLDEN_DIR = ROOT / "tests" / "golden" / "adt"
SINGLES = sorted(FIXTURES.glob("*.hl7"))
STAYS = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2031, 6, 7, 8, 9, 10, tzinfo=UTC)
#: Arrival orders tried per stay (all of them up to 5 messages: 120 orders).
MAX_ORDERS = 120

JSON = dict[str, Any]


def dump(document: JSON) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def run(engine: Engine, paths: list[Path], *, now: datetime = NOW) -> Converted:
    return convert_messages((p.read_bytes() for p in paths), engine=engine, clock=lambda: now)


def ack_summary(code: str, ack: str) -> JSON:
    """What of the ACK is stable: its code and its ERR segments (MSH-7/MSH-10 change on every run)."""
    return {"code": code, "err": [segment for segment in ack.split("\r") if segment.startswith("ERR|")]}


def messages_of(paths: list[Path], converted: Converted) -> list[JSON]:
    out = []
    for path, (code, issues, ack) in zip(paths, converted.acks, strict=True):
        where = rel(path)
        assert code == "AA", f"{where} was not accepted: {ack!r}"
        msa = next(s for s in ack.split("\r") if s.startswith("MSA|"))
        assert msa.split("|")[2] == er7.parse(path.read_bytes()).msh.get(10), f"{where}: MSA-2 does not echo MSH-10"
        out.append(
            {
                "file": path.name,
                "ack": ack_summary(code, ack),
                "warnings": [{"location": i.location, "text": i.text} for i in issues if i.severity == "W"],
            }
        )
    return out


def timeless(resources: list[JSON]) -> str:
    """Resources without meta.versionId/lastUpdated: those depend on the clock and on the arrival order."""
    stripped = []
    for resource in resources:
        meta = {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
        stripped.append({**resource, "meta": meta})
    return dump({"r": stripped})


def stay_messages(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.hl7"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- known gateway bugs ----------------------------------------------------------------------
#
# A case listed here is xfail(strict): its golden holds the *correct* output, which is the actual output
# with the correction below applied (``--update-golden`` writes it that way, so a bug is never blessed).
# When the gateway is fixed the case passes, strict xfail reports it, and the entry must be removed.


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
    converted = run(mapping_engine, [path])
    document = {"fixture": rel(path), "messages": messages_of([path], converted), "resources": converted.resources}
    golden.check(GOLDEN_DIR / f"{path.stem}.json", dump(document), expected=expected_text(path.stem, document))
    check_resources(converted.resources)
    again = run(mapping_engine, [path], now=LATER)
    assert timeless(again.resources) == timeless(converted.resources), "conversion is not deterministic"


@pytest.mark.parametrize("folder", cases(STAYS, lambda p: p.name))
def test_stay_golden(folder: Path, mapping_engine: Engine, golden: Golden) -> None:
    paths = stay_messages(folder)
    converted = run(mapping_engine, paths)
    document = {"fixture": rel(folder), "messages": messages_of(paths, converted), "resources": converted.resources}
    golden.check(GOLDEN_DIR / f"{folder.name}.json", dump(document), expected=expected_text(folder.name, document))
    check_resources(converted.resources)


@pytest.mark.parametrize("folder", STAYS, ids=lambda p: p.name)
def test_stay_fold_is_order_independent(folder: Path, mapping_engine: Engine) -> None:
    """Messages may arrive in any order: every arrival order must end in the same resources."""
    paths = stay_messages(folder)
    expected = timeless(run(mapping_engine, paths).resources)
    for order in islice(permutations(paths), MAX_ORDERS):
        actual = timeless(run(mapping_engine, list(order)).resources)
        assert actual == expected, f"arrival order {[p.name for p in order]} ends differently"


def _encounter(resources: list[JSON]) -> JSON:
    return next(r for r in resources if r["resourceType"] == "Encounter" and "partOf" not in r)


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
    "reference target type": (
        lambda rs: _careteam(rs)["participant"][0]["member"].update(reference=f"Practitioner/{_practitioner(rs)}"),
        "is not a target of cds-ihe-careteam",
    ),
    "reference target profile": (
        lambda rs: _role(rs)["practitioner"].update(reference=f"Patient/{_patient(rs)['id']}"),
        "is not a target of fr-core-practitioner-role",
    ),
}


def _careteam(resources: list[JSON]) -> JSON:
    return next(r for r in resources if r["resourceType"] == "CareTeam")


def _role(resources: list[JSON]) -> JSON:
    return next(r for r in resources if r["resourceType"] == "PractitionerRole")


def _practitioner(resources: list[JSON]) -> str:
    return str(next(r for r in resources if r["resourceType"] == "Practitioner")["id"])


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_invariants_catch_a_broken_resource(breakage: str, mapping_engine: Engine) -> None:
    """The checks are not vacuous: each kind of breakage in a good case is reported."""
    path = FIXTURES / "A01_admission.hl7"
    resources = json.loads(dump({"r": run(mapping_engine, [path]).resources}))["r"]
    check_resources(resources)
    breaker, message = BREAKAGES[breakage]
    breaker(resources)
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_resources(resources)
