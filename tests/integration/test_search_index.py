"""The search index holds exactly what the current extraction gives, and 0006 rebuilds it (SQLite and
PostgreSQL).

Since 0006 a write deletes the entries of the version it replaces by their key, recomputed from that
version, instead of every entry of the owner: the table has no owner index. That is only right while
the stored entries are what ``search_entries`` gives for each current resource, after any history of
writes (updates, cancels, merges, deletes), and after the upgrade from the old layout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
from alembic import command
from sqlalchemy import Connection, Engine, inspect, literal, select, text

from gateway.auth.authorities import MINTED_PREFIX
from gateway.db import bodies
from gateway.db.access import systems_starting
from gateway.db.engine import alembic_config
from gateway.db.indexing import ALIASES, DATE_PARAMS, PARAM_CODES, id_key, search_entries, stored_rows, value_key
from gateway.db.repo import ResourceRepo
from gateway.db.schema import IndexId, index_id, index_id_text, index_reference, resources, search_index
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.unit.test_search_params import IDS

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "adt"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _feed(db: Engine, mapping_engine: MappingEngine) -> None:
    """Every ADT fixture (single messages, then each stay's messages in order) into one store."""
    pipeline = Pipeline(engine=mapping_engine, db=db)
    paths = sorted(FIXTURES.glob("*.hl7")) + sorted(FIXTURES.glob("stay_*/*.hl7"))
    for path in paths:
        pipeline.ingest(path.read_bytes(), transport="test")
    with db.begin() as conn:  # a FHIR delete and a re-creation, as the API does them
        repo = ResourceRepo(conn)
        (patient,) = [r for r in repo.current() if r.type == "Patient"][:1]
        assert repo.delete("Patient", patient.id, now=NOW)
        content = {k: v for k, v in patient.content.items() if k != "meta"}
        repo.put(content, now=NOW, index=search_entries(content))
        (team,) = [r for r in repo.current() if r.type == "CareTeam"][:1]
        assert repo.delete("CareTeam", team.id, now=NOW)


_PAIRS = {code: pair for pair, code in PARAM_CODES.items()}


def _stored(conn: Connection) -> set[tuple[str, ...]]:
    """Every row as (type, param, value, id, system): its code read back as the pair it stands for."""
    columns = [search_index.c[n] for n in ("code", "value", "id", "system")]
    return {(*_PAIRS[code], value, rid, system) for code, value, rid, system in conn.execute(select(*columns))}


def _expected(conn: Connection) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for row in conn.execute(select(resources).where(resources.c.deleted == 0)):
        m = row._mapping
        resource = orjson.loads(bodies.decode(bytes(m["body"])) if m["body"] is not None else m["content"])
        for r in stored_rows(m["type"], m["id"], search_entries(resource)).values():
            out.add((*_PAIRS[r["code"]], r["value"], r["id"], r["system"]))
    return out


def test_the_index_is_what_the_current_resources_extract(db: Engine, mapping_engine: MappingEngine) -> None:
    _feed(db, mapping_engine)
    with db.connect() as conn:
        stored, expected = _stored(conn), _expected(conn)
    assert len(expected) > 200
    assert stored - expected == set(), "stale entries: a search would find what the resource no longer says"
    assert expected - stored == set(), "missing entries: a search would not find the resource"


def test_postgresql_stores_ids_and_references_as_bytes(db: Engine, mapping_engine: MappingEngine) -> None:
    """On PostgreSQL a deterministic id takes 16 bytes of the index, a reference to one 17, and a search
    by such a reference still finds its resources (SQLite keeps text)."""
    _feed(db, mapping_engine)
    if db.dialect.name != "postgresql":
        return
    with db.connect() as conn:
        widths = conn.execute(text("SELECT octet_length(id), count(*) FROM search_index GROUP BY 1")).all()
        refs = conn.execute(
            text("SELECT octet_length(value), count(*) FROM search_index WHERE code = :c GROUP BY 1"),
            {"c": PARAM_CODES["Encounter", "subject"]},
        ).all()
        (encounter,) = [r for r in ResourceRepo(conn).current() if r.type == "Encounter"][:1]
        subject = encounter.content["subject"]["reference"]
        found, _ = ResourceRepo(conn).search("Encounter", [("patient", None, subject)], limit=100)
    assert dict(widths).get(16, 0) > 100 and refs == [(17, sum(n for _, n in refs))]
    assert encounter.id in {r.id for r in found}


def test_the_sql_keys_are_the_python_ones(db: Engine) -> None:
    """``index_id``, ``index_id_text`` and ``index_reference`` (SQL, on PostgreSQL ``CASE``s) give what
    ``indexing.id_key`` / ``value_key`` store and ``id_of`` reads, for ids of every shape."""
    ids = [*IDS, "Z" * 64]
    with db.connect() as conn:
        for rid in ids:
            stored = select(literal(rid, IndexId(64)).label("id")).subquery()  # bound as the column binds it
            key, back, ref = conn.execute(
                select(
                    index_id(literal(rid)),
                    index_id_text(stored.c.id),
                    index_reference(literal("Patient"), stored.c.id),
                )
            ).one()
            if db.dialect.name == "postgresql":
                assert (bytes(key), back, bytes(ref)) == (id_key(rid), rid, value_key(f"Patient/{rid}")), rid
            else:
                assert (key, back, ref) == (rid, rid, f"Patient/{rid}")


def test_minted_systems_are_found_by_their_prefix(db: Engine, mapping_engine: MappingEngine) -> None:
    """Systems are stored under codes; the operator's list of minted systems still reads them whole."""
    _feed(db, mapping_engine)
    with db.connect() as conn:
        minted = systems_starting(conn, MINTED_PREFIX)
        everything = systems_starting(conn, "")
    assert minted and all(s.startswith(MINTED_PREFIX) for s in minted)
    assert "https://rpps.esante.gouv.fr" in everything and not any(s.startswith("~") for s in everything)


def _migrate(db: Engine, revision: str, *, down: bool = False) -> None:
    cfg = alembic_config(db.url.render_as_string(hide_password=False))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _old_lookups(conn: Connection) -> dict[tuple[str, str, str, str], set[str]]:
    """(type, param, system, value) → ids, read from the layout before 0006 as its searches read it."""
    rows = conn.execute(text("SELECT type, param, system, value, id FROM search_index"))
    found: dict[tuple[str, str, str, str], set[str]] = {}
    for rtype, param, system, value, rid in rows:
        found.setdefault((rtype, param, system, value), set()).add(rid)
    return found


def _ids(repo: ResourceRepo, rtype: str, param: str, system: str, value: str, among: set[str]) -> set[str]:
    """What the new searches answer for an old lookup. A date is compared, never looked up: each resource
    the old row named must still be found at that instant ([value, value~) on its own entries)."""
    if param in DATE_PARAMS:
        bounds = [(param, "ge", value), (param, "lt", value + "~")]
        return {rid for rid in among if repo.search(rtype, [("_id", None, rid)], limit=1, dates=bounds)[0]}
    page, _ = repo.search(rtype, [(param, system, value)], limit=10_000)
    return {r.id for r in page}


def test_upgrading_from_0005_rebuilds_the_index_and_searches_find_the_same(
    db: Engine, mapping_engine: MappingEngine
) -> None:
    """Down to 0005 (the old layout, aliases stored twice, two indexes), then up again: every lookup the
    old layout answered is answered the same by the new searches, and the index is the same as before."""
    _feed(db, mapping_engine)
    with db.connect() as conn:
        before = _stored(conn)
    _migrate(db, "0005_sessions", down=True)
    with db.connect() as conn:
        assert {i["name"] for i in inspect(conn).get_indexes("search_index")} == {"ix_search_lookup", "ix_search_owner"}
        old = _old_lookups(conn)
    assert {("Encounter", "patient"), ("CareTeam", "start")} <= {(t, p) for t, p, _, _ in old}
    _migrate(db, "head")
    with db.connect() as conn:
        assert _stored(conn) == before
        repo = ResourceRepo(conn)
        differ = {key: ids for key, ids in old.items() if _ids(repo, *key, among=ids) != ids}
    assert differ == {}
    assert sum(len(ids) for ids in old.values()) > len(before)  # the aliases' rows are stored once now
    assert all(alias in {p for _, p, _, _ in old} for aliases in ALIASES.values() for alias in aliases)


def test_an_entry_already_there_does_not_reject_the_write(db: Engine) -> None:
    """An index row the write is about to insert (left by an older extraction, say) is kept, not an error:
    the index is a projection, and it must never stop a message."""
    patient = {"resourceType": "Patient", "id": "p-dup", "active": True}
    with db.begin() as conn:
        conn.execute(
            search_index.insert().values(code=PARAM_CODES["Patient", "active"], value="true", id="p-dup", system="")
        )
    with db.begin() as conn:
        ResourceRepo(conn).put(patient, now=NOW, index=search_entries(patient))
    with db.connect() as conn:
        assert _stored(conn) == _expected(conn) == {("Patient", "active", "true", "p-dup", "")}
