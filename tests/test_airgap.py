"""`container.network: airgap`, the parts that need no Docker: the relay for real on 127.0.0.1
(the same two hops the gateway and the server make: tcp -> unix socket -> tcp), the wiring of
the containers, the config field and its cluster-mode rule, and the resource graph under mocks.
The containers themselves, and that the server has no route out, are checked in
tests/test_e2e_docker.py."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stackspec.airgap import API_SOCKET, RELAY_SOURCE, SOCKET_DIR, gateway_container_name, relay_command, server_network
from stackspec.errors import ConfigError
from stackspec.launch import container_command
from stackspec.load import load_stack_config
from tests.leftovers import processes_where
from tests.stack_configs import docker_stack, namespaced
from tests.test_cluster import cluster
from tests.test_program import CONTAINER, run_program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def echo_server():
    """Reads until the client half-closes, then sends everything back and closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


class Relays:
    """Relay processes started by a test, each in its own process group (stopped by id)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, listen: str, target: str, program: tuple[str, ...] = ()) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable if a == "python3" else a for a in relay_command(listen, target, program)],
                                start_new_session=True, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in self.procs:
            # With a program, the relay forks and the child calls setsid(): it leaves the group, so it is
            # found as the program's child (in a container it dies with PID 1; here it would outlive the test).
            for pid in [proc.pid, *children_of(proc.pid)]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()


def children_of(pid: int) -> list[int]:
    # /proc/PID/stat after "(comm)": state, ppid, ...
    return processes_where("stat", lambda stat: stat.rsplit(")", 1)[-1].split()[1:2] == [str(pid)])


@pytest.fixture
def relays():
    started = Relays()
    yield started
    started.stop()


def wait_listening(what, timeout: float = 10.0) -> None:
    family, where = (socket.AF_UNIX, what[5:]) if what.startswith("unix:") else (
        socket.AF_INET, ("127.0.0.1", int(what.rsplit(":", 1)[1])))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(family) as s:
            try:
                s.connect(where)
                return
            except OSError:
                time.sleep(0.05)
    raise AssertionError(f"{what} is not listening after {timeout} s")


def gateway_and_server(relays: Relays, tmp_path: Path, target_port: int, program: tuple[str, ...] = ()) -> int:
    """The airgap chain: host tcp port -> unix socket -> 127.0.0.1:target_port; returns the host port."""
    sock, port = f"unix:{tmp_path}/run/api.sock", free_port()
    relays.start(sock, f"tcp:127.0.0.1:{target_port}", program)  # the server side
    wait_listening(sock)
    relays.start(f"tcp:127.0.0.1:{port}", sock)  # the gateway
    wait_listening(f"tcp:127.0.0.1:{port}")
    return port


def test_http_crosses_both_relays(relays, tmp_path, http_server):
    port = gateway_and_server(relays, tmp_path, http_server)
    for i in range(3):  # one connection each, one after another
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status?{i}", timeout=10) as answer:
            assert answer.read() == f"hello from /status?{i}".encode()
    assert oct((tmp_path / "run" / "api.sock").stat().st_mode & 0o777) == "0o600"


def test_a_large_body_and_the_half_close_cross_both_ways(relays, tmp_path, echo_server):
    port = gateway_and_server(relays, tmp_path, echo_server)
    payload = os.urandom(3 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)), daemon=True).start()
        back = b""
        while chunk := s.recv(65536):
            back += chunk
    assert back == payload


def test_a_target_that_is_down_closes_the_connection_and_the_relay_keeps_serving(relays, tmp_path, http_server):
    down = free_port()
    port = gateway_and_server(relays, tmp_path, down)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100) == b""  # closed, not hung
    # the same gateway, a server side that now has a target
    (tmp_path / "run2").mkdir()
    sock2 = f"unix:{tmp_path}/run2/api.sock"
    relays.start(sock2, f"tcp:127.0.0.1:{http_server}")
    wait_listening(sock2)
    gateway = free_port()
    relays.start(f"tcp:127.0.0.1:{gateway}", sock2)
    wait_listening(f"tcp:127.0.0.1:{gateway}")
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/again", timeout=10) as answer:
        assert answer.read() == b"hello from /again"
    assert relays.procs[0].poll() is None and relays.procs[1].poll() is None


def test_with_a_program_the_relay_forks_off_and_the_program_becomes_the_process(relays, tmp_path):
    """What the server container runs: the relay beside xinference-local, which stays PID 1."""
    target = free_port()
    program = (sys.executable, "-m", "http.server", str(target), "--bind", "127.0.0.1", "--directory", str(tmp_path))
    (tmp_path / "page.txt").write_text("served by the program")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "api.sock").write_text("stale")  # a previous run's socket path is replaced
    port = gateway_and_server(relays, tmp_path, target, program)
    server = relays.procs[0]
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert b"http.server" in cmdline and RELAY_SOURCE.encode() not in cmdline  # exec'd, not wrapped
    wait_listening(f"tcp:127.0.0.1:{target}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/page.txt", timeout=10) as answer:
        assert answer.read() == b"served by the program"


def test_a_bad_address_is_refused_with_its_text():
    proc = subprocess.run([sys.executable, "-c", RELAY_SOURCE, "tcp:nope", "unix:/tmp/x"], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 1 and "'tcp:nope' is not tcp:HOST:PORT or unix:PATH" in proc.stderr


def test_bridge_leaves_the_container_as_it_was():
    wiring = server_network("bridge", container_command())
    assert wiring.network_mode is None and wiring.publishes_port
    assert wiring.command == container_command() and wiring.gateway_command is None and wiring.socket_dir is None


def test_airgap_wiring_has_no_network_and_a_gateway_on_the_socket():
    wiring = server_network("airgap", container_command())
    assert wiring.network_mode == "none" and not wiring.publishes_port
    assert wiring.command[:2] == ["python3", "-c"]
    assert wiring.command[3:5] == [f"unix:{API_SOCKET}", "tcp:127.0.0.1:9997"]
    assert wiring.command[5:] == ["--", *container_command()]
    assert wiring.gateway_command[3:] == ["tcp:0.0.0.0:9997", f"unix:{API_SOCKET}"]
    assert wiring.socket_dir == SOCKET_DIR and API_SOCKET.startswith(SOCKET_DIR + "/")
    with pytest.raises(ValueError, match="container.network must be one of"):
        server_network("internal", container_command())


def test_the_network_field():
    assert load_stack_config(namespaced(docker_stack())).container.network == "bridge"
    cfg = load_stack_config(namespaced(docker_stack(container={"network": "airgap"})))
    assert cfg.container.network == "airgap"
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(docker_stack(container={"network": "internal"})))
    assert [p.path for p in info.value.problems] == ["container.network"]
    assert "'bridge' or 'airgap'" in str(info.value)


def test_airgap_is_refused_in_cluster_mode_by_name():
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(cluster(container={"network": "airgap"})))
    assert [str(p) for p in info.value.problems] == [
        "container.network = 'airgap': is docker mode only: cluster containers share the host's network; fix: "
        "remove container.network (or set bridge), or deploy each server as its own docker-mode stack"]


def test_airgap_graph_server_without_network_gateway_publishing_the_port():
    mocks, exports = run_program(docker_stack(container={"network": "airgap", "bind_address": "127.0.0.1"}))
    containers = {r.name: r.inputs for r in mocks.of_type(CONTAINER)}
    assert set(containers) == {"xinference-server-container", "xinference-server-gateway"}
    server, gateway = containers["xinference-server-container"], containers["xinference-server-gateway"]
    assert server["networkMode"] == "none" and "ports" not in server
    assert server["deviceRequests"]  # the GPUs stay with the server
    assert gateway["name"] == gateway_container_name("xinference") == "xinference-gateway"
    assert gateway["ports"] == [{"internal": 9997, "external": 9997, "ip": "127.0.0.1"}]
    assert "networkMode" not in gateway and "deviceRequests" not in gateway  # docker's default bridge, no GPU
    assert gateway["image"] == server["image"]  # the Xinference image: nothing else crosses the gap
    volume = mocks.one("docker:index/volume:Volume").inputs
    assert volume["name"] == "xinference-api"
    shared = {"type": "volume", "source": "xinference-api", "target": SOCKET_DIR}
    assert shared in server["mounts"] and gateway["mounts"] == [shared]
    # the preflight tells ours from a foreign container by this label
    for inputs in (server, gateway):
        assert {"label": "xinference-offline/stack", "value": "gpu-node-1"} in inputs["labels"]
    assert gateway["healthcheck"]["tests"][-1].endswith("urlopen('http://127.0.0.1:9997/status', timeout=5)")
    assert exports["endpoint"] == "http://127.0.0.1:9997"  # unchanged: the gateway holds the same port


def test_ssh_docker_host_gets_the_same_wiring_on_that_host():
    docker = {"host": "ssh://ops@gpu-node-2", "known_hosts": "/home/ops/kh", "ssh_key": "/home/ops/.ssh/id"}
    mocks, exports = run_program(docker_stack(container={"network": "airgap"}, docker=docker))
    assert mocks.one("pulumi:providers:docker").inputs["host"] == "ssh://ops@gpu-node-2"
    for name in ("xinference-server-container", "xinference-server-gateway", "xinference-server-api"):
        # the provider reference is "<urn>::<id>": the ssh:// host's provider, the only one
        assert mocks.resources[name].provider.split("::")[-1] == "xinference-docker-id", name
    assert exports["endpoint"] == "http://gpu-node-2:9997"


def test_the_relay_is_a_file_and_its_text_is_what_deployed_stacks_run():
    """The relay lives in stackspec/airgap_relay.py (ruff and mypy read it); its text is the containers' command,
    so a changed byte would replace every airgap stack's containers on its next `up`: pinned here."""
    assert RELAY_SOURCE == (Path(__file__).resolve().parent.parent / "stackspec" / "airgap_relay.py").read_text()
    assert hashlib.sha256(RELAY_SOURCE.encode()).hexdigest() == \
        "7197001f4b7ab0754155cc474b7350f14650234a4ffe2dc9a77dce33c99cdd8c"
