"""Print a compression dictionary for stored resource bodies (or, ``--messages``, for stored HL7 messages).

The gateway compresses each stored resource body against a frozen dictionary of typical FHIR JSON
(``gateway/db/bodies.py``): small JSON documents compress poorly alone (2.6x here), much better against
text they share keys, code systems and profiles with. A dictionary in use is never changed (rows written
with it could no longer be read): a better one becomes a new codec version beside it.

    .venv/bin/python bench/body_dictionary.py --zstd > gateway/db/body_dictionary_3.bin   # codec 3
    .venv/bin/python bench/body_dictionary.py --zstd --messages > gateway/db/message_dictionary_4.bin
    .venv/bin/python bench/body_dictionary.py > gateway/db/body_dictionary_1.bin   # deflate, codec 1
    .venv/bin/python bench/body_dictionary.py --messages > gateway/db/message_dictionary_2.bin

``--zstd`` trains a Zstandard dictionary (``zstandard.train_dictionary``, its entropy tables included) on
the bodies the gateway itself stores for every message of ``fixtures/adt`` (the single messages in one
store, then each stay in a fresh one, at a clock that ticks the same way each run, so that the output is the same):
32 KiB for resources and facts, 8 KiB for messages and their ACK. A 64 KiB one stored ~4 % smaller on the
demo stays, a 110 KiB one 50 % bigger (too few samples for its size); 32 KiB leaves the samples ~50 times
the dictionary.

The golden cases come from ``fixtures/adt`` (other names, ids and facilities than the demo stays that the
benchmarks send), so that the benchmarks' compression is not flattered by their own content. The message
dictionary holds ADT messages of ``fixtures/adt`` and an ACK as the gateway writes one for them.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import zstandard

from gateway.config import Settings
from gateway.db import bodies
from gateway.db.engine import make_engine, migrate
from gateway.hl7 import er7
from gateway.hl7.ack import build_ack
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline

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


#: the Zstandard dictionaries' sizes (bodies, messages) and the level they are trained for
ZSTD_SIZES, ZSTD_LEVEL = (32_768, 12_288), 3
#: the clock the samples are stored at: the same every run, a different time for each message (a fixed one
#: taught the dictionary one timestamp, and the ACKs and lastUpdated of a real run then matched nothing)
START, TICK = datetime(2026, 1, 1, tzinfo=UTC), timedelta(hours=1, minutes=7, seconds=13)


def stored_texts() -> tuple[list[bytes], list[bytes]]:
    """(resource and fact texts, message texts) as the gateway compresses them for ``fixtures/adt``."""
    texts: tuple[list[bytes], list[bytes]] = ([], [])
    encode = bodies.encode

    def kept(text: bytes, *, codec: int = bodies.CURRENT) -> bytes:
        texts[codec == bodies.MESSAGES].append(bytes(text))
        return encode(text, codec=codec)

    def ingest(files: list[Path], folder: str) -> None:
        db = make_engine(Settings(database_url=f"sqlite:///{folder}/store.db"))
        migrate(db)
        ticks = (START + k * TICK for k in itertools.count())
        pipeline = Pipeline(engine=MappingEngine.from_directory(ROOT / "mappings"), db=db, clock=lambda: next(ticks))
        for file in files:
            pipeline.ingest(file.read_bytes(), transport="dictionary")
        db.dispose()

    fixtures = ROOT / "fixtures/adt"
    bodies.encode = kept  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as folder:
            ingest(sorted(fixtures.glob("*.hl7")) + sorted(fixtures.glob("stay_*/*.hl7")), folder)
        for stay in sorted(fixtures.glob("stay_*")):
            with tempfile.TemporaryDirectory() as folder:
                ingest(sorted(stay.glob("*.hl7")), folder)
    finally:
        bodies.encode = encode
    return texts


def build_zstd(*, messages: bool) -> bytes:
    samples = stored_texts()[messages]
    return zstandard.train_dictionary(ZSTD_SIZES[messages], samples, level=ZSTD_LEVEL).as_bytes()


if __name__ == "__main__":
    messages = "--messages" in sys.argv[1:]
    if "--zstd" in sys.argv[1:]:
        sys.stdout.buffer.write(build_zstd(messages=messages))
    else:
        sys.stdout.buffer.write(build_messages() if messages else build())
