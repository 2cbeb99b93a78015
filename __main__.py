"""Pulumi program: one Xinference model service for the server this stack describes.

Thin on purpose: read and validate the stack config once, build one XinferenceDeployment,
export what an operator looks at after `pulumi up`.
"""

import json
from pathlib import Path
from typing import Any, Optional

import pulumi
from pulumi.runtime import config as runtime_config

from bundle.format.manifest import BundleError, load_manifest
from bundle.format.site_record import read_record, with_installed_paths
from bundle.contents.stacks import sibling_clashes
from components import container_health, preflight
from components.deployment import XinferenceDeployment, XinferenceDeploymentArgs, image_files_path
from components.image_check import image_tar_problems
from stackspec.catalog import image_version_note, pinned_catalog
from stackspec.config import StackConfig
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.rules import vram_warnings
from stackspec.stack_file import endpoint_ca_problems


def _decode(value: Any) -> Any:
    # Pulumi hands structured config to the program as JSON text; plain strings stay strings
    # (an API key of digits must not turn into a number).
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


PROJECT = Path(__file__).resolve().parent


def _bundle_models_dir(bundle_dir: str) -> Optional[str]:
    """The models_dir the bundle's own copy of this stack file names (the build machine's)."""
    try:
        return load_manifest(Path(bundle_dir)).for_stack(pulumi.get_stack()).models_dir
    except (BundleError, OSError):
        return None


def from_pulumi() -> StackConfig:
    """Read this program's config (all keys, secrets included) from the Pulumi runtime."""
    raw: dict[str, Any] = dict(runtime_config.get_config_env())
    raw.update(runtime_config.CONFIG.get())
    secret_keys = set(runtime_config.get_config_secret_keys_env() or ())
    secret_keys |= {k for k in raw if runtime_config.is_config_secret(k)}
    # what `bundle install` recorded fills in the bundle and model directories the stack file leaves out
    installed = read_record(PROJECT).get(pulumi.get_stack(), {})
    raw, notes = with_installed_paths(raw, installed, _bundle_models_dir)
    for note in notes:
        pulumi.log.info(note)
    cfg = load_stack_config({k: _decode(v) for k, v in raw.items()}, secret_keys=secret_keys)
    problems = endpoint_ca_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


try:
    config = from_pulumi()
    # the bundle may serve several stacks (one per server): this stack's files and digests
    manifest = load_manifest(config.bundle_dir).for_stack(pulumi.get_stack()) if config.bundle_dir else None
except (ConfigError, BundleError) as exc:
    # RunError prints the message without a Python traceback: this is the operator's mistake.
    raise pulumi.RunError(str(exc)) from None

# Stacks that deploy over ssh from one operator machine live side by side in stacks/ (the
# stackConfigDir): say when another of them takes this stack's container name, port or GPU.
for clash in sibling_clashes(pulumi.get_stack(), config, PROJECT / "stacks"):
    pulumi.log.warn(str(clash))
if config.image is not None and config.mode != "existing":
    version_note = image_version_note(pinned_catalog(), config.image.name)
    if version_note:
        pulumi.log.warn(version_note)

for note in vram_warnings(config):
    pulumi.log.warn(note)

# Before anything is touched (at preview too): model directories, GPU runtime, name and port.
host_problems = preflight.docker_host_problems(config, pulumi.get_stack(), image_files_path(config, manifest))
if not host_problems:  # and the image tar, when the engine lacks the image (it is never pulled)
    host_problems = image_tar_problems(config, manifest)
if host_problems:
    raise pulumi.RunError("\n".join(host_problems))
# A container failing now (a crash loop, unhealthy) says why here: the docker provider's own error does not.
for note in container_health.trouble_notes(config):  # after the host checks: an unknown host is not asked
    pulumi.log.warn(note)
try:  # the update removes them (never its preview): Pulumi would only after the new container needs the port
    for note in preflight.stale_gateways(config, pulumi.get_stack(), remove=not pulumi.runtime.is_dry_run()):
        pulumi.log.info(note)
except preflight.DockerHostUnreachable as exc:
    raise pulumi.RunError(f"{exc}. Nothing was changed; run the command again once the engine answers.") from None

deployment = XinferenceDeployment(
    "xinference",
    XinferenceDeploymentArgs(config=config, stack=pulumi.get_stack(), manifest=manifest),
)

pulumi.export("endpoint", deployment.endpoint)
pulumi.export("container_id", deployment.container_id)
pulumi.export("models", deployment.models)
