"""Where `build` gets things on the online machine: hub models, local directories, the Pulumi CLI.

- ModelScope and Hugging Face: their own Python libraries (`modelscope.snapshot_download`,
  `huggingface_hub.snapshot_download`) at the pinned revision, into a download cache outside
  the bundle (they skip files they already have). Both are imported only when a stack uses
  them: they are online-machine tools, not runtime dependencies (`pip install modelscope`,
  `pip install huggingface_hub`). Their bookkeeping files (`.cache/`, `.msc`, `.mv`, ...)
  stay out of the bundle. Mirrors: the libraries' own settings (HF_ENDPOINT, MODELSCOPE_DOMAIN).
- local: a directory on this machine, copied as it is (symlinks followed).
- The Pulumi CLI and plugins: the release archives of get.pulumi.com (or a mirror, any URL
  urllib opens, file:// included) at the versions of the pinned Python packages, when no
  `--pulumi-dir` with a built toolchain is given.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from bundle.manifest import BundleError

# Top-level names the hub libraries write into a download directory for themselves.
HUB_BOOKKEEPING = frozenset({".cache", "._____temp", ".msc", ".mdl", ".mv", ".lock"})
HUB_PACKAGES = {"modelscope": "modelscope", "huggingface": "huggingface_hub"}
PULUMI_RELEASES = "https://get.pulumi.com/releases"


class FetchError(BundleError):
    """A download or copy that failed on the online machine (exit 1)."""


class SetupError(BundleError):
    """Something the operator must install or configure first (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Source:
    """A model directory's origin (the fields of the stack config's ModelSource)."""

    hub: str  # modelscope | huggingface | local
    id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[str] = None

    def describe(self) -> str:
        if self.hub == "local":
            return f"local {self.path}"
        return f"{self.hub} {self.id}@{self.revision or 'default'}"


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


# ---------------------------------------------------------------------------------------------
# Pulumi CLI and plugins


@dataclass(frozen=True)
class PulumiToolchain:
    """Where the CLI (and language host, maybe plugins) and the PULUMI_HOME-style plugins are."""

    bin_dir: Path
    plugins_dir: Optional[Path]


def locate_toolchain(directory: Path) -> PulumiToolchain:
    """``--pulumi-dir``: a bin dir holding `pulumi`, or a dir with bin/ (and maybe plugins/)."""
    directory = directory.expanduser()
    if (directory / "pulumi").is_file():
        bin_dir = directory
    elif (directory / "bin" / "pulumi").is_file():
        bin_dir = directory / "bin"
    else:
        raise SetupError(f"--pulumi-dir {directory}: no `pulumi` executable there or in its bin/ "
                         "(tools/pulumi-toolchain.sh prints the bin directory it built)")
    # tools/pulumi-toolchain.sh keeps plugins in <cache>/home/plugins (its PULUMI_HOME)
    for plugins in (bin_dir.parent / "plugins", bin_dir.parent / "home" / "plugins", directory / "plugins"):
        if plugins.is_dir():
            return PulumiToolchain(bin_dir, plugins)
    return PulumiToolchain(bin_dir, None)


def pulumi_versions() -> dict[str, str]:
    """{"cli": SDK version, "<plugin>": provider version} from the installed Python packages."""
    versions = {"cli": importlib.metadata.version("pulumi")}
    for name in ("docker", "command"):
        try:
            versions[name] = importlib.metadata.version(f"pulumi-{name}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def release_urls(versions: dict[str, str], base: str = PULUMI_RELEASES,
                 machine: Optional[str] = None) -> dict[str, str]:
    """{"cli" | plugin name: URL of its linux release archive}."""
    machine = (machine or platform.machine()).lower()
    arm = machine in ("aarch64", "arm64")
    cli_arch, plugin_arch = ("arm64", "arm64") if arm else ("x64", "amd64")
    urls = {"cli": f"{base}/sdk/pulumi-v{versions['cli']}-linux-{cli_arch}.tar.gz"}
    for name, version in versions.items():
        if name != "cli":
            urls[name] = f"{base}/plugins/pulumi-resource-{name}-v{version}-linux-{plugin_arch}.tar.gz"
    return urls


def download_toolchain(cache_root: Path, base: str = PULUMI_RELEASES, offline: bool = False,
                       machine: Optional[str] = None) -> PulumiToolchain:
    """The CLI into <cache>/pulumi/<key>/bin, plugins into .../plugins/resource-<name>-v<ver>/ (cached)."""
    versions = pulumi_versions()
    urls = release_urls(versions, base, machine)
    key = _safe("-".join(f"{k}{v}" for k, v in sorted(versions.items())) + "-" + (machine or platform.machine()))
    root = cache_root / "pulumi" / key
    done = root / "complete.json"
    if not done.is_file():
        if offline:
            raise FetchError(f"the Pulumi CLI {versions['cli']} is not in the download cache and --hub-offline "
                             "forbids downloading it; pass --pulumi-dir")
        shutil.rmtree(root, ignore_errors=True)
        for name, url in urls.items():
            dest = root / "bin" if name == "cli" else root / "plugins" / f"resource-{name}-v{versions[name]}"
            _download_and_extract(url, dest, cache_root)
        done.write_text(json.dumps(urls, indent=2) + "\n")
    return PulumiToolchain(root / "bin", root / "plugins")


def _download_and_extract(url: str, dest: Path, cache_root: Path) -> None:
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_root, prefix=".download-", suffix=".tar.gz") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - https or a given mirror
                shutil.copyfileobj(response, tmp, 1024 * 1024)
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"cannot download {url} ({exc}); pass --pulumi-dir with a built toolchain "
                             "(tools/pulumi-toolchain.sh) or --pulumi-url with a reachable mirror") from exc
        tmp.flush()
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(tmp.name, "r:*") as tar:
                for member in tar:
                    # Release archives hold pulumi/<binary> (CLI) or <binary> (plugins): take the regular
                    # files, flattened, by their base name only (nothing can land outside dest).
                    if not member.isreg():
                        continue
                    name = os.path.basename(member.name)
                    if not name or name.startswith("."):
                        continue
                    source = tar.extractfile(member)
                    assert source is not None
                    target = dest / name
                    with open(target, "wb") as handle:
                        shutil.copyfileobj(source, handle, 1024 * 1024)
                    os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
        except (tarfile.TarError, EOFError) as exc:
            raise FetchError(f"{url}: not a readable release archive ({exc})") from exc
