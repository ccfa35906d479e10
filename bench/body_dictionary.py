"""Print a deflate dictionary for stored resource bodies (or, ``--messages``, for stored HL7 messages).

The gateway deflates each stored resource body against a frozen dictionary of typical FHIR JSON
(``gateway/db/bodies.py``): small JSON documents compress poorly alone (2.6x here), much better against
text they share keys, code systems and profiles with. A dictionary in use is never changed (rows written
with it could no longer be read): a better one becomes a new codec version beside it.

    .venv/bin/python bench/body_dictionary.py > gateway/db/body_dictionary_3.bin   # a new version only
    .venv/bin/python bench/body_dictionary.py --messages > gateway/db/message_dictionary_2.bin

The golden cases come from ``fixtures/adt`` (other names, ids and facilities than the demo stays that the
benchmarks send), so that the benchmarks' compression is not flattered by their own content. The message
dictionary holds ADT messages of ``fixtures/adt`` and an ACK as the gateway writes one for them.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from gateway.hl7 import er7
from gateway.hl7.ack import build_ack

ROOT = Path(__file__).resolve().parent.parent
#: deflate with a 2**13 window: a dictionary longer than the window minus the look-ahead (262) is cut
LIMIT = (1 << 13) - 262
#: later in the dictionary = closer to the data = cheaper to refer to: the most frequent types last
ORDER = ("Practitioner", "Patient", "CommunicationRequest", "CareTeam", "Encounter")
CASES = ("A01_v28.json", "A03_discharge.json")
#: stored messages: a discharge, an admission (the most frequent last), then the ACK stored beside each
MESSAGES = ("A03_discharge.hl7", "A01_admission.hl7")


def build() -> bytes:
    chosen: dict[str, list[bytes]] = {name: [] for name in ORDER}
    for case in CASES:
        for resource in json.loads((ROOT / "tests/golden/adt" / case).read_text())["resources"]:
            kind = resource["resourceType"]
            if kind in chosen and len(chosen[kind]) < (2 if kind == "Encounter" else 1):
                chosen[kind].append(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS))
    text = b"".join(b"".join(chosen[name]) for name in ORDER)
    return text[-LIMIT:]


def build_messages() -> bytes:
    texts = [(ROOT / "fixtures/adt" / name).read_bytes() for name in MESSAGES]
    message = er7.parse(texts[-1].decode("latin-1"))
    ack = build_ack(message, code="AA", issues=[], now=datetime(2026, 1, 1, tzinfo=UTC)).encode()
    return (b"".join(texts) + ack)[-LIMIT:]


if __name__ == "__main__":
    sys.stdout.buffer.write(build_messages() if "--messages" in sys.argv[1:] else build())
