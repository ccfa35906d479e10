"""Edge cases of the mapping engine and the visit fold that no fixture reaches.

The style guide asks for full coverage of ``gateway/mapping/``, ``gateway/state/visits.py`` and
``gateway/subscriptions/retry.py`` (``scripts/test`` checks it); each case here says what the line is for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.hl7 import er7
from gateway.mapping.engine import PROFILE_PATIENT, Engine, set_path
from gateway.mapping.ids import PS_OID, national_ps
from gateway.mapping.transforms import TRANSFORMS, MapContext
from gateway.state import visits
from tests.messages import Adt

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
RPPS_XCN = "10101010101^LAMBERT^ETIENNE^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS"


def _pid(message: Adt, engine: Engine) -> dict[str, object]:
    return engine.map(er7.parse(message.bytes())).patient


def test_a_care_circle_role_outside_the_table_is_a_warning_not_a_member(mapping_engine: Engine) -> None:
    message = Adt(extra_segments=[f"ROL|1|AD|NOT-A-ROLE|{RPPS_XCN}"])
    mapped = mapping_engine.map(er7.parse(message.bytes()))
    assert mapped.participations == []
    assert any("NOT-A-ROLE" in text and where == "ROL-3" for where, text in mapped.warnings)


def test_a_qualified_ins_without_what_patient_ins_requires_claims_fr_core_patient(mapping_engine: Engine) -> None:
    patient = _pid(Adt(ins="279035121518989", reliability="VALI"), mapping_engine)
    assert patient["meta"]["profile"] == [PROFILE_PATIENT]  # type: ignore[index]


@pytest.mark.parametrize(("flag", "security"), [("Y", ["R"]), ("N", [])])
def test_pd1_12_labels_the_patient_or_lifts_the_label(mapping_engine: Engine, flag: str, security: list[str]) -> None:
    """Y: restricted (v3-Confidentiality R); N: an empty list, which tells the fold to lift an earlier label."""
    patient = _pid(Adt(extra_segments=["PD1" + "|" * 12 + flag]), mapping_engine)
    assert [c["code"] for c in patient["meta"]["security"]] == security  # type: ignore[index]


def test_set_path_appends_an_element_in_the_middle_of_a_path() -> None:
    target: dict[str, object] = {}
    set_path(target, "name[].given[]", "ALICE")
    set_path(target, "name[].given[]", "ALICE")  # a second element: exact duplicates are skipped per list
    assert target == {"name": [{"given": ["ALICE"]}, {"given": ["ALICE"]}]}


@pytest.mark.parametrize(("system", "value"), [(PS_OID, "12345"), (PS_OID, "A0101010101"), ("urn:oid:1.2", "1")])
def test_what_is_not_a_national_professional_id(system: str, value: str) -> None:
    assert national_ps(system, value) is None


def _context(engine: Engine) -> MapContext:
    return MapContext(tables=engine.tables, sender=("GAM", "CH"))


def test_an_empty_coded_field_maps_to_nothing(mapping_engine: Engine) -> None:
    empty = er7.parse(Adt().bytes()).segment("PV1")
    assert empty is not None
    rep = empty.first(40)  # PV1-40 is empty in the builder's messages
    assert TRANSFORMS["code"](rep, _context(mapping_engine), {"table": "PatientClass_to_EncounterClass"}) is None


def test_a_unit_without_code_or_name_maps_to_nothing(mapping_engine: Engine) -> None:
    empty = er7.parse(Adt().bytes()).segment("PV1")
    assert empty is not None
    assert TRANSFORMS["unit_xon"](empty.first(40), _context(mapping_engine), {}) is None


def test_a_cancelled_stay_with_nothing_left_has_no_period() -> None:
    assert visits._cancelled_period([]) == {}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def test_a_segment_map_the_engine_reads_by_name_is_required(copy: Path) -> None:
    (copy / "segments" / "ROL_to_Participation.yaml").unlink()
    with pytest.raises(ConfigError, match=r"ROL_to_Participation\.yaml: missing"):
        Engine.from_directory(copy)


def test_segment_map_defaults_must_be_strings(copy: Path) -> None:
    path = copy / "segments" / "ROL_to_Participation.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "defaults: {action: [AD]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'defaults' must map element names to strings"):
        Engine.from_directory(copy)
