"""``gateway convert``: the dry run an integrator starts with — the ACK and the FHIR a file would produce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from gateway.mapping.engine import Engine, Mapped
from gateway.pipeline import dry_run, utcnow
from gateway.state.apply import visit_fact
from gateway.state.patients import fold_patient, patient_payload
from gateway.state.visits import fold_visit


def resources_of(mapped: Mapped) -> list[dict[str, Any]]:
    """The resources one message would produce on an empty store (no earlier facts)."""
    out: list[dict[str, Any]] = []
    patient = fold_patient(
        [patient_payload(patient=mapped.patient, event_time=mapped.event_time, control_id=mapped.header.control_id)]
    )
    if patient:
        out.append(patient)
    out.extend(mapped.practitioners)
    if mapped.encounter is not None:
        encounter = fold_visit([visit_fact(mapped, mapped.encounter)])
        if encounter:
            out.append(encounter)
    return out


def convert_files(files: list[Path], *, mappings_dir: Path, out: TextIO) -> int:
    engine = Engine.from_directory(mappings_dir)
    worst = 0
    for path in files:
        result = dry_run(engine, Path(path).read_bytes(), now=utcnow())
        out.write(f"=== {path}: {result.code}\n")
        out.write(result.ack.replace("\r", "\n"))
        if result.mapped is not None:
            bundle = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in resources_of(result.mapped)],
            }
            out.write(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n")
        worst = max(worst, {"AA": 0, "AE": 1, "AR": 1}[result.code])
    return worst
