"""Hot statements run through the driver's cursor, compiled once per dialect.

SQLAlchemy's Core execution costs about a hundred microseconds of Python per statement (the
compiled-cache lookup, parameter construction, events, the result proxy), more than SQLite
itself takes to run one of the job path's statements. A :class:`Prepared` statement is compiled
once per dialect into its SQL text and the order of its positional parameters, and runs on the
DBAPI cursor of the connection SQLAlchemy handed out, inside the transaction SQLAlchemy began:
plain tuples in, plain tuples out. On asyncpg the adapter's cursor prepares each text once per
connection and reuses it.

Errors are raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, as Core execution
would, and a connection the driver reports as lost is invalidated, so the pool replaces it.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["MAX_IN", "Prepared", "insert_text"]

#: The longest list :meth:`Prepared.rows_in` takes, and the most rows the store writes with one
#: statement of this kind: a few thousand parameters, far below SQLite's 32,766 (the RETURNING
#: the store relies on needs 3.35) and asyncpg's 32,767.
MAX_IN = 512


class _Compiled:
    """One statement compiled for one dialect (and one length of its expanding list)."""

    __slots__ = ("defaults", "merge", "names", "sql", "take")

    def __init__(self, sql: str, names: tuple[str, ...], defaults: dict[str, Any]) -> None:
        self.sql = sql
        self.names = names
        self.defaults = defaults
        #: The parameters in order, taken from a mapping that holds every name (in C, not a
        #: generator per call: the ack of a batch builds a tuple per row).
        self.take = _taker(names)
        #: Whether callers leave some parameters to their defaults (the literal values of a
        #: statement's ``values()``), learnt at the first call that does.
        self.merge = False


def _taker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not names:
        return lambda _params: ()
    if len(names) == 1:
        (name,) = names
        return lambda params: (params[name],)
    return itemgetter(*names)


class Prepared:
    """A Core statement, executable on a ``Connection``'s DBAPI cursor.

    :param statement: the statement; every parameter is a named bind.
    :param expanding: the name of its one expanding ``IN`` parameter, if it has one (then run
        it with :meth:`rows_in`).
    """

    __slots__ = ("_by_dialect", "_expanding", "_last", "_row", "columns", "statement")

    def __init__(self, statement: ClauseElement, *, expanding: str | None = None) -> None:
        self.statement = statement
        #: The one expanding ``IN`` parameter, if any: compiled once per dialect and length
        #: of its list (see :meth:`rows_in`).
        self._expanding = expanding
        #: The names of the result's columns, in order (empty for a statement without rows).
        self.columns: tuple[str, ...] = tuple(
            c.key for c in getattr(statement, "exported_columns", ())
        )
        self._by_dialect: dict[str, _Compiled] = {}
        # The last dialect and length asked for, and its form: the key below is a string built
        # per call, and a process mostly runs a statement on one dialect.
        self._last: tuple[Dialect, int, _Compiled] | None = None
        # Rows with attribute access by column name, as SQLAlchemy's Row has.
        self._row: Any = namedtuple("Row", self.columns or ("value",), rename=True)  # type: ignore[misc]

    def _compiled(self, dialect: Dialect, length: int = 0) -> _Compiled:
        last = self._last
        if last is not None and last[0] is dialect and last[1] == length:
            return last[2]
        key = f"{dialect.name}+{dialect.driver}+{length}"
        found = self._by_dialect.get(key)
        if found is None:
            if not dialect.positional:
                raise NotImplementedError(f"{key}: a prepared statement needs positional binds")
            compiled = self.statement.compile(dialect=dialect)
            # Positional paramstyles (qmark, numeric_dollar) give the order of the parameters.
            sql, names = compiled.string, tuple(getattr(compiled, "positiontup", None) or ())
            defaults = dict(compiled.params)
            if self._expanding is not None:
                assert isinstance(compiled, SQLCompiler)  # a DML or select statement's
                # Rendered for a list of this length: p_ids_1, p_ids_2, ... in its place.
                given = {**defaults, self._expanding: list(range(length))}
                state = compiled.construct_expanded_state(given)
                sql, names = state.statement, tuple(state.positiontup or ())
                defaults = dict(state.parameters)
            found = _Compiled(sql, names, defaults)
            self._by_dialect[key] = found
        self._last = (dialect, length, found)
        return found

    def _args(self, compiled: _Compiled, params: Mapping[str, Any]) -> tuple[Any, ...]:
        if compiled.merge:
            return compiled.take({**compiled.defaults, **params})
        try:
            return compiled.take(params)
        except KeyError:
            compiled.merge = True
            return compiled.take({**compiled.defaults, **params})

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Execute and fetch every row as a named tuple (none for a statement without rows)."""
        compiled = self._compiled(conn.dialect)
        return self._fetch(conn, compiled, self._args(compiled, params))

    def tuples(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """:meth:`rows` as the driver's plain tuples, in the order of :attr:`columns`."""
        compiled = self._compiled(conn.dialect)
        return self._fetch(conn, compiled, self._args(compiled, params), plain=True)

    def rows_in(
        self, conn: Connection, values: Sequence[Any], params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """:meth:`rows` for a statement built with ``expanding``: ``values`` is its list (1 to
        :data:`MAX_IN` values); ``params`` the other parameters.

        The list is padded with its first value to the next power of two, so that a handful
        of compiled forms serve every length (an ``IN`` list ignores repeats)."""
        if self._expanding is None or not 0 < len(values) <= MAX_IN:
            raise ValueError(f"rows_in needs an expanding statement and 1 to {MAX_IN} values")
        length = 1 << (len(values) - 1).bit_length()
        compiled = self._compiled(conn.dialect, length)
        given = dict(params or {})
        name = self._expanding
        padded = [*values, *[values[0]] * (length - len(values))]
        given.update({f"{name}_{n}": v for n, v in enumerate(padded, 1)})
        return self._fetch(conn, compiled, self._args(compiled, given))

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute a statement without rows; the rows it affected (-1 when the driver cannot
        tell)."""
        compiled = self._compiled(conn.dialect)
        args = self._args(compiled, params)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, args)
            return int(cursor.rowcount)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, compiled.sql, args, exc, cursor) from exc
        finally:
            cursor.close()

    def _fetch(
        self, conn: Connection, compiled: _Compiled, args: tuple[Any, ...], *, plain: bool = False
    ) -> list[Any]:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, args)
            if cursor.description is None:
                return []
            if plain:
                return [tuple(row) for row in cursor.fetchall()]
            make = self._row._make
            return [make(row) for row in cursor.fetchall()]
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, compiled.sql, args, exc, cursor) from exc
        finally:
            cursor.close()

    def one_or_none(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Execute; the first row, or None."""
        found = self.rows(conn, params)
        return found[0] if found else None

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Execute; the first column of the first row, or None."""
        row = self.one_or_none(conn, params)
        return None if row is None else row[0]

    def run_many(self, conn: Connection, params: Iterable[Mapping[str, Any]]) -> int:
        """Execute once per mapping of ``params`` (executemany); the rows affected, or -1."""
        compiled = self._compiled(conn.dialect)
        args = [self._args(compiled, p) for p in params]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, args)
            return int(cursor.rowcount)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, compiled.sql, args, exc, cursor) from exc
        finally:
            cursor.close()


def insert_text(conn: Connection, sql: str, args: Sequence[Any]) -> int | None:
    """Run an ``INSERT`` given as the driver's SQL text on the connection's DBAPI cursor, as
    :class:`Prepared` runs a statement; the last row id the driver reports (SQLite's
    ``lastrowid``), or None."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, args)
        last = cursor.lastrowid
        return None if last is None else int(last)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, sql, args, exc, cursor) from exc
    finally:
        cursor.close()


def _wrapped(conn: Connection, sql: str, args: Sequence[Any], exc: Any, cursor: Any) -> DBAPIError:
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    error = DBAPIError.instance(
        sql,
        args,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
    assert isinstance(error, DBAPIError)
    return error
