"""The Alembic migrations build exactly the schema the code declares (on SQLite and PostgreSQL)."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert, inspect, select, text

from gateway.clock import as_utc
from gateway.db import bodies
from gateway.db.engine import alembic_config, migrate
from gateway.db.indexing import PARAM_CODES, search_entries, stored_rows, text_rows
from gateway.db.repo import FactRepo, MessageRepo, ResourceRepo
from gateway.db.schema import messages, metadata, resource_versions, resources, search_index
from gateway.errors import StartupError
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.messages import Adt


def test_migrated_schema_matches_the_declared_tables(db: Engine) -> None:
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _single_head() -> str:
    """The newest revision; branches merged in parallel must leave exactly one head."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"several Alembic heads: {heads}"
    return heads[0]


def test_a_store_migrated_by_a_newer_gateway_is_refused_at_start(db: Engine) -> None:
    with db.begin() as conn:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    try:
        with pytest.raises(StartupError, match="newer than this gateway"):
            migrate(db)
    finally:  # the store is shared with the next tests on PostgreSQL
        with db.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": current})


def test_migrating_twice_is_harmless(db: Engine) -> None:
    migrate(db)
    with db.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _single_head()


def test_rows_written_before_0004_are_read_and_compacted_when_they_change(db: Engine) -> None:
    """0004_bodies rewrites nothing: a row with JSON in ``content`` and no ``body`` is read as it is, and
    its next version is stored deflated; the row it replaces moves to ``resource_versions`` as it was."""
    old = {"resourceType": "Patient", "id": "p-0003", "meta": {"versionId": "1"}, "active": True}
    values = {"type": "Patient", "id": "p-0003", "version_id": 1, "deleted": 0, "content": orjson.dumps(old).decode()}
    with db.begin() as conn:
        conn.execute(insert(resources).values(**values, last_updated=datetime(2026, 1, 1, tzinfo=UTC)))
    with db.begin() as conn:
        repo = ResourceRepo(conn)
        found = repo.get("Patient", "p-0003")
        assert found is not None and found.content == old
        repo.write({**old, "active": False}, now=datetime(2026, 1, 2, tzinfo=UTC), index=[])
    with db.connect() as conn:
        rows = conn.execute(select(resource_versions.c.version_id, resource_versions.c.body)).all()
        current = conn.execute(select(resources.c.version_id, resources.c.body)).all()
        repo = ResourceRepo(conn)
        assert repo.vread("Patient", "p-0003", 1).content == old  # type: ignore[union-attr]
        assert repo.get("Patient", "p-0003").content["active"] is False  # type: ignore[union-attr]
    assert [(v, body is None) for v, body in rows] == [(1, True)]
    assert [(v, body is None) for v, body in current] == [(2, False)]


def _move(db: Engine, revision: str, *, down: bool = False) -> None:
    cfg = alembic_config(db.url.render_as_string(hide_password=False))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _answers(db: Engine, *, everything: bool = True) -> dict[str, Any]:
    """What the store answers: every resource and its history, searches through the index (a lookup, a
    second criterion, a date comparison and sort), each stream's facts, and the duplicate check. Below
    0009 (the index's old shape) and 0008 (every version in ``resource_versions``) this code can read only
    the facts and the duplicate check: ``everything=False``."""
    out: dict[str, Any] = {}
    with db.connect() as conn:
        repo, facts, sent = ResourceRepo(conn), FactRepo(conn), MessageRepo(conn)
        for rtype, rid in conn.execute(
            select(resources.c.type, resources.c.id).order_by(resources.c.type, resources.c.id)
        ):
            out[f"facts {rtype}/{rid}"] = facts.of(f"{rtype}/{rid}")
            if not everything:
                continue
            out[f"{rtype}/{rid}"] = [(r.version_id, r.content) for r in repo.history(rtype, rid)]
            if rtype == "Patient":
                ref = f"Patient/{rid}"
                for criteria in ([("patient", None, ref)], [("patient", None, ref), ("status", None, "finished")]):
                    found, total = repo.search("Encounter", criteria, limit=50, order=[("date", True)])
                    out[f"search {criteria}"] = ([r.id for r in found], total)
        if everything:
            found, total = repo.search(
                "CareTeam", [("status", None, "active")], limit=50, dates=[("date", "ge", "2026-01-01")]
            )
            out["careteams"] = (sorted(r.id for r in found), total)
        keys = conn.execute(select(messages.c.sending_application, messages.c.sending_facility, messages.c.control_id))
        out["applied"] = sorted(
            (control, record.id if record else None)
            for app, facility, control in keys
            for record in [sent.find_applied(sending_application=app, sending_facility=facility, control_id=control)]
        )
    return out


