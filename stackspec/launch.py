"""Pure functions from the stack config to what gets run: env, endpoint, per-model launch specs
(each model's XinferenceModel inputs, stackspec/model_inputs.py).

Nothing here touches Pulumi or the network, so `bundle plan`, the program and the tests all
see the same answers.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping, Optional

from stackspec.config import DockerHostConfig, ModelConfig, ServerConfig, StackConfig
from stackspec.custom_model import family_digest, registration_family
from stackspec.engine_packages import launch_kwargs, stack_packages, virtualenv_env
from stackspec.docker_host import remote_docker_hostname
from stackspec.model_inputs import ModelInputs
from stackspec.placement import container_gpu_indices
from stackspec.xinference import CONTAINER_HOME, CONTAINER_MODELS_DIR, CONTAINER_PORT, SUPERVISOR_ACTOR_PORT

# Offline defaults: no hub access, no per-model virtualenvs unless the stack carries their packages
# (then they install from the carried wheels only: stackspec/engine_packages.virtualenv_env), CUDA
# numbering that agrees with nvidia-smi. The stack's container.env wins over these.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "XINFERENCE_MODEL_SRC": "modelscope",
    "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "XINFERENCE_HOME": CONTAINER_HOME,
}


def container_env(cfg: StackConfig) -> dict[str, str]:
    env = dict(OFFLINE_ENV)
    if not cfg.auth:
        env["XINFERENCE_AUTH_ADVANCED"] = "0"  # 4.x turns auth on by default
    if stack_packages(cfg):
        env.update(virtualenv_env())
    env.update(cfg.container.env)
    return env


def container_command(role: str = "local", address: str = "", supervisor_url: str = "", port: int = CONTAINER_PORT,
                      actor_port: int = SUPERVISOR_ACTOR_PORT) -> list[str]:
    """The Xinference process of a container: one-box (`local`), `supervisor` or `worker`.

    Cluster containers use host networking (model processes listen on random ports the other
    servers must reach), so they bind to the server's own address; ``actor_port`` is the
    supervisor's or the worker's (container.supervisor_port / worker_port).
    """
    if role == "supervisor":
        return ["xinference-supervisor", "-H", address, "--port", str(port),
                "--supervisor-port", str(actor_port)]
    if role == "worker":
        return ["xinference-worker", "-e", supervisor_url, "-H", address, "--worker-port", str(actor_port)]
    return ["xinference-local", "-H", "0.0.0.0", "--port", str(CONTAINER_PORT)]


def cluster_bound_ports(cfg: StackConfig) -> list[tuple[ServerConfig, str, int, str]]:
    """(server, role, port, key) for each fixed port a cluster container binds on its server's
    address (host network): the supervisor's REST and actor ports, each worker's port; ``key``
    is the setting that moves it."""
    rows = []
    for server in cfg.servers:
        if server.supervisor:
            rows += [(server, "supervisor", cfg.container.port, "container.port"),
                     (server, "supervisor", cfg.container.supervisor_port, "container.supervisor_port")]
        rows.append((server, "worker", cfg.container.worker_port, "container.worker_port"))
    return rows


def healthcheck_command(role: str = "local", address: str = "127.0.0.1", port: int = CONTAINER_PORT) -> list[str]:
    # The image has Python but not necessarily curl. A worker serves no HTTP: check its actor port (``port``).
    if role == "worker":
        probe = f"import socket; socket.create_connection(('{address}', {port}), timeout=5).close()"
    else:
        probe = f"import urllib.request; urllib.request.urlopen('http://{address}:{port}/status', timeout=5)"
    return ["CMD", "python3", "-c", probe]


def endpoint_url(cfg: StackConfig) -> str:
    """The URL the provider uses to reach Xinference (the supervisor, in a cluster)."""
    if cfg.endpoint:
        return cfg.endpoint.rstrip("/")
    if cfg.mode == "cluster":
        supervisor = cfg.supervisor
        return f"http://{supervisor.address if supervisor else 'supervisor'}:{cfg.container.port}"
    return f"http://{remote_docker_hostname(cfg.docker.host) or '127.0.0.1'}:{cfg.container.port}"


def cluster_container_name(cfg: StackConfig, role: str) -> str:
    """The container name of a cluster's "supervisor" or "worker" (one of each at most per server)."""
    return f"{cfg.container.name}-{role}"


