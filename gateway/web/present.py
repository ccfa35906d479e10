"""What the sandbox page shows of a trial: per-message ACKs, readable resource summaries, the stay's
timeline of movements, the care circle after each message that changed it, and validation findings.

Pure functions over JSON (no I/O), so the page, ``/docs`` users and the tests read the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway.hl7 import er7
from gateway.hl7.ack import AckIssue
from gateway.subscriptions.nde_inbox import problems as nde_problems
from gateway.web.trial import Step, Trial

JSON = dict[str, Any]
MAX_FINDINGS_PER_RESOURCE = 20


def skipped_reason(skipped: int, *, cpu_seconds: float) -> str | None:
    return f"CPU budget of {cpu_seconds:g} s used up" if skipped else None


def present_trial(trial: Trial, *, cpu_seconds: float) -> JSON:
    """The ``POST /sandbox/convert`` answer (see the OpenAPI description of that route)."""
    final = trial.resources()
    orders = [o for step in trial.steps for o in step.nde_orders]
    return {
        "messages": [present_step(step) for step in trial.steps],
        "skipped": trial.skipped,
        "skippedReason": skipped_reason(trial.skipped, cpu_seconds=cpu_seconds),
        "bundle": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in final]},
        "summaries": [{"reference": _ref(r), "summary": summarize(r)} for r in final],
        "validation": validate_all([*final, *orders]),
        "notifications": [n for step in trial.steps for n in step.notifications],
        "nde_orders": orders,
        "timeline": timeline(final),
        "care_circle": care_circle_history(trial.steps),
    }


def present_step(step: Step) -> JSON:
    text, _codec, _warnings = er7.decode(step.raw)  # by MSH-18, as the pipeline read it
    return {
        "number": step.number,
        "code": step.code,
        "ack": step.ack.replace("\r", "\n"),
        "message": text.replace("\r\n", "\n").replace("\r", "\n").strip("\n\x0b\x1c"),
        "issues": [issue_json(i) for i in step.issues],
        "changed": [
            {"reference": f"{s.type}/{s.id}", "version": s.version_id, "summary": summarize(s.content)}
            for s in step.changed
        ],
        "notifications": len(step.notifications),
        "nde_orders": len(step.nde_orders),
    }


def issue_json(issue: AckIssue) -> JSON:
    return {"severity": issue.severity, "code": issue.code, "location": issue.location, "text": issue.text}


# -- summaries ------------------------------------------------------------------------------------


def _ref(resource: JSON) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _name(names: Iterable[JSON] | None) -> str:
    for name in names or ():
        parts = [*name.get("given", []), name.get("family", "")]
        if any(parts):
            return " ".join(p for p in parts if p)
    return "(no name)"


def _period(period: JSON | None) -> str:
    if not period:
        return ""
    return f"{period.get('start', '…')} → {period.get('end', '…')}"


def _identifiers(resource: JSON) -> str:
    return ", ".join(
        f"{(i.get('type', {}).get('coding') or [{}])[0].get('code', '?')} {i.get('value', '')}"
        for i in resource.get("identifier", [])
    )


def _patient(r: JSON) -> str:
    dead = " (deceased)" if r.get("deceasedBoolean") or r.get("deceasedDateTime") else ""
    return f"{_name(r.get('name'))}, born {r.get('birthDate', '?')}, {r.get('gender', '?')}{dead} — {_identifiers(r)}"


def _encounter(r: JSON) -> str:
    kind = "movement" if "partOf" in r else "stay"
    where = ", ".join(loc.get("location", {}).get("display", "") for loc in r.get("location", []))
    unit = r.get("serviceProvider", {}).get("display", "")
    cls = r.get("class", {}).get("code", "")
    bits = [f"{kind} {r.get('status', '?')}", cls, _period(r.get("period")), where, unit, _identifiers(r)]
    return " · ".join(b for b in bits if b)


def _careteam(r: JSON) -> str:
    active = [p for p in r.get("participant", []) if not p.get("period", {}).get("end")]
    return f"{len(active)} current member(s) of {len(r.get('participant', []))}: " + ", ".join(
        p.get("member", {}).get("display", "?") for p in active
    )


def _practitioner(r: JSON) -> str:
    return f"{_name(r.get('name'))} — {_identifiers(r)}"


SUMMARIES: dict[str, Callable[[JSON], str]] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "CareTeam": _careteam,
    "Practitioner": _practitioner,
}


def summarize(resource: JSON) -> str:
    """One line a person reads in place of the JSON (names, dates, status; nothing is logged)."""
    describe = SUMMARIES.get(str(resource.get("resourceType")))
    return describe(resource) if describe else _ref(resource)


# -- timeline and care circle ---------------------------------------------------------------------


def _displays(concepts: list[JSON], *, sep: str) -> str:
    return sep.join(c.get("display", c.get("code", "")) for concept in concepts for c in concept.get("coding", []))


def timeline(resources: list[JSON]) -> list[JSON]:
    """Each stay with its movements in date order (the movement Encounters ``partOf`` it)."""
    movements: dict[str, list[JSON]] = {}
    for r in resources:
        if r.get("resourceType") == "Encounter" and "partOf" in r:
            movements.setdefault(r["partOf"]["reference"], []).append(r)
    stays = [r for r in resources if r.get("resourceType") == "Encounter" and "partOf" not in r]
    return [
        {
            "stay": _ref(stay),
            "summary": summarize(stay),
            "movements": [
                {
                    "reference": _ref(m),
                    "kind": _displays(m.get("type", []), sep=" "),
                    "status": m.get("status"),
                    "start": m.get("period", {}).get("start"),
                    "end": m.get("period", {}).get("end"),
                    "location": ", ".join(loc.get("location", {}).get("display", "") for loc in m.get("location", [])),
                    "unit": m.get("serviceProvider", {}).get("display", ""),
                }
                for m in sorted(movements.get(_ref(stay), []), key=lambda m: m.get("period", {}).get("start", ""))
            ],
        }
        for stay in stays
    ]


def care_circle_history(steps: list[Step]) -> list[JSON]:
    """The care circle after each message that changed it: who is in, with role and period."""
    history = []
    for step in steps:
        for stored in step.changed:
            if stored.type != "CareTeam":
                continue
            members = [
                {
                    "member": p.get("member", {}).get("display", "?"),
                    "role": _displays(p.get("role", []), sep=", "),
                    "start": p.get("period", {}).get("start"),
                    "end": p.get("period", {}).get("end"),
                }
                for p in stored.content.get("participant", [])
            ]
            history.append({"after_message": step.number, "careteam": f"CareTeam/{stored.id}", "members": members})
    return history


# -- validation -----------------------------------------------------------------------------------


def validate_all(resources: list[JSON]) -> list[JSON]:
    """Findings per resource: the FHIR R4 structure check (fhir.resources), the profiles it claims, and, for
    the ANS NdE CommunicationRequests (declarations, orders), the NdE FSH rules the gateway itself enforces
    on those it receives (``gateway.subscriptions.nde_inbox``).

    The FR Core and CDS profile rules are not checked here: the FR Core validator (fhircraft over the
    published package) is a test dependency that proves every resource the mapping produces against its
    profiles, on every golden case and API answer. The package is not part of the gateway, and building
    its models costs seconds per profile: the sandbox shows what the gateway can check per call, cheaply.
    """
    return [_validate(r) for r in resources]


def _validate(resource: JSON) -> JSON:
    rtype = str(resource.get("resourceType"))
    findings: list[JSON] = []
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        findings = [
            {"severity": "error", "location": ".".join(str(p) for p in e["loc"]), "text": e["msg"]}
            for e in exc.errors()[:MAX_FINDINGS_PER_RESOURCE]
        ]
    except KeyError:
        findings = [{"severity": "error", "location": "resourceType", "text": f"unknown resource type {rtype}"}]
    if rtype == "CommunicationRequest":
        findings += [{"severity": "error", "location": "NdE profile", "text": p} for p in nde_problems(resource)]
    return {
        "reference": _ref(resource),
        "profiles": resource.get("meta", {}).get("profile", []),
        "valid": not findings,
        "findings": findings,
    }
