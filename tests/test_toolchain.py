"""tools/pulumi_toolchain.py: the Pulumi CLI, the Python language host and the resource plugins
built from Go modules (the plugins from the source archives of ../shared/plugin-src) into a cache.

The pure parts (recipes, stamps, the memory of failures, the choice of a plugin's source) are
unit-tested first, in the fast tier. The cold build (10+ minutes on 2 cores, and as much again
for the plugins) is done by tools/test.sh before pytest; the e2e tests run the program against
that cache, where it must answer in seconds.
Each test drives the real binaries: the CLI reports the pinned version, runs a Python program end
to end through the language host, and lists the resource plugins at the versions the Python SDKs
ask for, each of which serves that version over gRPC. Where the plugin source archives are absent
(a machine without ../shared/plugin-src), a plugin the script reports as not built is a skip that
carries the script's own reason, never a pass.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import pulumi_plugins  # noqa: E402
import pulumi_toolchain  # noqa: E402
from pulumi_plugins import FailureRecord, PluginSource, choose_source, plugin_recipe  # noqa: E402
from pulumi_toolchain import Stamps  # noqa: E402

SCRIPT = ROOT / "tools" / "pulumi_toolchain.py"
PINNED = pulumi_toolchain.PULUMI_VERSION
PLUGINS = {p.name: p.version for p in pulumi_plugins.PLUGINS}  # name -> version, as pinned
MODULES = {p.name: p.module for p in pulumi_plugins.PLUGINS}  # name -> the provider's Go module
# the plugins' source archives, where the script looks for them by default
PLUGIN_SRC = Path(os.environ.get("PULUMI_TOOLCHAIN_PLUGIN_SRC") or ROOT.parent / "shared" / "plugin-src")
CACHE_ROOT = Path(os.environ.get("XINFERENCE_OFFLINE_CACHE") or Path.home() / ".cache" / "xinference-offline")
BUILD_TIMEOUT = 3600  # only when the cache is cold (tools/test.sh builds it before pytest)

needs_go = pytest.mark.skipif(shutil.which("go") is None,
                              reason="Go is not installed: the Pulumi CLI cannot be built from its Go modules here")


def e2e(test):
    """Runs the real program against the built toolchain (tools/test.sh builds it first)."""
    return pytest.mark.e2e(needs_go(test))


def run_script(*args: str, timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true")
    return subprocess.run([sys.executable, str(SCRIPT), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=env)


class Toolchain:
    def __init__(self, bin_dir: Path, stderr: str):
        self.bin = bin_dir
        self.root = bin_dir.parent
        self.home = self.root / "home"
        self.stderr = stderr

    def env(self, **extra: str) -> dict:
        env = dict(os.environ, PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                   PULUMI_HOME=str(self.home), PULUMI_SKIP_UPDATE_CHECK="1", CI="true")
        env.update(extra)
        return env

    def pulumi(self, *args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "pulumi"), *args], cwd=cwd, env=env or self.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def versions(self) -> dict[str, list[str]]:
        """versions.txt: component -> [version, build_seconds, source]."""
        rows = {}
        for line in (self.root / "versions.txt").read_text().splitlines():
            if line and not line.startswith("#"):
                name, *rest = line.split("\t")
                rows[name] = rest
        return rows


@pytest.fixture(scope="module")
def toolchain() -> Toolchain:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: the Pulumi CLI cannot be built from its Go modules here")
    result = run_script()
    assert result.returncode == 0, f"tools/pulumi_toolchain.py failed:\n{result.stderr[-6000:]}"
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (bin_dir / "pulumi").is_file(), f"last stdout line is not the bin dir: {result.stdout!r}"
    return Toolchain(bin_dir, result.stderr)


def test_help_needs_nothing():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "usage: python3 tools/pulumi_toolchain.py" in result.stdout
    assert "--cache DIR" in result.stdout and "--src NAME=PATH" in result.stdout
    for args, said in ((["--no-such-flag"], "unknown argument '--no-such-flag'"),
                       (["--src", "kubernetes=/x"], "--src wants command=PATH or docker=PATH, not 'kubernetes=/x'"),
                       (["--src", "command="], "--src wants command=PATH or docker=PATH, not 'command='")):
        bad = subprocess.run([sys.executable, str(SCRIPT), *args], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and said in bad.stderr, (args, bad.stderr)


@e2e
def test_cli_reports_the_pinned_version(toolchain):
    result = toolchain.pulumi("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"v{PINNED}"
    # the CLI is the nearest release the Go module proxy serves, never older than the Python SDK
    sdk = importlib.metadata.version("pulumi")
    as_tuple = lambda v: tuple(int(x) for x in v.split(".")[:3])  # noqa: E731
    assert as_tuple(PINNED) >= as_tuple(sdk), f"CLI v{PINNED} is older than the Python SDK {sdk}"


@e2e
def test_language_host_and_runner_sit_next_to_the_cli(toolchain):
    for name in ("pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python"):
        path = toolchain.bin / name
        assert path.is_file() and os.access(path, os.X_OK), f"{path} is missing or not executable"
    # the language host answers the engine (it prints its gRPC port, then serves until killed)
    host = subprocess.Popen([str(toolchain.bin / "pulumi-language-python"), "127.0.0.1:1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = host.stdout.readline().strip()
        assert port.isdigit() and int(port) > 0, f"pulumi-language-python printed {port!r}"
    finally:
        host.kill()
        host.wait(timeout=10)


@e2e
def test_versions_file_and_env_file(toolchain):
    rows = toolchain.versions()
    for name in ("pulumi", "pulumi-language-python", "pulumi-language-python-exec",
                 "pulumi-resource-pulumi-python", "plugin-command", "plugin-docker"):
        assert name in rows, f"versions.txt has no line for {name}"
    version, seconds, source = rows["pulumi"]
    assert version == f"v{PINNED}" and seconds.isdigit() and "github.com/pulumi/pulumi/pkg/v3" in source
    env_sh = (toolchain.root / "env.sh").read_text()
    assert f'export PATH="{toolchain.bin}:$PATH"' in env_sh
    assert f'export PULUMI_HOME="{toolchain.home}"' in env_sh
    assert "export PULUMI_SKIP_UPDATE_CHECK=1" in env_sh


@e2e
def test_pulumi_up_runs_a_python_program(toolchain, tmp_path):
    """The CLI finds the language host, which runs the program with the project's virtualenv."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a virtualenv (Pulumi.yaml's pip toolchain needs one)")
    project, state, home = tmp_path / "project", tmp_path / "state", tmp_path / "home"
    for d in (project, state, home):
        d.mkdir()
    (project / "Pulumi.yaml").write_text(
        "name: toolchain-smoke\nruntime:\n  name: python\n  options:\n"
        f"    toolchain: pip\n    virtualenv: {sys.prefix}\n")
    (project / "__main__.py").write_text('import pulumi\npulumi.export("x", 1)\n')
    # a private PULUMI_HOME: `pulumi login` must not change the toolchain home's backend
    env = toolchain.env(PULUMI_HOME=str(home), PULUMI_CONFIG_PASSPHRASE="x")
    for args in (("login", f"file://{state}"), ("stack", "init", "test"),
                 ("up", "--yes", "--non-interactive", "--skip-preview")):
        result = toolchain.pulumi(*args, cwd=project, env=env, timeout=300)
        assert result.returncode == 0, f"pulumi {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    result = toolchain.pulumi("stack", "output", "x", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def archive_of(name: str) -> Path:
    """The source archive the script builds plugin NAME from, when it is there."""
    return PLUGIN_SRC / f"pulumi-{name}-v{PLUGINS[name]}.tar.gz"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sdk_version(name: str) -> str:
    """The plugin version the installed Python SDK (pulumi-NAME) asks the engine for."""
    return importlib.metadata.version(f"pulumi_{name}")


