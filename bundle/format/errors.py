"""The bundle's error types (standard library only: the offline side imports them with a bare python3).

`bundle.format.manifest` re-exports them; `python -m bundle` turns any of them into one line and
its exit code, never a traceback. (A stack config's mistakes are stackspec.errors.Problem: key path,
value, message, fix. A bundle's are FileProblem: a file's path and what is wrong with it.)
"""

from __future__ import annotations

from dataclasses import dataclass


class BundleError(Exception):
    """Base class of every bundle failure that is the user's to fix (exit code 1 or 2)."""

    exit_code = 1


class ManifestError(BundleError):
    """MANIFEST.json is missing, unreadable or malformed (exit 1: a damaged or hostile bundle)."""


class UsageError(BundleError):
    """A command line or config error: the message names the option, the value and the fix (exit 2)."""

    exit_code = 2


class SetupError(BundleError):
    """Something the operator must install or configure first (exit 2)."""

    exit_code = 2


class FetchError(BundleError):
    """A download or copy that failed on the online machine (exit 1)."""


@dataclass(frozen=True)
class FileProblem:
    """One thing wrong with one file of a bundle, said so an operator can act on it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class VerifyFailed(BundleError):
    """A bundle that does not match its manifest; carries every problem found."""

    def __init__(self, what: str, problems: list[FileProblem]):
        self.problems = sorted(problems, key=lambda p: (p.path, p.message))
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{what}: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}\n{lines}")
