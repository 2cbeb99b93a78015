"""XinferenceDeployment: one server's whole model service, composed from the other components.

    LoadedImage --image id--> XinferenceContainer --container id--> XinferenceModel x N
    ModelVolume --host path, per-model digest----------^--------------------^

In `existing` mode there is no image or container: the models are launched on a running
Xinference at `endpoint`.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_docker as docker

from bundle.contents.items import model_bundle_dir, packages_bundle_dir
from bundle.format.manifest import StackManifest
from components.container import XinferenceContainer, XinferenceContainerArgs
from components.image import LoadedImage, LoadedImageArgs, bundle_image
from components.local_repair import LocalModelRepair, LocalModelRepairArgs
from components.model import XinferenceModel, XinferenceModelArgs
from components.model_registration import XinferenceRegistration, XinferenceRegistrationArgs
from components.remote_sync import RemoteModelSync, RemoteModelSyncArgs, directory_copies
from components.volume import ModelVolume, ModelVolumeArgs, weights_digests
from stackspec.config import DockerHostConfig, StackConfig
from stackspec.docker_host import is_local_docker, is_ssh_docker
from stackspec.engine_packages import stack_packages
from stackspec.launch import (LaunchSpec, cluster_container_name, container_command, container_env, endpoint_url,
                         healthcheck_command, launch_specs, model_dir_on_host)
from stackspec.xinference import PACKAGES_DIR


@dataclass
class XinferenceDeploymentArgs:
    """Inputs of XinferenceDeployment."""

    config: StackConfig
    """The validated stack config."""
    stack: str
    """Stack name (used in labels)."""
    manifest: Optional[StackManifest] = None
    """This stack's view of the unpacked offline bundle, when the stack names one."""


def image_digest(cfg: StackConfig, manifest: Optional[StackManifest]) -> str:
    """What triggers a reload: declared sha256, else the manifest's, else a fingerprint of the tar."""
    if cfg.image is None:
        return ""
    if cfg.image.tar_sha256:
        return cfg.image.tar_sha256
    if manifest and manifest.image_sha256():
        return manifest.image_sha256() or ""
    if cfg.image.tar:
        if os.path.isfile(cfg.image.tar):
            stat = os.stat(cfg.image.tar)
            return f"fp:{stat.st_size}:{stat.st_mtime_ns}"
    return ""


def image_tar_path(cfg: StackConfig, manifest: Optional[StackManifest]) -> Optional[str]:
    """The tar to load: the bundle's image tar when the stack names a bundle, else image.tar. None for a
    bundle that keeps the image as its members (components/image.py bundle_image loads those)."""
    if manifest and manifest.role("image") and cfg.bundle_dir:
        return os.path.join(cfg.bundle_dir, manifest.entry.image_tar) if manifest.entry.image_tar else None
    return cfg.image.tar if cfg.image else None


def image_files_path(cfg: StackConfig, manifest: Optional[StackManifest]) -> Optional[str]:
    """Where the image's files are on this machine: its tar, or the bundle's directory of its members."""
    if manifest and manifest.role("image") and cfg.bundle_dir and manifest.entry.image_dir:
        return os.path.join(cfg.bundle_dir, manifest.entry.image_dir)
    return image_tar_path(cfg, manifest)


