"""The hot path's statements on the DB-API cursor (``gateway/db/cursor.py``), on SQLite and PostgreSQL:
the same rows as SQLAlchemy's path writes and reads, its errors, its transaction, its events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, event, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.db import cursor
from gateway.db.engine import throwaway_engine, transaction, translated
from gateway.db.repo import (
    _DELETE_INDEX,
    _GET_RESOURCE,
    _INSERT_FACT,
    _INSERT_INDEX,
    _INSERT_RESOURCE,
    _LISTENING_ALL,
    _UPDATE_RESOURCE,
    ResourceRepo,
    _get_resources_statement,
    _search_statements,
)
from gateway.db.schema import facts, messages, resources, search_index, subscriptions
from gateway.errors import StorageConflictError

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _resource(rid: str, *, at: datetime = NOW) -> dict[str, Any]:
    return {
        "type": "Patient",
        "id": rid,
        "version_id": 1,
        "last_updated": at,
        "deleted": 0,
        "content": "",
        "body": b"\x00z",
    }


def _message() -> dict[str, Any]:
    return {"received_at": NOW, "transport": "t", "content_sha256": "00" * 32, "raw": b"", "outcome": "AA",
            "status": "applied"}  # fmt: skip


def test_rows_written_on_the_cursor_equal_sqlalchemys_byte_for_byte(db: Engine) -> None:
    """A ``DateTime`` (and a ``LargeBinary``) goes through SQLAlchemy's own bind processor: the stored
    text is the one SQLAlchemy writes, so rows of both paths compare and sort alike (SQLite stores text)."""
    paris = timezone(timedelta(hours=1))
    with transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, _resource("fast", at=NOW.astimezone(paris)))
        conn.execute(_INSERT_RESOURCE, _resource("slow", at=NOW.astimezone(paris)))
    with db.connect() as conn:
        raw = conn.execute(
            select(text("CAST(last_updated AS TEXT)"), resources.c.body).select_from(resources).order_by(resources.c.id)
        ).all()
        assert raw[0] == raw[1]
        fast = cursor.execute(conn, _GET_RESOURCE, {"rtype": "Patient", "rid": "fast"}).first()
        slow = conn.execute(_GET_RESOURCE, {"rtype": "Patient", "rid": "fast"}).first()
    assert fast is not None and slow is not None
    assert tuple(fast) == tuple(slow)  # result processors too: the datetime parsed back, the same type
    assert fast._mapping == dict(slow._mapping)
    assert fast.body == b"\x00z"


def test_a_datetime_bound_again_is_the_text_of_each_value(db: Engine) -> None:
    """A ``DateTime`` processor keeps its last value's text (``_last_kept``): the same moment bound on
    several rows, then another moment, an equal one in another zone and the first again each store their
    own, as SQLAlchemy's path stores them."""
    paris = timezone(timedelta(hours=1))
    later = NOW + timedelta(seconds=1)
    moments = [NOW, NOW, later, NOW.astimezone(paris), NOW]
    rows = [_resource(f"p{i}", at=at) for i, at in enumerate(moments)]
    with transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, rows)
        conn.execute(_INSERT_RESOURCE, [{**r, "id": f"s{r['id']}"} for r in rows])
        raw = conn.execute(
            select(resources.c.id, text("CAST(last_updated AS TEXT)")).select_from(resources).order_by(resources.c.id)
        ).all()
    fast, slow = dict(r for r in raw if r[0].startswith("p")), {r[0][1:]: r[1] for r in raw if r[0].startswith("s")}
    assert fast == slow
    assert fast["p0"] == fast["p1"] == fast["p4"] != fast["p2"]


