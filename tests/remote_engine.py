"""A second Docker engine reached over ssh, on this machine: the stand-in for a GPU server that
the program drives with an ``ssh://`` docker host.

What it starts, and stops again (only what it started):

- a private dockerd (``tests.docker_engines.TestDaemon``: own socket, data root, exec root, pid
  file, and its own bridge made with ``ip link add``, ``--iptables=false``; never
  ``--bridge none``, which deletes the main daemon's docker0 at start) on a /24 that no
  interface or route here uses yet;
- an sshd on 127.0.0.1:<free port> with its own host key, one authorized ed25519 test key
  (never put into an ssh agent), ``StrictModes no`` (its files live under /tmp, which is
  world-writable, so the strict path check would refuse them) and
  ``Subsystem sftp internal-sftp`` (CopyToRemote copies over sftp, as on a stock server) and
  ``SetEnv DOCKER_HOST=unix://<second socket>``: every ``docker`` run through this sshd,
  including the ``docker system dial-stdio`` that ``docker -H ssh://...`` runs, talks to the
  second daemon;
- one ssh client config (``Host <alias> 127.0.0.1``, HostName, Port, User root, IdentityFile,
  IdentitiesOnly, UserKnownHostsFile <ours>, GlobalKnownHostsFile /dev/null,
  StrictHostKeyChecking yes, BatchMode yes), so nothing reads or writes ~/.ssh.

The docker CLI and ssh options: the CLI's ssh connection helper execs plain ``ssh`` from PATH
with only ``-l/-p/-o ConnectTimeout/-T`` and the host (there is no -F, and no variable such as
DOCKER_SSH_OPTS in CLI 28); OpenSSH takes its user config from the passwd home, not $HOME, so
neither a HOME nor a config override reaches it. ``cli_env()`` therefore puts a one-line ``ssh``
shim first on PATH that execs ``/usr/bin/ssh -F <our config> "$@"``: then both
``DOCKER_HOST=ssh://xo-engine2`` (the alias) and ``ssh://root@127.0.0.1:<port>`` work with our
key and known_hosts, and an unknown host key is still refused. (To tell the two daemons apart,
compare DockerRootDir: `docker info`'s ID is the same for both, dockerd 20.10 derives it from
/etc/docker/key.json, which they share.)

Networking: with ``--iptables=false`` the daemon adds no NAT rules, but a port published as
``-p 127.0.0.1:<hostport>:8080`` is still served by docker's userland proxy (``docker-proxy``,
on by default): it listens on 127.0.0.1:<hostport> in this (shared) network namespace and
connects to the container's address on our bridge, which the host routes directly. So the
containers stay on the daemon's own bridge (no host networking, no port clash between engines)
and their published ports reach 127.0.0.1. The containers get no route out (no masquerade),
which suits an air-gapped stand-in.

The image: there is no registry here, so ``busybox_image()`` builds a ``docker save``-format tar
by hand from Debian's static busybox (apt-get install busybox-static when no static
/bin/busybox is here): one layer with /bin/busybox, /bin/sh and /www/index.html, a config whose
Cmd is ``busybox httpd -f -p 8080 -h /www``. Its image id is the sha256 of that config, known
before any engine sees it. The tar is cached under ~/.cache/xinference-offline/remote-engine/,
keyed by the busybox binary's sha256; a ``nonce`` gives a different id (a label) for tests
that need an image no engine has seen.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.docker_engines import DOCKER, DOCKERD, TestDaemon, docker
from tests.docker_site import CACHE, free_port

SSHD = "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
ALIAS = "xo-engine2"
INDEX_HTML = b"xinference-offline remote engine: busybox httpd\n"


def _apt_install(package: str) -> None:
    """apt-get install one package (root, Debian); on failure refresh the lists once and retry."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{package} is missing and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"apt-get install {package} failed: {(done.stdout + done.stderr)[-1500:]}")


def ensure_sshd() -> None:
    if not (os.access(SSHD, os.X_OK) and shutil.which("ssh") and shutil.which("ssh-keygen")):
        _apt_install("openssh-server")  # brings openssh-client (ssh, ssh-keygen) with it


def static_busybox() -> Path:
    """A statically linked busybox (it runs in an image with nothing else in it)."""
    def is_static(path: str) -> bool:  # ldd exits 1 with "not a dynamic executable"
        return os.path.exists(path) and subprocess.run(["ldd", path], capture_output=True).returncode != 0
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if is_static(path):
            return Path(path)
    _apt_install("busybox-static")
    if not is_static("/bin/busybox"):
        raise AssertionError("busybox-static is installed but /bin/busybox is not a static executable")
    return Path("/bin/busybox")


@dataclass(frozen=True)
class Image:
    """A `docker save`-format tar and what `docker load` of it gives."""

    path: Path
    id: str  # sha256:<hex of the config>
    ref: str  # repo:tag recorded in the tar


