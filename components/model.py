"""XinferenceModel: one launched, serving model on an Xinference server, as a Pulumi dynamic resource.

The provider talks to Xinference's REST API (components/xinference_client.py); the launch
itself (wait, progress, smoke test, cleanup) is components/model_launch.py, the pure half
(payloads, diff) components/model_props.py, the inputs with their defaults and rules
stackspec/model_inputs.py. Rules it keeps (see
docs/provider.md for the operator's view):

- check validates every input and names the property that is wrong;
- diff: launch parameters, ``container_id`` and ``weights_digest`` force a replacement,
  delete-before-replace (a uid can be launched once); ``endpoint``, ``launch_timeout``,
  ``autostart`` and ``smoke_test`` change in place;
- create reads first: a uid that already runs with the same parameters is adopted, one that
  runs with other parameters is a conflict (clear message, nothing touched); otherwise it
  launches with ``wait_ready=false``, polls GET /v1/models/{uid} until ready or
  ``launch_timeout``, reports progress, runs a smoke request suited to the type, and
  registers the model in Xinference's autostart registry; a failure on the way cancels or
  terminates what it started;
- read reports the model's real state: gone -> ``ReadResult(None, {})`` (refresh records the
  drift, the next up relaunches); unreachable -> an error, never "gone";
- delete removes the autostart entry and terminates; "not found" is success. With the container
  stopped, the entry is disabled in the container's registry file (components/autostart_registry.py),
  so the model does not come back when the container starts.

The API key never is an input: it comes from the stack secret ``xinference-offline:api_key``
through ``configure`` (or the environment variable XINFERENCE_API_KEY) and is never written
to state, outputs or error texts. Nothing here takes a global lock, so Pulumi's parallel
creates of different models launch in parallel.

Keep this module's path and the provider's class name stable: Pulumi stores the pickled
provider (by reference to ``components.model.XinferenceModelProvider``) in the state and
uses it for refresh and destroy.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Mapping, Optional

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, ConfigureRequest, CreateResult, DiffResult, ReadResult
from pulumi.dynamic import ResourceProvider, UpdateResult

from components.autostart_registry import RegistryEditFailed, remove_autostart_entry
from components.docker_cli import DockerHostUnreachable, container_state
from components.xinference_client import (ABSENT, LOADING, PENDING_STATUSES, READY, Credential, XinferenceClient,
                                          XinferenceError, XinferenceHTTPError, XinferenceUnreachable)
from stackspec.xinference import CONFIG_NAMESPACE

# The launch half (launch, wait, smoke test, cleanup); errors re-exported for callers of this module.
from components.model_launch import (  # noqa: F401 - the errors are part of this module's API
    ConflictError,
    LaunchError,
    LaunchTiming,
    ModelLaunch,
    instance_status,
    say,
)
# The pure half: inputs, validation, payloads, diff (components/model_props.py).
from components.model_props import (ARG_KEYS, AUTOSTART_PENDING, OUTPUT_KEYS, XinferenceModelArgs, autostart_entry,
                                    diff_props, is_known, normalize, observed, resource_props, validate)

API_KEY_CONFIG = f"{CONFIG_NAMESPACE}:api_key"
API_KEY_ENV = "XINFERENCE_API_KEY"
# How Xinference 4.1 reports a worker it cannot reach, e.g. "[Errno 111] Connect call failed ('10.0.0.2', 30001)".
_WORKER_UNREACHABLE = re.compile(r"Connect call failed|Connection refused|ServerClosed|timed? ?out", re.IGNORECASE)


# --- the provider ------------------------------------------------------------------------


class XinferenceModelProvider(ResourceProvider):
    """CRUD of one model on Xinference. Stateless apart from the credential set by configure."""

    # Class-level defaults: state files hold pickled instances, so new attributes must have defaults here.
    retry_window: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    poll_interval: float = 0.5
    progress_every: float = 5.0
    cleanup_timeout: float = 60.0
    smoke_timeout: float = 120.0

    def __init__(self, *, retry_window: Optional[float] = None, connect_timeout: Optional[float] = None,
                 read_timeout: Optional[float] = None, poll_interval: Optional[float] = None):
        super().__init__()
        for name, value in (("retry_window", retry_window), ("connect_timeout", connect_timeout),
                            ("read_timeout", read_timeout), ("poll_interval", poll_interval)):
            if value is not None:
                setattr(self, name, float(value))

    def __getstate__(self) -> dict:
        # The credential belongs to the provider process only; never into the pickled provider in state.
        return {k: v for k, v in self.__dict__.items() if k != "_credential"}

    # --- credential ----------------------------------------------------------------

    def configure(self, req: ConfigureRequest) -> None:
        secret = None
        config = getattr(req, "config", None)
        if config is not None:
            for key in (API_KEY_CONFIG, f"{CONFIG_NAMESPACE}:apiKey"):
                value = config.get(key)
                if value:
                    secret = value
                    break
            if secret is None:  # a config without the project namespace (tests, other project names)
                raw = getattr(config, "_props", {}) or {}
                for key, value in raw.items():
                    if value and (key == "api_key" or key.endswith(":api_key")):
                        secret = value
                        break
        self._set_credential(secret)

    def _set_credential(self, secret: Optional[str]) -> None:
        if isinstance(secret, str) and secret.strip():
            self._credential: Optional[Credential] = Credential(secret)
        else:
            env = os.environ.get(API_KEY_ENV)
            self._credential = Credential(env) if env and env.strip() else None

    def _get_credential(self) -> Optional[Credential]:
        if "_credential" not in self.__dict__:
            self._set_credential(None)
        return self._credential

    def _client(self, endpoint: str, ca_bundle: Optional[str] = None) -> XinferenceClient:
        if not endpoint or not is_known(endpoint):
            raise XinferenceError("XinferenceModel has no endpoint in its state; run `pulumi up` to set one")
        return XinferenceClient(endpoint, self._get_credential(), connect_timeout=self.connect_timeout,
                                read_timeout=self.read_timeout, retry_window=self.retry_window,
                                ca_bundle=ca_bundle if isinstance(ca_bundle, str) and is_known(ca_bundle) else None)

    def _timing(self) -> LaunchTiming:
        return LaunchTiming(retry_window=self.retry_window, poll_interval=self.poll_interval,
                            progress_every=self.progress_every, cleanup_timeout=self.cleanup_timeout,
                            smoke_timeout=self.smoke_timeout)

    # --- check / diff --------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure(key, reason) for key, reason in validate(news)]
        return CheckResult(normalize(news), failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces, changes = diff_props(olds, news)
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=True)

    # --- create / update -----------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        props = normalize(props)
        outs = self._ensure(props)
        return CreateResult(props["model_uid"], outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only in-place inputs changed (diff replaces on the others): make sure the model runs at the
        # (possibly new) endpoint with these parameters, then align the autostart entry.
        return UpdateResult(self._ensure(normalize(news)))

    def _ensure(self, props: dict[str, Any]) -> dict[str, Any]:
        uid = props["model_uid"]
        endpoint = props["endpoint"]
        timeout = float(props["launch_timeout"])
        deadline = time.monotonic() + timeout
        with self._client(endpoint, props.get("endpoint_ca_bundle")) as client:
            launch = ModelLaunch(client, uid, self._timing())
            described = client.describe(uid, deadline=deadline)
            started = False
            if described.state == LOADING:
                say(uid, "is already being launched on the server (autostart or another client); waiting for it")
                described = launch.wait_ready(deadline, timeout)
            if described.state == READY:
                launch.refuse_conflict(endpoint, described, props, deadline)
                adopted = True
                say(uid, "already runs with these parameters: adopted")
            else:
                adopted = False
                described, started = launch.launch(endpoint, props, deadline, timeout)
            try:
                if props.get("smoke_test"):
                    launch.smoke(props["model_type"], deadline)
                registered = self._apply_autostart(client, props, deadline)
            except Exception:
                if started:
                    launch.abort()
                raise
        outs = observed(described.body, props)
        outs.update(status=READY, autostart_registered=registered, adopted=adopted)
        return outs

    def _apply_autostart(self, client: XinferenceClient, props: Mapping[str, Any], deadline: float) -> bool:
        uid = props["model_uid"]
        request_deadline = max(deadline, time.monotonic() + 10.0)
        if props.get("autostart"):
            if client.autostart_upsert(autostart_entry(props), deadline=request_deadline) is None:
                say(uid, "this Xinference has no autostart registry (POST /v1/autostart/models): plain launch; "
                    "after a server restart run `pulumi refresh` then `pulumi up`")
                return False
            return True
        client.autostart_remove(uid, deadline=request_deadline)
        return False

    # --- read / delete -------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        props = normalize(props)
        uid = id_ or props.get("model_uid")
        if not uid:
            raise XinferenceError("XinferenceModel read: no model uid (resource id) to look for")
        props["model_uid"] = uid
        if self._container_gone(props):
            # The engine says the container is removed or not running (docker rm -f / stop / kill, a
            # host rebuilt): so is the model; asked first, so a silent endpoint costs no retry window.
            return ReadResult(None, {})
        with self._client(props.get("endpoint"), props.get("endpoint_ca_bundle")) as client:
            try:
                described = client.describe(uid)
            except XinferenceUnreachable as exc:
                if self._container_gone(props):  # stopped while we asked
                    return ReadResult(None, {})
                raise XinferenceUnreachable(f"cannot tell whether model '{uid}' still runs: {exc}") from None
            except XinferenceHTTPError as exc:
                if exc.status is None or exc.status < 500 or not _WORKER_UNREACHABLE.search(exc.detail or ""):
                    raise
                # The supervisor answers but cannot reach the worker that hosts the model. Xinference
                # drops the model once it declares the worker dead (about a second when the worker's
                # port refuses, ~35 s by default when the server is silent); "gone" is for it to say.
                raise XinferenceError(
                    f"cannot tell whether model '{uid}' still runs: the supervisor at {props.get('endpoint')} "
                    f"cannot reach the worker that hosts it ({exc.detail}). Bring the worker back, or wait "
                    f"until Xinference declares it dead and run `pulumi refresh` again (it then records the "
                    f"model as gone and the next `pulumi up` relaunches it).", status=exc.status,
                    detail=exc.detail) from None
            if described.state == READY:
                outs = observed(described.body, props)
                outs.update(status=READY, autostart_registered=props.get("autostart_registered"),
                            adopted=props.get("adopted"))
                entries = client.autostart_entries()
                if entries is not None:
                    # Registry drift (an entry removed or added by hand) shows as a change of the
                    # `autostart` input, which the next `up` repairs in place.
                    registered = uid in entries and bool(entries[uid].get("enabled", True))
                    outs["autostart_registered"] = registered
                    if bool(props.get("autostart")) != registered:
                        outs["autostart"] = registered
                return ReadResult(uid, outs)
            if described.state == LOADING:
                return ReadResult(uid, self._keep(props, LOADING))
            if props.get("autostart"):
                entries = client.autostart_entries() or {}
                entry = entries.get(uid)
                if entry and entry.get("enabled", True) and _autostart_pending(entry):
                    return ReadResult(uid, self._keep(props, "AUTOSTARTING"))
        return ReadResult(None, {})

    @staticmethod
    def _container_of(props: Mapping[str, Any]) -> Optional[tuple[str, str, Optional[list[str]]]]:
        """(docker host, container id, ssh argv) of the model's container; None for a server not in Docker."""
        host, container = props.get("docker_host"), props.get("container_id")
        if not (isinstance(host, str) and isinstance(container, str) and is_known(host) and is_known(container)):
            return None
        ssh = props.get("docker_ssh")
        return host, container, [str(word) for word in ssh] if isinstance(ssh, (list, tuple)) and is_known(ssh) else None

    @classmethod
    def _container_state(cls, props: Mapping[str, Any]) -> tuple[Optional[tuple[str, str, Optional[list[str]]]],
                                                                   Optional[str]]:
        """(where the model's container is, its state as components/docker_cli.container_state says)."""
        where = cls._container_of(props)
        return where, container_state(*where) if where is not None else None

    @classmethod
    def _container_gone(cls, props: Mapping[str, Any]) -> bool:
        """Does the engine say the model's container no longer runs (removed, or stopped, exited, dead:
        its processes, so its models, are gone)? False when it cannot tell."""
        return cls._container_state(props)[1] in ("stopped", "gone")

    @classmethod
    def _deleted_with_container_down(cls, uid: str, props: Mapping[str, Any]) -> bool:
        """True when the model's container does not run, so the model is gone with it. A stopped one keeps
        its registry: the model's entry is disabled there, or it comes back at the next start. A removed one
        leaves no container to edit (docs/provider.md: a data_dir registry)."""
        where, state = cls._container_state(props)
        if where is None or state not in ("stopped", "gone"):
            return False
        host, container, ssh_argv = where
        if state == "stopped":
            try:
                if remove_autostart_entry(host, container, uid, ssh_argv):
                    say(uid, f"removed its autostart entry from stopped container {container[:12]}: it will not "
                             "come back when the container starts")
            except (RegistryEditFailed, DockerHostUnreachable) as exc:
                raise XinferenceError(f"model '{uid}': its container {container[:12]} is stopped, and its autostart "
                                      f"entry there could not be removed ({exc}); left in place, it relaunches the "
                                      f"model when the container starts. Start the container (`docker start "
                                      f"{container[:12]}`) and run `pulumi up` again") from None
        return True

    @staticmethod
    def _keep(props: Mapping[str, Any], status: str) -> dict[str, Any]:
        outs = {k: v for k, v in props.items() if k in ARG_KEYS or k in OUTPUT_KEYS}
        outs["status"] = status
        return outs

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        props = normalize(props)
        uid = id_ or props.get("model_uid")
        if self._deleted_with_container_down(uid, props):  # asked first: a stopped server costs the retry window
            return
        with self._client(props.get("endpoint"), props.get("endpoint_ca_bundle")) as client:
            # The entry first, so that the registry does not bring the model back.
            try:
                client.autostart_remove(uid)
            except XinferenceUnreachable:
                if self._deleted_with_container_down(uid, props):  # stopped while we asked
                    return
                raise
            if client.terminate(uid):
                say(uid, "terminated")
                return
            described = client.describe(uid)
            if described.state == ABSENT:
                status, _ = instance_status(client.instances(uid))
                if status not in PENDING_STATUSES:
                    return  # already gone: done
            # Still loading (DELETE does not stop a load in Xinference 4.1): cancel it and make sure.
            ModelLaunch(client, uid, self._timing()).abort()
            if client.describe(uid).state != ABSENT:
                raise XinferenceError(f"model '{uid}' is still on the server after terminate and cancel; "
                                      f"terminate it by hand and run `pulumi refresh`")


def _autostart_pending(entry: Mapping[str, Any]) -> bool:
    """The registry is (about to be) bringing this model back: after a restart, before or while it relaunches."""
    state = entry.get("state") or {}
    status = state.get("status")
    if state.get("instance_status") in ("CREATING", "LOADING"):
        return True
    return status in AUTOSTART_PENDING or (status is None and not state.get("last_error"))


class XinferenceModel(pulumi.dynamic.Resource, module="xinference", name="XinferenceModel"):
    """A model launched and kept serving on an Xinference server."""

    endpoint: pulumi.Output[str]
    model_uid: pulumi.Output[str]
    model_name: pulumi.Output[str]
    model_type: pulumi.Output[str]
    status: pulumi.Output[str]
    autostart_registered: pulumi.Output[bool]
    adopted: pulumi.Output[bool]
    address: pulumi.Output[str]
    accelerators: pulumi.Output[list]

    def __init__(self, resource_name: str, args: XinferenceModelArgs, opts: Optional[pulumi.ResourceOptions] = None):
        props = resource_props(args)
        for key in OUTPUT_KEYS:
            props[key] = None
        super().__init__(XinferenceModelProvider(), resource_name, props, opts)