def test_the_binder_built_once_reads_what_the_loop_over_the_sources_reads(db: Engine) -> None:
    """``Compiled.binder`` (an ``itemgetter``, processors after, fixed values put in their places) gives
    the driver the very parameters ``Compiled._bind`` does: a ``DateTime`` processed, a ``deleted = 0``
    and a ``LIMIT`` fixed in the statement, one parameter alone."""
    page, _ = _search_statements(((False, (False,)),))
    search = {"rtype": "Patient", "p0": 3, "v0_0": "x", "limit": 5, "offset": 0}
    cases = [
        (_INSERT_RESOURCE, _resource("p1")),
        (_UPDATE_RESOURCE, {**_resource("p1"), "rtype": "Patient", "rid": "p1", "expected": 1}),
        (_GET_RESOURCE, {"rtype": "Patient", "rid": "p1"}),
        (page, search),
        (select(resources.c.id).where(resources.c.id == bindparam("only")).limit(1), {"only": "p1"}),
    ]
    for statement, params in cases:
        shape = cursor.compiled(statement, db.dialect, tuple(params))
        # PostgreSQL's driver takes named parameters: those are read by the loop itself
        assert (shape.binder is None) == (shape.positional is None) == (db.dialect.name == "postgresql")
        if shape.binder is not None:
            assert shape.binder(params) == shape._bind(params)


def test_executemany_rowcount_and_padded_lists(db: Engine) -> None:
    with transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, [_resource(f"p{i}") for i in range(3)])
        changed = cursor.execute(
            conn,
            _UPDATE_RESOURCE,
            {"rtype": "Patient", "rid": "p1", "expected": 1, **_resource("p1"), "version_id": 2},
        )
        stale = cursor.execute(
            conn,
            _UPDATE_RESOURCE,
            {"rtype": "Patient", "rid": "p2", "expected": 7, **_resource("p2"), "version_id": 8},
        )
        assert (changed.rowcount, stale.rowcount) == (1, 0)
        query = _get_resources_statement(1, 2)
        found = cursor.execute(conn, query, {"t0": "Patient", "i0": "p0", "i1": "p1"}).all()
        assert sorted((r.id, r.version_id) for r in found) == [("p0", 1), ("p1", 2)]


def test_a_multi_row_insert_writes_every_row_as_sqlalchemy_does(db: Engine) -> None:
    """PostgreSQL sends an INSERT's rows as one statement of column arrays, SQLite as an executemany: the
    same rows either way, the same as SQLAlchemy's, in order (a serial key numbers them as given), a
    rowcount of every row written, and ``ON CONFLICT DO NOTHING`` counting only those."""
    n = 250
    statements: list[str] = []

    def count(conn: Any, cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    with transaction(db) as conn:
        message = conn.execute(insert(messages).values(**_message()).returning(messages.c.id)).scalar_one()
        event.listen(db, "before_cursor_execute", count)
        try:
            written = cursor.execute(conn, _INSERT_RESOURCE, [_resource(f"fast{i:03}") for i in range(n)])
            index = _INSERT_INDEX[db.dialect.name]
            entry = {"code": 1, "value": "v", "system": ""}
            again = cursor.execute(conn, index, [{**entry, "id": "a"}, {**entry, "id": "b"}, {**entry, "id": "a"}])
            fact = {"message_id": message, "event_time": NOW, "kind": "k", "payload": "", "body": b"\x00"}
            cursor.execute(conn, _INSERT_FACT, [{**fact, "stream": f"s{i:03}"} for i in range(n)])
        finally:
            event.remove(db, "before_cursor_execute", count)
        conn.execute(_INSERT_RESOURCE, [_resource(f"slow{i:03}") for i in range(n)])
    assert written.rowcount == n and again.rowcount == 2
    assert len(statements) == 3
    if db.dialect.name == "postgresql":
        assert all(" SELECT * FROM unnest(" in statement for statement in statements), statements
    with db.connect() as conn:
        rows = conn.execute(select(resources).order_by(resources.c.id)).all()
        streams = list(conn.execute(select(facts.c.stream).order_by(facts.c.id)).scalars())
        index_ids = sorted(conn.execute(select(search_index.c.id)).scalars())
    fast, slow = rows[:n], rows[n:]
    assert [r.id for r in fast] == [f"fast{i:03}" for i in range(n)]
    assert [tuple(r)[2:] for r in fast] == [tuple(r)[2:] for r in slow]
    assert streams == [f"s{i:03}" for i in range(n)]
    assert index_ids == ["a", "b"]


def test_a_multi_row_insert_fails_as_a_whole_and_is_translated(db: Engine) -> None:
    """A duplicate in any row of the statement: an ``IntegrityError``, no row of it written."""
    with transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, _resource("dup"))
    with pytest.raises(StorageConflictError), translated(), transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, [_resource("new"), _resource("dup")])
    with db.connect() as conn:
        assert [r.id for r in conn.execute(select(resources.c.id))] == ["dup"]


