"""XinferenceModel: one launched, serving model on an Xinference server, as a Pulumi dynamic resource.

The provider talks to Xinference's REST API (components/xinference_client.py). Rules it keeps
(see docs/provider.md for the operator's view):

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
- delete removes the autostart entry and terminates; "not found" is success.

The API key never is an input: it comes from the stack secret ``xinference-offline:api_key``
through ``configure`` (or the environment variable XINFERENCE_API_KEY) and is never written
to state, outputs or error texts. Nothing here takes a global lock, so Pulumi's parallel
creates of different models launch in parallel.

Keep this module's path and the provider's class name stable: Pulumi stores the pickled
provider (by reference to ``components.model.XinferenceModelProvider``) in the state and
uses it for refresh and destroy.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import fields
from typing import Any, Mapping, Optional, Sequence

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, ConfigureRequest, CreateResult, DiffResult, ReadResult
from pulumi.dynamic import ResourceProvider, UpdateResult

from components.xinference_client import (
    ABSENT,
    LOADING,
    PENDING_STATUSES,
    READY,
    Credential,
    Described,
    XinferenceAuthError,
    XinferenceClient,
    XinferenceError,
    XinferenceHTTPError,
    XinferenceUnreachable,
    is_already_launched,
)
# The pure half (inputs, validation, payloads, diff); names re-exported for callers of this module.
from components.model_props import (  # noqa: F401
    _AUTOSTART_PENDING,
    ARG_KEYS,
    IN_PLACE_KEYS,
    LAUNCH_KEYS,
    MODEL_TYPES,
    OUTPUT_KEYS,
    REPLACE_KEYS,
    XinferenceModelArgs,
    _known,
    autostart_entry,
    conflict_message,
    diff_props,
    launch_payload,
    normalize,
    observed,
    running_mismatches,
    validate,
)

log = logging.getLogger(__name__)

CONFIG_NAMESPACE = "xinference-offline"
API_KEY_CONFIG = f"{CONFIG_NAMESPACE}:api_key"
API_KEY_ENV = "XINFERENCE_API_KEY"
# How Xinference 4.1 reports a worker it cannot reach, e.g. "[Errno 111] Connect call failed ('10.0.0.2', 30001)".
_WORKER_UNREACHABLE = re.compile(r"Connect call failed|Connection refused|ServerClosed|timed? ?out", re.IGNORECASE)


def _say(uid: str, message: str) -> None:
    text = f"XinferenceModel {uid}: {message}"
    log.info(text)
    try:
        pulumi.log.info(text)
    except Exception:  # noqa: BLE001 - logging must never fail an operation
        pass


# --- the provider ------------------------------------------------------------------------


class LaunchError(XinferenceError):
    """The model did not come up (refused, failed to load, timed out, smoke test failed)."""


class ConflictError(XinferenceError):
    """The uid already runs with other launch parameters."""


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

    def _client(self, endpoint: str) -> XinferenceClient:
        if not endpoint or not _known(endpoint):
            raise XinferenceError("XinferenceModel has no endpoint in its state; run `pulumi up` to set one")
        return XinferenceClient(endpoint, self._get_credential(), connect_timeout=self.connect_timeout,
                                read_timeout=self.read_timeout, retry_window=self.retry_window)

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
        with self._client(endpoint) as client:
            described = client.describe(uid, deadline=deadline)
            started = False
            if described.state == LOADING:
                _say(uid, "is already being launched on the server (autostart or another client); waiting for it")
                described = self._wait_ready(client, uid, deadline, timeout)
            if described.state == READY:
                self._refuse_conflict(client, uid, endpoint, described, props, deadline)
                adopted = True
                _say(uid, "already runs with these parameters: adopted")
            else:
                adopted = False
                described, started = self._launch(client, uid, endpoint, props, deadline, timeout)
            try:
                if props.get("smoke_test"):
                    self._smoke(client, uid, props["model_type"], deadline)
                registered = self._sync_autostart(client, props, deadline)
            except Exception:
                if started:
                    self._abort(client, uid)
                raise
        outs = observed(described.body, props)
        outs.update(status=READY, autostart_registered=registered, adopted=adopted)
        return outs

    def _refuse_conflict(self, client: XinferenceClient, uid: str, endpoint: str, described: Described,
                         props: Mapping[str, Any], deadline: float) -> None:
        registered = None
        entries = client.autostart_entries(deadline=deadline)
        if entries and uid in entries:
            registered = entries[uid].get("launch")
        mismatches = running_mismatches(described.body, props, registered)
        if mismatches:
            raise ConflictError(conflict_message(uid, endpoint, mismatches))

    def _launch(self, client: XinferenceClient, uid: str, endpoint: str, props: Mapping[str, Any],
                deadline: float, timeout: float) -> tuple[Described, bool]:
        payload = launch_payload(props)
        where = f" on GPU(s) {payload['gpu_idx']}" if payload.get("gpu_idx") else ""
        _say(uid, f"launching {props['model_type']} model {props['model_name']}{where} at {endpoint} "
                  f"(timeout {timeout:g}s)")
        attempt = 0
        while True:
            attempt += 1
            try:
                client.launch(payload, deadline=deadline)
                break
            except XinferenceAuthError:
                raise
            except XinferenceHTTPError as exc:
                if exc.status == 400 and is_already_launched(exc.detail):
                    # Someone (autostart, a parallel run, our own lost request) launched it meanwhile.
                    described = self._wait_ready(client, uid, deadline, timeout)
                    self._refuse_conflict(client, uid, endpoint, described, props, deadline)
                    return described, attempt > 1
                if exc.status is not None and 400 <= exc.status < 500:
                    raise LaunchError(
                        f"Xinference at {endpoint} refused to launch '{uid}': {exc.detail}. Nothing was launched. "
                        f"Check the model's inputs (model_path must exist on the server / inside the container, "
                        f"gpu_idx must be a GPU the worker sees).", status=exc.status, detail=exc.detail) from None
                raise
            except XinferenceUnreachable:
                # The connection broke after the request was sent: the launch may or may not have
                # reached the server. Look; send it again only if nothing is there.
                look = time.monotonic() + min(self.retry_window, max(5.0, deadline - time.monotonic()))
                if client.describe(uid, deadline=look).state != ABSENT:
                    break
                status, _ = _instance_status(client.instances(uid, deadline=look))
                if status in PENDING_STATUSES:
                    break
                if time.monotonic() + 1.0 >= deadline:
                    raise
                _say(uid, "the launch request was cut off before an answer and nothing was launched; sending it again")
                time.sleep(min(5.0, 0.5 * attempt))
        try:
            return self._wait_ready(client, uid, deadline, timeout), True
        except Exception:
            self._abort(client, uid)
            raise

    def _wait_ready(self, client: XinferenceClient, uid: str, deadline: float, timeout: float) -> Described:
        """Poll GET /v1/models/{uid} until it is ready, failed, or the deadline passes."""
        next_progress = time.monotonic() + self.progress_every
        absent_since: Optional[float] = None
        described = Described(ABSENT, {})
        interval = min(0.2, self.poll_interval)
        while True:
            now = time.monotonic()
            described = client.describe(uid, deadline=max(deadline, now + 5.0))
            if described.state == READY:
                return described
            now = time.monotonic()
            if described.state == LOADING:
                absent_since = None
                if now >= next_progress:
                    next_progress = now + self.progress_every
                    self._report_progress(client, uid, deadline)
            else:
                rows = client.instances(uid, deadline=max(deadline, now + 5.0))
                status, errors = _instance_status(rows)
                if status == "ERROR":
                    why = "; ".join(errors) or "no message from the server (cancelled, or see the Xinference log)"
                    raise LaunchError(f"launch of '{uid}' failed on the server: {why}", detail=why)
                if status in PENDING_STATUSES:
                    absent_since = None
                else:
                    absent_since = absent_since if absent_since is not None else now
                    if now - absent_since > 15.0:
                        raise LaunchError(f"'{uid}' vanished from the server while launching (status {status!r}); "
                                          f"see the Xinference log")
            if now >= deadline:
                raise LaunchError(
                    f"'{uid}' was not ready after launch_timeout={timeout:g}s (last answer: "
                    f"{described.detail or described.state}). The launch was cancelled. Raise launch_timeout for "
                    f"large models, or check the Xinference log for why it is slow.")
            time.sleep(max(0.05, min(interval, deadline - now)))
            interval = min(self.poll_interval, interval * 1.5)

    def _report_progress(self, client: XinferenceClient, uid: str, deadline: float) -> None:
        try:
            progress = client.progress(uid, deadline=time.monotonic() + 5.0)
        except XinferenceError:
            return
        value = progress.get("progress")
        stage = progress.get("stage") or "loading"
        percent = f"{float(value) * 100:.0f}%" if isinstance(value, (int, float)) else "?"
        left = max(0.0, deadline - time.monotonic())
        _say(uid, f"{stage} {percent} ({left:.0f}s left)")

    def _smoke(self, client: XinferenceClient, uid: str, model_type: str, deadline: float) -> None:
        smoke_deadline = max(deadline, time.monotonic() + self.smoke_timeout)
        kind = str(model_type).casefold()
        try:
            if kind == "embedding":
                client.embed(uid, deadline=smoke_deadline, read_timeout=self.smoke_timeout)
            elif kind == "rerank":
                client.rerank(uid, deadline=smoke_deadline, read_timeout=self.smoke_timeout)
            else:
                described = client.describe(uid, deadline=smoke_deadline)
                if described.state != READY:
                    raise XinferenceError(f"GET /v1/models/{uid}: {described.detail or described.state}")
        except XinferenceError as exc:
            raise LaunchError(f"'{uid}' launched but its smoke test failed: {exc}. Set smoke_test: false to skip "
                              f"it, or check the model.", status=exc.status, detail=exc.detail) from None
        _say(uid, "smoke test passed")

    def _sync_autostart(self, client: XinferenceClient, props: Mapping[str, Any], deadline: float) -> bool:
        uid = props["model_uid"]
        request_deadline = max(deadline, time.monotonic() + 10.0)
        if props.get("autostart"):
            if client.autostart_upsert(autostart_entry(props), deadline=request_deadline) is None:
                _say(uid, "this Xinference has no autostart registry (POST /v1/autostart/models): plain launch; "
                          "after a server restart run `pulumi refresh` then `pulumi up`")
                return False
            return True
        client.autostart_remove(uid, deadline=request_deadline)
        return False

    def _abort(self, client: XinferenceClient, uid: str) -> None:
        """Leave nothing half-launched: cancel a loading launch, terminate a ready one, and check."""
        end = time.monotonic() + self.cleanup_timeout
        last_cancel = 0.0
        try:
            while time.monotonic() < end:
                # Any replica up counts as READY here: such a model is terminated, never cancelled.
                described = client.describe(uid, all_replicas=False, deadline=end)
                if described.state == READY:
                    client.terminate(uid, deadline=end)
                    continue
                status, _ = _instance_status(client.instances(uid, deadline=end))
                if described.state == ABSENT and status not in PENDING_STATUSES:
                    _say(uid, "cleaned up after the failed launch")
                    return
                # Loading (never cancel a READY model: Xinference then drops it but leaves its process running).
                if time.monotonic() - last_cancel > 5.0:
                    client.cancel(uid, deadline=end)
                    last_cancel = time.monotonic()
                time.sleep(0.5)
            _say(uid, f"could not confirm the failed launch was cleaned up within {self.cleanup_timeout:g}s; "
                      f"check `xinference list` and terminate it by hand")
        except XinferenceError as exc:
            _say(uid, f"cleanup after the failed launch failed: {exc}; terminate it by hand if it shows up")

    # --- read / delete -------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        props = normalize(props)
        uid = id_ or props.get("model_uid")
        if not uid:
            raise XinferenceError("XinferenceModel read: no model uid (resource id) to look for")
        props["model_uid"] = uid
        with self._client(props.get("endpoint")) as client:
            try:
                described = client.describe(uid)
            except XinferenceUnreachable as exc:
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
    def _keep(props: Mapping[str, Any], status: str) -> dict[str, Any]:
        outs = {k: v for k, v in props.items() if k in ARG_KEYS or k in OUTPUT_KEYS}
        outs["status"] = status
        return outs

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        props = normalize(props)
        uid = id_ or props.get("model_uid")
        with self._client(props.get("endpoint")) as client:
            # The entry first, so that the registry does not bring the model back.
            client.autostart_remove(uid)
            if client.terminate(uid):
                _say(uid, "terminated")
                return
            described = client.describe(uid)
            if described.state == ABSENT:
                status, _ = _instance_status(client.instances(uid))
                if status not in PENDING_STATUSES:
                    return  # already gone: done
            # Still loading (DELETE does not stop a load in Xinference 4.1): cancel it and make sure.
            self._abort(client, uid)
            if client.describe(uid).state != ABSENT:
                raise XinferenceError(f"model '{uid}' is still on the server after terminate and cancel; "
                                      f"terminate it by hand and run `pulumi refresh`")


def _instance_status(rows: Sequence[Mapping[str, Any]]) -> tuple[Optional[str], list[str]]:
    """(status, error messages) from GET /v1/models/instances?model_uid=X."""
    if not rows:
        return None, []
    row = rows[0]
    errors = []
    for replica in row.get("replica_statuses") or []:
        message = replica.get("error_message")
        if message:
            errors.append(str(message))
    return row.get("status"), errors


def _autostart_pending(entry: Mapping[str, Any]) -> bool:
    """The registry is (about to be) bringing this model back: after a restart, before or while it relaunches."""
    state = entry.get("state") or {}
    status = state.get("status")
    if state.get("instance_status") in ("CREATING", "LOADING"):
        return True
    return status in _AUTOSTART_PENDING or (status is None and not state.get("last_error"))


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
        props: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(args)}
        for key in OUTPUT_KEYS:
            props[key] = None
        super().__init__(XinferenceModelProvider(), resource_name, props, opts)
