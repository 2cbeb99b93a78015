"""Progress bars for the long steps (hashing, copying, packing), and nothing else.

tqdm draws them on stderr when stderr is a terminal and --quiet was not given. Off a
terminal (CI logs, `| tee`) and where tqdm is not installed (the offline server's bare
python3 runs unpack/verify/install before any venv exists) they are silent no-ops.
Updates may come from several hashing threads at once.
"""

from __future__ import annotations

import sys
import threading
from typing import Optional


def bars_wanted(quiet: bool = False) -> bool:
    if quiet:
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return sys.stderr.isatty()


class Progress:
    """A byte counter with an optional bar; thread-safe ``update``."""

    def __init__(self, total: Optional[int], desc: str, enabled: bool, unit: str = "B"):
        self._lock = threading.Lock()
        self._bar = None
        self.done = 0
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                             dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self._bar is not None:
                self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def human(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def plural(count: int, word: str) -> str:
    """plural(1, "file") -> '1 file'; plural(3, "file") -> '3 files'."""
    return f"{count} {word}" + ("" if count == 1 else "s")