def models_dir_of(cfg: StackConfig, model: ModelConfig) -> str:
    """The host model directory of the server the model runs on."""
    server = cfg.server(model.server) if cfg.mode == "cluster" else None
    return (server.models_dir if server and server.models_dir else None) or cfg.models_dir


def model_dir_on_server(cfg: StackConfig, model: ModelConfig) -> str:
    """Where the model's files are as Xinference sees them (inside the container in docker mode)."""
    path = model.path or model.uid
    if cfg.mode == "existing":
        return path if path.startswith("/") else posixpath.join(cfg.models_dir, path)
    if path.startswith("/"):
        path = posixpath.relpath(posixpath.normpath(path), models_dir_of(cfg, model))
    return posixpath.join(CONTAINER_MODELS_DIR, path)


def model_dir_on_host(cfg: StackConfig, model: ModelConfig) -> str:
    path = model.path or model.uid
    return path if path.startswith("/") else posixpath.join(models_dir_of(cfg, model), path)


class LaunchSpec(ModelInputs):
    """One XinferenceModel's inputs as the stack plans them (all but the container's id, an output of
    the container), plus what `bundle plan` shows beside them."""

    host_gpus: list[int]
    vram_gb: Optional[float] = None
    server: Optional[str] = None  # cluster: the server it is placed on (worker_ip: its address)
    custom_family: Optional[dict[str, Any]] = None  # a custom model: the family registered before its launch


def container_engine(cfg: StackConfig, server: Optional[ServerConfig]) -> Optional[DockerHostConfig]:
    """The docker engine that runs a model's container (on ``server`` in a cluster); None in existing
    mode, which has none. The provider asks it whether the container is gone."""
    if cfg.mode == "docker":
        return cfg.docker
    return server.docker if cfg.mode == "cluster" and server is not None else None


def launch_specs(cfg: StackConfig, weights_digests: Mapping[str, str]) -> list[LaunchSpec]:
    """One spec per enabled model, with host GPU ids mapped to the container's indices.

    Made from the validated stack config without judging it again: the provider's check judges
    the inputs (stackspec/model_inputs.py), once, as the engine hands them over.
    """
    specs = []
    carrying = {p.uid: p for p in stack_packages(cfg)}
    for model in cfg.enabled_models:
        server = cfg.server(model.server) if cfg.mode == "cluster" else None
        # In existing mode nobody renumbers GPUs: the server's ids are what Xinference sees.
        if cfg.mode == "existing":
            gpu_idx = list(model.gpus)
        else:
            gpu_idx = container_gpu_indices(server.gpu_ids if server else cfg.gpu_ids, model.gpus)
        docker = container_engine(cfg, server)
        family = registration_family(model.type, model.model_name, model_dir_on_server(cfg, model), model.custom,
                                     model.format, model.quantization, model.size_in_billions) \
            if model.custom is not None else None
        specs.append(LaunchSpec.model_construct(
            endpoint=endpoint_url(cfg),
            endpoint_ca_bundle=cfg.endpoint_ca_bundle,
            docker_host=docker.host if docker is not None else None,
            docker_ssh=docker.ssh_argv() if docker is not None else None,
            model_uid=model.uid,
            model_name=model.model_name,
            model_type=model.type,
            model_path=model_dir_on_server(cfg, model),
            gpu_idx=gpu_idx,
            host_gpus=list(model.gpus),
            replica=model.replica,
            launch_timeout=model.launch_timeout_s,
            autostart=model.autostart,
            smoke_test=model.smoke_test,
            # named when its virtualenv installs packages: the worker installs an engine's only when named
            model_engine=carrying[model.uid].engine if model.uid in carrying else model.engine,
            model_format=model.format,
            model_size_in_billions=model.size_in_billions,
            quantization=model.quantization,
            n_gpu=model.n_gpu,
            extra={**(launch_kwargs() if model.uid in carrying else {}), **model.extra},
            vram_gb=model.vram_gb,
            weights_digest=weights_digests.get(model.uid, ""),
            server=server.name if server else None,
            worker_ip=server.address if server else None,
            custom_family=family,
            registration_digest=family_digest(family) if family is not None else None,
        ))
    return specs
