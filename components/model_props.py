"""XinferenceModel's inputs and the pure functions over them (no I/O): defaults and wire-format
normalisation, validation, the launch body, the autostart entry, diff, and the comparison of a
running model with the wanted one. components/model.py holds the provider that uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence, Union

import pulumi

from spec.catalog import catalog_problems, pinned_catalog
from spec.xinference import MODEL_TYPES, MODEL_UID_FIX, endpoint_problem, model_uid_problem

_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN: a value not known at preview
_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc: a special value's signature key ...
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # ... and the signature of a secret


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
    endpoint_ca_bundle: Optional[pulumi.Input[str]] = None
    """PEM file (absolute path, on the machine running Pulumi) of the CA of an https endpoint; default: public CAs."""
    docker_host: Optional[pulumi.Input[str]] = None
    """The engine running ``container_id`` (docker mode): when the endpoint does not answer, read asks
    it whether that container still exists; a model whose container is gone is gone too."""
    docker_ssh: Optional[pulumi.Input[Sequence[str]]] = None
    """For an ssh:// engine: the ssh command that reaches it, up to the host name (the stack's one ssh
    configuration, spec/ssh.py); read asks the engine through it."""
    registration_digest: Optional[pulumi.Input[str]] = None
    """A custom model: the digest of the family this stack registers under model_name
    (components/model_registration.py); a new family relaunches. Set, the name is not looked up in
    the pinned catalog."""


ARG_KEYS = tuple(f.name for f in fields(XinferenceModelArgs))
# Sent in the launch body (plus `extra`).
LAUNCH_KEYS = ("model_uid", "model_name", "model_type", "model_engine", "model_format", "model_size_in_billions",
               "quantization", "model_path", "gpu_idx", "n_gpu", "replica", "worker_ip")
# A change to any of these relaunches the model (delete before replace).
REPLACE_KEYS = LAUNCH_KEYS + ("extra", "container_id", "weights_digest", "registration_digest")
# A change to these is applied in place.
IN_PLACE_KEYS = ("endpoint", "launch_timeout", "autostart", "smoke_test", "endpoint_ca_bundle", "docker_host",
                 "docker_ssh")
OUTPUT_KEYS = ("status", "autostart_registered", "adopted", "address", "accelerators")
DEFAULTS: dict[str, Any] = {"replica": 1, "launch_timeout": 600.0, "autostart": True, "smoke_test": True}
_STR_KEYS = ("endpoint", "model_uid", "model_name", "model_type", "model_engine", "model_format", "quantization",
             "model_path", "worker_ip", "container_id", "weights_digest", "endpoint_ca_bundle", "docker_host",
             "registration_digest")
# Keys of the launch body the provider owns; `extra` may add any other kwarg.
_RESERVED_EXTRA = frozenset(LAUNCH_KEYS) | {"wait_ready"}

AUTOSTART_PRIORITY = 100
AUTOSTART_MAX_RETRIES = 3
AUTOSTART_RETRY_INTERVAL_S = 30
AUTOSTART_PENDING = {"launching", "waiting_worker", "waiting_model"}


# --- pure functions --------------------------------------------------------------------


def is_known(value: Any) -> bool:
    """False for a value not known at preview: the wire sentinel, or the SDK's Unknown object
    (what `python -m pulumi.dynamic` hands check and diff for another resource's pending output)."""
    return not ((isinstance(value, str) and value == _UNKNOWN) or isinstance(value, pulumi.output.Unknown))


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
        if out.get(key) is not None and is_known(out[key]):
            out[key] = _intify(out[key])
    if isinstance(out.get("launch_timeout"), int) and not isinstance(out["launch_timeout"], bool):
        out["launch_timeout"] = float(out["launch_timeout"])
    if isinstance(out.get("endpoint"), str) and is_known(out["endpoint"]):
        out["endpoint"] = out["endpoint"].strip().rstrip("/")
    return out


def server_problems(props: Mapping[str, Any], required: Sequence[str],
                    str_keys: Sequence[str]) -> list[tuple[str, str]]:
    """Problems with the inputs every resource on one server shares: the required keys, the string
    keys, the endpoint, its CA bundle, the docker ssh command and the model type. Used by the model
    and the custom registration alike, so both refuse the same input the same way."""
    problems: list[tuple[str, str]] = []

    def bad(key: str, reason: str) -> None:
        problems.append((key, reason))

    def given(key: str) -> bool:
        return props.get(key) is not None and is_known(props.get(key))

    for key in required:
        if props.get(key) is None or (isinstance(props.get(key), str) and not props[key].strip()):
            bad(key, f"{key} is required")
    for key in str_keys:
        if given(key) and not isinstance(props[key], str):
            bad(key, f"{key} must be a string, got {type(props[key]).__name__}")
    if given("docker_ssh") and (not isinstance(props["docker_ssh"], (list, tuple))
                                or not all(isinstance(w, str) for w in props["docker_ssh"])):
        bad("docker_ssh", f"docker_ssh must be a list of strings (an ssh command), got {props['docker_ssh']!r}")
    if given("endpoint") and isinstance(props["endpoint"], str):
        problem = endpoint_problem(props["endpoint"].strip())
        if problem:
            bad("endpoint", f"endpoint {props['endpoint']!r}: {problem}; fix: write it like http://10.0.0.5:9997")
    if given("endpoint_ca_bundle") and isinstance(props["endpoint_ca_bundle"], str):
        ca_bundle, endpoint = props["endpoint_ca_bundle"], props.get("endpoint")
        if not ca_bundle.startswith("/"):
            bad("endpoint_ca_bundle", f"endpoint_ca_bundle must be an absolute path, got {ca_bundle!r}")
        elif isinstance(endpoint, str) and is_known(endpoint) and not endpoint.strip().startswith("https://"):
            bad("endpoint_ca_bundle", f"endpoint_ca_bundle is only used for an https:// endpoint, got {endpoint!r}")
    if given("model_type") and isinstance(props["model_type"], str) and props["model_type"] not in MODEL_TYPES:
        bad("model_type", f"model_type must be one of {', '.join(MODEL_TYPES)}; got {props['model_type']!r}")
    return problems


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with the inputs, as (property, reason). Unknown values are not judged."""
    problems = server_problems(props, ("endpoint", "model_uid", "model_name", "model_type"), _STR_KEYS)

    def bad(key: str, reason: str) -> None:
        problems.append((key, reason))

    def given(key: str) -> bool:
        return props.get(key) is not None and is_known(props.get(key))

    if given("model_uid") and isinstance(props["model_uid"], str):
        problem = model_uid_problem(props["model_uid"])
        if problem:
            bad("model_uid", f"model_uid {props['model_uid']!r}: {problem}; fix: {MODEL_UID_FIX}")
    if all(given(k) and isinstance(props[k], str) and props[k].strip() for k in ("model_type", "model_name")) \
            and props["model_type"] in MODEL_TYPES and props.get("registration_digest") is None:
        engine, model_format = (props.get(k) if given(k) and isinstance(props[k], str) else None
                                for k in ("model_engine", "model_format"))
        for problem in catalog_problems(pinned_catalog(), props["model_type"], props["model_name"], engine,
                                        model_format):
            key = "model_" + problem.field
            bad(key, f"{key} {problem.value!r}: {problem.message}; fix: {problem.fix}")
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
            items = [g for g in gpu_idx if is_known(g)]
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
    changes = [k for k in ARG_KEYS if not is_known(news.get(k)) or not _same(olds.get(k), news.get(k))]
    replaces = [k for k in changes if k in REPLACE_KEYS]
    if olds.get("status") not in (None, "READY") and "status" not in changes:
        # Refresh saw it still coming back (autostart after a restart): an in-place update waits
        # for it, so that `up --refresh` ends with a serving model, not merely a recorded one.
        changes.append("status")
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