def test_only_a_plain_insert_goes_as_column_arrays() -> None:
    """Each placeholder becomes its column's array, cast as the driver's SQL casts it or to the column's
    type; an expression, a type with a length or any other text stays an executemany."""
    named = (("a", "a", None, None), ("b", "b", None, None))
    types = {"a": "BIGINT", "b": "BYTEA"}
    plain = cursor._unnested("INSERT INTO t (a, b) VALUES (%(a)s::VARCHAR, %(b)s) ON CONFLICT DO NOTHING", named, types)
    assert plain is not None
    assert plain.sql == "INSERT INTO t (a, b) SELECT * FROM unnest(%b::VARCHAR[], %b::BYTEA[]) ON CONFLICT DO NOTHING"
    assert plain.columns([{"b": 2, "a": 1}, {"a": 3, "b": 4}]) == [[1, 3], [2, 4]]
    assert cursor._unnested("INSERT INTO t (a, b) VALUES (%(a)s, lower(%(b)s))", named, types) is None
    assert cursor._unnested("INSERT INTO t (a, b) VALUES (%(a)s, %(b)s)", named, {**types, "b": "VARCHAR(9)"}) is None
    assert cursor._unnested("INSERT INTO t (a, b) SELECT %(a)s, %(b)s", named, types) is None
    update = "INSERT INTO t (a) VALUES (%(a)s) ON CONFLICT (a) DO UPDATE SET b = %(b)s"
    assert cursor._unnested(update, named, types) is None


def test_an_update_or_delete_of_many_rows_matches_each_row_as_executemany_does(db: Engine) -> None:
    """PostgreSQL joins an UPDATE's or DELETE's rows as column arrays, in one statement: each row changes
    what its own WHERE matches, a stale row (another version) nothing, and the rowcount is the rows changed
    (the optimistic update's conflict check reads it); SQLite runs an executemany, to the same effect."""
    statements: list[str] = []

    def count(conn: Any, cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    index = _INSERT_INDEX[db.dialect.name]
    entries = [{"code": 1, "value": f"v{i}", "id": f"r{i}", "system": ""} for i in range(4)]
    with transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, [_resource(f"p{i}") for i in range(4)])
        cursor.execute(conn, index, entries)
        later = NOW + timedelta(seconds=1)
        changes = [
            {**_resource(f"p{i}", at=later), "rtype": "Patient", "rid": f"p{i}", "expected": 1 if i != 2 else 5,
             "version_id": 2, "content": f"c{i}"}
            for i in range(4)
        ]  # fmt: skip
        event.listen(db, "before_cursor_execute", count)
        try:
            updated = cursor.execute(conn, _UPDATE_RESOURCE, changes)
            gone = [{f"k_{k}": v for k, v in e.items()} for e in entries[1:3]]
            deleted = cursor.execute(conn, _DELETE_INDEX, gone)
        finally:
            event.remove(db, "before_cursor_execute", count)
    assert (updated.rowcount, deleted.rowcount) == (3, 2)
    assert len(statements) == 2
    if db.dialect.name == "postgresql":
        assert all(" unnest(" in statement for statement in statements), statements
    with db.connect() as conn:
        rows = conn.execute(
            select(resources.c.id, resources.c.version_id, resources.c.content).order_by(resources.c.id)
        )
        assert [tuple(r) for r in rows] == [("p0", 2, "c0"), ("p1", 2, "c1"), ("p2", 1, ""), ("p3", 2, "c3")]
        assert sorted(conn.execute(select(search_index.c.id)).scalars()) == ["r0", "r3"]


