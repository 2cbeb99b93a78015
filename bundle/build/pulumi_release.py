"""The Pulumi CLI and plugins for a bundle: a built toolchain (`--pulumi-dir`), or the release
archives of the pinned versions, downloaded, checked against the release's published
checksums, and unpacked into the build cache.

Every archive is checked before a byte of it is unpacked: its sha256, taken while it
downloads, must equal the line for its file name in the release's checksums file (sha256sum
format, `<sha256>  <file name>`). The checksums come from, in this order:

- `--pulumi-checksums FILE` (the operator's own, e.g. copied from the release page);
- the release's checksums file: on GitHub for the default source (pulumi/pulumi publishes
  `pulumi-<v>-checksums.txt`, each provider `pulumi-<name>_<v>_checksums.txt`), or beside the
  archives on a mirror given by `--pulumi-url` (`sdk/pulumi-<v>-checksums.txt`,
  `plugins/pulumi-<name>_<v>_checksums.txt`: copy them there with the archives).

An archive with no checksum is refused, never taken on trust. A connection that fails, times
out, is cut short, or answers 5xx is retried (RETRY_DELAYS); a 4xx is not. The toolchain is
unpacked into a temp directory renamed into place only when every archive passed, so the cache
never holds half a toolchain.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from bundle.format.errors import FetchError, SetupError
from bundle.format.manifest import CHUNK_SIZE, write_atomic

PULUMI_RELEASES = "https://get.pulumi.com/releases"
GITHUB_RELEASES = "https://github.com"
RETRY_DELAYS = (1.0, 3.0)  # seconds before the 2nd and 3rd try
TIMEOUT_S = 60
_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](\S+)$")


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
                         "(tools/pulumi_toolchain.py prints the bin directory it built)")
    # tools/pulumi_toolchain.py keeps plugins in <cache>/home/plugins (its PULUMI_HOME)
    for plugins in (bin_dir.parent / "plugins", bin_dir.parent / "home" / "plugins", directory / "plugins"):
        if plugins.is_dir():
            return PulumiToolchain(bin_dir, plugins)
    return PulumiToolchain(bin_dir, None)


def toolchain_versions(toolchain: PulumiToolchain, downloaded: bool) -> dict[str, str]:
    """{executable name: version}: from the versions.txt tools/pulumi_toolchain.py writes beside bin/
    (component TAB version ...); a downloaded toolchain's are the pinned release versions; else none
    (unknown, never guessed)."""
    versions: dict[str, str] = {}
    try:
        lines = (toolchain.bin_dir.parent / "versions.txt").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split("\t")
        if not line.startswith("#") and len(fields) >= 2 and fields[1] not in ("", "-"):
            name = fields[0]
            versions["pulumi-resource-" + name[7:] if name.startswith("plugin-") else name] = fields[1].lstrip("v")
    if not versions and downloaded:
        pinned = pulumi_versions()
        versions = {"pulumi": pinned["cli"], "pulumi-language-python": pinned["cli"]}
        versions.update({f"pulumi-resource-{name}": v for name, v in pinned.items() if name != "cli"})
    return versions


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


def checksum_urls(versions: dict[str, str], base: str = PULUMI_RELEASES) -> dict[str, str]:
    """{"cli" | plugin name: URL of the checksums file its release publishes}."""
    if base == PULUMI_RELEASES:  # get.pulumi.com serves the archives; GitHub holds the checksums files
        urls = {"cli": f"{GITHUB_RELEASES}/pulumi/pulumi/releases/download/v{versions['cli']}/"
                       f"pulumi-{versions['cli']}-checksums.txt"}
        for name, version in versions.items():
            if name != "cli":
                urls[name] = (f"{GITHUB_RELEASES}/pulumi/pulumi-{name}/releases/download/v{version}/"
                              f"pulumi-{name}_{version}_checksums.txt")
        return urls
    urls = {"cli": f"{base}/sdk/pulumi-{versions['cli']}-checksums.txt"}
    for name, version in versions.items():
        if name != "cli":
            urls[name] = f"{base}/plugins/pulumi-{name}_{version}_checksums.txt"
    return urls


def parse_checksums(text: str, source: str) -> dict[str, str]:
    """{file name: sha256} of a sha256sum-format file; a line of any other shape is an error."""
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _CHECKSUM_LINE.match(line)
        if not match:
            raise FetchError(f"{source} line {number}: {line[:80]!r} is not `<sha256>  <file name>`")
        sums[os.path.basename(match.group(2))] = match.group(1).lower()
    return sums


def _with_retry(url: str, action):
    """``action(response)`` on ``url``, tried again after RETRY_DELAYS on a failure that may pass."""
    last: Exception | None = None
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            time.sleep(RETRY_DELAYS[attempt - 1])
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - https or a given mirror
                return action(response)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise FetchError(f"cannot download {url} (HTTP {exc.code} {exc.reason})") from exc
            last = exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, FileNotFoundError):  # file:// names no file: no retry helps
                raise FetchError(f"cannot download {url} ({exc.reason})") from exc
            last = exc
        except (OSError, EOFError) as exc:  # reset, timeout, IncompleteRead (http.client) ...
            last = exc
    raise FetchError(f"cannot download {url} after {len(RETRY_DELAYS) + 1} tries ({type(last).__name__}: {last})")


def _read_text(url: str) -> str:
    return _with_retry(url, lambda response: response.read(4 * 1024 * 1024).decode("utf-8", "replace"))


def _download_checked(url: str, expect_sha256: str, into: IO[bytes]) -> None:
    """Stream ``url`` into ``into`` (rewound on each try) and check its sha256 and length."""
    def fetch(response) -> None:
        into.seek(0)
        into.truncate()
        digest, size = hashlib.sha256(), 0
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        while chunk := response.read(CHUNK_SIZE):
            digest.update(chunk)
            into.write(chunk)
            size += len(chunk)
        if length is not None and length.isdigit() and size != int(length):
            raise EOFError(f"got {size} of {length} bytes")
        if digest.hexdigest() != expect_sha256:
            raise FetchError(f"{url}: sha256 {digest.hexdigest()} is not the published {expect_sha256}; "
                             "the archive is damaged or not the release: nothing was unpacked")
    _with_retry(url, fetch)
    into.flush()


def download_toolchain(cache_root: Path, base: str = PULUMI_RELEASES, offline: bool = False,
                       machine: Optional[str] = None, checksums_file: Optional[Path] = None) -> PulumiToolchain:
    """The CLI into <cache>/pulumi/<key>/bin, plugins into .../plugins/resource-<name>-v<ver>/ (cached)."""
    versions = pulumi_versions()
    urls = release_urls(versions, base, machine)
    key = re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(f"{k}{v}" for k, v in sorted(versions.items()))
                 + "-" + (machine or platform.machine()))
    root = cache_root / "pulumi" / key
    if (root / "complete.json").is_file():
        return PulumiToolchain(root / "bin", root / "plugins")
    if offline:
        raise FetchError(f"the Pulumi CLI {versions['cli']} is not in the download cache and --hub-offline "
                         "forbids downloading it; pass --pulumi-dir")
    given = parse_checksums(checksums_file.read_text(), f"--pulumi-checksums {checksums_file}") \
        if checksums_file is not None else {}
    hint = ("pass --pulumi-dir with a built toolchain (tools/pulumi_toolchain.py), --pulumi-url with a "
            "reachable mirror, or --pulumi-checksums FILE")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}.part-", dir=root.parent))
    try:
        published: dict[str, dict[str, str]] = {}
        for name, url in urls.items():
            file_name = url.rsplit("/", 1)[-1]
            expect = given.get(file_name)
            if expect is None:
                sums_url = checksum_urls(versions, base)[name]
                try:
                    sums = published.setdefault(sums_url, parse_checksums(_read_text(sums_url), sums_url))
                except FetchError as exc:
                    raise FetchError(f"{exc}: no checksum for {file_name}, so it is not downloaded; {hint}") from exc
                expect = sums.get(file_name)
                if expect is None:
                    raise FetchError(f"{sums_url} lists no {file_name}: it is not downloaded unchecked; {hint}")
            dest = work / "bin" if name == "cli" else work / "plugins" / f"resource-{name}-v{versions[name]}"
            with tempfile.NamedTemporaryFile(dir=work, prefix=".download-", suffix=".tar.gz") as tmp:
                try:
                    _download_checked(url, expect, tmp)
                except FetchError as exc:
                    raise FetchError(f"{exc}; {hint}") from exc
                _extract_binaries(Path(tmp.name), dest, url)
        write_atomic(work / "complete.json", (json.dumps(urls, indent=2) + "\n").encode())
        shutil.rmtree(root, ignore_errors=True)  # an older, unfinished one under the same key
        os.replace(work, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PulumiToolchain(root / "bin", root / "plugins")


def _extract_binaries(archive: Path, dest: Path, url: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
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
                    shutil.copyfileobj(source, handle, CHUNK_SIZE)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    except (tarfile.TarError, EOFError) as exc:
        raise FetchError(f"{url}: not a readable release archive ({exc})") from exc
