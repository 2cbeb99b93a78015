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
import math
import os
import re
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence, Union

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, ConfigureRequest, CreateResult, DiffResult, ReadResult
from pulumi.dynamic import ResourceProvider, UpdateResult

from components.xinference_client import (
    ABSENT,
    LOADING,
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

log = logging.getLogger(__name__)

CONFIG_NAMESPACE = "xinference-offline"
API_KEY_CONFIG = f"{CONFIG_NAMESPACE}:api_key"
API_KEY_ENV = "XINFERENCE_API_KEY"

MODEL_TYPES = ("LLM", "embedding", "rerank", "audio", "image", "video", "flexible")
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN: a value not known at preview
_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc: a special value's signature key ...
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # ... and the signature of a secret
_REPLICA_SUFFIX = re.compile(r"^.+-rep\d+$")
# How Xinference 4.1 reports a worker it cannot reach, e.g. "[Errno 111] Connect call failed ('10.0.0.2', 30001)".
_WORKER_UNREACHABLE = re.compile(r"Connect call failed|Connection refused|ServerClosed|timed? ?out", re.IGNORECASE)


@dataclass
class XinferenceModelArgs:
    """Launch parameters of one model (names follow Xinference's REST API)."""

    endpoint: pulumi.Input[str]
    """http://host:port of the Xinference supervisor."""
    model_uid: pulumi.Input[str]
    model_name: pulumi.Input[str]
    model_type: pulumi.Input[str]
    """LLM, embedding, rerank, audio, image, video, flexible."""
    model_engine: Optional[pulumi.Input[str]] = None
    model_format: Optional[pulumi.Input[str]] = None
    model_size_in_billions: Optional[pulumi.Input[Union[int, float, str]]] = None
    quantization: Optional[pulumi.Input[str]] = None
    model_path: Optional[pulumi.Input[str]] = None
    """Path INSIDE the container / on the server."""
    gpu_idx: Optional[pulumi.Input[Sequence[int]]] = None
    """Container-side GPU indices."""
    n_gpu: Optional[pulumi.Input[Union[int, str]]] = None
    """A count or "auto"."""
    replica: pulumi.Input[int] = 1
    extra: Optional[pulumi.Input[Mapping[str, Any]]] = None
    """Other launch kwargs, passed through to POST /v1/models."""
    worker_ip: Optional[pulumi.Input[str]] = None
    """Cluster placement."""
    container_id: Optional[pulumi.Input[str]] = None
    """A new container means relaunch."""
    weights_digest: Optional[pulumi.Input[str]] = None
    """New weights mean relaunch."""
    launch_timeout: pulumi.Input[float] = 600.0
    """Seconds to wait for the model to be ready."""
    autostart: pulumi.Input[bool] = True
    """Register the model in Xinference's autostart registry (it comes back after a restart)."""
    smoke_test: pulumi.Input[bool] = True
    """Run one request suited to the type after launch."""


ARG_KEYS = tuple(f.name for f in fields(XinferenceModelArgs))
# Sent in the launch body (plus `extra`).
LAUNCH_KEYS = ("model_uid", "model_name", "model_type", "model_engine", "model_format", "model_size_in_billions",
               "quantization", "model_path", "gpu_idx", "n_gpu", "replica", "worker_ip")
# A change to any of these relaunches the model (delete before replace).
REPLACE_KEYS = LAUNCH_KEYS + ("extra", "container_id", "weights_digest")
# A change to these is applied in place.
IN_PLACE_KEYS = ("endpoint", "launch_timeout", "autostart", "smoke_test")
OUTPUT_KEYS = ("status", "autostart_registered", "adopted", "address", "accelerators")
DEFAULTS: dict[str, Any] = {"replica": 1, "launch_timeout": 600.0, "autostart": True, "smoke_test": True}
_STR_KEYS = ("endpoint", "model_uid", "model_name", "model_type", "model_engine", "model_format", "quantization",
             "model_path", "worker_ip", "container_id", "weights_digest")
# Keys of the launch body the provider owns; `extra` may add any other kwarg.
_RESERVED_EXTRA = frozenset(LAUNCH_KEYS) | {"wait_ready"}

AUTOSTART_PRIORITY = 100
AUTOSTART_MAX_RETRIES = 3
AUTOSTART_RETRY_INTERVAL_S = 30
_AUTOSTART_PENDING = {"launching", "waiting_worker", "waiting_model"}


# --- pure functions --------------------------------------------------------------------


def _known(value: Any) -> bool:
    return not (isinstance(value, str) and value == _UNKNOWN)


def _intify(value: Any) -> Any:
    """Pulumi's wire format turns every number into a float: give integral ones back as int."""
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        return int(value)
    if isinstance(value, Mapping):
        return {k: _intify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_intify(v) for v in value]
    return value


def _unsecret(value: Any) -> Any:
    """Values as plain data: a secret-wrapped value (should the engine ever send one) unwrapped."""
    if isinstance(value, Mapping):
        if value.get(_SIG_KEY) == _SECRET_SIG:
            return _unsecret(value.get("value"))
        return {k: _unsecret(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unsecret(v) for v in value]
    return value


def normalize(props: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs with defaults filled in and wire-format numbers made ints again. Unknowns are kept."""
    out = {k: (v if k == "__provider" else _unsecret(v)) for k, v in props.items()}
    for key, default in DEFAULTS.items():
        if out.get(key) is None:
            out[key] = default
    for key in ("replica", "n_gpu", "model_size_in_billions", "gpu_idx", "extra"):
        if out.get(key) is not None and _known(out[key]):
            out[key] = _intify(out[key])
    if isinstance(out.get("launch_timeout"), int) and not isinstance(out["launch_timeout"], bool):
        out["launch_timeout"] = float(out["launch_timeout"])
    if isinstance(out.get("endpoint"), str) and _known(out["endpoint"]):
        out["endpoint"] = out["endpoint"].strip().rstrip("/")
    return out


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with the inputs, as (property, reason). Unknown values are not judged."""
    problems: list[tuple[str, str]] = []

    def bad(key: str, reason: str) -> None:
        problems.append((key, reason))

    def given(key: str) -> bool:
        return props.get(key) is not None and _known(props.get(key))

    for key in ("endpoint", "model_uid", "model_name", "model_type"):
        if props.get(key) is None or (isinstance(props.get(key), str) and not props[key].strip()):
            bad(key, f"{key} is required")
    for key in _STR_KEYS:
        if given(key) and not isinstance(props[key], str):
            bad(key, f"{key} must be a string, got {type(props[key]).__name__}")
    if given("endpoint") and isinstance(props["endpoint"], str):
        if not re.match(r"^https?://[^/\s:]+(:\d+)?/?$", props["endpoint"].strip()):
            bad("endpoint", f"endpoint must look like http://host:port, got {props['endpoint']!r}")
    if given("model_uid") and isinstance(props["model_uid"], str):
        uid = props["model_uid"]
        if len(uid.strip()) > 100:
            bad("model_uid", "model_uid must be at most 100 characters")
        elif _REPLICA_SUFFIX.match(uid.strip()):
            bad("model_uid", "model_uid must not end with '-rep<number>' (Xinference reserves it for replicas)")
        elif uid != uid.strip() or "/" in uid or any(c.isspace() for c in uid):
            bad("model_uid", f"model_uid must not contain '/' or spaces, got {uid!r}")
    if given("model_type") and isinstance(props["model_type"], str) and props["model_type"] not in MODEL_TYPES:
        bad("model_type", f"model_type must be one of {', '.join(MODEL_TYPES)}; got {props['model_type']!r}")
    if given("model_type") and props["model_type"] == "LLM" and props.get("model_engine") is None:
        bad("model_engine", "model_engine is required for model_type LLM (Xinference refuses an LLM launch without it)")

    if given("replica"):
        replica = props["replica"]
        if isinstance(replica, bool) or not isinstance(replica, (int, float)) or replica != int(replica) \
                or replica < 1:
            bad("replica", f"replica must be a whole number >= 1, got {replica!r}")
    if given("gpu_idx"):
        gpu_idx = props["gpu_idx"]
        if not isinstance(gpu_idx, (list, tuple)):
            bad("gpu_idx", f"gpu_idx must be a list of GPU indices, got {gpu_idx!r}")
        else:
            items = [g for g in gpu_idx if _known(g)]
            wrong = [g for g in items if isinstance(g, bool) or not isinstance(g, (int, float)) or g != int(g) or g < 0]
            if wrong:
                bad("gpu_idx", f"gpu_idx entries must be whole numbers >= 0, got {wrong!r}")
            elif len({int(g) for g in items}) != len(items):
                bad("gpu_idx", f"gpu_idx entries must be unique, got {list(gpu_idx)!r}")
            replica = props.get("replica", 1)
            if not wrong and items and isinstance(replica, (int, float)) and not isinstance(replica, bool) \
                    and replica >= 1 and len(items) % int(replica):
                bad("gpu_idx", f"gpu_idx has {len(items)} GPUs, not a multiple of replica={int(replica)}")
    if given("n_gpu"):
        n_gpu = props["n_gpu"]
        if not (n_gpu == "auto" or (isinstance(n_gpu, (int, float)) and not isinstance(n_gpu, bool)
                                    and n_gpu == int(n_gpu) and n_gpu >= 0)):
            bad("n_gpu", f"n_gpu must be a whole number >= 0 or \"auto\", got {n_gpu!r}")
    if given("model_size_in_billions"):
        size = props["model_size_in_billions"]
        if isinstance(size, bool) or not (isinstance(size, str) and size.strip()
                                          or isinstance(size, (int, float)) and size > 0):
            bad("model_size_in_billions", f"model_size_in_billions must be a positive number or text, got {size!r}")
    if given("launch_timeout"):
        timeout = props["launch_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            bad("launch_timeout", f"launch_timeout must be a number of seconds > 0, got {timeout!r}")
    for key in ("autostart", "smoke_test"):
        if given(key) and not isinstance(props[key], bool):
            bad(key, f"{key} must be true or false, got {props[key]!r}")
    if given("extra"):
        extra = props["extra"]
        if not isinstance(extra, Mapping):
            bad("extra", f"extra must be a mapping of launch kwargs, got {type(extra).__name__}")
        else:
            clash = sorted(k for k in extra if k in _RESERVED_EXTRA)
            if clash:
                bad("extra", f"extra must not set {', '.join(clash)}: use the input(s) of the same name")
            if any(not isinstance(k, str) for k in extra):
                bad("extra", "extra keys must be strings")
    return problems


def launch_payload(props: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /v1/models body for these inputs.

    ``enable_virtual_env`` is false unless ``extra`` says otherwise: a per-model virtualenv
    pip-installs packages from an index, which is fatal on an offline server.
    """
    props = normalize(props)
    body: dict[str, Any] = {}
    for key in LAUNCH_KEYS:
        value = props.get(key)
        if value is None or (key == "gpu_idx" and not value):
            continue
        body[key] = list(value) if key == "gpu_idx" else value
    body["enable_virtual_env"] = False
    body.update(dict(props.get("extra") or {}))
    return body


def autostart_entry(props: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /v1/autostart/models body: the launch body plus the registry's retry policy."""
    return {
        "enabled": True,
        "priority": AUTOSTART_PRIORITY,
        "max_retries": AUTOSTART_MAX_RETRIES,
        "retry_interval_seconds": AUTOSTART_RETRY_INTERVAL_S,
        "launch": launch_payload(props),
    }


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ()


def _same(a: Any, b: Any) -> bool:
    if _empty(a) and _empty(b):
        return True
    return _intify(a) == _intify(b)


def diff_props(olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(replaces, changes): the inputs that force a relaunch, and every input that changed.

    A value unknown at preview counts as changed.
    """
    olds, news = normalize(olds), normalize(news)
    changes = [k for k in ARG_KEYS if not _known(news.get(k)) or not _same(olds.get(k), news.get(k))]
    replaces = [k for k in changes if k in REPLACE_KEYS]
    return replaces, changes


def _text(value: Any) -> str:
    return str(value).strip().casefold()


def _size(value: Any) -> str:
    text = str(value).strip().replace("_", ".")
    try:
        return repr(float(text))
    except ValueError:
        return text.casefold()


def running_mismatches(described: Mapping[str, Any], props: Mapping[str, Any],
                       registered: Optional[Mapping[str, Any]] = None) -> list[tuple[str, Any, Any]]:
    """How a running model differs from the wanted inputs: [(property, running, wanted)].

    ``described`` is GET /v1/models/{uid}. It does not show model_path, n_gpu or extra
    kwargs; when the model's autostart entry (``registered``: its launch body) is known,
    those are compared with it too. Inputs left unset are not compared.
    """
    props = normalize(props)
    found: list[tuple[str, Any, Any]] = []

    def check(key: str, running: Any, wanted: Any, same) -> None:
        if wanted is None or running is None:
            return
        if not same(running, wanted):
            found.append((key, running, wanted))

    check("model_name", described.get("model_name"), props.get("model_name"), lambda a, b: a == b)
    check("model_type", described.get("model_type"), props.get("model_type"), lambda a, b: _text(a) == _text(b))
    check("model_engine", described.get("model_engine"), props.get("model_engine"), lambda a, b: _text(a) == _text(b))
    check("model_format", described.get("model_format"), props.get("model_format"), lambda a, b: _text(a) == _text(b))
    check("quantization", described.get("quantization"), props.get("quantization"), lambda a, b: _text(a) == _text(b))
    check("model_size_in_billions", described.get("model_size_in_billions"), props.get("model_size_in_billions"),
          lambda a, b: _size(a) == _size(b))
    check("replica", described.get("replica"), props.get("replica"), lambda a, b: int(a) == int(b))
    wanted_gpus = props.get("gpu_idx") or None
    accelerators = described.get("accelerators")
    if wanted_gpus and isinstance(accelerators, list) and accelerators:
        running_gpus = sorted({int(a) for a in accelerators if str(a).isdigit()})
        wanted_set = sorted({int(g) for g in wanted_gpus})
        same = running_gpus == wanted_set if int(props.get("replica") or 1) == 1 else set(running_gpus) <= set(wanted_set)
        if not same:
            found.append(("gpu_idx", running_gpus, list(wanted_gpus)))
    if props.get("worker_ip") and isinstance(described.get("address"), str) and ":" in described["address"]:
        host = described["address"].rsplit(":", 1)[0]
        wanted_host = str(props["worker_ip"])
        if wanted_host.count(":") == 1:  # a worker named by its full ip:port address
            wanted_host = wanted_host.split(":")[0]
        if host != wanted_host:
            found.append(("worker_ip", host, props["worker_ip"]))

    if registered:
        wanted = launch_payload(props)
        seen = {key for key, _, _ in found}
        for key in sorted(set(wanted) | set(registered)):
            if key in seen or key in ("model_uid", "wait_ready"):
                continue
            have, want = registered.get(key), wanted.get(key)
            if have == "******":  # redacted by the server (a secret-looking kwarg): cannot compare
                continue
            if key == "model_type" and have is not None and want is not None:
                if _text(have) != _text(want):
                    found.append((key, have, want))
                continue
            if not _same(have, want) and not (key == "enable_virtual_env" and have is None and want is False):
                found.append((f"extra.{key}" if key not in LAUNCH_KEYS else key, have, want))
    return found


def conflict_message(uid: str, endpoint: str, mismatches: Sequence[tuple[str, Any, Any]]) -> str:
    diffs = "; ".join(f"{key}: running {running!r}, wanted {wanted!r}" for key, running, wanted in mismatches)
    return (
        f"model uid '{uid}' already runs on {endpoint} with different launch parameters ({diffs}). "
        f"Nothing was changed. To resolve: terminate it (`xinference terminate --model-uid {uid} -e {endpoint}` "
        f"or DELETE {endpoint}/v1/models/{uid}) so that `pulumi up` launches it with the stack's parameters; "
        f"or change the stack config to match the running model; or give this model another uid."
    )


def observed(described: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """Outputs for a model seen running: the inputs, overwritten where the server shows otherwise
    (so that the next diff relaunches a model someone relaunched by hand with other parameters)."""
    outs = {k: v for k, v in normalize(props).items() if k in ARG_KEYS}
    for key, running, _wanted in running_mismatches(described, props):
        outs[key] = running
    outs["address"] = described.get("address")
    accelerators = described.get("accelerators")
    outs["accelerators"] = [str(a) for a in accelerators] if isinstance(accelerators, list) else []
    return outs


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
                if status in ("CREATING", "LOADING", "UPDATING"):
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
                if status in ("CREATING", "LOADING", "UPDATING"):
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
                if described.state == ABSENT and status not in ("CREATING", "LOADING", "UPDATING"):
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
                server_error = exc.status >= 500 if exc.status is not None else (exc.detail or "").startswith("HTTP 5")
                if not server_error or not _WORKER_UNREACHABLE.search(exc.detail or ""):
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
                if status not in ("CREATING", "LOADING", "UPDATING"):
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
