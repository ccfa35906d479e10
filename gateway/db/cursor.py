"""The hot path's statements run on the DB-API cursor: compiled once per dialect, executed without
SQLAlchemy's execution layer, in the same transaction as the SQLAlchemy ``Connection`` they are given.

SQLAlchemy's execution of a statement already compiled and cached still costs tens of microseconds
(execution context, ``construct_params``, result metadata, event dispatch): a quarter of the MLLP writer
thread at ~22 statements a message. Here a statement built once in ``repo.py`` is compiled once per
dialect and parameter shape into its SQL text, the order (or names) of its parameters, the bind processors
SQLAlchemy itself would apply (so that a ``DateTime`` is written as the very string SQLAlchemy writes and
rows written by either path compare and sort alike) and its result processors; then each run is a cursor
``execute`` or ``executemany`` on the connection's own DB-API connection.

What SQLAlchemy's path guarantees is kept: a driver error goes through the connection's own handler
(``DBAPIError`` wrapping, disconnect detection and invalidation, ``handle_error`` events), so every
``except IntegrityError`` / ``OperationalError`` and :func:`gateway.db.engine.translated` work unchanged; a
transaction that must be rolled back refuses further statements; autobegin happens as it would; and
``before_cursor_execute`` / ``after_cursor_execute`` listeners fire (with no execution context) when any
is registered, which the statement-count pins and the benchmarks rely on.

Only statements whose SQL does not depend on the values qualify: no expanding ``IN`` (a literal list is
rendered once, as the values it holds), no Python-side default computed per row.

On PostgreSQL an INSERT given several rows is one statement of column arrays (``INSERT … SELECT * FROM
unnest(…)``, see :class:`Unnested`) rather than psycopg's ``executemany``, which sends each row as its own
statement (a ``sendto`` and two ``poll`` a row, even pipelined): one round trip for a message's facts,
versions or index rows. SQLite keeps ``executemany``: in-process, it has no round trip to save.
"""

from __future__ import annotations

import operator
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import Connection, DateTime, LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

#: Parameters as a caller gives them: one dict, or a list of dicts for ``executemany``.
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]
_Processor = Callable[[Any], Any] | None
#: a positional statement's sources (:attr:`Compiled.positional`), and what reads a row's values from them
_Sources = tuple[tuple[str | None, Any, _Processor], ...]
_Binder = Callable[[Mapping[str, Any]], Any]

#: Statement shapes compiled per dialect; past this many a dialect's cache is emptied (the hot path has a
#: few dozen shapes: a growing cache means a statement built per call reached this module).
MAX_SHAPES = 512


class Row(tuple[Any, ...]):
    """A result row read as the callers read SQLAlchemy's: by position, unpacked, by attribute
    (``row.id``) or by ``row._mapping["id"]``."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[type(self)._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))


def _row_class(fields: Sequence[str]) -> type[Row]:
    index = {field: i for i, field in enumerate(fields)}
    return type("Row", (Row,), {"__slots__": (), "_fields": tuple(fields), "_index": index})


class Result:
    """What a run returned: its rows (read at once), ``rowcount`` (the optimistic update needs it)."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def first(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def all(self) -> list[Row]:
        return self.rows

    def scalar_one(self) -> Any:
        if len(self.rows) != 1:
            raise LookupError(f"expected one row, got {len(self.rows)}")
        return self.rows[0][0]


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement as the driver runs it, for one dialect and one set of parameter names."""

    sql: str
    #: positional paramstyles: (parameter name or None, fixed value, bind processor) in placeholder order
    positional: tuple[tuple[str | None, Any, _Processor], ...] | None
    #: named paramstyles: (bind name, parameter name or None, fixed value, bind processor)
    named: tuple[tuple[str, str | None, Any, _Processor], ...] | None
    #: result processors, one per column (None where the driver's value is kept); None: no rows
    results: tuple[_Processor, ...] | None
    row: type[Row]
    #: (column, processor) of the columns converted (the others are kept as the driver returns them)
    converted: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
    #: :meth:`bind` as built once for this statement's sources (see :func:`_binder`)
    binder: _Binder | None = field(default=None, compare=False, repr=False)
    #: an INSERT's rows sent as one statement of column arrays (PostgreSQL ``executemany``), or None
    values: Unnested | None = field(default=None, compare=False, repr=False)

    def bind(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters for one row of ``params``."""
        if self.binder is not None:
            return self.binder(params)
        return self._bind(params)

    def _bind(self, params: Mapping[str, Any]) -> Any:
        """:meth:`bind` read from the sources one by one (what :func:`_binder` leaves to it)."""
        if self.positional is not None:
            values = []
            for key, fixed, proc in self.positional:
                value = params[key] if key is not None else fixed
                values.append(value if proc is None else proc(value))
            return tuple(values)
        assert self.named is not None
        out = {}
        for name, key, fixed, proc in self.named:
            value = params[key] if key is not None else fixed
            out[name] = value if proc is None else proc(value)
        return out

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[Row]:
        make, converted = self.row, self.converted
        if not converted:
            return [make(r) for r in fetched]
        out = []
        for r in fetched:
            values = list(r)
            for i, proc in converted:
                values[i] = proc(values[i])
            out.append(make(values))
        return out