def _tar_add(tar: tarfile.TarFile, name: str, data: Optional[bytes] = None, mode: int = 0o644,
             link: Optional[str] = None, directory: bool = False) -> None:
    info = tarfile.TarInfo(name)  # uid/gid 0, mtime 0: the same bytes every time
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
    else:
        info.size, info.mode = len(data or b""), mode
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def busybox_image(nonce: str = "", out_dir: Optional[Path] = None) -> Image:
    """The busybox httpd image tar, cached; with ``nonce`` a labelled variant (a new image id)
    written to ``out_dir`` (a one-off, not cached)."""
    binary = static_busybox().read_bytes()
    digest = hashlib.sha256(binary).hexdigest()
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.USTAR_FORMAT) as layer:
        for d in ("bin", "tmp", "www"):
            _tar_add(layer, d, directory=True)
        _tar_add(layer, "bin/busybox", binary, mode=0o755)
        _tar_add(layer, "bin/sh", link="busybox")
        _tar_add(layer, "www/index.html", INDEX_HTML)
    layer_bytes = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
                   "ExposedPorts": {"8080/tcp": {}}, "WorkingDir": "/",
                   "Labels": {"xinference-offline.test-nonce": nonce} if nonce else None},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    ref = f"xo-busybox:{digest[:12]}{'-' + nonce if nonce else ''}"
    if nonce:  # one-offs: never accumulated in the cache
        out = Path(out_dir or tempfile.mkdtemp(prefix="xo-busybox-")) / f"busybox-{nonce}.tar"
    else:
        out = CACHE / "remote-engine" / f"busybox-{digest[:16]}.tar"
    if nonce or not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [ref],
                                "Layers": [f"{diff_id[7:]}/layer.tar"]}]).encode()
        partial = out.with_suffix(f".partial-{os.getpid()}")
        with tarfile.open(partial, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            _tar_add(tar, f"{diff_id[7:]}", directory=True)
            _tar_add(tar, f"{diff_id[7:]}/layer.tar", layer_bytes)
            _tar_add(tar, f"{config_hex}.json", config)
            _tar_add(tar, "manifest.json", manifest)
        partial.replace(out)  # atomic: a reader never sees half a tar
    return Image(out, f"sha256:{config_hex}", ref)


def _free_subnet() -> str:
    """A 10.231.N.0/24 prefix ("10.231.N") that no address or route here overlaps."""
    used = []
    for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for word in subprocess.run(cmd, capture_output=True, text=True).stdout.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                pass
    start = os.getpid() % 100  # two sessions at once most likely pick different ones
    for i in range(100):
        n = 100 + (start + i) % 100
        net = ipaddress.ip_network(f"10.231.{n}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return f"10.231.{n}"
    raise AssertionError("no free 10.231.100-199.0/24 for the remote engine's bridge")


class RemoteEngine:
    """A second dockerd behind an sshd on 127.0.0.1; ``start()`` / ``stop()`` (idempotent)."""

    def __init__(self, alias: str = ALIAS):
        self.alias, self.host, self.user = alias, "127.0.0.1", "root"
        self.port = 0
        self.daemon: Optional[TestDaemon] = None
        self.sshd: Optional[subprocess.Popen] = None
        self.root = Path(tempfile.mkdtemp(prefix="xo-ssh-", dir="/tmp"))
        self.key = self.root / "id_ed25519"
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.known_hosts = self.root / "known_hosts"
        self.ssh_config = self.root / "ssh_config"
        self.sshd_config = self.root / "sshd_config"
        self.sshd_log = self.root / "sshd.log"
        self.host_public_key = ""  # "ssh-ed25519 AAAA..." of the sshd
        self._made_run_sshd = False

    # -- derived names ---------------------------------------------------------------------
    @property
    def docker_host(self) -> str:
        """The second daemon's unix socket, for the docker CLI on this machine."""
        assert self.daemon is not None, "not started"
        return self.daemon.host

    @property
    def ssh_url(self) -> str:
        """DOCKER_HOST for the CLI through the alias (needs cli_env())."""
        return f"ssh://{self.alias}"

    @property
    def ssh_url_direct(self) -> str:
        """DOCKER_HOST naming user, address and port (still needs cli_env() for key and known_hosts)."""
        return f"ssh://{self.user}@{self.host}:{self.port}"

    # -- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> "RemoteEngine":
        return self.start()  # a failed start has already cleaned up after itself

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "RemoteEngine":
        if DOCKER is None or DOCKERD is None or os.geteuid() != 0:
            pytest.skip("a remote test engine needs root, dockerd and the docker CLI (tools/docker-engine.sh start)")
        ensure_sshd()
        try:
            name = f"eng2-{os.getpid() % 100000}"
            while subprocess.run(["ip", "link", "show", f"xo-{name}"[:15]], capture_output=True).returncode == 0:
                name += "x"  # a bridge of that name is someone else's: never adopt it
            self.daemon = TestDaemon(name, subnet=_free_subnet())
            self.daemon.start()
            self._write_ssh_files()
            self.start_sshd()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_ssh_files(self) -> None:
        for path, comment in ((self.key, "xo-test-client"), (self.host_key, "xo-test-host")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                           check=True, capture_output=True)
        self.port = free_port()
        self.host_public_key = " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
        (self.root / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        # `Host <alias> 127.0.0.1`: the alias gives HostName/Port/User; a URL naming 127.0.0.1
        # gives its own -l/-p, which win over these, and still gets the key and known_hosts.
        self.ssh_config.write_text(f"""Host {self.alias} {self.host}
    HostName {self.host}
    Port {self.port}
    User {self.user}
    IdentityFile {self.key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {self.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
""")
        self.sshd_config.write_text(f"""ListenAddress {self.host}:{self.port}
HostKey {self.host_key}
PidFile {self.root / 'sshd.pid'}
AuthorizedKeysFile {self.root / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
SetEnv DOCKER_HOST={self.docker_host}
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
        shim = self.root / "bin" / "ssh"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nexec {SSH} -F {self.ssh_config} "$@"\n')
        shim.chmod(0o755)

    def start_sshd(self, timeout: float = 20) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            return
        if not os.path.isdir("/run/sshd"):  # privilege separation directory; sshd refuses to start without it
            os.makedirs("/run/sshd", mode=0o755)
            self._made_run_sshd = True
        self.sshd = subprocess.Popen([SSHD, "-D", "-f", str(self.sshd_config), "-E", str(self.sshd_log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if self.sshd.poll() is not None or time.monotonic() > deadline:
                    log = self.sshd_log.read_text(errors="replace")[-2000:] if self.sshd_log.exists() else ""
                    raise AssertionError(f"sshd on {self.host}:{self.port} did not listen:\n{log}") from None
                time.sleep(0.1)

    def stop_sshd(self) -> None:
        """Stop the listening sshd (a dropped ssh path); the engine and its containers keep running."""
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.send_signal(signal.SIGTERM)
            try:
                self.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()

    def drop_connections(self) -> int:
        """Cut every open ssh session (a dropped network, mid-transfer) and stop the listener; returns
        how many session processes were killed. Only our sshd's descendants are touched."""
        if self.sshd is None:
            return 0
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
            except (OSError, ValueError, IndexError):
                continue
        ours, grew = {self.sshd.pid}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in ours} - ours
            grew, ours = bool(more), ours | more
        sessions = ours - {self.sshd.pid}
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop_sshd()
        return len(sessions)

    def stop(self) -> None:
        """Stop sshd, the second dockerd (its containers, bridge, dirs) and remove our files."""
        self.stop_sshd()
        if self.daemon is not None:
            self.daemon.stop()
        if self._made_run_sshd:  # we made it: take it away again (only while empty)
            try:
                os.rmdir("/run/sshd")
            except OSError:
                pass
            self._made_run_sshd = False
        shutil.rmtree(self.root, ignore_errors=True)

    # -- using it --------------------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
        """The docker CLI against the second daemon's unix socket, run here (no ssh)."""
        return docker(self.docker_host, *args, check=check, timeout=timeout, stdin=stdin)

    def ssh_argv(self, *remote_cmd: str, known_hosts: Optional[Path] = None) -> list[str]:
        extra = ["-o", f"UserKnownHostsFile={known_hosts}"] if known_hosts is not None else []
        # each word quoted for the remote shell, so argv arrives as given ("sh", "-c", ... for a script)
        return [SSH, "-F", str(self.ssh_config), *extra, "--", self.alias, *map(shlex.quote, remote_cmd)]

    def ssh(self, *remote_cmd: str, input: Optional[bytes] = None, known_hosts: Optional[Path] = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``remote_cmd`` through our sshd (bytes out; check returncode yourself)."""
        return subprocess.run(self.ssh_argv(*remote_cmd, known_hosts=known_hosts), input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)

    def known_hosts_without_host_key(self, path: Path) -> Path:
        """A known_hosts that does not know our sshd (for "unknown host key is refused")."""
        path.write_text("")
        return path

    def cli_env(self, docker_host: Optional[str] = None, base: Optional[dict] = None) -> dict:
        """Environment for the docker CLI (or anything that execs `ssh`) to reach us over ssh:
        DOCKER_HOST (default the alias URL) and the -F shim first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["DOCKER_HOST"] = docker_host or self.ssh_url
        return env

    def load(self, image: Image, via_ssh: bool = False) -> None:
        """``docker load`` the tar into the second engine: locally, or streamed through ssh."""
        data = image.path.read_bytes()
        if via_ssh:
            done = self.ssh("docker", "load", input=data)
            if done.returncode != 0:
                raise AssertionError(f"docker load over ssh failed: {done.stderr.decode(errors='replace')}")
        else:
            self.docker("load", stdin=data)

    def busybox(self) -> Image:
        """The busybox httpd image, loaded on the second engine (once)."""
        image = busybox_image()
        if self.docker("image", "inspect", image.id, check=False).returncode != 0:
            self.load(image)
        return image


@pytest.fixture(scope="module")
def remote_engine():
    """A started RemoteEngine for one test module; stopped afterwards, also when tests fail.
    (Import it into a conftest.py, or write the same three lines where it is needed.)"""
    engine = RemoteEngine()
    try:
        yield engine.start()
    finally:
        engine.stop()
