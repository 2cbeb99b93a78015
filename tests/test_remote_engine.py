"""The remote-engine fixture, proven with real processes: a second dockerd behind an sshd on
127.0.0.1 (tests/remote_engine.py).

- the ssh path (`ssh -F <config> <alias> docker ...`) and the docker CLI's own ssh:// helper
  (alias URL and user@127.0.0.1:port URL) answer from the second daemon, not the main one;
- a container there with a port published on 127.0.0.1 answers HTTP from this machine;
- an image tar streamed through ssh into `docker load` is on the remote engine, not the main one;
- an unknown host key is refused under StrictHostKeyChecking=yes;
- sshd stopped: ssh fails, the container keeps running; sshd started again: ssh works;
- stop() leaves nothing of its own behind, and the main engine (docker0, a container with a
  published port) still works.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.docker_engines import MAIN_DOCKER_HOST, docker, require_main_engine
from tests.docker_site import free_port
from tests.remote_engine import INDEX_HTML, RemoteEngine, busybox_image

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def remote_engine():
    with RemoteEngine() as engine:  # stopped at the end of the module, also when tests fail
        yield engine


def http_get(port: int, timeout: float = 15) -> bytes:
    """GET http://127.0.0.1:<port>/, retried until the server is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as answer:
                return answer.read()
        except OSError as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answered HTTP on 127.0.0.1:{port}: {error}") from None
            time.sleep(0.2)


def cli(env: dict, *args: str) -> str:
    """The local docker CLI with ``env`` (DOCKER_HOST=ssh://..., the ssh shim on PATH)."""
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"docker {' '.join(args)} via {env['DOCKER_HOST']}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def web(remote_engine):
    """A busybox httpd on the remote engine, started through ssh, published on 127.0.0.1."""
    image = remote_engine.busybox()
    port = free_port()
    done = remote_engine.ssh("docker", "run", "-d", "--name", f"xo-web-{uuid.uuid4().hex[:6]}",
                             "-p", f"127.0.0.1:{port}:8080", image.ref)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode().strip(), port


def test_ssh_and_the_docker_cli_reach_the_second_daemon_not_the_main_one(remote_engine):
    main = require_main_engine()
    # The data root tells the daemons apart; `.ID` does not: dockerd 20.10 derives it from
    # /etc/docker/key.json, which every daemon on this machine shares.
    info = "{{.DockerRootDir}} {{.ContainersRunning}}/{{.Images}}"
    local = remote_engine.docker("info", "--format", info).stdout.decode().strip()
    main_root = docker(main, "info", "--format", "{{.DockerRootDir}}").stdout.decode().strip()
    assert local.split()[0] == str(remote_engine.daemon.root / "data") != main_root

    version = remote_engine.ssh("docker", "version", "--format", "{{.Server.Version}}")
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    through_ssh = remote_engine.ssh("docker", "info", "--format", info)
    assert through_ssh.returncode == 0 and through_ssh.stdout.decode().strip() == local

    # The CLI's own ssh helper execs `ssh` from PATH without -F: cli_env() puts the -F shim first.
    for url in (remote_engine.ssh_url, remote_engine.ssh_url_direct):
        env = remote_engine.cli_env(url)
        assert cli(env, "info", "--format", info) == local
        assert cli(env, "version", "--format", "{{.Server.Version}}") == version.stdout.decode().strip()
    env = remote_engine.cli_env(MAIN_DOCKER_HOST)  # -H wins over DOCKER_HOST, as on any host
    assert cli(env, "-H", remote_engine.ssh_url, "info", "--format", info) == local
    assert remote_engine.ssh_url_direct == f"ssh://root@127.0.0.1:{remote_engine.port}"
    config = remote_engine.ssh_config.read_text()
    for line in (f"Host {remote_engine.alias}", "HostName 127.0.0.1", f"Port {remote_engine.port}", "User root",
                 f"IdentityFile {remote_engine.key}", "IdentitiesOnly yes", "StrictHostKeyChecking yes",
                 f"UserKnownHostsFile {remote_engine.known_hosts}", "BatchMode yes"):
        assert line in config
    assert remote_engine.host_public_key.startswith("ssh-ed25519 ")
    assert remote_engine.host_public_key in remote_engine.known_hosts.read_text()


def test_a_published_port_of_a_remote_container_answers_on_127_0_0_1(remote_engine, web):
    container, port = web
    assert http_get(port) == INDEX_HTML
    ports = remote_engine.docker("port", container, "8080/tcp").stdout.decode().split()
    assert f"127.0.0.1:{port}" in ports
    # on the remote engine's own bridge, not host networking
    network = remote_engine.docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", container)
    assert network.stdout.decode().strip() in ("default", "bridge")


