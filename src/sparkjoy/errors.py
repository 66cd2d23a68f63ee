"""sparkjoy's exceptions: one public base class, subclasses that carry data.

Each class maps to an exit code (see ``ExitCode``), so the command line never has to
guess what happened from message text.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success, including "nothing to prune"
    FAILED = 1  # the run failed, or some deletions failed (partial failure)
    USAGE = 2  # bad flag, bad config file, bad environment variable
    UNREACHABLE = 3  # the engine could not be reached
    ABORTED = 4  # the user declined the confirmation, or no terminal to ask on


class SparkjoyError(Exception):
    """Base class of every error sparkjoy raises on purpose."""

    exit_code = ExitCode.FAILED


class ConfigError(SparkjoyError):
    """A setting is wrong. ``problems`` lists every problem found, each naming its source and key."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class EngineUnreachable(SparkjoyError):
    exit_code = ExitCode.UNREACHABLE

    def __init__(self, host: str, cause: str, hint: str):
        self.host = host
        self.cause = cause
        self.hint = hint
        super().__init__(f"cannot reach the Docker engine at {host}: {cause}\n{hint}")


class EngineError(SparkjoyError):
    """The engine answered, but not with what we asked for."""

    def __init__(self, operation: str, status: int | None, message: str):
        self.operation = operation
        self.status = status
        self.message = message
        code = f" ({status})" if status else ""
        super().__init__(f"{operation} failed{code}: {message}")


class EngineBusy(EngineError):
    """The engine refused because another prune is running (HTTP 409 on a prune endpoint)."""


class EngineConflict(EngineError):
    """HTTP 409: the engine refused because of the object's current state (in use, has children, several tags)."""


class EngineNotFound(EngineError):
    """HTTP 404: the object (or the endpoint) does not exist."""
