"""One root exception for everything the framework raises on purpose."""

from __future__ import annotations

from dataclasses import dataclass


class PipelineError(Exception):
    """Root of the framework's own errors."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a topology file, located by file and dotted path."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class TopologyError(PipelineError):
    """A topology could not be loaded. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BrokerUnavailable(PipelineError):
    """The Kafka broker could not be reached."""


class StateMismatch(PipelineError):
    """Stored state was written by another definition of its stage (an aggregate whose window,
    group-by or measures changed): it cannot be read. Retrying cannot help (``fatal``)."""

    fatal = True
