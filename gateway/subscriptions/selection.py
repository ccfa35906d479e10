"""Which patients a subscription selects, from its stored filters (both dialects store the same shape).

For the authorization policy (#13): a platform may only subscribe to patients it may see. Filters are
AND-ed; within one ``patient.identifier`` filter the tokens are OR-ed (an NdE Subject's INS or IPP).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.token_lists import split_tokens

JSON = dict[str, Any]
#: Filters that select patients by something other than who they are (their circle, the sender, the stay).
INDIRECT = frozenset({"care-team-member", "facility", "class", "status", "identifier", "event-type"})


@dataclass(frozen=True, slots=True)
class Selection:
    """``patients``: ``Patient/<id>`` references; ``identifiers``: (system or ``None``, value) pairs, each
    group one filter (a patient must match one pair of every group). ``everyone``: no patient filter at
    all, only indirect ones (a care-team member, a facility, a class…), or none."""

    patients: tuple[str, ...]
    identifiers: tuple[tuple[tuple[str | None, str], ...], ...]
    indirect: tuple[str, ...]

    @property
    def everyone(self) -> bool:
        return not self.patients and not self.identifiers


def selected_patients(filters: Iterable[JSON]) -> Selection:
    patients: list[str] = []
    identifiers: list[tuple[tuple[str | None, str], ...]] = []
    indirect: list[str] = []
    for f in filters:
        param, value = str(f.get("param")), str(f.get("value", ""))
        if param == "patient":
            patients.append(value if "/" in value else f"Patient/{value}")
        elif param == "patient.identifier":
            group = []
            for token in split_tokens(value):
                system, sep, code = token.rpartition("|")
                group.append((system if sep else None, code))
            identifiers.append(tuple(group))
        elif param in INDIRECT:
            indirect.append(param)
    return Selection(patients=tuple(patients), identifiers=tuple(identifiers), indirect=tuple(indirect))
