"""The exceptions raised by persistq_async.

Every error the library raises on purpose derives from :class:`PersistQError`::

    PersistQError
    ├── ArgumentError (also ValueError)        a bad argument value
    │   └── ConfigError                        a bad option, naming where it came from
    ├── ArgumentTypeError (also TypeError)     an argument of the wrong type
    ├── SerializationError (also ValueError)   a payload that cannot be encoded or decoded
    ├── QueueClosed (also RuntimeError)        a closed (or never opened) queue was used
    ├── JobNotFound (also LookupError)         no job has that id
    ├── JobStateError (also ValueError)        the job's state forbids the operation
    ├── LeaseLost                              the lease expired or was revoked or re-taken
    ├── JobAlreadyFinished                     this delivery was already acked, nacked or failed
    ├── JobFailed                              an awaited job ended dead (result, call)
    ├── JobCancelled                           an awaited job was cancelled (result, call)
    ├── DatabaseError                          the database failed; wraps the driver's error
    │   ├── SchemaError                        the database is not ours, or newer than this library
    │   └── DatabaseNotFound                   no queue database there, and create=False
    └── SupervisorError                        the supervisor gave up (restart intensity exceeded)

:class:`Retry` and :class:`Reject` are not errors: a handler raises them to tell its pool
what to do.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ConfigError",
    "DatabaseError",
    "DatabaseNotFound",
    "JobAlreadyFinished",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobStateError",
    "LeaseLost",
    "PersistQError",
    "QueueClosed",
    "Reject",
    "Retry",
    "SchemaError",
    "SerializationError",
    "SupervisorError",
]


class PersistQError(Exception):
    """Raised for every error that persistq_async reports on purpose; the root of the tree."""


class ArgumentError(PersistQError, ValueError):
    """Raised when an argument has the right type but a value that is not allowed."""


class ArgumentTypeError(PersistQError, TypeError):
    """Raised when an argument has the wrong type."""


class ConfigError(ArgumentError):
    """Raised when an option is unknown or ill-typed, naming the option and its source."""


class SerializationError(PersistQError, ValueError):
    """Raised when a payload or result cannot be encoded (at ``put``) or decoded (at ``get``)."""


class QueueClosed(PersistQError, RuntimeError):
    """Raised when a queue is used before it was opened or after it was closed."""


class JobNotFound(PersistQError, LookupError):
    """Raised when no job has the given id (in the given queue)."""


class JobStateError(PersistQError, ValueError):
    """Raised when a job's state forbids the operation (requeue a running job, say)."""


class LeaseLost(PersistQError):
    """Raised when a delivery's lease is no longer valid.

    The lease expired and the job was rescued or re-taken, or the job was cancelled or deleted.
    The outcome the caller asked for was not applied.
    """


class JobAlreadyFinished(PersistQError):
    """Raised when a delivery is acked, nacked or failed a second time."""


class JobFailed(PersistQError):
    """Raised when an awaited job (:meth:`Queue.result`, :meth:`Queue.call`) ended dead.

    :param job_id: the job.
    :param error: its last error, as recorded.
    :param attempts: the deliveries it had.
    """

    def __init__(self, job_id: int, error: str | None, attempts: int) -> None:
        super().__init__(f"job {job_id} is dead after {attempts} attempt(s): {error or 'no error'}")
        self.job_id = job_id
        self.error = error
        self.attempts = attempts


class JobCancelled(PersistQError):
    """Raised when an awaited job (:meth:`Queue.result`, :meth:`Queue.call`) was cancelled.

    :param job_id: the job.
    :param error: its last error, if any was recorded before the cancellation.
    :param attempts: the deliveries it had.
    """

    def __init__(self, job_id: int, error: str | None, attempts: int) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id
        self.error = error
        self.attempts = attempts


class DatabaseError(PersistQError):
    """Raised when the database fails (locked, full, read-only, corrupt, unreachable...).

    The driver's exception is chained as ``__cause__``.
    """


class SchemaError(DatabaseError):
    """Raised when a database is not a persistq database, or was written by a newer version."""


class DatabaseNotFound(DatabaseError):
    """Raised when a queue opened with ``create=False`` finds no database: no SQLite file at the
    path, or a database without persistq's tables. Nothing was created."""


class SupervisorError(PersistQError):
    """Raised when a supervisor gives up: a pool's claim loop crashed too often."""


class Retry(Exception):
    """Raised by a handler to retry its job later without counting it as a failure of the pool.

    :param delay: seconds until the job is due again; None uses the queue's backoff.
    """

    def __init__(self, delay: float | None = None) -> None:
        super().__init__(f"retry requested (delay={delay!r})")
        self.delay = delay


class Reject(Exception):
    """Raised by a handler to dead-letter its job at once, with ``reason`` as its error."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