def test_an_image_tar_streamed_over_ssh_is_loaded_on_the_remote_engine_only(remote_engine, tmp_path):
    main = require_main_engine()
    image = busybox_image(nonce=uuid.uuid4().hex[:8], out_dir=tmp_path)  # an id no engine has seen
    with image.path.open("rb") as tar:  # `ssh -F cfg alias docker load < tar`, as an operator would
        done = subprocess.run(remote_engine.ssh_argv("docker", "load"), stdin=tar, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert image.ref in done.stdout.decode()
    remote_id = remote_engine.ssh("docker", "image", "inspect", "--format", "{{.Id}}", image.ref)
    assert remote_id.stdout.decode().strip() == image.id
    assert remote_engine.docker("image", "inspect", image.id, check=False).returncode == 0
    on_main = docker(main, "image", "inspect", image.id, check=False)
    assert on_main.returncode != 0 and b"no such image" in on_main.stderr.lower()


def test_an_unknown_host_key_is_refused(remote_engine, tmp_path):
    unknown = remote_engine.known_hosts_without_host_key(tmp_path / "known_hosts")
    done = remote_engine.ssh("true", known_hosts=unknown)
    assert done.returncode == 255
    assert b"Host key verification failed" in done.stderr
    assert unknown.read_text() == ""  # StrictHostKeyChecking=yes: nothing was added
    assert remote_engine.ssh("true").returncode == 0  # the generated known_hosts is accepted


def test_sshd_stopped_breaks_ssh_but_not_the_container_and_comes_back(remote_engine, web):
    container, port = web
    remote_engine.stop_sshd()
    try:
        done = remote_engine.ssh("docker", "ps", timeout=30)
        assert done.returncode == 255 and b"Connection refused" in done.stderr
        env = remote_engine.cli_env()
        assert subprocess.run(["docker", "ps"], env=env, capture_output=True, timeout=60).returncode != 0
        running = remote_engine.docker("inspect", "--format", "{{.State.Running}}", container)
        assert running.stdout.decode().strip() == "true"
        assert http_get(port) == INDEX_HTML
    finally:
        remote_engine.start_sshd()
    done = remote_engine.ssh("docker", "inspect", "--format", "{{.State.Running}}", container)
    assert done.returncode == 0 and done.stdout.decode().strip() == "true"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_stop_removes_what_it_started_and_the_main_engine_still_works(tmp_path):
    main = require_main_engine()
    engine = RemoteEngine(alias="xo-engine2-stop")
    try:
        engine.start()
        daemon_root, ssh_root, bridge = engine.daemon.root, engine.root, engine.daemon.bridge
        dockerd_pid, sshd_pid = engine.daemon.process.pid, engine.sshd.pid
        port = free_port()
        engine.docker("run", "-d", "-p", f"127.0.0.1:{port}:8080", engine.busybox().ref)
        assert http_get(port) == INDEX_HTML
    finally:
        engine.stop()
    engine.stop()  # a second stop changes nothing
    for pid in (dockerd_pid, sshd_pid):
        assert not Path(f"/proc/{pid}").exists()
    assert _processes_mentioning(str(daemon_root)) == [] and _processes_mentioning(str(ssh_root)) == []
    assert _processes_mentioning(f"-host-port {port} ") == []  # its docker-proxy
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    assert not daemon_root.exists() and not ssh_root.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)

    assert subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode == 0
    image = busybox_image(nonce=f"main-{uuid.uuid4().hex[:8]}", out_dir=tmp_path)
    main_port = free_port()
    docker(main, "load", stdin=image.path.read_bytes())
    try:
        docker(main, "run", "-d", "--name", f"xo-main-{image.id[7:19]}", "-p", f"127.0.0.1:{main_port}:8080",
               image.ref)
        assert http_get(main_port) == INDEX_HTML
    finally:
        docker(main, "rm", "-f", f"xo-main-{image.id[7:19]}", check=False)
        docker(main, "rmi", image.id, check=False)


def test_an_image_kept_as_bundle_files_is_streamed_over_ssh_with_no_copy_and_its_id_checked(remote_engine, tmp_path):
    """The load of components/image.py for a bundle that keeps the image as its members: streamed through
    `ssh HOST docker load` (nothing written on either side but the engine's own), then the id checked; an
    engine that has the id is sent nothing, and a damaged layer loads nothing."""
    from components.engine_image import EngineImageProvider, ImageLoadFailed
    from components.image import members_load_script
    from stackspec.ssh import SshTarget
    from tests.test_engine_image import members_of

    image = busybox_image(nonce=uuid.uuid4().hex[:8], out_dir=tmp_path)
    bundle_image, members = members_of(image, tmp_path)
    target = SshTarget(host=remote_engine.host, user=remote_engine.user, port=remote_engine.port,
                       identity_file=str(remote_engine.key), known_hosts=str(remote_engine.known_hosts))
    props = {"image_name": image.ref, "tar_digest": bundle_image.digest, "docker_host": target.describe(),
             "expected_id": image.id, "docker_ssh": target.argv(), "image_id": None, "load_env": {},
             "load_script": members_load_script(image.ref, bundle_image, image.id, target.describe(), target)}
    layer = tmp_path / "bundle" / "images" / "xo" / next(m.name for m in members if m.name.endswith("layer.tar"))
    good = layer.read_bytes()
    layer.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ImageLoadFailed, match="is damaged"):
        EngineImageProvider().create(dict(props))
    assert remote_engine.docker("image", "inspect", image.id, check=False).returncode != 0
    layer.write_bytes(good)
    assert EngineImageProvider().create(dict(props)).id == image.id
    assert remote_engine.docker("image", "inspect", "--format", "{{.Id}}", image.ref).stdout.decode().strip() == image.id
    assert docker(require_main_engine(), "image", "inspect", image.id, check=False).returncode != 0  # remote only
    layer.unlink()  # the engine has the id: nothing is read or sent
    assert EngineImageProvider().create(dict(props)).id == image.id