class Unnested:
    """An INSERT of many rows as one statement whose text does not depend on how many:
    ``INSERT INTO t (a, b) SELECT * FROM unnest(%s::A[], %s::B[])``, one array parameter a column.

    Not ``VALUES (…), (…)``: psycopg parses a statement's text again on every run past 50 parameters or
    4 KiB (its cache's limits, a third of a millisecond for a message's index rows), and each row count
    would be a statement of its own to prepare; here one text, a handful of parameters, prepared once.
    ``unnest`` yields the rows in order: a serial key (``facts.id``) numbers them as ``executemany`` did."""

    __slots__ = ("bind", "sql")

    def __init__(self, sql: str, bind: _Binder) -> None:
        self.sql = sql
        self.bind = bind

    def columns(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """The statement's parameters: each column's values, in the rows' order."""
        return [list(column) for column in zip(*map(self.bind, rows), strict=True)]


#: a pyformat placeholder, as psycopg's dialect writes each bound parameter, and the cast it may carry
_NAMED = re.compile(r"%\((\w+)\)s(?:::([A-Z]+(?: WITH(?:OUT)? TIME ZONE| PRECISION| VARYING)?))?")
#: an INSERT's ``VALUES`` group of placeholders alone (no expression, no literal)
_VALUES = re.compile(rf" VALUES \(((?:{_NAMED.pattern})(?:, (?:{_NAMED.pattern}))*)\)")


def _unnested(
    sql: str, named: tuple[tuple[str, str | None, Any, _Processor], ...], types: Mapping[str, str]
) -> Unnested | None:
    """``sql`` (a PostgreSQL INSERT of one row, no RETURNING) as :class:`Unnested`, or None when its text
    is not the plain ``INSERT … VALUES (%(a)s[::TYPE], …) [ON CONFLICT …]`` this expects (then the driver's
    ``executemany``). ``types``: each parameter's SQL type, for those the driver's SQL does not cast; a type
    with a length is refused (a cast to ``VARCHAR(n)`` would cut a longer value instead of refusing it)."""
    group = _VALUES.search(sql)
    if group is None or " VALUES (" in sql[group.end() :]:
        return None
    start, end = group.span()
    matched = [_NAMED.fullmatch(item) for item in group[1].split(", ")]
    sources = {name: rest for name, *rest in named}
    if not all(matched) or sorted(m[1] for m in matched if m) != sorted(sources):
        return None
    casts = [(m[1], m[2] or types.get(m[1], "")) for m in matched if m]
    if any(not kind or "(" in kind for _, kind in casts) or "%(" in sql[end:]:
        return None
    ordered = tuple((sources[name][0], sources[name][1], sources[name][2]) for name, _ in casts)
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in casts)
    plain = Compiled(sql=sql, positional=ordered, named=None, results=None, row=Row)
    text = f"{sql[:start]} SELECT * FROM unnest({arrays}){sql[end:]}"  # noqa: S608 (SQLAlchemy's text, no value)
    return Unnested(text, _binder(ordered) or plain.bind)


