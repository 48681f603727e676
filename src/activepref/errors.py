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
