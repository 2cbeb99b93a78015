"""Build the Pulumi toolchain from Go modules into a cache reused across runs. The CLI is not a
binary on the package registries an air-gapped workflow can rely on; its Go modules are.

  usage: python3 tools/pulumi_toolchain.py [--cache DIR | --dir DIR] [--src NAME=PATH]...
                                           [--plugin-src DIR] [--check] [--venv DIR] [--force] [-h|--help]

Builds, each with its own stamp (a second run with everything built only prints the path):
  pulumi                        github.com/pulumi/pulumi/pkg/v3 cmd/pulumi, from the wrapper
                                module tools/pulumi-toolchain/ (pkg/v3 + sdk/v3, upstream replaces)
  pulumi-language-python        tools/pulumi-language-python/ (this repo's host: the upstream one
                                is a nested module the Go module proxy does not serve)
  pulumi-language-python-exec   } plain files of github.com/pulumi/pulumi/sdk/v3, copied next to
  pulumi-resource-pulumi-python } the CLI (the program runner, the dynamic provider launcher)
  resource plugins command 1.2.1 and docker 5.1.0 (what pulumi-command / pulumi-docker in
                                requirements.txt need), installed into <dir>/home/plugins at those
                                versions; each is built from, in this order: --src NAME=PATH, the
                                archive pulumi-NAME-v<version>.tar.gz of the --plugin-src folder
                                (unpacked, for docker patched, in <cache>/plugin-src/<sha256>/),
                                the Go module proxy (which does not serve them here); a plugin
                                that has no source or does not build is reported, the rest goes on

Output: the last line of stdout is the bin directory, so
    PATH="$(python3 tools/pulumi_toolchain.py | tail -1):$PATH"
or source <dir>/env.sh (PATH, PULUMI_HOME=<dir>/home, PULUMI_SKIP_UPDATE_CHECK=1).
<dir>/versions.txt lists each component, its version, its source and its build seconds.
Exit status: 0 when the CLI and the Python language host are there (plugins may be missing),
1 when either failed, 2 on a usage error.

Options:
  --cache DIR      cache root (default $XINFERENCE_OFFLINE_CACHE or ~/.cache/xinference-offline);
                   the toolchain goes to DIR/pulumi-v<version>
  --dir DIR        the toolchain directory itself (env PULUMI_TOOLCHAIN_DIR); wins over --cache
  --src NAME=PATH  build resource plugin NAME (command, docker) from a local source instead of
                   its archive and the module proxy: a git repository of the provider (its tag
                   v<version> is used) or a source tree (its provider/ directory or the provider
                   module itself); env PULUMI_TOOLCHAIN_SRC_COMMAND, PULUMI_TOOLCHAIN_SRC_DOCKER
  --plugin-src DIR the plugins' source archives (default: ../shared/plugin-src of the repo
                   root; env PULUMI_TOOLCHAIN_PLUGIN_SRC); a changed archive (sha256) rebuilds
  --check          then smoke-test: `pulumi version`, and `pulumi up` of a one-output Python
                   project on a file backend in a temp dir, with the virtualenv of --venv
  --venv DIR       virtualenv with the pulumi package for --check (default: this repo's venv/)
  --force          rebuild everything, retry plugins found unavailable before
  -h, --help       this text
A plugin found unavailable is not retried for a day (its reason is printed on every run).
Go: GOFLAGS=-mod=mod -buildvcs=false, CGO_ENABLED=0, -trimpath; the module cache is Go's own
(GOMODCACHE), so downloads persist between runs; the build cache is DIR/.go-build (unless
GOCACHE is set), removed once everything is built.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_entry import human, locked, recipe_digest, size_of, write_atomic  # noqa: E402
from pulumi_plugins import PLUGINS, PluginBuild, log  # noqa: E402

# --- pinned versions -----------------------------------------------------------------------------
PULUMI_SDK_TARGET = "3.272.0"  # requirements.txt: pulumi==3.272.0
# The proxy serves github.com/pulumi/pulumi/pkg/v3 at ... v3.252.0 v3.260.0 v3.274.1 only
# (v3.261.0-v3.274.0, v3.272.0 included, answer 403 "This module version is not available");
# v3.274.1 is the nearest served release to the SDK (a newer CLI runs older SDKs; sdk/v3 is
# served at v3.274.1 too, so CLI, SDK module and runner files all come from one release).
PULUMI_VERSION = "3.274.1"

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
WRAPPER = TOOLS / "pulumi-toolchain"  # the Go module the CLI is built from
LANGUAGE_HOST = TOOLS / "pulumi-language-python"
CLI_PACKAGE = "github.com/pulumi/pulumi/pkg/v3"
SDK_MODULE = f"github.com/pulumi/pulumi/sdk/v3@v{PULUMI_VERSION}"
SDK_FILES = ("python/cmd/pulumi-language-python-exec", "python/dist/pulumi-resource-pulumi-python")
# versions.txt's rows, in this order
COMPONENTS = ("pulumi", "pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python",
              *(f"plugin-{p.name}" for p in PLUGINS))
NOT_BUILT_HINT = "see the log of tools/pulumi_toolchain.py"


class BuildFailed(Exception):
    """A component of the CLI or the language host did not build (the message says why)."""


# --- stamps: one per component, holding the digest of what it was built from --------------------
@dataclass(frozen=True)
class Stamps:
    """<toolchain>/stamps: NAME holds the recipe a component was built from; NAME.line its row of
    versions.txt (also for a component that was not built, saying why)."""

    dir: Path
    force: bool = False

    def is_current(self, name: str, recipe: str, files: Sequence[Path]) -> bool:
        """Built from this recipe (and not --force), and its files are there, executable."""
        if self.force:
            return False
        try:
            if (self.dir / name).read_text().strip() != recipe:
                return False
        except OSError:
            return False
        return all(f.is_file() and os.access(f, os.X_OK) for f in files)

    def done(self, name: str, recipe: str, version: str, source: str, seconds: int) -> None:
        write_atomic(self.dir / f"{name}.line", f"{name}\t{version}\t{seconds}\t{source}\n")
        write_atomic(self.dir / name, recipe + "\n")

    def failed(self, name: str, version: str, source: str, reason: str) -> None:
        (self.dir / name).unlink(missing_ok=True)
        write_atomic(self.dir / f"{name}.line", f"{name}\t{version}\t-\t{source}: NOT BUILT: {reason}\n")

    def versions_text(self, root: Path, go_version: str) -> str:
        head = (f"# Pulumi toolchain built by tools/pulumi_toolchain.py in {root}\n"
                f"# target Python SDK pulumi=={PULUMI_SDK_TARGET}; CLI v{PULUMI_VERSION} (nearest "
                f"{CLI_PACKAGE} the Go module proxy serves); {go_version}\n"
                "# component\tversion\tbuild_seconds\tsource\n")
        rows = [(self.dir / f"{n}.line").read_text() for n in COMPONENTS if (self.dir / f"{n}.line").is_file()]
        return head + "".join(rows)


def module_replaces(go_mod_json: dict[str, Any]) -> list[str]:
    """The replace directives of `go mod edit -json` that point at modules (not at local
    directories), each as canonical JSON, sorted: what the wrapper must carry of upstream's."""
    out = []
    for replace in go_mod_json.get("Replace") or []:
        if not str(replace["New"]["Path"]).startswith("."):
            out.append(json.dumps(replace, sort_keys=True))
    return sorted(out)


