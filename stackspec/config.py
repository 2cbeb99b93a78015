"""The stack config of one server (or one existing Xinference endpoint), as pydantic models.

Everything an operator can write under ``config:`` in ``stacks/Pulumi.<stack>.yaml`` is
declared here, strictly (``extra="forbid"``), with a description per field that also feeds
the README's config reference. ``stackspec.load.load_stack_config`` is the only way in: it
validates every section and every model separately, then runs the cross-field rules
(stackspec/rules.py) on whatever parsed, so an operator sees every problem of a config in one
run, each with the key path, the bad value and the fix.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator
from pydantic_core import PydanticCustomError

from stackspec.docker_host import LOCAL_DOCKER, SCHEMES
from stackspec.model_inputs import default_of
from stackspec.ssh import SshTarget, ssh_target
from stackspec.values import (GpuCount, HostDir, ModelDir, Number, OptionalHostDir, OptionalModelDir, OptionalNumber,
                         SizeInBillions, WholeNumber, WholeNumbers)
from stackspec.xinference import CONTAINER_MODELS_DIR, CONTAINER_PORT, SUPERVISOR_ACTOR_PORT, WORKER_PORT, ModelType


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuConfig(_Strict):
    """One GPU of the server, as `nvidia-smi` numbers it on the host."""

    id: WholeNumber = Field(ge=0, description="Host GPU index (`nvidia-smi --query-gpu=index`).")
    vram_gb: OptionalNumber = Field(
        default=None, gt=0,
        description="Memory of this GPU in GB; the models on it (their `vram_gb`, declared or estimated, or the share "
                    "vLLM/SGLang reserve) must fit in it (docs/provider.md)."
    )


class DockerHostConfig(_Strict):
    """Where the Docker engine that runs Xinference lives."""

    host: str = Field(
        default=LOCAL_DOCKER,
        description="Docker engine address: `unix:///var/run/docker.sock` (this machine) or `ssh://user@host`.",
    )
    ssh_opts: list[str] = Field(default_factory=list, description="ssh options for an `ssh://` host, used by every "
                                "client (docker provider, image load, file copy): `-i FILE` and `-o Key=Value` only.")
    check_daemon: bool = Field(
        default=True, description="false: do not contact the engine when configuring (lets `preview` run without it)."
    )
    ssh_key: Optional[str] = Field(
        default=None, description="Private key file for an `ssh://` host, used by every client (default: `-i` in "
                                  "ssh_opts, else the ssh agent)."
    )
    known_hosts: Optional[str] = Field(
        default=None, description="known_hosts file holding the `ssh://` host's key (default: ~/.ssh/known_hosts); "
                                  "an unknown host key is refused (StrictHostKeyChecking=yes unless ssh_opts says)."
    )

    @field_validator("host")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(rf"^({'|'.join(SCHEMES)})://.+", value):
            raise ValueError("must start with unix://, ssh:// or tcp:// (e.g. ssh://ops@gpu-node-2)")
        return value

    @property
    def ssh(self) -> Optional[SshTarget]:
        """How every client reaches this host over ssh (None unless it is an ssh:// host)."""
        return ssh_target(self.host, self.ssh_opts, self.ssh_key, self.known_hosts)

    def ssh_argv(self) -> Optional[list[str]]:
        """The `ssh ... HOST` words the docker CLI runs through for an ssh:// host; None for any other."""
        target = self.ssh
        return target.argv() if target is not None else None


class ImageConfig(_Strict):
    """The Xinference image: loaded from the bundled tar, never pulled."""

    name: str = Field(min_length=1, description="Image reference as inside the tar, e.g. `xprobe/xinference:v1.12.0`.")
    tar: Optional[str] = Field(
        default=None, description="Path of the `docker save` tar on the machine running Pulumi; omit if already loaded."
    )
    tar_sha256: Optional[str] = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the tar (from the bundle manifest); a new value reloads the image.",
    )


class HealthcheckConfig(_Strict):
    """Docker healthcheck timing (the check itself is a Python one-liner, no curl needed)."""

    interval_s: WholeNumber = Field(default=30, ge=1, description="Seconds between checks.")
    timeout_s: WholeNumber = Field(default=10, ge=1, description="Seconds one check may take.")
    retries: WholeNumber = Field(default=5, ge=1, description="Failures in a row before the container is unhealthy.")
    start_period_s: WholeNumber = Field(default=120, ge=0, description="Grace period after start.")


