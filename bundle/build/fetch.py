"""Where `build` gets models on the online machine: the hubs or local directories.

- ModelScope and Hugging Face: their own Python libraries (`modelscope.snapshot_download`,
  `huggingface_hub.snapshot_download`) at the pinned revision, into a download cache outside
  the bundle (they skip files they already have). Both are imported only when a stack uses
  them: they are online-machine tools, not runtime dependencies (`pip install modelscope`,
  `pip install huggingface_hub`). Their bookkeeping files (`.cache/`, `.msc`, `.mv`, ...)
  stay out of the bundle. Mirrors: the libraries' own settings (HF_ENDPOINT, MODELSCOPE_DOMAIN).
- local: a directory on this machine, copied as it is (symlinks followed).
- The Pulumi CLI and plugins: bundle/build/pulumi_release.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from bundle.contents.stacks import Source
from bundle.format.errors import FetchError, SetupError

# Top-level names the hub libraries write into a download directory for themselves.
HUB_BOOKKEEPING = frozenset({".cache", "._____temp", ".msc", ".mdl", ".mv", ".lock"})
HUB_PACKAGES = {"modelscope": "modelscope", "huggingface": "huggingface_hub"}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def hub_cache_dir(cache_root: Path, source: Source) -> Path:
    return cache_root / "hub" / source.hub / _safe(source.id or "") / _safe(source.revision or "default")


def download_model(source: Source, cache_root: Path, offline: bool = False, quiet: bool = False) -> Path:
    """The directory holding ``source``'s files (downloaded into the cache for a hub).

    ``offline``: use only what the download cache already holds (the libraries'
    ``local_files_only``), e.g. to rebuild a bundle on a machine that lost its network.
    """
    if source.hub == "local":
        path = Path(source.path or "").expanduser()
        if not path.is_dir():
            raise SetupError(f"source.path = {source.path!r}: no such directory on this machine "
                             "(relative paths start at the current directory)")
        return path
    package = HUB_PACKAGES.get(source.hub)
    if package is None:
        raise SetupError(f"source.hub = {source.hub!r}: unknown (modelscope, huggingface or local)")
    dest = hub_cache_dir(cache_root, source)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if source.hub == "modelscope":
            from modelscope import snapshot_download
        else:
            if quiet:
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise SetupError(f"{source.describe()}: downloading from {source.hub} needs the `{package}` package on "
                         f"this online machine: venv/bin/pip install {package}  ({exc})") from exc
    try:  # the same call for both libraries
        got = snapshot_download(source.id, revision=source.revision, local_dir=str(dest), local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - the libraries raise many types; all mean "not fetched"
        hint = ("it is not in the download cache yet: build once with network access" if offline else
                "check source.id and source.revision, the network, and the hub's mirror setting "
                "(HF_ENDPOINT / MODELSCOPE_DOMAIN)")
        raise FetchError(f"{source.describe()}: download failed ({type(exc).__name__}: {exc}); {hint}") from exc
    return Path(got)


def list_source_files(root: Path, skip_top: frozenset[str] = frozenset()) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of every file below ``root``, sorted, symlinks followed (loops skipped)."""
    seen_dirs: set[tuple[int, int]] = set()
    results: list[tuple[str, Path]] = []
    broken: list[str] = []

    def walk(directory: Path, rel: str) -> None:
        st = directory.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not rel and entry.name in skip_top:
                continue
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    walk(Path(entry.path), child_rel)
                elif entry.is_file(follow_symlinks=True):
                    results.append((child_rel, Path(entry.path)))
                elif entry.is_symlink():
                    broken.append(child_rel)
            except OSError:
                broken.append(child_rel)

    walk(root, "")
    if broken:
        raise FetchError(f"{root}: cannot read {', '.join(broken[:5])}" + (" ..." if len(broken) > 5 else "")
                         + " (broken links or special files)")
    return iter(results)