class XinferenceDeployment(pulumi.ComponentResource):
    """Image, container(s) and models of one Xinference service (one server, or a cluster)."""

    endpoint: pulumi.Output[str]
    container_id: pulumi.Output[Optional[str]]
    models: pulumi.Output[list]

    def __init__(self, name: str, args: XinferenceDeploymentArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:XinferenceDeployment", name, None, opts)
        self._name, self._args = name, args
        self._images: dict[str, tuple[LoadedImage, pulumi.ResourceOptions]] = {}  # per docker host
        self._dirs_of: dict[str, list[str]] = {}  # uid -> its host directories (model, companions, packages)
        self._generations: dict[str, pulumi.Output[int]] = {}  # host directory -> its file check's generation
        cfg = args.config
        local_host = cfg.mode == "existing" or (cfg.mode == "docker" and is_local_docker(cfg.docker.host))
        digests = weights_digests(cfg, args.manifest, local_host=local_host)
        self.specs: list[LaunchSpec] = launch_specs(cfg, digests)
        self.endpoint = pulumi.Output.from_input(endpoint_url(cfg))

        # What each model waits for and is relaunched with: its server's container.
        self.containers: dict[Optional[str], XinferenceContainer] = {}
        if cfg.mode == "cluster":
            self._create_cluster(digests)
        else:
            volume = self._volume(f"{name}-models", [m for m in cfg.enabled_models], digests,
                                  cfg.models_dir, check=local_host and cfg.mode == "docker")
            if cfg.mode == "docker":
                depends = [volume, *self._sync(name, cfg.docker, cfg.enabled_models, cfg.models_dir)]
                self.containers[None] = self._container(f"{name}-server", cfg.docker, cfg.gpu_ids, cfg.models_dir,
                                                        depends, name_prefix=name)

        self.models_by_uid: dict[str, XinferenceModel] = {}
        for spec in self.specs:
            container = self.containers.get(spec.server)
            depends: list[pulumi.Resource] = [container] if container else []
            # The container's id and the repairs of the model's files are outputs of other resources.
            from_outputs = {"container_id": container.container_id if container else None,
                            "weights_digest": self._weights_digest(spec)}
            if spec.custom_family is not None:
                # Registered before the launch, unregistered after the terminate; a new family relaunches
                # (through the spec's registration_digest: computed from the family, not read from the
                # registration's outputs, which an in-place update of it leaves unknown at preview).
                registration = self._registration(f"{name}-{spec.model_uid}-registration", spec,
                                                  from_outputs["container_id"], depends)
                depends = [*depends, registration]
            self.models_by_uid[spec.model_uid] = XinferenceModel(
                f"{name}-{spec.model_uid}", XinferenceModelArgs(spec, from_outputs),
                opts=pulumi.ResourceOptions(parent=self, depends_on=depends))
        single = self.containers.get(None)
        self.container_id = single.container_id if single else pulumi.Output.from_input(None)
        self.models = pulumi.Output.from_input([model_row(spec) for spec in self.specs])
        self.register_outputs({"endpoint": self.endpoint, "container_id": self.container_id, "models": self.models})

    def _registration(self, name: str, spec: LaunchSpec, container_id: pulumi.Input[Optional[str]],
                      depends: list) -> XinferenceRegistration:
        return XinferenceRegistration(name, XinferenceRegistrationArgs(
            endpoint=spec.endpoint, model_type=spec.model_type, model_name=spec.model_name,
            family=spec.custom_family, container_id=container_id, endpoint_ca_bundle=spec.endpoint_ca_bundle,
            docker_host=spec.docker_host, docker_ssh=spec.docker_ssh, launch_timeout=spec.launch_timeout,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=depends))

    def _volume(self, name: str, models: list, digests: dict, models_dir: str, check: bool) -> ModelVolume:
        cfg = self._args.config
        return ModelVolume(name, ModelVolumeArgs(
            models_dir=models_dir,
            model_dirs={m.uid: model_dir_on_host(cfg, m) for m in models},
            digests={m.uid: digests.get(m.uid, "") for m in models},
            check_on_host=check,
        ), opts=pulumi.ResourceOptions(parent=self))

    def _sync(self, prefix: str, host: DockerHostConfig, models: list, models_dir: str) -> list[pulumi.Resource]:
        """The bundle's model directories on the docker host, checked against the manifest at every
        refresh: copied + verified onto an ssh:// host, restored from the bundle on a local one."""
        cfg, manifest = self._args.config, self._args.manifest
        if manifest is None or not cfg.bundle_dir:
            if is_local_docker(host.host) and models:
                pulumi.log.info(f"{prefix}: the stack names no bundle (bundle_dir), so the model files are not "
                                "checked against a manifest's sha256 (a change of their size or mtime relaunches)")
            return []
        targets = {}
        with_packages = {p.uid for p in stack_packages(cfg)}
        for model in models:
            dirs = {model_bundle_dir(model.path or model.uid): model_dir_on_host(cfg, model)}
            for companion in model.companions:
                dirs[model_bundle_dir(companion.path)] = posixpath.join(models_dir, companion.path)
            if model.uid in with_packages:  # the carried engine wheels its virtualenv installs from
                dirs[packages_bundle_dir()] = posixpath.join(models_dir, PACKAGES_DIR)
            targets.update(dirs)
            self._dirs_of[model.uid] = [d.rstrip("/") for d in dirs.values()]
        copies = directory_copies(manifest, targets)
        if not copies:
            return []
        opts = pulumi.ResourceOptions(parent=self)
        if is_ssh_docker(host.host):
            synced: Any = RemoteModelSync(f"{prefix}-sync", RemoteModelSyncArgs(
                host=host, bundle_root=cfg.bundle_dir, copies=copies), opts=opts)
        elif is_local_docker(host.host):
            synced = LocalModelRepair(f"{prefix}-files", LocalModelRepairArgs(bundle_root=cfg.bundle_dir,
                                                                              copies=copies), opts=opts)
        else:
            return []
        self._generations.update(synced.generations)
        return [synced]

    def _weights_digest(self, spec: LaunchSpec) -> pulumi.Input[str]:
        """The spec's digest, plus the repairs of its directories: files restored relaunch the model."""
        generations = [self._generations[d] for d in self._dirs_of.get(spec.model_uid, []) if d in self._generations]
        if not generations:
            return spec.weights_digest
        return pulumi.Output.all(*generations).apply(lambda gens: repaired_digest(spec.weights_digest, gens))

    def _image_on(self, prefix: str, host: DockerHostConfig) -> tuple[LoadedImage, pulumi.ResourceOptions]:
        """A docker provider for the host and the image loaded onto it (once per host)."""
        if host.host in self._images:
            return self._images[host.host]
        cfg = self._args.config
        assert cfg.image is not None  # validated: docker and cluster modes need an image
        # The provider's ssh is the docker CLI's helper, exec'ing `ssh` with these options: the same
        # key, known_hosts and host-key policy as the image load and the file copy (stackspec/ssh.py).
        provider = docker.Provider(f"{prefix}-docker", host=host.host,
                                   ssh_opts=host.ssh.options() if host.ssh is not None else None,
                                   disable_docker_daemon_check=None if host.check_daemon else True,
                                   opts=pulumi.ResourceOptions(parent=self))
        on_host = pulumi.ResourceOptions(parent=self, providers={"docker": provider})
        image = LoadedImage(f"{prefix}-image", LoadedImageArgs(
            image_name=cfg.image.name,
            tar_path=image_tar_path(cfg, self._args.manifest),
            tar_digest=image_digest(cfg, self._args.manifest),
            docker_host=host.host,
            ssh=host.ssh,
            image_id=self._args.manifest.entry.image_id if self._args.manifest else None,
            members=bundle_image(cfg, self._args.manifest),
        ), opts=on_host)
        self._images[host.host] = (image, on_host)
        return image, on_host

    def _container(self, name: str, host: DockerHostConfig, gpus: list[int], models_dir: str,
                   depends: list[pulumi.Resource], name_prefix: str, **role: Any) -> XinferenceContainer:
        cfg = self._args.config
        image, on_host = self._image_on(name_prefix, host)
        return XinferenceContainer(name, XinferenceContainerArgs(
            image_id=image.known_id or image.image_id,
            settings=cfg.container,
            host_gpus=gpus,
            models_dir=models_dir,
            env=container_env(cfg),
            labels={"xinference-offline/stack": self._args.stack},
            **role,
        ), opts=pulumi.ResourceOptions.merge(on_host, pulumi.ResourceOptions(depends_on=[image, *depends])))

    def _create_cluster(self, digests: dict) -> None:
        """One supervisor container, and a worker container per server with that server's GPUs."""
        cfg, name = self._args.config, self._name
        supervisor = cfg.supervisor
        assert supervisor is not None  # validated: exactly one supervisor
        supervisor_url = endpoint_url(cfg)
        sup = self._container(f"{name}-supervisor", supervisor.docker, [], supervisor.models_dir or cfg.models_dir, [],
                              name_prefix=f"{name}-{supervisor.name}",
                              command=container_command("supervisor", supervisor.address, port=cfg.container.port,
                                                        actor_port=cfg.container.supervisor_port),
                              healthcheck=healthcheck_command("supervisor", supervisor.address, cfg.container.port),
                              host_network=True, container_name=cluster_container_name(cfg, "supervisor"))
        for server in cfg.servers:
            models_dir = server.models_dir or cfg.models_dir
            placed = [m for m in cfg.enabled_models if m.server == server.name]
            volume = self._volume(f"{name}-{server.name}-models", placed, digests, models_dir,
                                  check=is_local_docker(server.docker.host))
            synced = self._sync(f"{name}-{server.name}", server.docker, placed, models_dir)
            self.containers[server.name] = self._container(
                f"{name}-{server.name}-worker", server.docker, server.gpu_ids, models_dir, [sup, volume, *synced],
                name_prefix=f"{name}-{server.name}",
                command=container_command("worker", server.address, supervisor_url,
                                          actor_port=cfg.container.worker_port),
                healthcheck=healthcheck_command("worker", server.address, cfg.container.worker_port),
                host_network=True, container_name=cluster_container_name(cfg, "worker"))


def model_row(spec: LaunchSpec) -> dict:
    """One line of the exported model table."""
    row = {"uid": spec.model_uid, "type": spec.model_type, "host_gpus": spec.host_gpus, "gpu_idx": spec.gpu_idx}
    if spec.server:
        row["server"] = spec.server
    return row



def repaired_digest(digest: str, generations: list) -> str:
    """The weights digest as is until a check finds damage; then with the repairs, so the model is
    relaunched on the restored files (a running model keeps the old bytes mapped)."""
    repairs = [int(g or 0) for g in generations]
    return digest if not any(repairs) else f"{digest}+repaired:{'.'.join(map(str, repairs))}"
