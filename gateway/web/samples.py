"""Sample messages for the sandbox: one per PAM-FR event the mapping tables handle, each a short stay.

The samples are built from the event table itself (``mappings/messages/ADT.yaml``), so a trigger added
there gets a sample without anyone writing one: a cancel is sent after the movement it cancels, a return
after a leave, a merge after the admission of the patient it absorbs. Everything is fictional: hospital
``CH-SANDBOX``, sending application ``GAM-SANDBOX``, patients and doctors invented for the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.mapping.tables import EventSpec, Tables

RPPS = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
IPP_AUTH = "CH-SANDBOX&1.2.250.1.999.7.1&ISO"
VISIT_AUTH = "CH-SANDBOX&1.2.250.1.999.7.2&ISO"
FACILITY = "CH-SANDBOX&1.2.250.1.999.7&ISO"
MOVEMENT_AUTH = "CH-SANDBOX^1.2.250.1.999.7.3^ISO"
DOCTOR = f"10107070701^BERTIN^CLAIRE^^^DR^^^{RPPS}^D^^^RPPS"
OTHER_DOCTOR = f"10107070702^NOVAK^HUGO^^^DR^^^{RPPS}^D^^^RPPS"
#: The triggers that must come after another one to mean anything (beyond what ``cancels`` says).
AFTER: dict[str, tuple[str, ...]] = {"A22": ("A21",), "A07": (), "A06": ()}
#: Patient class of the stay each trigger expects (A06 turns an outpatient into an inpatient).
CLASS: dict[str, str] = {"A04": "E", "A06": "O"}
#: Events on the person alone (no PV1, no ZBE).
PERSON_KINDS = frozenset({"person", "person-update", "change-identifier", "merge"})
#: Events that name a previous patient in MRG-1.
WITH_MRG = frozenset({"merge", "change-identifier", "move-account"})
DESCRIPTIONS: dict[str, str] = {
    "admit": "admission",
    "register": "emergency visit starts",
    "preadmit": "pre-admission",
    "pending-admit": "pending admission",
    "change-class": "patient class change",
    "transfer": "transfer",
    "pending-transfer": "pending transfer",
    "doctor-change": "change of responsible doctor",
    "leave": "leave of absence",
    "return": "return from leave",
    "pending-discharge": "pending discharge",
    "discharge": "discharge",
    "update": "visit update (foreign senders)",
    "correction": "correction of a movement",
    "move-account": "move account",
    "person": "create person",
    "person-update": "update person",
    "change-identifier": "change identifier",
    "merge": "merge patients",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample: the trigger it shows and the messages (ER7, CR segments) sent in order."""

    trigger: str
    title: str
    messages: tuple[str, ...]

    @property
    def text(self) -> str:
        """The messages as the text area shows them: LF line ends, a blank line between messages."""
        return "\n\n".join(m.replace("\r", "\n").rstrip("\n") for m in self.messages) + "\n"


@dataclass(slots=True)
class _Step:
    trigger: str
    movement: int
    action: str = "INSERT"
    original: str = ""
    ipp: str = "770101"
    mrg: str = ""
    patient_class: str = "I"
    person: bool = False
    extra: list[str] = field(default_factory=list)


def build_samples(tables: Tables) -> list[Sample]:
    """One sample per trigger of the event table, in the table's order, with MSH-9.3 from the tables."""
    return [_sample(spec, tables) for spec in tables.events.values()]


def _sample(spec: EventSpec, tables: Tables) -> Sample:
    events = tables.events
    steps = _steps(spec, events)
    messages = []
    for n, step in enumerate(steps, start=1):
        row = tables.code("MessageStructure", step.trigger)
        control_id = f"SBX-{spec.trigger}-{n:03d}"  # unique across samples: each may be sent to a real gateway
        messages.append(_render(step, control_id, n, structure=row.target_code if row else "ADT_A01"))
    title = f"{spec.trigger} — {_describe(spec, events)}"
    return Sample(trigger=spec.trigger, title=title, messages=tuple(messages))


def _describe(spec: EventSpec, events: dict[str, EventSpec]) -> str:
    if spec.action == "CANCEL" and spec.cancels:
        cancelled = events.get(spec.cancels[0])
        return "cancel " + (DESCRIPTIONS.get(cancelled.kind, cancelled.kind) if cancelled else spec.cancels[0])
    return DESCRIPTIONS.get(spec.kind, spec.kind)


