"""XinferenceDeployment: one server's whole model service, composed from the other components.

    LoadedImage --image id--> XinferenceContainer --container id--> XinferenceModel x N
    ModelVolume --host path, per-model digest----------^--------------------^

In `existing` mode there is no image or container: the models are launched on a running
Xinference at `endpoint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_docker as docker

from bundle.manifest import Manifest
from components.config import StackConfig
from components.container import XinferenceContainer, XinferenceContainerArgs
from components.image import LoadedImage, LoadedImageArgs
from components.launch import LaunchSpec, container_env, endpoint_url, launch_specs, model_dir_on_host
from components.model import XinferenceModel, XinferenceModelArgs
from components.volume import ModelVolume, ModelVolumeArgs, weights_digests

LOCAL_DOCKER = "unix:///var/run/docker.sock"


@dataclass
class XinferenceDeploymentArgs:
    """Inputs of XinferenceDeployment."""

    config: StackConfig
    """The validated stack config."""
    stack: str
    """Stack name (used in labels)."""
    manifest: Optional[Manifest] = None
    """Manifest of the unpacked offline bundle, when the stack names one."""


def image_digest(cfg: StackConfig, manifest: Optional[Manifest]) -> str:
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


class XinferenceDeployment(pulumi.ComponentResource):
    """Image, container and models of one Xinference server."""

    endpoint: pulumi.Output[str]
    container_id: pulumi.Output[Optional[str]]
    models: pulumi.Output[list]

    def __init__(self, name: str, args: XinferenceDeploymentArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:XinferenceDeployment", name, None, opts)
        cfg = args.config
        local_host = cfg.mode == "existing" or cfg.docker.host == LOCAL_DOCKER
        digests = weights_digests(cfg, args.manifest, local_host=local_host)
        self.specs: list[LaunchSpec] = launch_specs(cfg, digests)

        self.volume = ModelVolume(f"{name}-models", ModelVolumeArgs(
            models_dir=cfg.models_dir,
            model_dirs={m.uid: model_dir_on_host(cfg, m) for m in cfg.enabled_models},
            digests=digests,
            check_on_host=local_host and cfg.mode == "docker",
        ), opts=pulumi.ResourceOptions(parent=self))

        self.image: Optional[LoadedImage] = None
        self.container: Optional[XinferenceContainer] = None
        container_id: pulumi.Input[Optional[str]] = None
        depends: list[pulumi.Resource] = [self.volume]
        if cfg.mode == "docker":
            self._create_server(name, args, depends)
            assert self.container is not None
            container_id = self.container.container_id
            depends = [self.container]

        self.endpoint = pulumi.Output.from_input(endpoint_url(cfg))
        self.models_by_uid: dict[str, XinferenceModel] = {}
        for spec in self.specs:
            self.models_by_uid[spec.model_uid] = XinferenceModel(
                f"{name}-{spec.model_uid}",
                model_args(spec, endpoint_url(cfg), container_id),
                opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
            )
        self.container_id = container_id if container_id is not None else pulumi.Output.from_input(None)
        self.models = pulumi.Output.from_input([model_row(spec) for spec in self.specs])
        self.register_outputs({"endpoint": self.endpoint, "container_id": self.container_id, "models": self.models})

    def _create_server(self, name: str, args: XinferenceDeploymentArgs, depends: list[pulumi.Resource]) -> None:
        cfg = args.config
        assert cfg.image is not None  # validated: docker mode needs an image
        provider = docker.Provider(f"{name}-docker", host=cfg.docker.host, ssh_opts=cfg.docker.ssh_opts or None,
                                   opts=pulumi.ResourceOptions(parent=self))
        on_host = pulumi.ResourceOptions(parent=self, providers={"docker": provider})
        self.image = LoadedImage(f"{name}-image", LoadedImageArgs(
            image_name=cfg.image.name,
            tar_path=cfg.image.tar,
            tar_digest=image_digest(cfg, args.manifest),
            docker_host=cfg.docker.host,
        ), opts=on_host)
        self.container = XinferenceContainer(f"{name}-server", XinferenceContainerArgs(
            image_id=self.image.image_id,
            settings=cfg.container,
            host_gpus=cfg.gpu_ids,
            models_dir=cfg.models_dir,
            env=container_env(cfg),
            labels={"xinference-offline/stack": args.stack},
        ), opts=pulumi.ResourceOptions.merge(on_host, pulumi.ResourceOptions(depends_on=depends)))


def model_args(spec: LaunchSpec, endpoint: str, container_id: pulumi.Input[Optional[str]]) -> XinferenceModelArgs:
    return XinferenceModelArgs(
        endpoint=endpoint,
        model_uid=spec.model_uid,
        model_name=spec.model_name,
        model_type=spec.model_type,
        model_engine=spec.model_engine,
        model_format=spec.model_format,
        model_size_in_billions=spec.model_size_in_billions,
        quantization=spec.quantization,
        model_path=spec.model_path,
        gpu_idx=spec.gpu_idx or None,
        n_gpu=spec.n_gpu,
        replica=spec.replica,
        extra=dict(spec.extra) or None,
        container_id=container_id,
        weights_digest=spec.weights_digest or None,
        launch_timeout=spec.launch_timeout,
        autostart=spec.autostart,
        smoke_test=spec.smoke_test,
    )


def model_row(spec: LaunchSpec) -> dict:
    """One line of the exported model table."""
    return {"uid": spec.model_uid, "type": spec.model_type, "host_gpus": spec.host_gpus, "gpu_idx": spec.gpu_idx}

