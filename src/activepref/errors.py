"""Project exceptions. The CLI turns each into one readable line and a non-zero exit."""

from __future__ import annotations


class ActivePrefError(Exception):
    """Base class of every error a user can act on."""


class ConfigError(ActivePrefError):
    """A config file or flag is invalid; the message names the field."""


class PoolFormatError(ActivePrefError):
    """A candidate-pool file is malformed; the message names file, line/row and field."""

    def __init__(self, path: str, location: str, field: str | None, problem: str) -> None:
        self.path = path
        self.location = location
        self.field = field
        self.problem = problem
        where = f"{path}, {location}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class JudgeError(ActivePrefError):
    """A judge could not produce a valid score after its retries."""


class RunLockedError(ActivePrefError):
    """Another process holds the run directory."""


class RunStateError(ActivePrefError):
    """The run directory is missing, incomplete or from an incompatible config."""


class RunStopped(ActivePrefError):
    """The run stopped cleanly before its end, for ``reason`` (e.g. ``budget``, ``judge file``):
    everything done is committed, ``activepref resume`` continues it. Not a failure (exit 0)."""

    reason = "stopped"


_NO_SPACE = {"ENOSPC", "EFBIG", "EDQUOT"}
_NOT_WRITABLE = {"EACCES", "EPERM", "EROFS"}
_AFTER_A_FAULT = "everything committed before it is kept: fix it, then run the same command again (a run: `activepref resume RUN`)"


def environment_error(exc: BaseException) -> str | None:
    """One line for a fault of the machine rather than of the input (disk full, read-only
    directory, a damaged or locked SQLite file), saying what to do; None for anything else
    (a bug, whose traceback should be seen)."""
    import errno
    import sqlite3

    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0, "")
        where = f" {exc.filename}" if exc.filename else ""
        if code in _NO_SPACE:
            return f"no space to write{where} ({exc.strerror}: the disk, a quota or a file-size limit is full); {_AFTER_A_FAULT}"
        if code in _NOT_WRITABLE:
            return f"cannot write{where} ({exc.strerror}): the directory is read-only or belongs to someone else; {_AFTER_A_FAULT}"
        if code == "ENOENT":
            return f"{exc.filename or 'a file'} does not exist ({exc.strerror})"
        return None
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text or "disk I/O error" in text:
            return f"a SQLite write failed ({text}: a full disk, a file-size limit or failing storage); {_AFTER_A_FAULT}"
        if "readonly database" in text or "unable to open database" in text:
            return f"a SQLite file cannot be opened for writing ({text}): is the directory read-only? {_AFTER_A_FAULT}"
        if "locked" in text or "busy" in text:
            return (f"a SQLite file stayed locked by another process ({text}): another activepref (or a tool holding the "
                    f"request cache) is writing it; wait for it, then run the command again")
        return None
    if isinstance(exc, sqlite3.DatabaseError):  # malformed image, not a database, ...
        return (f"a SQLite file is damaged ({exc}): restore it from a backup; a run's request cache can be deleted (its "
                f"paid answers are then lost), a damaged run.sqlite means starting the run again in a new directory")
    return None