def _unnested_where(
    sql: str, named: tuple[tuple[str, str | None, Any, _Processor], ...], types: Mapping[str, str]
) -> Unnested | None:
    """``sql`` (a PostgreSQL UPDATE or DELETE run for many rows, no RETURNING) as one statement joined to
    the rows' column arrays: ``UPDATE t SET a=_rows.a FROM unnest(…) AS _rows(a, k) WHERE t.k = _rows.k``,
    ``DELETE FROM t USING unnest(…) AS _rows(…) WHERE …``; or None (then ``executemany``). The rowcount is
    the target rows changed, the sum ``executemany`` gives when no two rows match the same target row (the
    hot path's rows are keyed: one resource, one index entry each)."""
    kind = "FROM" if sql.startswith("UPDATE ") else "USING" if sql.startswith("DELETE FROM ") else None
    if kind is None or sql.count(" WHERE ") != 1 or " RETURNING " in sql:
        return None
    found = list(_NAMED.finditer(sql))
    sources = {name: rest for name, *rest in named}
    names = list(dict.fromkeys(m[1] for m in found))
    if not names or sorted(names) != sorted(sources) or sql.count("%") != len(found):
        return None
    casts = {name: next((m[2] for m in found if m[1] == name and m[2]), None) or types.get(name, "") for name in names}
    if any(not cast or "(" in cast for cast in casts.values()):
        return None
    ordered = tuple((sources[name][0], sources[name][1], sources[name][2]) for name in names)
    arrays = ", ".join(f"%b::{casts[name]}[]" for name in names)
    joined = _NAMED.sub(lambda m: f"_rows.{m[1]}", sql)
    head, where = joined.split(" WHERE ")
    text = f"{head} {kind} unnest({arrays}) AS _rows({', '.join(names)}) WHERE {where}"
    plain = Compiled(sql=sql, positional=ordered, named=None, results=None, row=Row)
    return Unnested(text, _binder(ordered) or plain.bind)


#: (statement, dialect, parameter names, executemany) -> compiled; bounded by :data:`MAX_SHAPES` (a throw-away
#: store's dialect is held until then, no longer)
_SHAPES: dict[tuple[Any, ...], Compiled] = {}


def compiled(statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...], *, many: bool = False) -> Compiled:
    """``statement`` compiled for ``dialect`` with parameters named ``keys``, for ``executemany`` or not
    (an INSERT run once gets PostgreSQL's implicit ``RETURNING`` of its key, as SQLAlchemy does) (cached)."""
    key = (statement, dialect, keys, many)
    found = _SHAPES.get(key)
    if found is None:
        if len(_SHAPES) >= MAX_SHAPES:
            _SHAPES.clear()
        found = _SHAPES[key] = _compile(statement, dialect, keys, many=many)
    return found


def _compile(statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...], *, many: bool) -> Compiled:
    """SQLAlchemy's own compilation, taken apart once: SQL text, where each parameter comes from (the
    caller's dict, or a value fixed in the statement such as a literal ``status``), its bind processor.

    A literal ``IN`` list, which SQLAlchemy expands on every execution, is expanded here once (its values
    are fixed); a list the caller passes (an expanding parameter) would change the SQL per call: refused."""
    comp = statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=many)
    assert isinstance(comp, SQLCompiler)
    given = set(keys)
    if any(bind.key in given for bind in [*comp.post_compile_params, *comp.literal_execute_params]):
        raise ValueError("an expanding parameter given by the caller: not a fast statement")
    defaults = _scalar_defaults(comp)
    state = comp.construct_expanded_state({key: None for key in given}, escape_names=False)
    processors = {**comp._bind_processors, **state.processors}  # the state's own: only the expanded ones

    def source(name: str) -> tuple[str | None, Any, _Processor]:
        bind = comp.binds.get(name)
        key = bind.key if bind is not None and bind.key in given else None
        fixed = defaults.get(bind.key, state.parameters[name]) if bind is not None else state.parameters[name]
        if key is None and bind is not None and bind.required and bind.key not in defaults:
            raise ValueError(f"parameter {bind.key!r} not given for a fast statement")
        proc = processors.get(name)
        if proc is not None and not callable(proc):
            raise ValueError(f"parameter {name!r} is a tuple: not a fast statement")
        if proc is not None and bind is not None and _driver_binary(dialect, bind.type):
            proc = None  # the driver binds the bytes themselves as it binds the memoryview made of them
        if proc is not None and bind is not None and isinstance(bind.type, DateTime):
            return key, fixed, _last_kept(proc)
        return key, fixed, proc

    positional = named = None
    if state.positiontup is not None:
        positional = tuple(source(name) for name in state.positiontup)
    else:
        escaped: Mapping[str, str] = comp.escaped_bind_names or {}
        named = tuple((escaped.get(name, name), *source(name)) for name in state.parameters)
    results = None
    fields: list[str] = []
    if comp._result_columns:
        results = tuple(col[3]._cached_result_processor(dialect, None) for col in comp._result_columns)
        fields = [col[0] for col in comp._result_columns]
    converted = tuple((i, proc) for i, proc in enumerate(results or ()) if proc is not None)
    values = None
    if many and results is None and named is not None and dialect.name == "postgresql":
        types = {name: bind.type.compile(dialect=dialect) for name, bind in comp.binds.items()}
        rows_of = _unnested if comp.isinsert else _unnested_where if comp.isupdate or comp.isdelete else None
        values = rows_of(state.statement, named, types) if rows_of is not None else None
    return Compiled(
        sql=state.statement,
        positional=positional,
        named=named,
        results=results,
        row=_row_class(fields),
        converted=converted,
        binder=_binder(positional),
        values=values,
    )