def _admit_and_discharge(pipeline: Pipeline, *, stays: int, tag: str) -> None:
    """``stays`` distinct stays, each admitted then discharged, every message AA (``tag`` keeps them apart)."""
    for i in range(stays):
        stay = {"ipp": f"7{tag}{i:04d}", "visit": f"V-7{tag}{i}"}
        admit = Adt(control_id=f"{tag}{i}-A", movement=f"{tag}A{i}", **stay)
        discharge = Adt(trigger="A03", control_id=f"{tag}{i}-D", movement=f"{tag}D{i}", event_time="20260302100000",
                        discharge_time="20260302100000", **stay)  # fmt: skip
        for message in (admit, discharge):
            assert pipeline.ingest(message.bytes(), transport="t").code == "AA"


def test_0007_keeps_what_a_store_with_data_answers(db: Engine, mapping_engine: MappingEngine) -> None:
    """A store filled (at head), taken down to 0006, answers the same after 0007 (and after going back
    down and up again); 0007 only changes which indexes exist: those of the facts and the duplicate check,
    which is what this code can still read at 0006 and 0007. Back at head, everything answers the same."""
    _admit_and_discharge(Pipeline(engine=mapping_engine, db=db), stays=4, tag="7")
    before = _answers(db)
    searches = [v for k, v in before.items() if k.startswith("search")]
    assert len(searches) == 8 and all(total > 0 for _, total in searches) and before["careteams"][1] > 0
    _move(db, "0006_compact_store", down=True)
    try:
        at_0006 = _answers(db, everything=False)
        assert at_0006 == {k: v for k, v in before.items() if k.startswith(("facts", "applied"))}
        _move(db, "0007_narrow_indexes")
        assert _answers(db, everything=False) == at_0006
        indexes = {i["name"]: i["column_names"] for i in inspect(db).get_indexes("facts")}
        assert indexes["ix_facts_stream"] == ["stream"]
        _move(db, "0006_compact_store", down=True)
        assert _answers(db, everything=False) == at_0006
    finally:
        _move(db, "head")
    assert _answers(db) == before


#: (version, deleted, last updated, resource): one version as ``vread`` and ``_history`` answer it
Version = tuple[int, bool, datetime, Any]


def _as_version(row: Any) -> Version:
    body = row.body
    resource = orjson.loads(bodies.decode(bytes(body)) if body is not None else row.content)
    return int(row.version_id), bool(row.deleted), as_utc(row.last_updated), resource  # type: ignore[return-value]


def _versions_at_0007(db: Engine) -> dict[str, list[Version]]:
    """Each resource's history as 0007's code answered it: every row of ``resource_versions``, newest first
    (the current version was one of them)."""
    t = resource_versions
    with db.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.type, t.c.id, t.c.version_id.desc())).all()
    out: dict[str, list[Version]] = {}
    for row in rows:
        out.setdefault(f"{row.type}/{row.id}", []).append(_as_version(row))
    return out


def _versions_now(db: Engine) -> dict[str, list[Version]]:
    """Each resource's history through ``ResourceRepo`` (the current version from ``resources``), checked
    against its ``vread`` of every version, and of none past the current one."""
    out: dict[str, list[Version]] = {}
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        for rtype, rid, current in conn.execute(select(resources.c.type, resources.c.id, resources.c.version_id)):
            history = [(r.version_id, r.deleted, r.last_updated, r.content) for r in repo.history(rtype, rid)]
            read = [repo.vread(rtype, rid, v) for v in range(current, 0, -1)]
            assert [(r.version_id, r.deleted, r.last_updated, r.content) for r in read if r] == history
            assert repo.vread(rtype, rid, current + 1) is None and repo.vread(rtype, rid, 0) is None
            out[f"{rtype}/{rid}"] = history
    return out


def _version_rows(db: Engine) -> list[tuple[Any, ...]]:
    """``resource_versions`` as stored, every column (bodies as bytes)."""
    t = resource_versions
    with db.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.type, t.c.id, t.c.version_id)).all()
    return [(*r[:-1], None if r.body is None else bytes(r.body)) for r in rows]


