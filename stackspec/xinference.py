"""The rules of the pinned Xinference (4.1) that this project must agree with, written once.

The stack schema (stackspec/config.py, stackspec/rules.py) and the provider's ``validate``
(components/model_props.py) both call these, so `bundle plan` refuses exactly what
`pulumi preview` and Xinference itself refuse, with the same words. Standard library only.
"""

from __future__ import annotations

import re
from typing import Literal, Optional, get_args

CONFIG_NAMESPACE = "xinference-offline"  # the Pulumi project name: stack keys are `xinference-offline:<key>`
CONTAINER_PORT = 9997  # Xinference's REST port inside the container
# Cluster containers (host network) bind these on their server's address: the supervisor's actor
# pool (`--supervisor-port`) and each worker's (`--worker-port`); stack defaults, container.*_port.
SUPERVISOR_ACTOR_PORT = 9999
WORKER_PORT = 30001
CONTAINER_HOME = "/root/.xinference"  # XINFERENCE_HOME inside the container
CONTAINER_MODELS_DIR = CONTAINER_HOME + "/models"  # where the host's models_dir is mounted
# The engine wheels `bundle build` carries for the models' virtualenvs: a directory of models_dir
# (installed and mounted with the models), with the pip.conf that names it as the offline index.
PACKAGES_DIR = "_engine_packages"
CONTAINER_PACKAGES_DIR = f"{CONTAINER_MODELS_DIR}/{PACKAGES_DIR}"
CONTAINER_PACKAGE_WHEELS = f"{CONTAINER_PACKAGES_DIR}/wheels"
ModelType = Literal["LLM", "embedding", "rerank", "audio", "image", "video", "flexible"]
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)

# xinference/core/utils.py is_valid_model_uid: stripped, 0 < length <= 100, and not ending in
# the replica suffix `-rep<N>` that Xinference appends itself (a user's uid must not collide
# with a replica's). The character set is ours: a uid is also a file and container name part.
MODEL_UID_MAX = 100
_REPLICA_SUFFIX = re.compile(r"^.+-rep\d+$")
_UID_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The whole rule as one pattern, for readers that only match (the manifest's strict parser).
MODEL_UID_RE = re.compile(rf"(?!.*-rep[0-9]+$)[A-Za-z0-9][A-Za-z0-9._-]{{0,{MODEL_UID_MAX - 1}}}")
MODEL_UID_FIX = (f"use letters, digits, `.`, `_`, `-` (starting with a letter or digit), at most {MODEL_UID_MAX} "
                 "characters, not ending in -rep<N>")

# An endpoint is scheme://host[:port] with nothing after it: the client appends /v1/... itself.
ENDPOINT_RE = re.compile(r"^https?://[^/\s:@?#]+(:\d{1,5})?/?$")
ENDPOINT_FORM = "http(s)://host:port"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def model_uid_problem(uid: str) -> Optional[str]:
    """Why Xinference (or our file and container names) would refuse ``uid``; None when it is fine."""
    if not uid or len(uid) > MODEL_UID_MAX:
        return f"is {len(uid)} characters; Xinference takes 1 to {MODEL_UID_MAX}"
    if _REPLICA_SUFFIX.match(uid):
        return "ends in -rep<N>, which Xinference reserves for the uids of its replicas"
    if not _UID_CHARS.match(uid):
        return "holds a character a model uid cannot take"
    return None


def endpoint_problem(endpoint: str) -> Optional[str]:
    """Why ``endpoint`` is not an Xinference endpoint URL; None when it is one."""
    return None if ENDPOINT_RE.match(endpoint) else f"not an {ENDPOINT_FORM} URL"
