"""The pure functions over XinferenceModel's inputs (no I/O): the resource's properties, defaults and
wire-format normalisation, validation (by the rules of stackspec/model_inputs.py, which declares the
inputs), the launch body, the autostart entry, diff, and the comparison of a running model with the
wanted one. components/model.py holds the provider that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi

from stackspec.model_inputs import LAUNCH_KEYS, ModelInputs, ServerInputs, input_problems

_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN: a value not known at preview
_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc: a special value's signature key ...
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # ... and the signature of a secret


@dataclass
class XinferenceModelArgs:
    """XinferenceModel's inputs: the values the program knows, and by name those that are other
    resources' outputs (the container's id, a weights digest with its files' repairs), which replace
    the value of the same name once known. Both are judged by the provider's check, by the rules of
    ``ModelInputs`` (stackspec/model_inputs.py: the one list of the inputs, their defaults and rules)."""

    inputs: ModelInputs
    from_outputs: Mapping[str, pulumi.Input[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        strange = sorted(set(self.from_outputs) - set(ARG_KEYS))
        if strange:
            raise ValueError(f"XinferenceModelArgs.from_outputs: {', '.join(strange)} not among the inputs "
                             f"({', '.join(ARG_KEYS)})")


ARG_KEYS = tuple(ModelInputs.model_fields)
# A change to any of these relaunches the model (delete before replace).
REPLACE_KEYS = LAUNCH_KEYS + ("extra", "container_id", "weights_digest", "registration_digest")
# A change to these is applied in place.
IN_PLACE_KEYS = ("endpoint", "launch_timeout", "autostart", "smoke_test", "endpoint_ca_bundle", "docker_host",
                 "docker_ssh")
OUTPUT_KEYS = ("status", "autostart_registered", "adopted", "address", "accelerators")
DEFAULTS: dict[str, Any] = {name: f.default for name, f in ModelInputs.model_fields.items()
                            if not f.is_required() and f.default is not None}

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


def resource_props(args: XinferenceModelArgs) -> dict[str, Any]:
    """The resource's input properties. An empty or zero input is left out (absent and empty must
    diff the same; Xinference's default applies) unless it has a default of its own."""
    props: dict[str, Any] = {}
    for name in ARG_KEYS:
        value = getattr(args.inputs, name)
        props[name] = value if value or name in DEFAULTS else None
    return {**props, **args.from_outputs}


def input_problems_of(inputs: type[ServerInputs], props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``props`` judged as ``inputs`` (stackspec/model_inputs.py); values unknown at preview are not judged."""
    known = {k: _known_items(v) for k, v in props.items() if is_known(v)}
    unknown = {k for k, v in props.items() if v is not None and not is_known(v)}
    return input_problems(inputs, known, unknown)


def _known_items(value: Any) -> Any:
    return [v for v in value if is_known(v)] if isinstance(value, list) else value


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with the model's inputs, as (property, reason). Unknown values are not judged."""
    return input_problems_of(ModelInputs, normalize(props))


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