def plugin_info_version(binary: Path, timeout: float = 60) -> str:
    """Start a resource plugin as the engine does (it prints its gRPC port) and ask it
    GetPluginInfo: the version the binary itself reports."""
    import grpc
    from google.protobuf import empty_pb2
    from pulumi.runtime.proto import provider_pb2_grpc

    proc = subprocess.Popen([str(binary)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        port = first_line[0].strip() if first_line else ""
        assert port.isdigit(), f"{binary} printed {port!r} instead of its gRPC port"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = provider_pb2_grpc.ResourceProviderStub(channel).GetPluginInfo(empty_pb2.Empty(), timeout=timeout)
        return info.version
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_plugin_pins_match_the_python_sdks():
    """The script builds each plugin at the version its Python SDK asks for, and requirements.txt
    pins that SDK (there is no pulumi-docker 5.2.0 source, so both say 5.1.0)."""
    requirements = (ROOT / "requirements.txt").read_text()
    for name, version in PLUGINS.items():
        assert re.search(rf"^pulumi-{name}=={re.escape(version)}$", requirements, re.M), \
            f"requirements.txt does not pin pulumi-{name}=={version} (the pin in tools/pulumi_plugins.py)"
        assert sdk_version(name) == version, \
            f"the installed pulumi-{name} is {sdk_version(name)}, the script builds plugin {name} v{version}: run tools/setup.sh"


@e2e
@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_resource_plugin_is_installed(toolchain, name):
    version = sdk_version(name)
    row = toolchain.versions()[f"plugin-{name}"]
    archive = archive_of(name)
    from_archive = archive.is_file() and not os.environ.get(f"PULUMI_TOOLCHAIN_SRC_{name.upper()}")
    if from_archive:
        # the archive is there: the plugin must be built from it, there is no reason to skip
        assert "NOT BUILT" not in row[2], f"plugin {name} was not built from {archive}: {row[2]}"
        assert row[0] == f"v{version}" and row[1].isdigit(), row
        digest = sha256_of(archive)
        # the same archive by content (a cache built from another checkout names its own path to it)
        assert f"/{archive.name} (sha256 {digest})" in row[2], row[2]
        # unpacked into the cache (never into the project), keyed by its digest
        assert (CACHE_ROOT / "plugin-src" / digest / ".unpacked").is_file()
    elif "NOT BUILT" in row[2]:
        pytest.skip(f"no source archive {archive}, and tools/pulumi_toolchain.py did not build the {name} plugin: {row[2]}")
    result = toolchain.pulumi("plugin", "ls")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[:3] for line in result.stdout.splitlines() if line.strip()]
    assert [name, "resource", version] in listed, result.stdout
    binary = toolchain.home / "plugins" / f"resource-{name}-v{version}" / f"pulumi-resource-{name}"
    assert binary.is_file() and os.access(binary, os.X_OK), f"{binary} is missing or not executable"
    assert plugin_info_version(binary) == version, f"{binary} does not report version {version}"


@e2e
def test_second_run_is_cached(toolchain):
    """Everything built: the script only prints the path, in seconds, and rewrites no binary."""
    binaries = {p: p.stat().st_mtime_ns for p in toolchain.bin.iterdir()}
    started = time.monotonic()
    result = run_script(timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(toolchain.bin)
    assert elapsed < 30, f"a cached run took {elapsed:.1f}s"
    assert "building" not in result.stderr, result.stderr
    assert {p: p.stat().st_mtime_ns for p in toolchain.bin.iterdir()} == binaries


def _linked_copy(toolchain: Toolchain, dest: Path) -> Path:
    """A copy of the toolchain dir whose big binaries are hard links (the script only ever
    replaces files by rename, so the original is never written through a link)."""
    for part in ("bin", "home"):
        if (toolchain.root / part).is_dir():
            shutil.copytree(toolchain.root / part, dest / part, copy_function=os.link, symlinks=True)
    shutil.copytree(toolchain.root / "stamps", dest / "stamps")
    return dest


@e2e
def test_one_stamp_per_component(toolchain, tmp_path):
    """A component whose stamp is gone is redone alone: here the SDK runner files are copied
    again, the CLI and the language host are not rebuilt."""
    copy = _linked_copy(toolchain, tmp_path / "toolchain")
    (copy / "stamps" / "pulumi-language-python-exec").unlink()
    result = run_script("--dir", str(copy), timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(copy / "bin")
    assert "copied pulumi-language-python-exec" in result.stderr
    assert "building pulumi" not in result.stderr, result.stderr
    assert not list(copy.glob(".work.*")), "temp build dirs were left behind"


@e2e
def test_an_unavailable_plugin_source_is_reported_and_the_rest_goes_on(toolchain, tmp_path):
    copy = _linked_copy(toolchain, tmp_path / "toolchain")
    (copy / "stamps" / "plugin-command").unlink(missing_ok=True)  # as if it was never built
    missing = tmp_path / "no-such-checkout"
    result = run_script("--dir", str(copy), "--src", f"command={missing}", timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(copy / "bin")
    reason = f"plugin command v{PLUGINS['command']}: NOT BUILT: --src command={missing}: {missing} does not exist"
    assert reason in result.stderr, result.stderr
    row = (copy / "versions.txt").read_text()
    assert f"--src command={missing}: {missing} does not exist" in row


def _fake_archive(path: Path, files: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@e2e
def test_a_changed_archive_is_unpacked_into_the_cache_and_rebuilds(toolchain, tmp_path):
    """The archive's digest is part of the plugin's stamp: another archive under the same name is
    a new source (here one without the provider module, so it is reported, not built), unpacked
    into <cache>/plugin-src/<sha256>/; the docker archive, unchanged, is a no-op."""
    if not archive_of("docker").is_file():
        pytest.skip(f"no source archive {archive_of('docker')}")
    copy = _linked_copy(toolchain, tmp_path / "toolchain")
    src = tmp_path / "plugin-src"
    changed = _fake_archive(src / archive_of("command").name,
                            {"pulumi-command-v1.2.1/provider/go.mod": "module example.com/not-the-provider\n"})
    (src / archive_of("docker").name).symlink_to(archive_of("docker"))
    cache = tmp_path / "cache"
    result = run_script("--cache", str(cache), "--dir", str(copy), "--plugin-src", str(src), timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(copy / "bin")
    digest = sha256_of(changed)
    assert f"unpacking {changed.name} (sha256 {digest}) into {cache}/plugin-src/{digest}" in result.stderr, result.stderr
    assert (cache / "plugin-src" / digest / "pulumi-command-v1.2.1" / "provider" / "go.mod").is_file()
    reason = f"holds no module {MODULES['command']}"
    assert f"plugin command v{PLUGINS['command']}: NOT BUILT: " in result.stderr and reason in result.stderr, result.stderr
    assert reason in (copy / "versions.txt").read_text()
    assert "plugin docker" not in result.stderr, result.stderr  # same archive, same stamp: nothing to do
    assert not (ROOT / "pulumi-command-v1.2.1").exists() and not (ROOT / "plugin-src").exists()


@e2e
def test_without_an_archive_the_module_proxy_is_the_fallback(toolchain, tmp_path):
    copy = _linked_copy(toolchain, tmp_path / "toolchain")
    src = tmp_path / "plugin-src"  # only the docker archive (when there is one): none for command
    src.mkdir()
    if archive_of("docker").is_file():
        (src / archive_of("docker").name).symlink_to(archive_of("docker"))
    (copy / "stamps" / "plugin-command.unavailable").unlink(missing_ok=True)
    result = run_script("--dir", str(copy), "--plugin-src", str(src), timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(copy / "bin")
    # asked the proxy (which does not serve it here: reported, not built), no archive named
    assert f"{MODULES['command']}@v{PLUGINS['command']}" in result.stderr, result.stderr
    assert ".tar.gz" not in "".join(line for line in result.stderr.splitlines(True) if "plugin command" in line), result.stderr
    assert "plugin docker" not in result.stderr, result.stderr


# --- the pure parts, in the fast tier ------------------------------------------------------------
def shell_recipe(text: str, files: list[Path]) -> str:
    """The recipe as tools/pulumi-toolchain.sh computed it: `{ echo TEXT; cat FILES; } | sha256sum`."""
    script = 'printf "%s\\n" "$0"; for f in "$@"; do cat "$f"; done'
    out = subprocess.run(["bash", "-c", f"{{ {script}; }} | sha256sum", text, *map(str, files)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_the_recipes_are_the_shell_scripts_so_a_built_toolchain_stays_built():
    """A toolchain the shell script built is current for the program: same recipe texts, same files,
    in the order `find | LC_ALL=C sort` gave them."""
    host = pulumi_toolchain.language_host_files(pulumi_toolchain.LANGUAGE_HOST)
    find = subprocess.run(f"find '{pulumi_toolchain.LANGUAGE_HOST}' -maxdepth 1 -type f \\( -name '*.go' -o -name go.mod "
                          "-o -name go.sum \\) | LC_ALL=C sort", shell=True, capture_output=True, text=True, check=True)
    assert [str(p) for p in host] == find.stdout.split()
    text = f"pulumi-language-python {PINNED} -s -w -X main.version={PINNED}"
    assert pulumi_toolchain.recipe_digest(text, host) == shell_recipe(text, host)
    pin = pulumi_plugins.PLUGINS[0]
    text = f"plugin {pin.name} {pin.version} {pin.module} {pin.package} {pin.module}/pkg/version.Version"
    assert plugin_recipe(pin, "ab" * 32) == shell_recipe(f"{text} archive sha256 {'ab' * 32}", [])
    assert plugin_recipe(pin, None) != plugin_recipe(pin, "ab" * 32) != plugin_recipe(pin, "cd" * 32)


def test_a_stamp_is_current_only_for_its_recipe_with_its_files_there(tmp_path):
    stamps = Stamps(tmp_path / "stamps")
    stamps.dir.mkdir()
    binary = tmp_path / "bin" / "pulumi"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert not stamps.is_current("pulumi", "r1", [binary])  # never built
    stamps.done("pulumi", "r1", "v3.274.1", "pkg/v3 cmd/pulumi", 42)
    assert (stamps.dir / "pulumi").read_text() == "r1\n"
    assert (stamps.dir / "pulumi.line").read_text() == "pulumi\tv3.274.1\t42\tpkg/v3 cmd/pulumi\n"
    assert stamps.is_current("pulumi", "r1", [binary])
    assert not stamps.is_current("pulumi", "r2", [binary])  # another recipe
    assert not Stamps(stamps.dir, force=True).is_current("pulumi", "r1", [binary])
    binary.chmod(0o644)
    assert not stamps.is_current("pulumi", "r1", [binary])  # its file is not runnable
    stamps.failed("pulumi", "v3.274.1", "pkg/v3", "see the log")
    assert not (stamps.dir / "pulumi").exists()
    assert (stamps.dir / "pulumi.line").read_text() == "pulumi\tv3.274.1\t-\tpkg/v3: NOT BUILT: see the log\n"
    stamps.done("plugin-docker", "r3", "v5.1.0", "docker", 7)
    versions = stamps.versions_text(tmp_path, "go1.26").splitlines()
    assert versions[2] == "# component\tversion\tbuild_seconds\tsource"
    assert [row.split("\t")[0] for row in versions[3:]] == ["pulumi", "plugin-docker"]  # in COMPONENTS order


def test_a_plugin_found_unavailable_is_not_tried_again_for_a_day_from_the_same_place(tmp_path):
    record = FailureRecord(tmp_path / "plugin-command.unavailable")
    now = time.time()
    assert record.still_valid("attempt-1", now) is None
    record.record("attempt-1", "module@v1.2.1 is not served:\n403 Forbidden")
    found = record.still_valid("attempt-1", now + 60)
    assert found is not None and found[1] == "module@v1.2.1 is not served: 403 Forbidden"
    assert record.still_valid("attempt-2", now) is None  # another source or archive: tried at once
    assert record.still_valid("attempt-1", now + 24 * 3600 + 60) is None  # a day later: tried again
    record.clear()
    assert not record.path.exists()


def test_a_plugin_is_built_from_src_then_its_archive_then_the_module_proxy(tmp_path):
    pin = pulumi_plugins.PLUGINS[1]
    src = tmp_path / "checkout"
    assert choose_source(pin, src, tmp_path) == PluginSource("src", src)
    assert choose_source(pin, None, tmp_path) == PluginSource("proxy")
    archive = tmp_path / f"pulumi-docker-v{pin.version}.tar.gz"
    archive.write_bytes(b"x")
    assert pin.archive_name == archive.name
    assert choose_source(pin, None, tmp_path) == PluginSource("archive", archive)
    assert choose_source(pin, src, tmp_path) == PluginSource("src", src)


def test_the_wrapper_must_carry_upstreams_module_replaces():
    upstream = {"Replace": [{"Old": {"Path": "a"}, "New": {"Path": "b", "Version": "v1"}},
                            {"Old": {"Path": "github.com/pulumi/pulumi/sdk/v3"}, "New": {"Path": "../sdk"}}]}
    wrapper = {"Replace": [{"New": {"Version": "v1", "Path": "b"}, "Old": {"Path": "a"}}]}
    assert pulumi_toolchain.module_replaces(upstream) == pulumi_toolchain.module_replaces(wrapper)
    assert pulumi_toolchain.module_replaces({"Replace": None}) == []
    assert pulumi_toolchain.module_replaces(wrapper) != pulumi_toolchain.module_replaces({})


def test_what_a_plugin_build_reads_from_go_and_pulumi(tmp_path):
    log = "# github.com/x\ngo: downloading a v1\n./main.go:3: undefined: y\n" + "".join(f"e{i}\n" for i in range(20))
    assert pulumi_plugins.go_errors(log) == "./main.go:3: undefined: y " + " ".join(f"e{i}" for i in range(14))
    (tmp_path / "version.go").write_text("package version\n\nvar Version string\n")
    assert pulumi_plugins.declares_variable(tmp_path, "Version")
    assert not pulumi_plugins.declares_variable(tmp_path, "Commit")
    ls = "NAME     KIND      VERSION  SIZE\ncommand  resource  1.2.1    40 MB\n"
    assert pulumi_plugins.listed(ls, "command", "1.2.1") and not pulumi_plugins.listed(ls, "docker", "5.1.0")


def test_the_command_line_and_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_TOOLCHAIN_SRC_DOCKER", "/from/env")
    args = pulumi_toolchain.parse(["--src", "command=/a", "--dir", str(tmp_path), "--cache", "/c"])
    assert args.sources == {"command": Path("/a"), "docker": Path("/from/env")}
    assert args.dir == tmp_path and args.cache == Path("/c")
    env_sh = pulumi_toolchain.env_sh(tmp_path / "bin", tmp_path / "home")
    assert f'export PATH="{tmp_path}/bin:$PATH"' in env_sh and "export PULUMI_SKIP_UPDATE_CHECK=1" in env_sh