class ContainerConfig(_Strict):
    """The Xinference container (the docker-compose service of the reference job)."""

    name: str = Field(default="xinference", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Container name.")
    port: WholeNumber = Field(default=CONTAINER_PORT, ge=1, le=65535,
                              description=f"Host port published for Xinference's port {CONTAINER_PORT}.")
    supervisor_port: WholeNumber = Field(
        default=SUPERVISOR_ACTOR_PORT, ge=1, le=65535,
        description="cluster mode: the supervisor's actor port, bound on its server's address (host network).")
    worker_port: WholeNumber = Field(
        default=WORKER_PORT, ge=1, le=65535,
        description="cluster mode: each worker's actor port, bound on its server's address (host network).")
    bind_address: IPvAnyAddress = Field(
        default=IPv4Address("0.0.0.0"),
        description="Host address the port is published on (`127.0.0.1`: reachable from this machine only).",
    )
    network: Literal["bridge", "airgap"] = Field(
        default="bridge",
        description="`bridge`: docker's default network, the port published on the container. `airgap`: the "
                    "container gets no network but loopback (no route out, so nothing can reach a hub), and a "
                    "gateway container (`<name>-gateway`, same image) publishes the port and relays the API to it "
                    "over a unix socket in a shared volume (docs/airgap.md). docker mode only.",
    )
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = Field(
        default="unless-stopped", description="Docker restart policy."
    )
    shm_size_mb: WholeNumber = Field(default=8192, ge=64, description="Shared memory (/dev/shm) in MB.")
    healthcheck: HealthcheckConfig = Field(default_factory=HealthcheckConfig, description="Healthcheck timing.")
    wait_timeout_s: WholeNumber = Field(default=600, ge=30,
                                        description="Seconds `up` waits for the container to be healthy.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment overrides (win over the offline defaults).")
    log_max_size: str = Field(default="100m", pattern=r"^\d+[kmg]$", description="json-file log rotation size.")
    log_max_file: WholeNumber = Field(default=5, ge=1, description="json-file log files kept.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra container labels.")
    models_read_only: bool = Field(default=False, description="Mount the model directory read-only.")
    data_dir: Optional[str] = Field(
        default=None,
        description="Host directory kept as XINFERENCE_HOME (logs, autostart registry, auth db) across replacements.",
    )

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_as_text(cls, value: Any) -> Any:
        # YAML turns `HF_HUB_OFFLINE: 1` into an int; docker wants text, so accept scalars.
        if isinstance(value, Mapping):
            return {k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, (int, float, bool)) else v
                    for k, v in value.items()}
        return value


class ModelSource(_Strict):
    """Where `bundle build` fetches a model's files on the online machine."""

    hub: Literal["modelscope", "huggingface", "local"] = Field(description="modelscope, huggingface or local.")
    id: Optional[str] = Field(default=None, description="Repository id on the hub, e.g. `maidalun/bce-embedding-base_v1`.")
    revision: Optional[str] = Field(default=None, description="Pinned revision (tag or commit) on the hub.")
    path: Optional[str] = Field(default=None, description="Local directory to copy from (hub: local).")


class CompanionDir(_Strict):
    """Files a model needs beside its own (e.g. SenseVoiceSmall's fsmn-vad VAD model)."""

    path: ModelDir = Field(description="Directory relative to `models_dir` (point the model at it through `extra`).")
    source: Optional[ModelSource] = Field(default=None, description="Where `bundle build` gets the files.")


