"""Database errors, wrapped once: a driver's error becomes one readable
:class:`~persistq_async.DatabaseError` naming the database, the action and, where it can tell,
the likely cause."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from ..errors import DatabaseError, SchemaError

__all__ = ["wrap_db_error"]


def wrap_db_error(exc: BaseException, action: str, where: str) -> DatabaseError:
    """One readable :class:`DatabaseError` for a driver error, naming the database and cause."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    message = (str(orig).strip() or type(orig).__name__).splitlines()[0]
    lowered = message.lower()
    hint = ""
    if "file is not a database" in lowered or "malformed" in lowered:
        return SchemaError(f"{action} failed on {where}: {message} (not a usable SQLite database)")
    if "readonly" in lowered or "read-only" in lowered:
        hint = " (the database file or its directory is read-only)"
    elif "disk is full" in lowered or "database or disk is full" in lowered:
        hint = " (the disk or the database's size limit is full)"
    elif "unable to open" in lowered:
        hint = " (check that the path exists and is writable)"
    elif "locked" in lowered:
        hint = " (another process held the write lock past busy_timeout)"
    error = DatabaseError(f"{action} failed on {where}: {message}{hint}")
    error.__cause__ = exc
    return error
