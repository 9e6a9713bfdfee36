"""Creating, checking and migrating the schema when a store opens."""

from __future__ import annotations

import logging

from sqlalchemy import insert, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .. import schema
from ..backends import Backend
from ..errors import DatabaseNotFound, SchemaError
from ..schema import meta
from .dberror import wrap_db_error

__all__ = ["create_schema"]

logger = logging.getLogger(__name__)


def create_schema(conn: Connection, backend: Backend) -> None:
    """Create the schema in an empty database, or check and migrate ours; refuse anything else.

    :raises SchemaError: the database is someone else's, damaged, or from a newer version.
    :raises DatabaseNotFound: the backend may not create (``create=False``) and the database
        has no persistq schema; nothing was written.
    :raises DatabaseError: the database failed.
    """
    where = backend.describe()
    try:
        with conn.begin():
            backend.lock_schema(conn)
            tables = set(inspect(conn).get_table_names())
            backend.check_owner(conn, tables)
            if meta.name in tables:
                _migrate(conn, where)
            elif not backend.create:
                raise DatabaseNotFound(f"no persistq database at {where}")
            else:
                ours = sorted(t for t in tables if t.startswith("persistq_"))
                if ours:
                    raise SchemaError(
                        f"{where} has persistq tables ({', '.join(ours)}) but no "
                        "schema version; it is damaged or from an unknown version"
                    )
                schema.metadata.create_all(conn)
                conn.execute(
                    insert(meta),
                    [
                        {"key": "schema_version", "value": str(schema.SCHEMA_VERSION)},
                        {"key": "application", "value": "persistq_async"},
                    ],
                )
                backend.stamp_owner(conn)
                logger.info(
                    "schema created",
                    extra={"action": "schema_created", "version": schema.SCHEMA_VERSION},
                )
        backend.finish_schema(conn)
    except DBAPIError as exc:
        raise wrap_db_error(exc, "opening the queue", where) from exc


def _migrate(conn: Connection, where: str) -> None:
    raw = conn.execute(
        select(meta.c.value).where(meta.c.key == "schema_version")
    ).scalar_one_or_none()
    try:
        version = int(raw) if raw is not None else 0
    except ValueError:
        version = 0
    if version < 1:
        raise SchemaError(f"{where}: unreadable schema version {raw!r}")
    if version > schema.SCHEMA_VERSION:
        raise SchemaError(
            f"{where} has schema version {version}, newer than this library's "
            f"{schema.SCHEMA_VERSION}; upgrade persistq_async"
        )
    for step in range(version, schema.SCHEMA_VERSION):
        schema.MIGRATIONS[step - 1](conn)
        logger.info("schema migrated", extra={"action": "schema_migrated", "version": step + 1})
    if version < schema.SCHEMA_VERSION:
        conn.execute(
            update(meta)
            .where(meta.c.key == "schema_version")
            .values(value=str(schema.SCHEMA_VERSION))
        )
