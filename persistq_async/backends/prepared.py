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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

__all__ = ["Prepared"]


class _Compiled(NamedTuple):
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]


class Prepared:
    """A Core statement, executable on a ``Connection``'s DBAPI cursor.

    :param statement: the statement; every parameter is a named bind (no expanding ``IN``).
    """

    __slots__ = ("_by_dialect", "_row", "columns", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        #: The names of the result's columns, in order (empty for a statement without rows).
        self.columns: tuple[str, ...] = tuple(
            c.key for c in getattr(statement, "exported_columns", ())
        )
        self._by_dialect: dict[str, _Compiled] = {}
        # Rows with attribute access by column name, as SQLAlchemy's Row has.
        self._row: Any = namedtuple("Row", self.columns or ("value",), rename=True)  # type: ignore[misc]

    def _compiled(self, dialect: Dialect) -> _Compiled:
        key = f"{dialect.name}+{dialect.driver}"
        found = self._by_dialect.get(key)
        if found is None:
            if not dialect.positional:
                raise NotImplementedError(f"{key}: a prepared statement needs positional binds")
            compiled = self.statement.compile(dialect=dialect)
            # Positional paramstyles (qmark, numeric_dollar) give the order of the parameters.
            names = tuple(getattr(compiled, "positiontup", None) or ())
            found = _Compiled(compiled.string, names, dict(compiled.params))
            self._by_dialect[key] = found
        return found

    def _args(self, compiled: _Compiled, params: Mapping[str, Any]) -> tuple[Any, ...]:
        defaults = compiled.defaults
        return tuple(params[n] if n in params else defaults[n] for n in compiled.names)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Execute and fetch every row as a named tuple (none for a statement without rows)."""
        compiled = self._compiled(conn.dialect)
        args = self._args(compiled, params)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, args)
            if cursor.description is None:
                return []
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
