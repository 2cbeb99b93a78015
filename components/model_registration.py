"""XinferenceRegistration: a site's own model (``models[].custom``) registered on Xinference.

A custom model must be registered (``POST /v1/model_registrations/{type}``) before it can be
launched under its name. This dynamic resource owns that registration; the model that uses it
depends on it, so Pulumi registers before the launch and unregisters after the terminate on
destroy. Its inputs are the family (stackspec/custom_model.py builds it from the stack), the server
and the container: any change replaces it (delete-before-replace: a name is registered once),
and the model, which carries the family's digest, is relaunched with it.

- create reads first: the same family already registered (an `up` that stopped half-way) is
  adopted; another family under the name is a conflict, named, nothing touched;
- read: gone -> ``ReadResult(None, {})`` (the next up registers again); unreachable -> an
  error, unless the engine says the container is gone (then so is the registration);
- delete: "not found" is success.

The provider shares the model provider's credential handling (configure, the API key from the
stack secret, never in state) by subclassing it. Keep this module's path and class names
stable: Pulumi stores the pickled provider by reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from components.model import XinferenceModelProvider
from components.model_launch import ConflictError, say
from components.model_props import input_problems_of, is_known
from components.xinference_client import XinferenceUnreachable
from stackspec.custom_model import family_digest, registration_body
from stackspec.model_inputs import ServerInputs

# A change to these registers anew (and relaunches the model, through its registration_digest).
REPLACE_KEYS = ("model_type", "model_name", "family", "container_id")
IN_PLACE_KEYS = ("endpoint", "endpoint_ca_bundle", "docker_host", "docker_ssh")


@dataclass
class XinferenceRegistrationArgs:
    """One custom model family to keep registered on an Xinference server."""

    endpoint: pulumi.Input[str]
    """http://host:port of the Xinference supervisor."""
    model_type: pulumi.Input[str]
    model_name: pulumi.Input[str]
    family: pulumi.Input[Mapping[str, Any]]
    """The model family, as stackspec.custom_model.registration_family builds it."""
    container_id: Optional[pulumi.Input[str]] = None
    """A new container has no registrations: register again."""
    endpoint_ca_bundle: Optional[pulumi.Input[str]] = None
    docker_host: Optional[pulumi.Input[str]] = None
    """The engine running ``container_id``: read asks it whether the container is gone."""
    docker_ssh: Optional[pulumi.Input[list]] = None
    launch_timeout: Optional[float] = None
    """Seconds the registration waits for a server that is still starting (the model's launch timeout)."""


ARG_KEYS = tuple(f.name for f in fields(XinferenceRegistrationArgs))


def covers(registered: Any, wanted: Any) -> bool:
    """Does what Xinference reports hold everything we registered? (It adds its defaults.)"""
    if isinstance(wanted, Mapping):
        return isinstance(registered, Mapping) and all(covers(registered.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, (list, tuple)):
        return isinstance(registered, (list, tuple)) and len(registered) == len(wanted) \
            and all(covers(r, w) for r, w in zip(registered, wanted, strict=True))
    return registered == wanted


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with the registration's inputs: those it shares with the model, judged by the
    same rules (stackspec/model_inputs.ServerInputs), and its family."""
    problems = input_problems_of(ServerInputs, props)
    family, name = props.get("family"), props.get("model_name")
    if family is None:
        problems.append(("family", "family is required"))
    elif is_known(family):
        if not isinstance(family, Mapping):
            problems.append(("family", f"family must be a mapping, got {type(family).__name__}"))
        elif is_known(name) and family.get("model_name") != name:
            problems.append(("family", f"family.model_name {family.get('model_name')!r} differs from model_name "
                                       f"{name!r}"))
    return problems


class XinferenceRegistrationProvider(XinferenceModelProvider):
    """CRUD of one custom model registration (credential handling inherited)."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, [CheckFailure(key, reason) for key, reason in validate(news)])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPLACE_KEYS if olds.get(k) != news.get(k)]
        changes = replaces + [k for k in IN_PLACE_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(self._id(props), self._ensure(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._ensure(news))

    @staticmethod
    def _id(props: Mapping[str, Any]) -> str:
        return f"{props['model_type']}/{props['model_name']}"

    def _ensure(self, props: dict[str, Any]) -> dict[str, Any]:
        model_type, name, family = props["model_type"], props["model_name"], dict(props["family"])
        with self._client(props["endpoint"], props.get("endpoint_ca_bundle")) as client:
            # Right after `up` started a stopped container, Xinference needs about a minute to answer:
            # the launch timeout (the model's own wait) bounds it, not the short retry window.
            wait = max(float(props.get("launch_timeout") or 0), self.retry_window)
            registered = client.registration(model_type, name, deadline=time.monotonic() + wait)
            if registered is None:
                client.register(model_type, registration_body(family))
                say(name, f"registered as a custom {model_type} model")
            elif registered.get("is_builtin"):
                raise ConflictError(
                    f"'{name}' is a built-in {model_type} model of the Xinference at {props['endpoint']}: a custom "
                    f"model cannot be registered over it; give this model its own name")
            elif not covers(registered, family):
                raise ConflictError(
                    f"a custom {model_type} model named '{name}' is already registered on {props['endpoint']} "
                    f"with other fields; nothing was changed. Unregister it (DELETE /v1/model_registrations/"
                    f"{model_type}/{name}) if it is not in use, or give this model another name")
        return {**{k: props.get(k) for k in ARG_KEYS}, "family_digest": family_digest(family)}

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        model_type, name = props.get("model_type"), props.get("model_name")
        if self._container_gone(props):  # removed or not running: gone; the next up registers again (or adopts)
            return ReadResult(None, {})
        with self._client(props.get("endpoint"), props.get("endpoint_ca_bundle")) as client:
            try:
                registered = client.registration(model_type, name)
            except XinferenceUnreachable as exc:
                if self._container_gone(props):
                    return ReadResult(None, {})
                raise XinferenceUnreachable(f"cannot tell whether '{name}' is still registered: {exc}") from None
        if registered is None:
            return ReadResult(None, {})
        outs = dict(props)
        if not covers(registered, props.get("family") or {}):
            outs["family"] = {}  # changed by hand: shows as a change, the next up registers ours again
        return ReadResult(id_, outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if self._container_gone(props):
            # Asked first (a stopped server would cost the retry window). A stopped container keeps the
            # registration on disk, harmless with no entry left to launch the model (docs/provider.md).
            return
        with self._client(props.get("endpoint"), props.get("endpoint_ca_bundle")) as client:
            try:
                if client.unregister(props["model_type"], props["model_name"]):
                    say(props["model_name"], "unregistered")
            except XinferenceUnreachable:
                if not self._container_gone(props):
                    raise


class XinferenceRegistration(pulumi.dynamic.Resource, module="xinference", name="XinferenceRegistration"):
    """A custom model family kept registered on an Xinference server."""

    family_digest: pulumi.Output[str]

    def __init__(self, resource_name: str, args: XinferenceRegistrationArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        props: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(args)}
        props["family_digest"] = None
        super().__init__(XinferenceRegistrationProvider(), resource_name, props, opts)