def test_only_a_keyed_update_or_delete_goes_as_column_arrays() -> None:
    named = (("a", "a", None, None), ("k", "k", None, None))
    types = {"a": "BIGINT", "k": "VARCHAR(9)"}
    update = cursor._unnested_where("UPDATE t SET a=%(a)s WHERE t.k = %(k)s::VARCHAR AND t.z = 0", named, types)
    assert update is not None
    assert update.sql == (
        "UPDATE t SET a=_rows.a FROM unnest(%b::BIGINT[], %b::VARCHAR[]) AS _rows(a, k) WHERE t.k = _rows.k AND t.z = 0"
    )
    delete = cursor._unnested_where("DELETE FROM t WHERE t.a = %(a)s AND t.k = %(k)s::VARCHAR", named, types)
    assert delete is not None and delete.sql.startswith("DELETE FROM t USING unnest(")
    assert cursor._unnested_where("UPDATE t SET a=%(a)s WHERE t.k = %(k)s", named, types) is None  # VARCHAR(9)
    assert cursor._unnested_where("UPDATE t SET a=%(a)s WHERE t.k = %(k)s::VARCHAR RETURNING t.a", named, types) is None
    assert cursor._unnested_where("UPDATE t SET a=%(a)s WHERE t.k LIKE 'x%%'", named, types) is None


def test_a_literal_in_list_is_rendered_once(db: Engine) -> None:
    """``status IN ('requested', 'active', 'error')`` is expanded per execution by SQLAlchemy; here once."""
    with transaction(db) as conn:
        for sid, status in (("s1", "active"), ("s2", "off")):
            conn.execute(
                insert(subscriptions).values(
                    id=sid,
                    status=status,
                    topic="t",
                    endpoint="e",
                    payload_content="id-only",
                    secret="x",
                    created_at=NOW,
                )
            )
        assert [r.id for r in cursor.execute(conn, _LISTENING_ALL, {})] == ["s1"]


def test_an_expanding_parameter_is_refused(db: Engine) -> None:
    query = select(resources.c.id).where(resources.c.id.in_(bindparam("ids", expanding=True)))
    with db.connect() as conn, pytest.raises(ValueError, match="expanding"):
        cursor.execute(conn, query, {"ids": ["a"]})


def test_driver_errors_are_sqlalchemys_and_translated_the_same(db: Engine) -> None:
    """A unique violation is an ``IntegrityError`` (what every ``except`` and ``translated`` expect), and
    the transaction is then refused further work as SQLAlchemy refuses it, on both paths."""
    with transaction(db) as conn:
        cursor.execute(conn, _INSERT_RESOURCE, _resource("dup"))
    with pytest.raises(StorageConflictError), translated(), db.connect() as conn:
        cursor.execute(conn, _INSERT_RESOURCE, _resource("dup"))
    with db.connect() as conn:
        trans = conn.begin()
        with pytest.raises(IntegrityError):
            cursor.execute(conn, _INSERT_RESOURCE, _resource("dup"))
        if db.dialect.name == "postgresql":  # the server aborted the transaction: wrapped as SQLAlchemy does
            with pytest.raises(DBAPIError, match="aborted"):
                cursor.execute(conn, _GET_RESOURCE, {"rtype": "Patient", "rid": "dup"})
        trans.rollback()


def test_savepoints_and_rollback_cover_cursor_writes(db: Engine) -> None:
    """The cursor is the connection's own: a SAVEPOINT rolled back, or the transaction, takes its rows."""
    with db.connect() as conn:
        with conn.begin():
            cursor.execute(conn, _INSERT_RESOURCE, _resource("kept"))
            nested = conn.begin_nested()
            cursor.execute(conn, _INSERT_RESOURCE, _resource("dropped"))
            nested.rollback()
        with conn.begin() as trans:
            cursor.execute(conn, _INSERT_RESOURCE, _resource("rolled-back"))
            trans.rollback()
        ids = [r.id for r in conn.execute(select(resources.c.id).order_by(resources.c.id))]
    assert ids == ["kept"]