def _fill_at_0007(db: Engine, mapping_engine: MappingEngine) -> None:
    """Stays admitted, moved, renamed and discharged through the pipeline (several versions each), a
    resource deleted and one written again after its deletion (at head: this code writes the search index
    of 0009); going down to 0007 then adds the current rows to ``resource_versions``, as 0007's code wrote
    them (``tests`` below check that row for row)."""
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(3):
        stay = {"ipp": f"88{i:04d}", "visit": f"V-88{i}"}
        messages_of_stay = [
            Adt(control_id=f"N{i}-A", movement=f"NA{i}", **stay),
            Adt(trigger="A02", control_id=f"N{i}-T", movement=f"NT{i}", event_time="20260301120000", **stay),
            Adt(trigger="A08", control_id=f"N{i}-R", movement=f"NR{i}", event_time="20260301130000",
                family=f"RENOMME{i}", **stay),
            Adt(trigger="A03", control_id=f"N{i}-D", movement=f"ND{i}", event_time="20260302100000",
                discharge_time="20260302100000", **stay),
        ]  # fmt: skip
        for message in messages_of_stay:
            assert pipeline.ingest(message.bytes(), transport="t").code == "AA"
    now = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    org = {"resourceType": "Organization", "id": "org-0008", "name": "CH A"}
    with db.begin() as conn:
        repo = ResourceRepo(conn)
        repo.write(org, now=now, index=[])
        repo.write({**org, "name": "CH B"}, now=now, index=[])
        assert repo.delete("Organization", "org-0008", now=now)
        repo.write({**org, "name": "CH C"}, now=now, index=[])
        encounter = conn.execute(select(resources.c.id).where(resources.c.type == "Encounter")).scalars().first()
        assert repo.delete("Encounter", str(encounter), now=now)


def test_0008_keeps_every_version_each_body_once(db: Engine, mapping_engine: MappingEngine) -> None:
    """A store at 0007 (every version in ``resource_versions``, the current one too) answers the
    same history and version reads after 0008, after going back down to 0007 and after 0008 again; at
    0008 ``resource_versions`` holds no current version, and going down restores it row for row."""
    _fill_at_0007(db, mapping_engine)
    answers = _answers(db)
    with db.connect() as conn:
        current = {
            f"{t}/{i}": v for t, i, v in conn.execute(select(resources.c.type, resources.c.id, resources.c.version_id))
        }
    _move(db, "0007_narrow_indexes", down=True)
    try:
        before, rows_before = _versions_at_0007(db), _version_rows(db)
        assert {key: [v[0] for v in found] for key, found in before.items()} == {
            key: list(range(version, 0, -1)) for key, version in current.items()
        }
        assert max(current.values()) >= 4 and any(found[0][1] for found in before.values())  # a deletion
        assert before["Organization/org-0008"][0][3]["name"] == "CH C"
        _move(db, "0008_versions_replaced")
        assert _versions_now(db) == before
        assert len(_version_rows(db)) == len(rows_before) - len(current)
        _move(db, "0007_narrow_indexes", down=True)
        assert _versions_at_0007(db) == before and _version_rows(db) == rows_before
    finally:
        _move(db, "head")
    assert _versions_now(db) == before
    assert _answers(db) == answers


def _index_rows(db: Engine, *, coded: bool) -> set[tuple[Any, ...]]:
    """``search_index`` as (type, param, value, id, system), read from either shape: text before 0009, the
    (type, param) code and (on PostgreSQL) bytes from 0009 (read through the declared column types)."""
    pairs = {code: pair for pair, code in PARAM_CODES.items()}
    with db.connect() as conn:
        if coded:
            columns = [search_index.c[n] for n in ("code", "value", "id", "system")]
            return {(*pairs[c], v, i, s) for c, v, i, s in conn.execute(select(*columns))}
        return {tuple(r) for r in conn.execute(text("SELECT type, param, value, id, system FROM search_index"))}


