"""Preflight of a docker host before anything is touched: can it give a container GPUs?

"could not select device driver with capabilities [[gpu]]" is the most asked question about
GPUs in Docker: the engine has no NVIDIA runtime (nvidia-container-toolkit), so a container
that reserves GPUs is created and then fails to start. The program asks the engine first,
at preview and at up, and refuses the stack with the fix instead.

Two ways an engine can serve GPU device requests, both accepted:
- a runtime named ``nvidia`` in ``docker info`` (what `nvidia-ctk runtime configure` sets up);
- the NVIDIA device driver dockerd registers by itself when `nvidia-container-runtime-hook`
  is on its PATH, which ``docker info`` does not show: a probe container that requests the
  GPUs is started from an empty image. The daemon picks the device driver before it runs
  anything, so "could not select device driver" means no GPU runtime; any later failure
  (the empty image has nothing to execute) means the driver was found. The probe container
  and image are removed again.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Optional, Sequence

from components.docker_cli import DockerHostUnreachable, container_state, empty_image_tar, run_docker
from components.driver_check import driver_problem
from components.ssh_keys import host_key_problem
from components.volume import missing_directories
from stackspec.airgap import gateway_container_name
from stackspec.config import DockerHostConfig, StackConfig
from stackspec.docker_host import is_local_docker
from stackspec.launch import cluster_bound_ports, cluster_container_name, model_dir_on_host
from stackspec.placement import gpu_device_ids

NO_DRIVER_MARK = "could not select device driver"
PROBE_IMAGE = "xinference-offline/gpu-probe:empty"


def runtime_names(info_json: str) -> list[str]:
    """The runtimes of a ``docker info --format '{{json .}}'`` answer."""
    return sorted((json.loads(info_json).get("Runtimes") or {}).keys())


def probe_says_no_driver(start_stderr: str) -> bool:
    """Did the probe container fail because the engine has no GPU device driver?"""
    return NO_DRIVER_MARK in start_stderr


def missing_runtime_message(docker_host: str, gpu_ids: Sequence[int], detail: str) -> str:
    ids = ",".join(gpu_device_ids(gpu_ids))
    return (
        f"docker host {docker_host} has no NVIDIA GPU runtime, so a container cannot reserve host GPUs {ids} "
        f"(config key `gpus`): {(detail.strip().splitlines() or ['no detail'])[0]}. "
        "Fix: on that host install the NVIDIA Container Toolkit "
        "(apt-get install nvidia-container-toolkit), then `nvidia-ctk runtime configure --runtime=docker` and "
        "restart dockerd; check with `docker run --rm --gpus all <image> nvidia-smi`. For a CPU-only server set "
        "`gpus: []`."
    )


def gpu_runtime_problem(docker_host: str, gpu_ids: Sequence[int], ssh_argv: Optional[Sequence[str]] = None
                        ) -> Optional[str]:
    """None when ``docker_host`` can start a container with these GPUs reserved; else the message."""
    if not gpu_ids:
        return None
    info = run_docker(docker_host, ["info", "--format", "{{json .}}"], ssh_argv=ssh_argv)
    if info.returncode != 0:
        raise DockerHostUnreachable(f"docker host {docker_host} does not answer: {info.stderr.strip()}")
    if "nvidia" in runtime_names(info.stdout):
        return None
    imported = run_docker(docker_host, ["import", "--change", "LABEL managed-by=xinference-offline", "-",
                                        PROBE_IMAGE], stdin=empty_image_tar(), ssh_argv=ssh_argv)
    if imported.returncode != 0:
        return f"docker host {docker_host}: the GPU preflight could not make its probe image: {imported.stderr.strip()}"
    name = f"xinference-offline-gpu-probe-{uuid.uuid4().hex[:8]}"
    try:
        created = run_docker(docker_host, ["create", "--name", name, "--network", "none",
                                           "--gpus", '"device=' + ",".join(gpu_device_ids(gpu_ids)) + '"',
                                           PROBE_IMAGE, "/no-such-program"], ssh_argv=ssh_argv)
        if created.returncode != 0:
            return f"docker host {docker_host}: the GPU preflight could not create its probe: {created.stderr.strip()}"
        started = run_docker(docker_host, ["start", name], ssh_argv=ssh_argv)
        if started.returncode != 0 and probe_says_no_driver(started.stderr):
            return missing_runtime_message(docker_host, gpu_ids, started.stderr)
        return None
    finally:
        run_docker(docker_host, ["rm", "-f", name], ssh_argv=ssh_argv)
        run_docker(docker_host, ["rmi", PROBE_IMAGE], ssh_argv=ssh_argv)


def gpu_reservations(cfg: StackConfig) -> list[tuple[str, list[int]]]:
    """(docker host, host GPU ids) of every container the stack reserves GPUs for, on engines it
    may contact (``docker.check_daemon``); one entry per host, GPU ids merged."""
    if cfg.mode == "docker":
        wanted = [(cfg.docker, cfg.gpu_ids)]
    elif cfg.mode == "cluster":
        wanted = [(server.docker, server.gpu_ids) for server in cfg.servers]
    else:
        return []
    merged: dict[str, set[int]] = {}
    for host, gpu_ids in wanted:
        if gpu_ids and host.check_daemon:
            merged.setdefault(host.host, set()).update(gpu_ids)
    return [(host, sorted(ids)) for host, ids in merged.items()]


STACK_LABEL = "xinference-offline/stack"
ROLE_LABEL = "xinference-offline/role"


def foreign_containers(docker_host: str, stack: str, name: str, port: int,
                       ssh_argv: Optional[Sequence[str]] = None, other_names: Sequence[str] = ()) -> list[str]:
    """Containers not made by ``stack`` that hold its container name (or ``other_names``: the
    airgap gateway's) or host port."""
    problems = []
    queries = (*((f"name=^/{n}$", f"container name {n}", "set container.name to another name")
                 for n in (name, *other_names)),
               (f"publish={port}", f"host port {port}", "set container.port to a free port"))
    for query, what, fix in queries:
        listed = run_docker(docker_host, ["ps", "-a", "--filter", query, "--format", "{{json .}}"], ssh_argv=ssh_argv)
        if listed.returncode != 0:
            raise DockerHostUnreachable(f"docker host {docker_host} does not answer: {listed.stderr.strip()}")
        for line in listed.stdout.splitlines():
            row = json.loads(line)
            if f"{STACK_LABEL}={stack}" in (row.get("Labels") or "").split(","):
                continue  # ours: pulumi replaces or keeps it
            problems.append(
                f"docker host {docker_host}: {what} is taken by container {row.get('Names')} ({row.get('ID')}, image "
                f"{row.get('Image')}, {row.get('Status')}), which stack {stack} did not make; nothing was changed. "
                f"Fix: remove that container (`docker rm -f {row.get('Names')}`) if it is a leftover, or {fix}.")
    return problems


def port_answers(address: str, port: int, timeout: float = 1.5) -> bool:
    """Whether something accepts a TCP connection on address:port (a refusal, a timeout or an
    unreachable address all say no: only a listener is proof)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def cluster_port_problems(cfg: StackConfig, stack: str) -> list[str]:
    """Cluster containers run on the host network and bind fixed ports on their server's address.
    One held by another process makes the container exit at start and restart until `up` gives up,
    600 s later, with only "container failed to be in healthy state"; so before anything changes,
    each port of a role whose container does not run now must not answer yet."""
    problems = []
    state: dict[tuple[str, str], Optional[str]] = {}
    for server, role, port, key in cluster_bound_ports(cfg):
        if not server.docker.check_daemon:
            continue
        name = cluster_container_name(cfg, role)
        where = (server.docker.host, name)
        if where not in state:
            state[where] = container_state(server.docker.host, name, server.docker.ssh_argv())
        if state[where] in ("running", None) or not port_answers(server.address, port):
            continue  # its own container holds it (or the engine cannot say: the host checks report that)
        problems.append(
            f"server {server.name}: {server.address}:{port} ({key}) of the cluster's {role} already answers, and "
            f"stack {stack}'s {role} container {name} does not run there: another process holds the port, and the "
            f"{role} would exit at start and restart until `up` gives up. Nothing was changed. Fix: set {key} to a "
            f"free port, or stop what listens there (on that server: `ss -ltnp 'sport = :{port}'`; often an "
            f"Xinference started by hand or a leftover container on the host network: `docker ps --filter "
            f"network=host`).")
    return problems


def docker_hosts(cfg: StackConfig) -> list[DockerHostConfig]:
    """The engines the stack deploys to (each once)."""
    hosts = [cfg.docker] if cfg.mode == "docker" else [s.docker for s in cfg.servers] if cfg.mode == "cluster" else []
    return list({h.host: h for h in hosts}.values())


def docker_host_problems(cfg: StackConfig, stack: str, image_path: Optional[str] = None) -> list[str]:
    """What would make `up` fail halfway on the stack's docker hosts, found before anything changes:
    a model directory missing on this machine, an ssh host whose key is not known, a host that
    cannot give the container its GPUs or whose NVIDIA driver is older than the CUDA the image
    needs (components/driver_check.py), a container name or port held by a container this stack
    did not make, a cluster port another process holds. ``image_path``: the image's tar or the
    bundle's directory of its members (else image.tar)."""
    problems = []
    if cfg.mode == "docker" and is_local_docker(cfg.docker.host):
        problems += missing_directories({m.uid: model_dir_on_host(cfg, m) for m in cfg.enabled_models})
    ssh_of = {h.host: h.ssh_argv() for h in docker_hosts(cfg)}
    for host in docker_hosts(cfg):  # check_daemon: false is the preview of a machine that reaches no engine
        problem = host_key_problem(host.ssh) if host.ssh is not None and host.check_daemon else None
        if problem:
            problems.append(problem)
    if problems:
        return problems  # an unknown host is not asked anything
    try:
        for host, gpu_ids in gpu_reservations(cfg):
            problem = gpu_runtime_problem(host, gpu_ids, ssh_of.get(host)) or (driver_problem(
                host, cfg.image.name, image_path or cfg.image.tar, ssh_of.get(host)) if cfg.image else None)
            if problem:
                problems.append(problem)
        if cfg.mode == "docker" and cfg.docker.check_daemon:
            gateway = [gateway_container_name(cfg.container.name)] if cfg.container.network == "airgap" else []
            problems += foreign_containers(cfg.docker.host, stack, cfg.container.name, cfg.container.port,
                                           ssh_of.get(cfg.docker.host), other_names=gateway)
        if cfg.mode == "cluster":
            problems += cluster_port_problems(cfg, stack)
    except DockerHostUnreachable as exc:
        # The docker provider would only say "failed to connect to any docker daemon": name the host.
        problems.append(f"{exc}. Nothing was changed. Fix: start dockerd on that host (or correct `docker.host`), "
                        "then run the command again; `docker.check_daemon: false` skips these checks.")
    return problems


def stale_gateways(cfg: StackConfig, stack: str, remove: bool) -> list[str]:
    """The airgap gateways ``stack`` made that a stack now on another network leaves behind, one line each;
    with ``remove`` (the update itself, never its preview), removed first, and the air-gapped server
    behind them stopped first.

    Pulumi deletes a resource the program no longer declares only at the end of `up`, after the new
    server container (published on the same port) has failed to start on it; so the gateway must go
    before. The server is replaced anyway (its network changes); stopped, its models are deleted by
    the registry it keeps (components/autostart_registry.py), not through the gateway just removed."""
    if cfg.mode != "docker" or cfg.container.network == "airgap" or not cfg.docker.check_daemon:
        return []
    ssh_argv = cfg.docker.ssh_argv()

    def docker(*args: str) -> str:
        answer = run_docker(cfg.docker.host, args, ssh_argv=ssh_argv)
        if answer.returncode != 0:
            raise DockerHostUnreachable(f"docker host {cfg.docker.host}: `docker {' '.join(args)}`: "
                                        f"{answer.stderr.strip()}")
        return answer.stdout

    ours = f"label={STACK_LABEL}={stack}"
    gateways = docker("ps", "-a", "--filter", ours, "--filter", f"label={ROLE_LABEL}=gateway",
                      "--format", "{{.Names}}").split()
    if not gateways:
        return []
    why = f"container.network is now {cfg.container.network}, and the new container publishes the port it held"
    if not remove:
        return [f"up removes the airgap gateway {name} first: {why}" for name in gateways]
    servers = docker("ps", "-q", "--filter", ours, "--filter", "network=none").split()
    if servers:
        docker("stop", *servers)
    docker("rm", "-f", *gateways)
    return [f"removed the airgap gateway {name}: {why}" for name in gateways]
