"""Errors a user can act on: located problems in the input, kept as data until printed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, located at ``file:line:col`` (1-based)."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class HatError(Exception):
    """Base class of the errors ``hat`` reports without a traceback."""


class InputError(HatError):
    """The input (arguments, spec, checkpoint file) is wrong: exit code 2."""


class SpecError(InputError):
    """A spec failed to load or validate; ``problems`` holds every located message."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DataError(InputError):
    """A data file is missing or unreadable (raised by datasets, also in loader workers)."""


class CheckpointError(InputError):
    """A checkpoint file is missing, corrupt, unsafe or does not fit the model."""


class PluginError(HatError):
    """The installed plugins conflict (e.g. two give one component name)."""


class RunError(HatError):
    """A run failed for a reason that is not the input's fault: exit code 1."""


def one_line(exc: BaseException) -> str:
    """An exception's message as one line, also when a DataLoader worker wrapped it with
    its traceback ("Caught X in DataLoader worker ... Original Traceback ...")."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in lines[1]:
        return lines[-1].split(": ", 1)[-1]  # "hatcli.errors.DataError: the message"
    return lines[0] if lines else type(exc).__name__