class ModelConfig(_Strict):
    """One model to keep launched (one `xinference launch` line of the reference job)."""

    uid: str = Field(description="Model uid in Xinference (unique per server).")
    name: Optional[str] = Field(default=None, description="Xinference model_name; defaults to the uid.")
    type: ModelType = Field(
        description="Xinference model_type."
    )
    enabled: bool = Field(default=True, description="false keeps the entry but launches nothing (and terminates it).")
    gpus: WholeNumbers = Field(default_factory=list, description="Host GPU ids the model runs on; empty = CPU.")
    path: OptionalModelDir = Field(
        default=None, description="Model directory, relative to `models_dir` (or absolute on the server); written "
                                  "once canonically: `emb/`, `./emb` are `emb`, one under models_dir is made relative.",
    )
    engine: Optional[str] = Field(default=None, description="model_engine (required for LLM: vllm, transformers, ...).")
    format: Optional[str] = Field(default=None, description="model_format (pytorch, gptq, awq, ggufv2, ...).")
    size_in_billions: SizeInBillions = Field(default=None, description="model_size_in_billions.")
    quantization: Optional[str] = Field(default=None, description="quantization (none, 4-bit, Q4_K_M, ...).")
    replica: WholeNumber = Field(default=default_of("replica"), ge=1, description="Number of replicas.")
    n_gpu: GpuCount = Field(default=None, description="n_gpu: a count or `auto`.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Other launch kwargs, passed through as-is.")
    vram_gb: OptionalNumber = Field(default=None, gt=0,
                                      description="VRAM the model needs on each of its GPUs, in GB (default: estimated "
                                                  "from its files, see docs/provider.md).")
    source: Optional[ModelSource] = Field(default=None, description="Where `bundle build` gets the files.")
    companions: list[CompanionDir] = Field(default_factory=list, description="Extra directories the model needs.")
    launch_timeout_s: Number = Field(default=default_of("launch_timeout"), gt=0,
                                description="Seconds a launch may take before it fails.")
    autostart: bool = Field(default=default_of("autostart"),
                            description="Register in Xinference's autostart registry (heals restarts).")
    smoke_test: bool = Field(default=default_of("smoke_test"),
                             description="Send one request after launch so `up` ends with a serving model.")
    server: Optional[str] = Field(default=None, description="cluster mode: name of the server (in `servers`) it runs on.")
    custom: Optional[dict[str, Any]] = Field(
        default=None,
        description="A site's own model, registered under `name` before its launch (and not checked against the "
                    "catalog): the fields of Xinference's model family besides the name and files, as "
                    "`/v1/model_registrations/{type}` takes them, e.g. `{dimensions: 384, max_tokens: 512, "
                    "language: [en]}` for an embedding; the files are `path`. Its `virtualenv: {packages: [...]}` "
                    "is carried as wheels like a built-in model's (README, Engine packages).",
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _single_gpu_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value  # a boolean too, to be refused as a GPU id

    @property
    def model_name(self) -> str:
        return self.name or self.uid


def _plain_gpu_ids(value: Any) -> Any:
    # `gpus: [0, 1]` is the common case; `{id, vram_gb}` adds the budget.
    if isinstance(value, list):
        return [{"id": v} if isinstance(v, int) else v for v in value]  # a boolean too, refused as the id
    return value


class ServerConfig(_Strict):
    """cluster mode: one GPU server running an Xinference worker (and the supervisor on one of them)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Server name, used by models' `server`.")
    address: str = Field(min_length=1, description="IP or host name the other servers reach it at (the worker_ip).")
    supervisor: bool = Field(default=False, description="Runs the supervisor too (exactly one server).")
    docker: DockerHostConfig = Field(default_factory=DockerHostConfig, description="Docker engine of this server.")
    gpus: list[GpuConfig] = Field(default_factory=list, description="This server's GPUs given to its worker.")
    models_dir: OptionalHostDir = Field(default=None,
                                          description="Host model directory here (default: `models_dir`).")

    _gpu_ids_as_mappings = field_validator("gpus", mode="before")(classmethod(lambda cls, v: _plain_gpu_ids(v)))

    @property
    def gpu_ids(self) -> list[int]:
        return [g.id for g in self.gpus]


class StackConfig(_Strict):
    """Everything under `config:` in a stack file (keys are namespaced `xinference-offline:<key>`)."""

    mode: Literal["docker", "existing", "cluster"] = Field(
        default="docker",
        description="`docker`: this stack owns the image and container; `existing`: deploy models to `endpoint`; "
                    "`cluster`: a supervisor and one worker per entry of `servers`.",
    )
    endpoint: Optional[str] = Field(
        default=None,
        description="Xinference URL. Required in `existing` mode; in `docker` mode overrides the derived address.",
    )
    endpoint_ca_bundle: Optional[str] = Field(
        default=None,
        description="PEM file of the CA that signed an `https://` endpoint's certificate (absolute path on the machine "
                    "running Pulumi); without it the public CAs are trusted. Certificates are always verified.",
    )
    docker: DockerHostConfig = Field(default_factory=DockerHostConfig, description="Docker engine to use.")
    image: Optional[ImageConfig] = Field(default=None, description="Xinference image (required in `docker` mode).")
    container: ContainerConfig = Field(default_factory=ContainerConfig, description="Container settings.")
    gpus: list[GpuConfig] = Field(default_factory=list, description="The server's GPUs given to Xinference.")
    models_dir: HostDir = Field(
        default="/data/docker_models", description=f"Host model directory, mounted at `{CONTAINER_MODELS_DIR}`."
    )
    models: list[ModelConfig] = Field(default_factory=list, description="Models to keep launched.")
    servers: list[ServerConfig] = Field(default_factory=list, description="cluster mode: the GPU servers.")
    auth: bool = Field(default=False, description="Keep Xinference auth on (then `api_key` must be set, as a secret).")
    api_key: Optional[str] = Field(
        default=None,
        description="Xinference credential for deploying: `username:password` or an access token (4.1 API keys "
                    "cannot launch models, see docs/provider.md); set with `pulumi config set --secret`.",
    )
    bundle_dir: Optional[str] = Field(
        default=None, description="Unpacked offline bundle; its MANIFEST.json gives the image and weights digests."
    )

    _gpu_ids_as_mappings = field_validator("gpus", mode="before")(classmethod(lambda cls, v: _plain_gpu_ids(v)))

    @field_validator("endpoint_ca_bundle")
    @classmethod
    def _ca_file_path(cls, value: Optional[str]) -> Optional[str]:
        # Where the file is and what it holds is checked where it is used (__main__.py,
        # stackspec.stack_file.endpoint_ca_problems).
        if value is not None and (not value.startswith("/") or any(ord(c) < 0x20 for c in value)):
            raise PydanticCustomError("ca_bundle_path", "must be the absolute path of a PEM file",
                                      {"fix": "write e.g. /etc/xinference/ca.pem"})
        return value

    @property
    def enabled_models(self) -> list[ModelConfig]:
        return [m for m in self.models if m.enabled]

    @property
    def gpu_ids(self) -> list[int]:
        return [g.id for g in self.gpus]

    def server(self, name: Optional[str]) -> Optional[ServerConfig]:
        return next((s for s in self.servers if s.name == name), None)

    @property
    def supervisor(self) -> Optional[ServerConfig]:
        return next((s for s in self.servers if s.supervisor), None)