def _binder(positional: _Sources | None) -> _Binder | None:
    """A positional statement's parameters read with one ``operator.itemgetter`` (in C) instead of a loop
    over its sources (43 statement rows a message): the processors applied after, only where there is one,
    and the values fixed in the statement (a ``deleted = 0``, a ``LIMIT 1``) processed once, here, and put
    in their places. None (the loop of :meth:`Compiled.bind`) for named paramstyles or no parameter."""
    if not positional:
        return None
    keys = [key for key, _, _ in positional if key is not None]
    if not keys:
        return None
    # positions among the given keys' values, then the fixed values by their final position, ascending
    procs = [(i, proc) for i, (_, _, proc) in enumerate(s for s in positional if s[0] is not None) if proc is not None]
    fixed = [(i, v if p is None else p(v)) for i, (key, v, p) in enumerate(positional) if key is None]
    get: _Binder
    if len(keys) == 1:
        single = keys[0]

        def get(params: Mapping[str, Any]) -> tuple[Any, ...]:
            return (params[single],)
    else:
        get = operator.itemgetter(*keys)  # a tuple of the values, in placeholder order
    if not procs and not fixed:
        return get

    def bind(params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = list(get(params))
        for i, proc in procs:
            values[i] = proc(values[i])
        for i, value in fixed:
            values.insert(i, value)
        return tuple(values)

    return bind


def _last_kept(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A datetime parameter's processor remembering its last value and text: a message binds its one
    moment (``now``) as the ``last_updated`` of every row it writes, and SQLite's processor formats it
    each time through a dict of seven fields (~11 a message). A datetime is immutable, so the same object
    always gives the same text; the last (value, text) pair is one tuple, replaced whole, so that threads
    sharing the compiled statement never see one's value with another's text."""
    last: list[tuple[Any, Any]] = [(None, None)]

    def process(value: Any) -> Any:
        seen, text = last[0]
        if value is seen and value is not None:
            return text
        text = proc(value)
        last[0] = (value, text)
        return text

    return process


def _driver_binary(dialect: Dialect, kind: Any) -> bool:
    """A ``LargeBinary`` parameter on SQLite: SQLAlchemy's bind processor wraps the bytes in a
    ``memoryview`` (``sqlite3.Binary``), which ``sqlite3`` binds as the same BLOB as the bytes themselves,
    after an adaptation lookup that fails (an ``AttributeError`` built and dropped); with the
    :func:`sqlite3.register_adapter` below, bytes are handed over as they are (~12 bodies a message)."""
    return dialect.name == "sqlite" and isinstance(kind, LargeBinary)


#: ``sqlite3`` looks up an adapter for every parameter that is not an int, float, str or bytearray, and
#: builds an ``AttributeError`` for each it lacks (~1.3 µs a parameter for bytes, ~1.7 for None, against
#: ~0.1 with an adapter): bytes and None, adapted to themselves (``bytes(b) is b``; ``{}.get(None)`` is
#: None), are bound as before without it. The registry is per process; nothing else registers these types.
sqlite3.register_adapter(bytes, bytes)
_NOTHING: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NOTHING.get)


def _scalar_defaults(comp: SQLCompiler) -> dict[str, Any]:
    """The Python-side defaults an INSERT or UPDATE fills in for columns not given: constants only (a
    default computed per row would need SQLAlchemy's execution context)."""
    out: dict[str, Any] = {}
    for column in [*comp.insert_prefetch, *comp.update_prefetch]:
        default = column.default if comp.isinsert else column.onupdate
        if default is None or not getattr(default, "is_scalar", False):
            raise ValueError(f"column {column.key!r} has a default computed per row: not a fast statement")
        out[column.key] = getattr(default, "arg", None)
    return out


def execute(conn: Connection, statement: ClauseElement, params: Params) -> Result:
    """Run ``statement`` (built once) with ``params`` (a dict, or a list of dicts: ``executemany``) on
    ``conn``'s DB-API connection, inside ``conn``'s transaction or SAVEPOINT."""
    many = type(params) is not dict and not isinstance(params, Mapping)  # (the ABC check is slow: dicts first)
    rows: Sequence[Mapping[str, Any]] = params if many else [params]  # type: ignore[list-item,assignment]
    shape = compiled(statement, conn.dialect, tuple(rows[0]), many=many)
    dbapi = _ready(conn)
    # An engine with any connection listener (ours have "begin") has events: ask for these two, on the
    # engine's own listeners unless the connection has some of its own (fewer levels to look through).
    dispatch = conn.dispatch if conn._has_events else conn.engine.dispatch if conn.engine._has_events else None
    before = dispatch.before_cursor_execute if dispatch is not None else None
    after = dispatch.after_cursor_execute if dispatch is not None else None
    sql, bound, rowcount = shape.sql, None, 0
    fetched: Sequence[Sequence[Any]] = []
    cursor = dbapi.cursor()
    try:
        if many and shape.values is not None:
            sql, bound = shape.values.sql, shape.values.columns(rows)
            _send(conn, cursor, sql, bound, many=False, before=before, after=after)
            rowcount = cursor.rowcount
        else:
            bind = shape.binder or shape.bind
            bound = list(map(bind, rows)) if many else bind(rows[0])
            _send(conn, cursor, sql, bound, many=many, before=before, after=after)
            fetched = cursor.fetchall() if shape.results is not None else []
            rowcount = cursor.rowcount
    except BaseException as exc:
        # The connection's own handler: a driver error wrapped (with the statement) into SQLAlchemy's tree,
        # a lost connection or an interrupt invalidating it. Anything else (a listener's error) is raised as
        # it is, as SQLAlchemy raises it: without an execution context the handler would wrap it.
        driver = isinstance(exc, conn.dialect.loaded_dbapi.Error)
        conn._handle_dbapi_exception(exc, sql if driver else None, bound if driver else None, cursor, None)
    finally:
        cursor.close()
    return Result(shape.rows(fetched) if fetched else [], rowcount)


def _send(conn: Connection, cursor: Any, sql: str, bound: Any, *, many: bool, before: Any, after: Any) -> None:
    """One statement to the driver, between the ``before_cursor_execute`` listeners (which may replace its
    parameters) and the ``after_cursor_execute`` ones, as SQLAlchemy calls them."""
    if before:
        for fn in before:
            _, bound = fn(conn, cursor, sql, bound, None, many)
    if many:
        cursor.executemany(sql, bound)
    else:
        cursor.execute(sql, bound)
    if after:
        after(conn, cursor, sql, bound, None, many)


def _ready(conn: Connection) -> Any:
    """``conn``'s DB-API connection, checked as SQLAlchemy checks it before a statement: a transaction
    that failed refuses more work (``PendingRollbackError``), and none open begins one (autobegin)."""
    dbapi = conn.connection.dbapi_connection
    trans, nested = conn._transaction, conn._nested_transaction
    if (trans is not None and not trans.is_active) or (nested is not None and not nested.is_active):
        conn._invalid_transaction()
    if trans is None:
        conn._autobegin()
    return dbapi


__all__ = ["Compiled", "Params", "Result", "Row", "compiled", "execute"]
