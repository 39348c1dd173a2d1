"""tav's errors: one base class and a few kinds, each carrying the exit code the CLI gives it.

Every module raises these (and only these) for conditions a user can meet; the message is one line naming
the problem and the fix. The CLI maps them to exit codes in one place. Any other exception reaching the
CLI is a bug in tav or in a library, and is reported as an internal error (TAV_DEBUG=1 shows the traceback).

This module imports nothing, so the lightest command can use it.
"""

from __future__ import annotations


class TavError(Exception):
    """Base of tav's errors: a failure that is not the user's input (exit 1) unless a subclass says otherwise."""

    exit_code = 1


class BadInput(TavError, ValueError):
    """The user's input cannot be used: a flag, a config, a file, a name (exit 2)."""

    exit_code = 2


class SettingError(BadInput):
    """A setting outside its bound. `option` is the setting's flat name (`steps`, `lr`); callers that know
    where it came from (a flag, a config file's line) say so with `located`."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem

    def located(self, where: str) -> SettingError:
        """The same error, naming the place the value came from instead of the bare option."""
        located = SettingError(self.option, self.problem)
        located.args = (f"{where} {self.problem}",)
        return located


class NotFound(TavError, LookupError):
    """Nothing matches: an artifact ref, a file, a stored step (exit 3)."""

    exit_code = 3


class Failure(TavError):
    """Something went wrong that is not bad input: a load failed, a write failed (exit 1)."""

    exit_code = 1


class Corrupt(Failure):
    """Stored data that is missing, damaged or altered: a file, a manifest, an adapter (exit 1)."""


class Interrupted(TavError):
    """The user stopped the run (Ctrl-C, SIGTERM) (exit 130)."""

    exit_code = 130


def counted(n: int, noun: str) -> str:
    """`1 frame`, `2 frames`: a count in a message."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def exit_code(error: BaseException) -> int:
    """The exit code for an exception: its kind's for tav's errors, 1 for anything else (a bug)."""
    return error.exit_code if isinstance(error, TavError) else EXIT_FAILURE
