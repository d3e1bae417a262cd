"""Every error collet-limiter raises, and the one place driver errors are translated.

Tree::

    LimiterError
    ├── ConfigError (ValueError)            bad config file, env variable or argument
    │   └── InvalidKeyError                 a string that is not ``provider/model``
    ├── AcquireTimeout (TimeoutError)       no permit within the timeout
    ├── LimiterClosedError (RuntimeError)   the Limiter was closed
    ├── AsyncContextError (TypeError)       an async object used with plain ``with``
    └── StorageError                        the database cannot be used as it is
        ├── DatabaseUnavailableError (OSError)  missing or unwritable path, read-only, disk full
        ├── DatabaseBusyError                   locked by another writer for too long
        ├── DatabaseCorruptError                not a SQLite database, or damaged
        └── SchemaVersionError                  written by a newer collet-limiter

Errors carry their context (key, path, limit) as attributes and stay picklable, so a worker
process can send one back to its parent. sqlite3 and SQLAlchemy exceptions never leave this
package: ``translate_driver_errors`` maps them at the boundary.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator


class LimiterError(Exception):
    """Base class of every error raised by collet-limiter."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in context.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles args and __dict__; keyword-only context lives in __dict__.
        return (self.__class__, (self.message,), self.__dict__)

    def __str__(self) -> str:
        return self.message


class ConfigError(LimiterError, ValueError):
    """A config file, environment variable or argument is invalid; the message says where."""


class InvalidKeyError(ConfigError):
    """A model key string is not of the form ``provider/model``."""


class AcquireTimeout(LimiterError, TimeoutError):  # noqa: N818 - the public name is fixed
    """No permit was granted within the timeout; nothing is held and no ticket is left queued."""


class LimiterClosedError(LimiterError, RuntimeError):
    """The Limiter was closed (or is being closed) and cannot acquire any more."""


class AsyncContextError(LimiterError, TypeError):
    """An AsyncLimiter or AsyncLease was used with plain ``with``; use ``async with``."""


class StorageError(LimiterError):
    """The database cannot be used as it is; the message names the path and what to do."""


class DatabaseUnavailableError(StorageError, OSError):
    """The database path cannot be opened or written: missing directory, permissions, disk full."""


class DatabaseBusyError(StorageError):
    """Another process held the database's write lock for longer than the busy timeout."""


class DatabaseCorruptError(StorageError):
    """The file is not a SQLite database, or it is damaged."""


class SchemaVersionError(StorageError):
    """The database was written by a newer collet-limiter, with a schema this one does not know."""


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return " ".join(text.split())  # psycopg's messages run over several indented lines


# (substrings of the driver's message, error class, what to tell the user); first match wins.
_DRIVER_MESSAGES: Final[tuple[tuple[tuple[str, ...], type[StorageError], str], ...]] = (
    (
        ("locked", "busy", "lock timeout"),
        DatabaseBusyError,
        (
            "database {path} stayed locked by another process beyond the busy timeout; raise "
            "[limiter] busy_timeout_ms or find the process holding a long transaction"
        ),
    ),
    (
        (
            "connection refused",
            "connection is bad",
            "connection to server",
            "could not connect",
            "connection failed",
            "server closed the connection",
            "terminating connection",
            "the database system is",
            "timeout expired",
            "could not translate host name",
            "no route to host",
            "connection timed out",
        ),
        DatabaseUnavailableError,
        (
            "cannot reach the database server of {path} ({text}); check that the server runs, "
            "that this host can reach it, and the host, port and credentials in the URL"
        ),
    ),
    (
        ("not a database", "malformed", "corrupt"),
        DatabaseCorruptError,
        (
            "{path} is not a usable collet-limiter database ({text}); point --db or "
            "COLLET_LIMITER_DB at another file, or move this one away"
        ),
    ),
    (
        ("readonly", "read-only"),
        DatabaseUnavailableError,
        "database {path} is read-only ({text}); make the file and its directory writable",
    ),
    (
        ("disk is full", "disk full"),
        DatabaseUnavailableError,
        "cannot write database {path}: the disk is full; free space and retry",
    ),
    (
        ("disk i/o",),
        DatabaseUnavailableError,
        (
            "database {path}: the file system refused a read or write ({text}); check free "
            "space, the file size limit (ulimit -f), the kernel log, and that the file is on "
            "a local disk"
        ),
    ),
    (
        ("unable to open", "no such"),
        DatabaseUnavailableError,
        (
            "cannot open database {path} ({text}); check that its directory exists and is "
            "writable, and that the file was not deleted"
        ),
    ),
)


def storage_error_from(exc: BaseException, *, path: str) -> StorageError:
    """The public error for a driver or OS error raised while using the database at ``path``."""
    if isinstance(exc, OSError) and not isinstance(exc, LimiterError):
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        return DatabaseUnavailableError(
            f"cannot use database {path}: {reason}", path=path, reason=reason
        )
    text = _driver_message(exc)
    lowered = text.lower()
    for needles, cls, template in _DRIVER_MESSAGES:
        if any(needle in lowered for needle in needles):
            return cls(template.format(path=path, text=text), path=path, reason=text)
    return StorageError(f"database {path}: {text}", path=path, reason=text)


@contextlib.contextmanager
def translate_driver_errors(path: str) -> Iterator[None]:
    """Re-raise sqlite3, SQLAlchemy and OS errors from the block as the matching StorageError."""
    try:
        yield
    except LimiterError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise storage_error_from(exc, path=path) from exc
    except Exception as exc:
        # SQLAlchemy's errors and psycopg's (raised by statements run on the driver's cursor,
        # ``Prepared``), recognised without importing either: neither may be loaded.
        if not (_sqlalchemy_error(exc) or type(exc).__module__.startswith("psycopg")):
            raise
        raise storage_error_from(exc, path=path) from exc


def _sqlalchemy_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``sqlalchemy.exc.SQLAlchemyError``."""
    return any(
        k.__name__ == "SQLAlchemyError" and k.__module__ == "sqlalchemy.exc"
        for k in type(exc).__mro__
    )
