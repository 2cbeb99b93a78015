"""Pulumi program: one Xinference model service for the server this stack describes.

Thin on purpose: read and validate the stack config once, build one XinferenceDeployment,
export what an operator looks at after `pulumi up`.
"""

from pathlib import Path

import pulumi

from bundle.manifest import BundleError, load_manifest
from bundle.site import sibling_clashes
from components import preflight
from components.config_source import from_pulumi
from components.deployment import XinferenceDeployment, XinferenceDeploymentArgs
from components.errors import ConfigError

try:
    config = from_pulumi()
    # the bundle may serve several stacks (one per server): this stack's files and digests
    manifest = load_manifest(config.bundle_dir).for_stack(pulumi.get_stack()) if config.bundle_dir else None
except (ConfigError, BundleError) as exc:
    # RunError prints the message without a Python traceback: this is the operator's mistake.
    raise pulumi.RunError(str(exc)) from None

# Stacks that deploy over ssh from one operator machine live side by side in stacks/ (the
# stackConfigDir): say when another of them takes this stack's container name, port or GPU.
for clash in sibling_clashes(pulumi.get_stack(), config, Path(__file__).resolve().parent / "stacks"):
    pulumi.log.warn(str(clash))

# Before anything is touched (at preview too): model directories, GPU runtime, name and port.
host_problems = preflight.docker_host_problems(config, pulumi.get_stack())
if host_problems:
    raise pulumi.RunError("\n".join(host_problems))

deployment = XinferenceDeployment(
    "xinference",
    XinferenceDeploymentArgs(config=config, stack=pulumi.get_stack(), manifest=manifest),
)

pulumi.export("endpoint", deployment.endpoint)
pulumi.export("container_id", deployment.container_id)
pulumi.export("models", deployment.models)