def _steps(spec: EventSpec, events: dict[str, EventSpec]) -> list[_Step]:
    """The messages leading to ``spec`` and ``spec`` itself."""
    patient_class = CLASS.get(spec.trigger, "I")
    if spec.kind in PERSON_KINDS:
        return _person_steps(spec)
    if spec.kind == "move-account":
        return [_Step("A01", 1, ipp="770102"), _Step(spec.trigger, 2, mrg="770102")]
    if spec.action == "CANCEL" and spec.cancels:
        cancelled = events[spec.cancels[0]]
        before = _steps(cancelled, events)
        last = before[-1]
        return [*before, _Step(spec.trigger, last.movement, action="CANCEL", original=cancelled.trigger)]
    if spec.action == "UPDATE":
        # The correction moves the patient to bed 2 (PV1-3.3): visible on the corrected movement's location.
        return [_Step("A01", 1), _Step(spec.trigger, 1, action="UPDATE", original="A01", extra=["bed"])]
    first = ["A04"] if patient_class in {"E", "O"} else ["A01"]
    if spec.kind in {"admit", "register", "preadmit", "pending-admit"}:
        first = []
    chain = [*first, *AFTER.get(spec.trigger, ()), spec.trigger]
    steps = [_Step(t, n, patient_class=patient_class) for n, t in enumerate(chain, start=1)]
    if spec.kind in {"transfer", "pending-transfer"}:
        steps[-1].extra.append("bed")
    if spec.trigger == "A07":
        steps[-1].patient_class = "O"
    return steps


def _person_steps(spec: EventSpec) -> list[_Step]:
    if spec.kind == "merge":
        return [_Step("A01", 1, ipp="770102"), _Step("A01", 2), _Step(spec.trigger, 3, mrg="770102", person=True)]
    if spec.kind == "change-identifier":
        return [_Step("A28", 1, ipp="770102", person=True), _Step(spec.trigger, 2, mrg="770102", person=True)]
    if spec.kind == "person-update":
        return [_Step("A28", 1, person=True), _Step(spec.trigger, 2, person=True)]
    return [_Step(spec.trigger, 1, person=True)]


def _render(step: _Step, control_id: str, n: int, *, structure: str) -> str:
    when = f"202612{1 + n:02d}0{8 + n % 2}3000"
    segments = [
        f"MSH|^~\\&|GAM-SANDBOX|CH-SANDBOX|GATEWAY|ARS-SANDBOX|{when}||ADT^{step.trigger}^{structure}|"
        f"{control_id}|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM",
        f"EVN||{when}||||{when}",
        _pid(step),
    ]
    if step.mrg:
        segments.append(f"MRG|{step.mrg}^^^{IPP_AUTH}^PI")
    if not step.person:
        segments += [f"ROL||AD|ODRP^Médecin traitant^IHE|{OTHER_DOCTOR}", _pv1(step, when), _zbe(step, when)]
    return "\r".join(segments) + "\r"


def _pid(step: _Step) -> str:
    names = {"770101": "DURAND^ÉLODIE^ÉLODIE^^MME^^L", "770102": "DURAND^ELODIE^ELODIE^^MME^^L"}
    return (
        f"PID|1||{step.ipp}^^^{IPP_AUTH}^PI||{names.get(step.ipp, 'DURAND^ÉLODIE^^^MME^^L')}||19790412|F|||"
        f"8 rue des Tanneurs^^STRASBOURG^^67000^FRA^H||0388000000^PRN^PH|||||880101^^^{VISIT_AUTH}^AN"
        + "|" * 14
        + "PROV"
    )


def _pv1(step: _Step, when: str) -> str:
    bed = "2" if "bed" in step.extra else "1"
    fields = ["PV1", "1", step.patient_class, f"MED^204^{bed}^{FACILITY}"] + [""] * 42
    fields[7] = DOCTOR
    fields[19] = f"SBX-V1^^^{VISIT_AUTH}^VN"
    fields[44] = "20261202083000"
    if step.trigger == "A03":
        fields[36] = "5"
        fields[45] = when
    return "|".join(fields).rstrip("|")


def _zbe(step: _Step, when: str) -> str:
    unit = f"Médecine interne^^^^^{FACILITY}^UF^^^2041"
    return f"ZBE|SBX-MVT-{step.movement}^{MOVEMENT_AUTH}|{when}||{step.action}|N|{step.original}|{unit}|{unit}|HMS"
