"""Every public corpus message through the real pipeline and store (SQLite and PostgreSQL).

The corpus (``../shared/corpus`` beside the repository, or ``GATEWAY_TEST_CORPUS``) holds messages nobody
here wrote: US-style samples of every kind, LinuxForHealth test messages, the ANS PAM-FR examples. Whatever
they hold, the gateway must not raise, must answer each with a well-formed ACK echoing MSH-10, and must keep
every message it could store. Non-ADT messages are refused as unsupported (AR 200), the A18 sample as an
unsupported event (AR 201), and the official French A01/A03 examples are accepted.

The samples are independent examples, not a feed: many reuse a sender's MSH-10 for different content
(``MSG00001`` in most Microsoft samples, ``3975`` in two ANS examples). On one store the gateway must answer
the later ones AE 205 once the first was applied (DOMAIN.md §7.5), so a 205 is expected exactly there and
nowhere else, and the ANS examples are also checked by a dry run, which judges their content alone.

The expectations come from the corpus bytes, read here by a few lines independent of the gateway's parser,
and from SOURCES.md, never from the gateway's output. All messages go into one store, in sorted order per
folder, as a feed would deliver them; one test per backend keeps it fast (~170 messages).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.convert import convert_messages
from gateway.db.repo import MessageRepo
from gateway.errors import ParseError
from gateway.hl7 import er7
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = Path(os.environ.get("GATEWAY_TEST_CORPUS", ROOT.parent / "shared" / "corpus"))
UNSUPPORTED_EVENT = "lfh-ADT_A18-unsupported-event.hl7"
ANS_EXAMPLES = "fr/ans-examples"
ACK_CODES = frozenset({"AA", "AE", "AR"})

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(),
    reason=f"public corpus not found at {CORPUS} (CI has it at ../shared/corpus; or set GATEWAY_TEST_CORPUS)",
)


@dataclass(frozen=True, slots=True)
class Header:
    """MSH-3/MSH-4 (namespace ids), MSH-9.1 and MSH-10 as the bytes say, read without the gateway's parser."""

    sender: tuple[str, str]
    message_type: str
    control_id: str


def header_of(raw: bytes) -> Header | None:
    """The first MSH line, split on its own field separator; None when there is none."""
    text = raw.removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    for line in re.split(r"\r\n|\n|\r", text):
        if line.startswith("MSH") and len(line) > 8:
            fields = ["", *line.split(line[3])]  # fields[n] is MSH-n (MSH-1 is the separator itself)
            fields += [""] * (11 - len(fields))
            component = fields[2][:1] or "^"
            app, facility, kind = (fields[n].split(component)[0].strip() for n in (3, 4, 9))
            return Header(sender=(app, facility), message_type=kind.upper(), control_id=fields[10].strip())
    return None


def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.hl7"), key=lambda p: (p.parent.relative_to(CORPUS).as_posix(), p.name))


def name_of(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def check_message(pipeline: Pipeline, db: Engine, path: Path, *, reuses_control_id: bool) -> list[str]:
    """Ingest one file; returns what is wrong with the gateway's answer (empty when all is well).

    ``reuses_control_id``: an earlier corpus file used the same sender and MSH-10 for other content.
    """
    raw = path.read_bytes()
    try:
        outcome = pipeline.ingest(raw, transport="sandbox")
    except Exception as exc:  # the pipeline promises never to raise
        return [f"ingest raised {type(exc).__name__}: {exc}"]
    problems: list[str] = []
    try:
        ack = er7.parse(outcome.ack)
    except ParseError as exc:
        return [f"the ACK does not parse: {exc}"]
    msa = ack.segment("MSA")
    if msa is None:
        return ["the ACK has no MSA segment"]
    code = msa.get(1)
    errors = [(err.get(3, 1), err.get(8)) for err in ack.all("ERR") if err.get(4) not in ("W", "I")]
    if code not in ACK_CODES:
        problems.append(f"MSA-1 is {code!r}, not AA/AE/AR")
    if code != outcome.code:
        problems.append(f"MSA-1 {code} differs from the outcome code {outcome.code}")
    header = header_of(raw)
    if header is not None and header.control_id and msa.get(2) != header.control_id:
        problems.append(f"MSA-2 {msa.get(2)!r} does not echo MSH-10 {header.control_id!r}")

    if outcome.status != "unavailable":
        if outcome.message_id is None:
            problems.append(f"outcome {outcome.status} has no stored message id")
        else:
            with db.connect() as conn:
                record = MessageRepo(conn).get(outcome.message_id)
            if record is None:
                problems.append(f"message id {outcome.message_id} is not in the store")
            elif record.raw != raw:
                problems.append("the stored raw bytes differ from the file's")

    codes = [c for c, _ in errors]
    non_adt = header is not None and header.message_type not in ("", "ADT")
    if non_adt and (code != "AR" or "200" not in codes):
        problems.append(f"non-ADT message: expected AR with ERR-3 200, got {code} {errors}")
    if path.name == UNSUPPORTED_EVENT and (code != "AR" or "201" not in codes):
        problems.append(f"expected AR with ERR-3 201 (unsupported event), got {code} {errors}")
    if "205" in codes and not reuses_control_id:
        problems.append(f"AE 205 (duplicate control id) but no earlier corpus file used this MSH-10: {errors}")
    if name_of(path).startswith(f"{ANS_EXAMPLES}/"):
        duplicate = code == "AE" and codes == ["205"] and reuses_control_id
        if code != "AA" and not duplicate:
            problems.append(f"official ANS PAM-FR example: expected AA, got {code} {errors}")
        alone_code, _, alone_ack = convert_messages([raw], engine=pipeline.engine).acks[0]
        if alone_code != "AA":
            problems.append(f"official ANS PAM-FR example: alone on an empty store gave {alone_code} {alone_ack!r}")
    return problems


def test_corpus_is_found() -> None:
    """Guards the parametrization below against an empty or misplaced corpus."""
    names = [name_of(p) for p in corpus_files()]
    assert len(names) > 100, f"only {len(names)} .hl7 files under {CORPUS}"
    assert any(n.endswith(UNSUPPORTED_EVENT) for n in names), f"{UNSUPPORTED_EVENT} is missing from {CORPUS}"
    assert any(n.startswith(f"{ANS_EXAMPLES}/A01_") for n in names), f"no ANS A01 example in {CORPUS}"
    assert any(n.startswith(f"{ANS_EXAMPLES}/A03_") for n in names), f"no ANS A03 example in {CORPUS}"


def test_every_corpus_message_is_stored_and_acknowledged(db: Engine, mapping_engine: MappingEngine) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db)
    failures = {}
    first_use: dict[tuple[tuple[str, str], str], bytes] = {}
    for path in corpus_files():
        raw = path.read_bytes()
        header = header_of(raw)
        key = (header.sender, header.control_id) if header is not None else None
        reuses = key is not None and key in first_use and first_use[key] != raw
        if key is not None:
            first_use.setdefault(key, raw)
        problems = check_message(pipeline, db, path, reuses_control_id=reuses)
        if problems:
            failures[name_of(path)] = problems
    report = "\n".join(f"  {name}: " + "; ".join(problems) for name, problems in failures.items())
    assert not failures, f"{len(failures)} corpus message(s) mishandled:\n{report}"
