"""The bundle's error types (standard library only: the offline side imports them with a bare python3).

`bundle.manifest` re-exports them; `python -m bundle` turns any of them into one line and
its exit code, never a traceback.
"""

from __future__ import annotations


class BundleError(Exception):
    """Base class of every bundle failure that is the user's to fix (exit code 1 or 2)."""

    exit_code = 1


class ManifestError(BundleError):
    """MANIFEST.json is missing, unreadable or malformed (exit 1: a damaged or hostile bundle)."""


class UsageError(BundleError):
    """A command line or config error: the message names the option, the value and the fix (exit 2)."""

    exit_code = 2
