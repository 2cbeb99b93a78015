"""One error type for bad stack config, carrying every problem found, not just the first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

_MAX_VALUE_CHARS = 80


@dataclass(frozen=True)
class Problem:
    """One mistake in the stack config: where, what was written, what is wrong, how to fix it."""

    path: str
    value: Any
    message: str
    fix: str

    def __str__(self) -> str:
        value = repr(self.value)
        if len(value) > _MAX_VALUE_CHARS:
            value = value[: _MAX_VALUE_CHARS - 3] + "..."
        return f"{self.path} = {value}: {self.message}; fix: {self.fix}"


class ConfigError(ValueError):
    """The stack config is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem], source: str = "stack config"):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''} (keys under `xinference-offline:`):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
