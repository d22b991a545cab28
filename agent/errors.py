"""Error types that carry their policy.

- `ConfigError`: fatal at start (exit 78); on reload the running configuration is kept.
- `SinkUnavailable`: a central store or broker is away; retry with backoff, buffer meanwhile.
- `CollectorFailed`: one collection failed; the runner contains it and counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file, located as precisely as the file allows."""

    file: Path
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class ConfigError(Exception):
    """An invalid configuration or manifest; every problem found is listed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SinkUnavailable(Exception):  # noqa: N818 - the name states the condition, as the policy table does
    """The central store or broker cannot be reached now; the caller retries later."""


class CollectorFailed(Exception):  # noqa: N818
    """A collector could not produce its samples this cycle."""
