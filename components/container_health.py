"""Why a stack's container failed, told at the next `preview` or `up`.

When a container never becomes healthy, pulumi-docker says only "container failed to be in healthy
state", after the whole wait (ten minutes by default). The reason is in the container: it is
restarting or exited with an error, its health probe's last output, its log. The program reads
those at the start of the next command for each of the stack's containers and warns with them,
so the operator's next step is the fix, not `docker inspect`.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from components.docker_cli import DockerHostUnreachable, run_docker
from stackspec.config import DockerHostConfig, StackConfig
from stackspec.launch import cluster_container_name

LOG_LINES = 12
# `docker stop` ends the process with SIGTERM (143) or, after the grace period, SIGKILL (137):
# a container stopped that way was stopped, it did not fail.
STOPPED_EXIT_CODES = (0, 137, 143)
# One or two restarts of a container that is starting can be an engine or host restart; a crash
# loop passes three within a minute or two.
CRASH_LOOP_RESTARTS = 3


def stack_containers(cfg: StackConfig) -> list[tuple[DockerHostConfig, str]]:
    """(engine, container name) of each container the stack runs."""
    if cfg.mode == "docker":
        return [(cfg.docker, cfg.container.name)]
    if cfg.mode != "cluster":
        return []
    rows = [(server.docker, cluster_container_name(cfg, "supervisor")) for server in cfg.servers if server.supervisor]
    return rows + [(server.docker, cluster_container_name(cfg, "worker")) for server in cfg.servers]


def trouble(state: dict[str, Any], restarts: int) -> Optional[str]:
    """What is wrong with a container in ``state`` (docker inspect's .State), or None."""
    health = state.get("Health") or {}
    exit_code = state.get("ExitCode")
    if state.get("Restarting"):
        return f"restarting: it exited with code {exit_code}, and docker has restarted it {restarts} times"
    if restarts >= CRASH_LOOP_RESTARTS and state.get("Running") and health.get("Status") != "healthy":
        # between two exits of a crash loop: running, the last exit code already reset
        return f"not healthy ({health.get('Status') or 'no health check'}) and docker has restarted it {restarts} times"
    if not state.get("Running") and exit_code not in STOPPED_EXIT_CODES:
        return f"exited with code {exit_code}" + (f" ({state['Error']})" if state.get("Error") else "")
    if state.get("Running") and health.get("Status") == "unhealthy":
        probes = health.get("Log") or []
        last = (probes[-1].get("Output") or "").strip() if probes else ""
        return f"unhealthy: its health probe failed {health.get('FailingStreak', 0)} times in a row" + (
            f", last saying: {last[-300:]}" if last else "")
    return None


def interleaved(stdout: str, stderr: str) -> list[str]:
    """The container's two streams (`docker logs` gives them apart) in the order docker read them,
    without the timestamps (fixed-width RFC 3339 with nanoseconds: they sort as text)."""
    stamped = [line.partition(" ") for line in (*stdout.splitlines(), *stderr.splitlines()) if line.strip()]
    return [text for _, _, text in sorted(stamped, key=lambda parts: parts[0])]


def container_trouble(host: DockerHostConfig, name: str, ssh_argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """A warning about container ``name`` on ``host`` when it is failing, with its log's last lines."""
    try:
        inspected = run_docker(host.host, ["container", "inspect", "--format", "{{json .State}} {{.RestartCount}}",
                                           name], ssh_argv=ssh_argv)
        if inspected.returncode != 0:
            return None  # gone (up makes it) or the engine does not answer (the host checks say so)
        state_json, _, restarts = inspected.stdout.strip().rpartition(" ")
        what = trouble(json.loads(state_json), int(restarts or 0))
        if what is None:
            return None
        logs = run_docker(host.host, ["logs", "--timestamps", "--tail", str(LOG_LINES), name], ssh_argv=ssh_argv)
    except DockerHostUnreachable:
        return None
    lines = "\n".join(f"    {line}" for line in interleaved(logs.stdout, logs.stderr)[-LOG_LINES:])
    return (f"container {name} on {host.host} is {what}. The last lines of its log (all of it: `docker logs {name}` "
            f"on that host):\n{lines or '    (empty)'}\nThe cause is usually there; once it is fixed, `up` "
            f"replaces or restarts the container.")


def trouble_notes(cfg: StackConfig) -> list[str]:
    """A warning for each of the stack's containers that is failing now."""
    notes = []
    for host, name in stack_containers(cfg):
        if host.check_daemon:
            note = container_trouble(host, name, host.ssh_argv())
            if note:
                notes.append(note)
    return notes
