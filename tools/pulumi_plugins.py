"""The resource plugins of the Pulumi toolchain (tools/pulumi_toolchain.py): their pins, where each
is built from (--src, else its source archive, else the Go module proxy), the day-long memory of
a plugin found unavailable, and the build: go build, the schema it serves, pulumi plugin install.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_entry import Entry, recipe_digest, write_atomic  # noqa: E402

if TYPE_CHECKING:
    from pulumi_toolchain import Toolchain

def log(message: str) -> None:
    print(f"pulumi-toolchain: {message}", file=sys.stderr, flush=True)


RETRY_AFTER_S = 24 * 3600  # a plugin found unavailable from the same place is not tried again before


@dataclass(frozen=True)
class PluginPin:
    """A resource plugin at the version its Python SDK (requirements.txt) asks the engine for."""

    name: str
    version: str
    module: str  # the provider's Go module
    package: str  # its main package, in the module
    # the module versions to ask the proxy for: the provider modules live in the provider/
    # directory of their repositories, which tag only v<ver> and sdk/v<ver>, never
    # provider/v<ver>; so besides the version itself, the pseudo-version of the commit tagged v<ver>
    refs: tuple[str, ...]
    build_minutes: int  # from the archive with an empty Go build cache, modules downloaded, 2 cores

    @property
    def version_var(self) -> str:
        return f"{self.module}/pkg/version.Version"

    @property
    def archive_name(self) -> str:
        return f"pulumi-{self.name}-v{self.version}.tar.gz"

    @property
    def stamp(self) -> str:
        return f"plugin-{self.name}"


# Measured on 2 cores: command 171 s; docker 134 s for generate.go + 187 s.
PLUGINS = (
    # pulumi-command==1.2.1; v1.2.1 is commit 7f3eb6f3b77c, 2026-03-03T23:59:22Z
    PluginPin("command", "1.2.1", "github.com/pulumi/pulumi-command/provider", "cmd/pulumi-resource-command",
              ("v1.2.1", "v0.0.0-20260303235922-7f3eb6f3b77c"), 3),
    # pulumi-docker==5.1.0 (../shared/plugin-src has no 5.2.0 source)
    PluginPin("docker", "5.1.0", "github.com/pulumi/pulumi-docker/provider/v5", "cmd/pulumi-resource-docker",
              ("v5.1.0",), 5),
)


class PluginUnavailable(Exception):
    """The plugin has no source here, or its source does not build (the message says which)."""


# --- pure parts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginSource:
    """Where a plugin is built from: "src" (a checkout or tree), "archive" (a source archive), or
    "proxy" (the Go module proxy, at each of the pin's refs)."""

    kind: str
    path: Path | None = None


def choose_source(pin: PluginPin, src: Path | None, plugin_src: Path) -> PluginSource:
    """--src first, then the archive of the --plugin-src folder, then the module proxy."""
    if src is not None:
        return PluginSource("src", src)
    archive = plugin_src / pin.archive_name
    if archive.is_file():
        return PluginSource("archive", archive)
    return PluginSource("proxy")


def plugin_recipe(pin: PluginPin, archive_sha256: str | None) -> str:
    """What the plugin's stamp holds: its pin, and the archive's digest (a changed archive rebuilds)."""
    text = f"plugin {pin.name} {pin.version} {pin.module} {pin.package} {pin.version_var}"
    return recipe_digest(text + (f" archive sha256 {archive_sha256}" if archive_sha256 else ""))


@dataclass(frozen=True)
class FailureRecord:
    """<stamps>/plugin-NAME.unavailable: the attempt (a digest of the recipe and the source) on its
    first line, why it failed on the rest. The same attempt is not tried again for a day."""

    path: Path

    def still_valid(self, attempt: str, now: float) -> tuple[float, str] | None:
        """(when found, the reason) while the same attempt failed less than a day ago; else None."""
        try:
            first, _, reason = self.path.read_text().partition("\n")
            found = self.path.stat().st_mtime
        except OSError:
            return None
        if first != attempt or now - found > RETRY_AFTER_S:
            return None
        return found, " ".join(reason.split("\n")).strip()

    def record(self, attempt: str, reason: str) -> None:
        write_atomic(self.path, f"{attempt}\n{reason}\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def go_errors(text: str) -> str:
    """The first lines of a go command's error output, on one line."""
    lines = [line for line in text.splitlines() if not line.startswith("#") and not line.startswith("go: downloading ")]
    return " ".join(lines[:15])


def declares_variable(package_dir: Path, variable: str) -> bool:
    """Whether a .go file of the package declares VARIABLE (-ldflags -X on one that does not
    exist is silently ignored)."""
    pattern = re.compile(rf"^\s*(var\s+)?{re.escape(variable)}\s+(=|string)", re.M)
    return any(pattern.search(f.read_text(errors="replace")) for f in sorted(package_dir.glob("*.go")))


def listed(plugin_ls: str, name: str, version: str) -> bool:
    """Whether `pulumi plugin ls` lists NAME resource VERSION."""
    return any(line.split()[:3] == [name, "resource", version] for line in plugin_ls.splitlines())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the build -----------------------------------------------------------------------------------
class PluginBuild:
    def __init__(self, chain: Toolchain, pin: PluginPin, src: Path | None, plugin_src: Path):
        self.chain, self.pin, self.src = chain, pin, src
        self.source = choose_source(pin, src, plugin_src)
        self.plugin_dir = chain.home / "plugins" / f"resource-{pin.name}-v{pin.version}"
        self.binary_name = f"pulumi-resource-{pin.name}"
        self.name = f"plugin {pin.name} v{pin.version}"  # how the log names it

    def run(self) -> None:
        pin, stamps = self.pin, self.chain.stamps
        digest = sha256_of(self.source.path) if self.source.kind == "archive" and self.source.path else None
        recipe = plugin_recipe(pin, digest)
        if stamps.is_current(pin.stamp, recipe, [self.plugin_dir / self.binary_name]):
            return
        # Found unavailable from the same place: not retried for a day (a new --src or archive is tried at once).
        src = f"{self.src.absolute()} {self.src_identity()}" if self.src else ""
        attempt = recipe_digest(f"{recipe} {' '.join(pin.refs)} src={src}")
        failures = FailureRecord(stamps.dir / f"{pin.stamp}.unavailable")
        found = None if stamps.force else failures.still_valid(attempt, time.time())
        if found:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found[0]))
            log(f"{self.name}: NOT BUILT (found {when}; --force retries): {found[1]}")
            return
        started = time.time()
        try:
            label, moddir = self.fetch(digest)
            self.build(label, moddir)
        except PluginUnavailable as e:
            log(f"{self.name}: NOT BUILT: {e}")
            failures.record(attempt, str(e))
            stamps.failed(pin.stamp, f"v{pin.version}", pin.module, str(e))
            return
        failures.clear()
        secs = int(time.time() - started)
        stamps.done(pin.stamp, recipe, f"v{pin.version}", f"{label} -> {self.plugin_dir}", secs)
        log(f"{self.name} built and installed in {secs}s")

    def src_identity(self) -> str:
        """What a local source is, for the attempt: a git commit, or a digest of its go.mod/go.sum."""
        assert self.src is not None
        if self.git("rev-parse", "--git-dir").returncode == 0:
            commit = self.git("rev-parse", "-q", "--verify", f"v{self.pin.version}^{{commit}}")
            return "git " + (commit.stdout.strip() if commit.returncode == 0 else f"no-v{self.pin.version}")
        files = [self.src / "provider" / "go.mod", self.src / "provider" / "go.sum", self.src / "go.mod", self.src / "go.sum"]
        return recipe_digest("", [f for f in files if f.is_file()])

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(self.src), *args], capture_output=True, text=True)

    # --- where the source comes from
    def fetch(self, digest: str | None) -> tuple[str, Path]:
        """(what the source is, for versions.txt; the provider module's directory in a work dir)."""
        pin, work = self.pin, self.chain.workdir()
        if self.source.kind == "src":
            assert self.src is not None
            try:
                return f"{pin.module} from {self.src} (tag v{pin.version})", self.src_tree(work)
            except PluginUnavailable as e:
                raise PluginUnavailable(f"--src {pin.name}={self.src}: {e}") from None
        if self.source.kind == "archive":
            archive = self.source.path
            assert archive is not None and digest is not None
            try:
                tree = self.archive_tree(archive, digest, work / "tree")
            except PluginUnavailable as e:
                raise PluginUnavailable(f"{archive}: {e}") from None
            moddir = self.module_dir(tree)
            if moddir is None:
                raise PluginUnavailable(f"{archive} (sha256 {digest}) holds no module {pin.module} "
                                        "(looked at provider/go.mod and go.mod)")
            return f"{pin.module} from {archive} (sha256 {digest})", moddir
        reasons = []
        for ref in pin.refs:
            got = self.chain.module_download(f"{pin.module}@{ref}")
            if "Error" in got:
                reasons.append(f"{pin.module}@{ref} is not served: {got['Error']}")
                continue
            try:
                copy_tree(Path(got.get("Dir", "")), work / "src")
            except OSError:
                reasons.append(f"{pin.module}@{ref} was downloaded but its source could not be copied from "
                               f"'{got.get('Dir', '')}'")
                continue
            return f"{pin.module}@{ref}", work / "src"
        raise PluginUnavailable("; ".join(reasons))

    def src_tree(self, work: Path) -> Path:
        """The provider module of --src (a git checkout at the tag v<version>, or a source tree)."""
        assert self.src is not None
        path, tag = self.src, f"v{self.pin.version}"
        if not path.exists():
            raise PluginUnavailable(f"{path} does not exist")
        if self.git("rev-parse", "--git-dir").returncode == 0:
            if self.git("rev-parse", "-q", "--verify", f"{tag}^{{commit}}").returncode != 0:
                raise PluginUnavailable(f"the git repository {path} has no tag {tag}")
            checkout = work / "git"
            checkout.mkdir()
            archive = subprocess.run(["git", "-C", str(path), "archive", tag], capture_output=True)
            if archive.returncode != 0 or subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout,
                                                         capture_output=True).returncode != 0:
                raise PluginUnavailable(f"git archive {tag} failed in {path}")
            path = checkout
        moddir = self.module_dir(path)
        if moddir is None:
            raise PluginUnavailable(f"{path} holds no module {self.pin.module} (looked at provider/go.mod and go.mod)")
        copy_tree(moddir, work / "src")
        return work / "src"

    def archive_tree(self, archive: Path, digest: str, dest: Path) -> Path:
        """The archive's source tree, copied to DEST from <cache>/plugin-src/<sha256>/, where it is
        unpacked once (a cache entry), the patches/ of a bridged provider applied to its upstream/."""
        entry = Entry(self.chain.cache_root / "plugin-src" / digest, digest, stamp=".unpacked")

        def unpack(into: Path) -> None:
            log(f"unpacking {archive.name} (sha256 {digest}) into {into}")
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(into, filter="data")
            except (OSError, tarfile.TarError) as e:
                raise PluginUnavailable(f"it could not be unpacked: {e}") from None
            for top in sorted(p for p in into.iterdir() if (p / "patches").is_dir() and (p / "upstream").is_dir()):
                for patch in sorted((top / "patches").glob("*.patch")):
                    log(f"  applying patches/{patch.name} to upstream/ (patch -p1)")
                    with open(patch) as f:
                        done = subprocess.run(["patch", "-p1", "--forward", "--batch"], cwd=top / "upstream", stdin=f,
                                              capture_output=True, text=True)
                    if done.returncode != 0:
                        said = " ".join((done.stdout + done.stderr).splitlines()[-5:])
                        raise PluginUnavailable(f"patches/{patch.name} does not apply to upstream/: {said}")

        entry.path.parent.mkdir(parents=True, exist_ok=True)
        entry.ensure(unpack)
        tops = [p for p in entry.path.iterdir() if p.name not in (".unpacked", "last-used")]
        top = tops[0] if len(tops) == 1 and tops[0].is_dir() else entry.path
        copy_tree(top, dest)
        return dest

    def module_dir(self, tree: Path) -> Path | None:
        """The directory of TREE (provider/, or TREE itself) that is the provider module."""
        for sub in ("provider", "."):
            go_mod = tree / sub / "go.mod"
            if go_mod.is_file():
                module = self.chain.go_mod_json(go_mod).get("Module") or {}
                if module.get("Path") == self.pin.module:
                    return (tree / sub).resolve()
        return None

    # --- the build itself
    def build(self, label: str, moddir: Path) -> None:
        pin, chain, work = self.pin, self.chain, self.chain.workdir()
        version_pkg, _, variable = pin.version_var.rpartition(".")
        if not version_pkg.startswith(pin.module + "/") or \
                not declares_variable(moddir / version_pkg.removeprefix(pin.module + "/"), variable):
            raise PluginUnavailable(f"{label} declares no variable {variable} in package {version_pkg} (for -ldflags -X)")
        # A bridged provider embeds its schema (with the version in it), which its generate.go writes.
        cmd_dir = moddir / pin.package
        main_go = cmd_dir / "main.go"
        if (cmd_dir / "generate.go").is_file() and not (cmd_dir / "schema-embed.json").is_file() \
                and main_go.is_file() and "schema-embed.json" in main_go.read_text(errors="replace"):
            log(f"{self.name}: writing {pin.package}/schema-embed.json (VERSION={pin.version} go run generate.go; "
                     "about 2 minutes with a cold Go build cache)")
            done = chain.run(["go", "run", "-trimpath", "generate.go"], cwd=cmd_dir, log_to=work / "generate.log",
                             extra_env={"VERSION": pin.version})
            schema = cmd_dir / "schema-embed.json"
            if done.returncode != 0 or not schema.is_file() or schema.stat().st_size == 0:
                raise PluginUnavailable(f"{label}: VERSION={pin.version} go run generate.go failed: "
                                        f"{go_errors((work / 'generate.log').read_text(errors='replace'))}")
        note = (f" (about {pin.build_minutes} minutes on 2 cores with a cold Go build cache, more if Go must download "
                "modules)") if self.source.kind == "archive" else ""
        log(f"building {self.name} from {label}{note}")
        # Built inside the provider module itself, so its own go.mod (with its replace directives) applies.
        binary = work / self.binary_name
        if chain.run(["go", "build", "-trimpath", "-ldflags", f"-s -w -X {pin.version_var}={pin.version}",
                      "-o", str(binary), f"./{pin.package}"], cwd=moddir, log_to=work / "build.log").returncode != 0:
            raise PluginUnavailable(f"{label} does not build: {go_errors((work / 'build.log').read_text(errors='replace'))}")
        self.check_schema(binary)
        log(f"{self.name}: installing into {self.plugin_dir} "
            f"(pulumi plugin install resource {pin.name} {pin.version} --file ...)")
        installed = chain.capture(["pulumi", "plugin", "install", "resource", pin.name, pin.version, "--file", str(binary),
                               "--reinstall"])
        if installed.returncode != 0:
            raise PluginUnavailable(f"pulumi plugin install failed: {(installed.stdout + installed.stderr).strip()}")
        ls = chain.capture(["pulumi", "plugin", "ls"])
        if ls.returncode != 0 or not listed(ls.stdout, pin.name, pin.version) \
                or not (self.plugin_dir / self.binary_name).is_file():
            raise PluginUnavailable(f"installed, but 'pulumi plugin ls' does not list {pin.name} resource {pin.version} "
                                    f"(or {self.plugin_dir}/{self.binary_name} is missing): "
                                    f"{' '.join((ls.stdout + ls.stderr).splitlines())}")

    def check_schema(self, binary: Path) -> None:
        """The binary runs and says what it is: the schema it serves names this plugin at this version."""
        got = self.chain.capture(["pulumi", "package", "get-schema", str(binary)])
        try:
            schema = json.loads(got.stdout) if got.returncode == 0 else {}
        except ValueError:
            schema = {}
        name, version = schema.get("name"), schema.get("version")
        if name != self.pin.name or version != self.pin.version:
            raise PluginUnavailable(f"the built binary does not serve a schema of {self.pin.name} {self.pin.version} "
                                    f"(pulumi package get-schema: name '{name or ''}', version '{version or ''}'; "
                                    f"{' '.join(got.stderr[:600].splitlines())})")


def copy_tree(source: Path, dest: Path) -> None:
    """A writable copy (module cache files are read-only)."""
    shutil.copytree(source, dest, symlinks=True)
    for path in (dest, *dest.rglob("*")):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
