"""Errors a user can fix. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """Bad input: a job file, a data file, a model file or a command-line argument.

    The message says what happened, what was expected and how to fix it.
    """

    exit_code = USER_ERROR_EXIT_CODE


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job, located by its dotted field path."""

    path: str
    got: object
    expected: str

    def __str__(self) -> str:
        return f"{self.path or '<job>'}: got {_short(self.got)}; {self.expected}"


class JobError(UserError):
    """A job file (or its --set overrides) that does not validate: every problem at once."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = [f"{source}: {count}:"] + [f"  - {p}" for p in problems]
        lines.append("Fix these fields and run `finetune validate` again.")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # errors cross process boundaries in Ray: rebuild from the same arguments
        return (type(self), (self.source, self.problems))


class DataError(UserError):
    """Data that cannot be used as given (missing file, bad column, empty split...)."""


class DataChanged(DataError):
    """A file of a streaming run that disappeared or changed while the run read it."""


class RunFailedError(Exception):
    """A run that did not produce what it promises: every trial failed, so there is no model. Its
    summary is written; the message gives each distinct reason once. Exit code 2 when every
    failure was a user error (the job or its files must change), else 1."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return (type(self), (str(self), self.exit_code))


class StorageError(Exception):
    """Storage that refused a write while a run was under way (a full disk, a read-only mount): the
    message names the location and what was kept; the run can be resumed once the storage takes
    writes again. Exit code 1: the job is sound. (Before a run starts, an unusable storage_path is
    a UserError naming the field.)"""

    exit_code = 1


class StopNow(BaseException):
    """Raised in the driver's main thread by a second signal, or by one outside the search: stop
    at once. A BaseException, like KeyboardInterrupt, so that Tune's `except Exception` clean-up
    does not hold it up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Interrupted(Exception):
    """A run that stopped on a signal (finetune.stopping). Its message says what was kept and how
    to resume; exit code 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
    reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self):
        return (type(self), (str(self), self.signum))


def innermost_cause(error: BaseException) -> BaseException:
    """The exception inside Ray's wrappers: a task's or actor's error (`RayTaskError.cause`), or
    Tune's and Train's errors around it, followed to the end."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error


def _short(value: object, limit: int = 80) -> str:
    """A value as the message shows it: whole for strings up to a long path's length, cut short
    otherwise (a value may be a whole section, or a hostile file's deep or repeated structure,
    which `reprlib` cuts while it writes instead of after)."""
    if isinstance(value, str):
        text, limit = repr(value), 400
    else:
        text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60
