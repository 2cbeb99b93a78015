"""What test runs killed midway leave behind, removed before the next run starts.

A run that is killed (a session that ends, kill -9, a CI timeout) skips its teardown. Its
containers keep their restart policy and come back the next time the engine starts, still
holding their ports: a cluster supervisor left so binds its address's actor port on the host
network, and the next run's supervisor crash-loops until the up times out. Its private dockerds
leave mounts, bridges and gigabytes under /tmp.

Every container a test makes is named ``xo-...``. Under /tmp only the directories tests make
are removed: tools/test.sh's lanes (``xol.*``), private engines (``xo-NAME-*`` holding a
dockerd.log), the remote engine's ssh files and the models dirs of the remote tests.
``tools/test.sh`` runs ``python -m tests.leftovers`` while it holds the run lock, so no other run
of that script is live; a bare ``pytest`` beside it is not protected.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from bundle.format.resume import bytes_in

TMP = Path("/tmp")
MAIN_ENGINE = "unix:///var/run/docker.sock"
TEST_DIR_PATTERNS = ("xol.*", "xo-ssh-*", "xo-busybox-*", "xo-cluster-models-*", "xo-remote-models-*")


def _docker(host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True, timeout=timeout)


def containers_of_tests(host: str, prefix: str = "xo-") -> list[str]:
    """Names of the containers on the engine at ``host`` that tests made (``xo-...``)."""
    proc = _docker(host, "ps", "-a", "--format", "{{.Names}}", timeout=60)
    if proc.returncode != 0:
        return []
    return [name for name in proc.stdout.split() if name.startswith(prefix)]


def remove_containers(host: str, names: list[str]) -> list[str]:
    if names:
        _docker(host, "rm", "-f", *names)
    return names


def _pid_of(pidfile: Path, command: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        return pid if command in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") else None
    except (OSError, ValueError):
        return None


def _stop_process(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order they can be unmounted in)."""
    prefix = str(root).rstrip("/")
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_all(root: Path) -> None:
    for point in mounts_under(root):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def processes_where(file: str, matches: Callable[[str], bool]) -> list[int]:
    """Pids (not this one) whose /proc/PID/``file`` (NULs as spaces) ``matches``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                text = (entry / file).read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
            if matches(text):
                pids.append(int(entry.name))
    return pids


def processes_naming(root: Path) -> list[int]:
    """Processes whose command line names a path under ``root`` (a dockerd, its containerd, shims)."""
    needle = str(root).rstrip("/") + "/"
    return processes_where("cmdline", lambda cmdline: needle in cmdline)


def container_processes(root: Path) -> list[int]:
    """Processes of the containers of the test dockerd rooted at ``root`` (found by their cgroup,
    which names the container id); a killed dockerd leaves them running, ports and all."""
    ids = [d.name for d in (root / "data" / "containers").glob("*") if d.is_dir()]
    return processes_where("cgroup", lambda cgroup: any(f"/{cid}" in cgroup for cid in ids)) if ids else []


def stop_private_engine(root: Path) -> bool:
    """Stop a test dockerd rooted at ``root`` (tests.docker_engines.TestDaemon) and what it left running."""
    pid = _pid_of(root / "docker.pid", "dockerd")
    if pid is not None:  # alive: let it remove its containers, as TestDaemon.stop() would have
        host = f"unix://{root / 'docker.sock'}"
        remove_containers(host, _docker(host, "ps", "-aq", timeout=60).stdout.split())
        _stop_process(pid)
    orphans = container_processes(root)  # a killed dockerd's containers, then its containerd and shims
    for orphan in orphans:
        _kill(orphan)
    for orphan in processes_naming(root):
        _stop_process(orphan, timeout=5)
        orphans.append(orphan)
    return pid is not None or bool(orphans)


def stop_sshd(root: Path) -> bool:
    pid = _pid_of(root / "sshd.pid", "sshd")
    if pid is not None:
        _stop_process(pid, timeout=5)
    return pid is not None


def bridges_of_tests(prefix: str = "xo-") -> list[str]:
    """Bridges a TestDaemon made (``xo-...``); one whose daemon is gone blocks nothing but its name."""
    if shutil.which("ip") is None:
        return []  # no iproute2: no TestDaemon could have made one
    proc = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True)
    names = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]
    return [name for name in names if name.startswith(prefix)]


def clean(tmp: Path = TMP, host: str = MAIN_ENGINE, keep: tuple[Path, ...] = (), prefix: str = "xo-") -> list[str]:
    """Remove what earlier test runs left; return a line for each thing removed.

    ``prefix`` narrows the containers and bridges (a test of this module cleans only its own)."""
    done = [f"container {name} (main engine)" for name in remove_containers(host, containers_of_tests(host, prefix))]
    engines = {p for p in tmp.glob("xo-*") if (p / "dockerd.log").is_file() or (p / "exec").is_dir()}
    dirs = sorted({p for pattern in TEST_DIR_PATTERNS for p in tmp.glob(pattern)} | engines)
    dirs = [p for p in dirs if p.is_dir() and not p.is_symlink() and p not in keep]
    for root in dirs:
        if stop_private_engine(root):
            done.append(f"test dockerd of {root}")
        if stop_sshd(root):
            done.append(f"test sshd of {root}")
    for bridge in bridges_of_tests(prefix):
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        done.append(f"bridge {bridge}")
    for root in dirs:
        unmount_all(root)
        size = bytes_in(root)
        shutil.rmtree(root, ignore_errors=True)
        done.append(f"{root} ({size / 2**30:.1f} GiB)" + (" (could not all be removed)" if root.exists() else ""))
    return done


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    keep = tuple(Path(arg) for arg in args)
    for line in clean(keep=keep):
        print(f"leftovers: removed {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