def test_0009_keeps_every_index_entry_digest_and_what_searches_answer(
    db: Engine, mapping_engine: MappingEngine
) -> None:
    """A store filled at head, taken down to 0008 (the index as text, the layout of 0006) and up again:
    down gives exactly the rows 0008's extraction wrote (``text_rows``: every form of a national id), up
    exactly those 0009's writes (``stored_rows``), each rebuilt from every current resource, and every
    search, history and duplicate check answers the same; each message's digest is 32 bytes at 0009, its
    64 hex digits at 0008, the same digest throughout."""
    _fill_at_0007(db, mapping_engine)
    before, rows = _answers(db), _index_rows(db, coded=True)
    assert len(rows) > 50 and any(k.startswith("search") and v[1] for k, v in before.items())
    pairs = {code: pair for pair, code in PARAM_CODES.items()}
    expected: set[tuple[Any, ...]] = set()
    old: set[tuple[Any, ...]] = set()
    with db.connect() as conn:
        for current in ResourceRepo(conn).current():
            entries = search_entries(current.content)
            old |= {tuple(r.values()) for r in text_rows(current.type, current.id, entries).values()}
            expected |= {
                (*pairs[r["code"]], r["value"], r["id"], r["system"])
                for r in stored_rows(current.type, current.id, entries).values()
            }
    assert rows == expected and expected < old  # the idNatPs forms of the professionals are not stored
    digests = _digests(db)
    assert len(digests) >= 12 and all(len(d) == 64 for d in digests.values())
    assert _widths(db) == {32}
    _move(db, "0008_versions_replaced", down=True)
    try:
        assert _index_rows(db, coded=False) == old
        assert _widths(db) == {64}
        with db.connect() as conn:
            assert dict(conn.execute(text("SELECT id, content_sha256 FROM messages")).all()) == digests
    finally:
        _move(db, "head")
    assert _index_rows(db, coded=True) == rows
    assert _digests(db) == digests and _widths(db) == {32}
    assert _answers(db) == before


def _digests(db: Engine) -> dict[int, str]:
    with db.connect() as conn:
        return dict(conn.execute(select(messages.c.id, messages.c.content_sha256)).all())  # type: ignore[arg-type]


def _widths(db: Engine) -> set[int]:
    """The bytes each stored ``content_sha256`` takes: 32 from 0009, 64 hex digits before."""
    with db.connect() as conn:
        return {int(n) for (n,) in conn.execute(text("SELECT DISTINCT length(content_sha256) FROM messages"))}


def _bodies(db: Engine) -> dict[tuple[str, str], tuple[int, bytes]]:
    """Every stored body: (table, key) -> (its codec byte, its text)."""
    keys = {"messages": "id", "resources": "type || '/' || id", "facts": "id",
            "resource_versions": "type || '/' || id || '/' || version_id"}  # fmt: skip
    out: dict[tuple[str, str], tuple[int, bytes]] = {}
    with db.connect() as conn:
        for table, key in keys.items():
            for name, body in conn.execute(text(f"SELECT {key}, body FROM {table} WHERE body IS NOT NULL")):
                stored = bytes(body)
                out[(table, str(name))] = (stored[0], bodies.decode(stored))
    return out


def test_0010_takes_zstd_bodies_back_to_deflate_byte_for_byte_and_head_reads_both(
    db: Engine, mapping_engine: MappingEngine
) -> None:
    """A store filled at head holds zstd bodies (codecs 3 and 4) only; below 0010 each is the deflate body of
    the same text (1 and 2, as the gateway before 0010 wrote it), and back at head everything answers the
    same, old rows and new side by side."""
    pipeline = Pipeline(engine=mapping_engine, db=db)
    _admit_and_discharge(pipeline, stays=3, tag="8")
    before, answers = _bodies(db), _answers(db)
    assert {table for table, _ in before} == {"messages", "resources", "facts", "resource_versions"}
    assert {codec for codec, _ in before.values()} == {bodies.CURRENT, bodies.MESSAGES}
    bodies._INFLATED._texts.clear()  # every text below is inflated from its row, none remembered
    _move(db, "0009_compact_index", down=True)
    try:
        below = _bodies(db)
        back = {3: 1, 4: 2}
        assert below == {key: (back[codec], text_) for key, (codec, text_) in before.items()}
        with db.connect() as conn:
            stored = conn.execute(text("SELECT body FROM resources WHERE body IS NOT NULL")).scalars().all()
        assert all(bodies.deflated(bodies.decode(bytes(b)), codec=1) == bytes(b) for b in stored)
    finally:
        _move(db, "head")
    assert _bodies(db) == below and _answers(db) == answers  # head reads the deflate rows as it wrote the zstd ones
    another = Adt(control_id="Z9-A", movement="ZA9", ipp="789999", visit="V-789")
    assert pipeline.ingest(another.bytes(), transport="t").code == "AA"
    assert {codec for codec, _ in _bodies(db).values()} == {1, 2, bodies.CURRENT, bodies.MESSAGES}