def test_autobegin_without_a_transaction(db: Engine) -> None:
    """As ``Connection.execute``: a statement outside any transaction begins one, which must be committed."""
    with db.connect() as conn:
        cursor.execute(conn, _INSERT_RESOURCE, _resource("auto"))
        assert conn.in_transaction()
        conn.rollback()
        assert cursor.execute(conn, _GET_RESOURCE, {"rtype": "Patient", "rid": "auto"}).first() is None


def test_cursor_events_fire_with_the_drivers_parameters(db: Engine) -> None:
    seen: list[tuple[str, Any, bool]] = []

    def before(conn: Any, cur: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        seen.append((statement, params, many))

    after: list[str] = []

    def done(conn: Any, cur: Any, statement: str, *_: Any) -> None:
        after.append(statement)

    with transaction(db) as conn:
        event.listen(db, "before_cursor_execute", before)
        event.listen(db, "after_cursor_execute", done)
        try:
            cursor.execute(conn, _INSERT_RESOURCE, [_resource("e1"), _resource("e2")])
            cursor.execute(conn, _GET_RESOURCE, {"rtype": "Patient", "rid": "e1"})
        finally:
            event.remove(db, "before_cursor_execute", before)
            event.remove(db, "after_cursor_execute", done)
    assert [s.split()[0] for s, _, _ in seen] == ["INSERT", "SELECT"]
    # PostgreSQL: the rows of an INSERT go as one multi-row statement, not an executemany
    assert [many for _, _, many in seen] == [db.dialect.name == "sqlite", False]
    assert after == [s for s, _, _ in seen]
    params = seen[1][1]
    assert ("Patient" in params and "e1" in params) or params == {"rtype": "Patient", "rid": "e1"}


def test_a_statement_built_per_call_is_a_new_shape_each_time() -> None:
    """The cache is keyed by the statement object: ``MAX_SHAPES`` bounds what a mistake would leak."""
    engine = throwaway_engine()
    for i in range(cursor.MAX_SHAPES + 5):
        with engine.connect() as conn:
            cursor.execute(conn, select(resources.c.id).where(resources.c.id == bindparam("x")), {"x": str(i)})
    assert len(cursor._SHAPES) <= cursor.MAX_SHAPES


def test_a_listeners_error_is_raised_as_it_is(db: Engine) -> None:
    """Not wrapped into a ``StatementError``, as on SQLAlchemy's path; and the connection stays usable."""

    def failing(*_: Any) -> None:
        raise RuntimeError("listener")

    with db.connect() as conn:
        event.listen(db, "before_cursor_execute", failing)
        try:
            with pytest.raises(RuntimeError, match="listener"):
                cursor.execute(conn, _GET_RESOURCE, {"rtype": "Patient", "rid": "x"})
        finally:
            event.remove(db, "before_cursor_execute", failing)
        assert cursor.execute(conn, _GET_RESOURCE, {"rtype": "Patient", "rid": "x"}).first() is None


def test_a_search_built_per_call_stays_off_the_cursor_cache(db: Engine) -> None:
    """The API's searches with a sort, a date or a visibility clause are built per call: they run through
    SQLAlchemy (whose compiled cache knows their shape), so they neither compile anew on the cursor path
    nor crowd the hot path's statements out of its cache. The built-once searches do use the cursor."""
    with transaction(db) as conn:
        store = ResourceRepo(conn)
        store.search("Patient", [("identifier", None, "x")], limit=5)  # built once: compiled on first use
        shapes = len(cursor._SHAPES)
        for _ in range(3):
            page, total = store.search("Patient", [("identifier", None, "x")], limit=5, order=[("_lastUpdated", True)])
            assert (page, total) == ([], 0)
        assert len(cursor._SHAPES) == shapes