def language_host_files(host_dir: Path) -> list[Path]:
    """What the Python language host is built from (its recipe): *.go, go.mod, go.sum, sorted."""
    if not host_dir.is_dir():
        return []
    return sorted((p for p in host_dir.iterdir()
                   if p.is_file() and (p.suffix == ".go" or p.name in ("go.mod", "go.sum"))), key=lambda p: str(p))


def env_sh(bin_dir: Path, home: Path) -> str:
    return ("# Source this to use the Pulumi toolchain built by tools/pulumi_toolchain.py\n"
            f'export PATH="{bin_dir}:$PATH"\n'
            f'export PULUMI_HOME="{home}"\n'
            "export PULUMI_SKIP_UPDATE_CHECK=1\n")


# --- the builds ----------------------------------------------------------------------------------
class Toolchain:
    def __init__(self, root: Path, cache_root: Path, force: bool):
        self.root, self.cache_root = root, cache_root
        self.bin, self.home = root / "bin", root / "home"
        self.stamps = Stamps(root / "stamps", force)
        for d in (self.bin, self.home, self.stamps.dir):
            d.mkdir(parents=True, exist_ok=True)
        self.own_gocache = not os.environ.get("GOCACHE")
        self.env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0",
                        GOCACHE=os.environ.get("GOCACHE") or str(root / ".go-build"),
                        PULUMI_HOME=str(self.home), PULUMI_SKIP_UPDATE_CHECK="1",
                        PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
                        PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        self.run_tmp = Path(tempfile.mkdtemp(prefix=".work.", dir=root))  # finished files are renamed from here

    def workdir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.run_tmp))

    def run(self, argv: Sequence[str], cwd: Path | None = None, log_to: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a go or pulumi command; its output to stderr (so the log shows go's errors) or to LOG_TO."""
        env = dict(self.env, **(extra_env or {}))
        if log_to is None:
            return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, text=True)
        with open(log_to, "w") as f:
            return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                  text=True)

    def capture(self, argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True)

    def module_download(self, ref: str) -> dict[str, str]:
        """`go mod download -json MODULE@VERSION`: its JSON (with "Error" when it is not served)."""
        proc = self.capture(["go", "mod", "download", "-json", ref], cwd=self.root)
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            doc = {"Error": (proc.stdout + proc.stderr).strip().replace("\n", " ") or f"go exited {proc.returncode}"}
        if proc.returncode != 0 and "Error" not in doc:
            doc["Error"] = proc.stderr.strip().replace("\n", " ")
        return {k: str(v) for k, v in doc.items()}

    def go_mod_json(self, go_mod: Path) -> dict[str, Any]:
        proc = self.capture(["go", "mod", "edit", "-json", str(go_mod)])
        if proc.returncode != 0:
            raise BuildFailed(f"go mod edit -json {go_mod} failed: {proc.stderr.strip()}")
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def step(self, name: str, recipe: str, files: Sequence[Path], version: str, source: str,
             build: Callable[[], None]) -> bool:
        """Build one component unless its stamp is current; a failure is logged and stamped."""
        if self.stamps.is_current(name, recipe, files):
            return True
        try:
            build()
            return True
        except BuildFailed as e:
            log(f"FAILED: {e}")
            self.stamps.failed(name, version, source, NOT_BUILT_HINT)
            return False

    # 1. the pulumi CLI
    def cli(self) -> bool:
        ldflags = f"-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v{PULUMI_VERSION}"
        files = [WRAPPER / n for n in ("go.mod", "go.sum", "tools.go")]
        recipe = recipe_digest(f"pulumi {PULUMI_VERSION} {ldflags}", files)
        source = f"{CLI_PACKAGE}@v{PULUMI_VERSION} cmd/pulumi"

        def build() -> None:
            started = time.time()
            work = self.workdir()
            for f in files:
                shutil.copy(f, work / f.name)
            # The wrapper must carry the upstream pkg/go.mod's replaces (other than its local ../sdk).
            got = self.module_download(f"{CLI_PACKAGE}@v{PULUMI_VERSION}")
            if "Error" in got:
                raise BuildFailed(f"{CLI_PACKAGE}@v{PULUMI_VERSION} is not served: {got['Error']}")
            upstream = module_replaces(self.go_mod_json(Path(got["GoMod"])))
            ours = module_replaces(self.go_mod_json(work / "go.mod"))
            if upstream != ours:
                raise BuildFailed("tools/pulumi-toolchain/go.mod does not carry the replace directives of the upstream "
                                  f"pkg/go.mod ({got['GoMod']}):\n  upstream: {' '.join(upstream)}\n  wrapper:  {' '.join(ours)}")
            log(f"building pulumi v{PULUMI_VERSION} ({source}; 10+ minutes on 2 cores with a cold Go build cache)")
            if self.run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(work / "pulumi"),
                         f"{CLI_PACKAGE}/cmd/pulumi"], cwd=work).returncode != 0:
                raise BuildFailed(f"the pulumi CLI ({source}) did not build (go's error above)")
            said = self.capture([str(work / "pulumi"), "version"])
            if said.returncode != 0 or said.stdout.strip() != f"v{PULUMI_VERSION}":
                raise BuildFailed(f"the built pulumi does not run as v{PULUMI_VERSION}: 'pulumi version' said: "
                                  f"{(said.stdout + said.stderr).strip()}")
            os.replace(work / "pulumi", self.bin / "pulumi")
            secs = int(time.time() - started)
            self.stamps.done("pulumi", recipe, f"v{PULUMI_VERSION}", f"{source} via tools/pulumi-toolchain/", secs)
            log(f"pulumi v{PULUMI_VERSION} built in {secs}s")

        return self.step("pulumi", recipe, [self.bin / "pulumi"], f"v{PULUMI_VERSION}", source, build)

    # 2. the Python language host
    def language_host(self) -> bool:
        ldflags = f"-s -w -X main.version={PULUMI_VERSION}"
        files = language_host_files(LANGUAGE_HOST)
        recipe = recipe_digest(f"pulumi-language-python {PULUMI_VERSION} {ldflags}", files)
        source = f"tools/pulumi-language-python (this repo; built against sdk/v3@v{PULUMI_VERSION})"

        def build() -> None:
            started = time.time()
            if not (LANGUAGE_HOST / "go.mod").is_file():
                raise BuildFailed(f"pulumi-language-python: {LANGUAGE_HOST}/go.mod is missing")
            work = self.workdir()
            for f in files:
                shutil.copy(f, work / f.name)
            log(f"building pulumi-language-python ({source})")
            if self.run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(work / "pulumi-language-python"), "."],
                        cwd=work).returncode != 0:
                raise BuildFailed("pulumi-language-python did not build (go's error above)")
            os.replace(work / "pulumi-language-python", self.bin / "pulumi-language-python")
            secs = int(time.time() - started)
            self.stamps.done("pulumi-language-python", recipe, PULUMI_VERSION, source, secs)
            log(f"pulumi-language-python built in {secs}s")

        return self.step("pulumi-language-python", recipe, [self.bin / "pulumi-language-python"], PULUMI_VERSION,
                         source, build)

    # 3. the SDK's plain files
    def sdk_files(self) -> bool:
        recipe = recipe_digest(f"sdk files {SDK_MODULE}")
        names = [Path(f).name for f in SDK_FILES]
        if all(self.stamps.is_current(n, recipe, [self.bin / n]) for n in names):
            return True
        started = time.time()
        got = self.module_download(SDK_MODULE)
        problem = f"{SDK_MODULE} is not served: {got['Error']}" if "Error" in got else None
        for file in SDK_FILES:
            if problem is None and not (Path(got["Dir"]) / file).is_file():
                problem = f"{SDK_MODULE} has no {file}"
        if problem:
            log(f"FAILED: {problem}")
            for n in names:
                self.stamps.failed(n, f"v{PULUMI_VERSION}", SDK_MODULE, NOT_BUILT_HINT)
            return False
        work = self.workdir()
        for file, name in zip(SDK_FILES, names, strict=True):
            shutil.copyfile(Path(got["Dir"]) / file, work / name)
            os.chmod(work / name, 0o755)
            os.replace(work / name, self.bin / name)
            self.stamps.done(name, recipe, f"v{PULUMI_VERSION}", f"{SDK_MODULE} {file}", int(time.time() - started))
        log(f"copied {' and '.join(names)} from {SDK_MODULE}")
        return True

    # 5. --check: the CLI runs a Python program end to end
    def smoke_test(self, venv: Path) -> bool:
        said = self.capture(["pulumi", "version"])
        if said.returncode != 0 or said.stdout.strip() != f"v{PULUMI_VERSION}":
            log(f"CHECK FAILED: 'pulumi version' said: {(said.stdout + said.stderr).strip()}")
            return False
        python = venv / "bin" / "python"
        if not os.access(python, os.X_OK) or subprocess.run([str(python), "-c", "import pulumi"],
                                                              capture_output=True).returncode != 0:
            log(f"CHECK FAILED: {venv} is not a virtualenv with the pulumi package (--venv DIR)")
            return False
        tmp = self.workdir()
        project, state, home = tmp / "project", tmp / "state", tmp / "home"
        for d in (project, state, home):
            d.mkdir()
        (project / "Pulumi.yaml").write_text("name: toolchain-smoke\nruntime:\n  name: python\n  options:\n"
                                             f"    toolchain: pip\n    virtualenv: {venv.resolve()}\n")
        (project / "__main__.py").write_text('import pulumi; pulumi.export("x", 1)\n')
        env = dict(self.env, PULUMI_HOME=str(home), PULUMI_CONFIG_PASSPHRASE="x", CI="true")
        script = (f'pulumi login "file://{state}" && pulumi stack init test && '
                  "pulumi up --yes --non-interactive --skip-preview && pulumi stack output x")
        proc = subprocess.run(["sh", "-c", script], cwd=project, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or proc.stdout.strip().splitlines()[-1:] != ["1"]:
            log(f"CHECK FAILED: pulumi up of a one-output Python project ({project}):")
            print("".join(f"    {line}\n" for line in proc.stdout.splitlines()), file=sys.stderr, end="")
            return False
        log(f"check: pulumi v{PULUMI_VERSION} ran a Python program (pulumi up, stack output x = 1)")
        return True

    def finish(self, ok: bool) -> None:
        go_version = self.capture(["go", "env", "GOVERSION"]).stdout.strip()
        write_atomic(self.root / "versions.txt", self.stamps.versions_text(self.root, go_version))
        write_atomic(self.root / "env.sh", env_sh(self.bin, self.home))
        gocache = Path(self.env["GOCACHE"])
        if ok and self.own_gocache and gocache.is_dir():
            log(f"removing the Go build cache {gocache} ({human(size_of(gocache))}): everything is built")
            shutil.rmtree(gocache, ignore_errors=True)


# --- the command line ----------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        log(f"{message} (see --help)")
        raise SystemExit(2)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = Parser(prog="tools/pulumi_toolchain.py", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--src", action="append", default=[])
    parser.add_argument("--plugin-src", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--venv", type=Path, default=REPO / "venv")
    parser.add_argument("--force", action="store_true")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unknown argument '{unknown[0]}'")
    sources = {p.name: os.environ.get(f"PULUMI_TOOLCHAIN_SRC_{p.name.upper()}", "") for p in PLUGINS}
    for value in args.src:
        name, _, path = value.partition("=")
        if name not in sources or not path:
            parser.error(f"--src wants {' or '.join(f'{n}=PATH' for n in sources)}, not '{value}'")
        sources[name] = path
    args.sources = {name: Path(path) if path else None for name, path in sources.items()}
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    if args.help:
        print(__doc__, end="")
        return 0
    if shutil.which("go") is None:
        log("Go is not installed (the 'go' command is not on PATH): the Pulumi CLI cannot be built here")
        return 1
    cache_root = (args.cache or Path(os.environ.get("XINFERENCE_OFFLINE_CACHE")
                                     or Path.home() / ".cache" / "xinference-offline")).absolute()
    root = args.dir or (None if args.cache else os.environ.get("PULUMI_TOOLCHAIN_DIR")) \
        or cache_root / f"pulumi-v{PULUMI_VERSION}"
    root = Path(root).absolute()
    plugin_src = Path(args.plugin_src or os.environ.get("PULUMI_TOOLCHAIN_PLUGIN_SRC")
                      or REPO.parent / "shared" / "plugin-src").absolute()
    root.mkdir(parents=True, exist_ok=True)
    # One run at a time per toolchain directory (CI and a test may both call this).
    with locked(root / ".lock", f"another run is building in {root}; waiting for it", log):
        for left in root.glob(".work.*"):  # left by an interrupted run (never renamed into place)
            shutil.rmtree(left, ignore_errors=True)
        chain = Toolchain(root, cache_root, args.force)
        try:
            ok = chain.cli()
            ok = chain.language_host() and ok
            ok = chain.sdk_files() and ok
            if (chain.bin / "pulumi").is_file():
                for pin in PLUGINS:
                    PluginBuild(chain, pin, args.sources[pin.name], plugin_src).run()
            else:
                log("resource plugins skipped: they are installed with the pulumi CLI, which is missing")
            if ok and args.check:
                ok = chain.smoke_test(args.venv)
            chain.finish(ok)
        finally:
            shutil.rmtree(chain.run_tmp, ignore_errors=True)
    missing = (root / "versions.txt").read_text().count("NOT BUILT")
    if missing:
        log(f"{missing} component(s) not built: see {root}/versions.txt")
    if not ok:
        return 1
    print(chain.bin)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
