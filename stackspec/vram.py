"""How much VRAM a model takes on each of its GPUs, when the stack does not declare `vram_gb`.

An LLM with a ``config.json`` is computed the way the pinned Xinference 4.1's ``cal-model-mem``
computes it (``xinference/model/llm/memory.py``, ``estimate_llm_gpu_memory_details``): weights
+ KV cache + activations + a fixed 650 MiB overhead, in MiB, here turned into GB (GiB, as
nvidia-smi's MiB figures and a GPU's `vram_gb` count them). The weights are their size on
disk when the directory holds them (Xinference uses the checkpoint's size too when it knows
it), else ``size_in_billions`` at the quantization's bits. Any other model, and an LLM
without a readable ``config.json``, is its weights' size times ``WEIGHTS_FACTOR`` plus the
same overhead. Without files (before `bundle build`, or on a machine that is not the docker
host) the figure is unknown and counts for nothing.

Pure apart from ``read_model_files``, the one function that looks at a directory (it reads
``config.json`` and file sizes, never the weights themselves).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from stackspec.config import ModelConfig

MIB = 1024 ** 2
GIB = 1024 ** 3
# Xinference's estimate adds 650 MiB to every model: the CUDA context and allocator slack of
# the model's own process. A non-LLM model runs in its own process too, so it pays it as well.
OVERHEAD_MIB = 650.0
# Non-LLM models (embedding, rerank, audio, image, ...): weights as stored, plus half again for
# activations of one batch and framework buffers. Xinference has no formula for them; 1.5 is
# the seed's own measure rounded up (bce-embedding/bce-reranker: 1.1 GB of weights, about
# 1.6 GB in nvidia-smi each once they served a request).
WEIGHTS_FACTOR = 1.5
# Engines that reserve the KV cache for their whole max_model_len when they start (vLLM refuses
# to start if it does not fit): their context defaults to the model's own maximum. The others
# (transformers, llama.cpp, ...) allocate per request; for them an undeclared context counts
# as DEFAULT_CONTEXT tokens, since cal-model-mem's activation term grows with its square and a
# 128K maximum would refuse every stack.
PREALLOCATING_ENGINES = ("vllm", "sglang")
# ... and they take a share of each whole GPU up front, whatever the model's size: two of them at
# their defaults cannot share one GPU. Xinference 4.1 sets both when a launch does not: vLLM's
# gpu_memory_utilization 0.9, SGLang's mem_fraction_static by tensor-parallel size (0.88 on one GPU
# ... 0.79 on 16, SGLang's own table; xinference/model/llm/{vllm,sglang}/core.py).
RESERVED_SHARE_KWARGS = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}
RESERVED_SHARE_DEFAULTS = {
    "vllm": lambda n_gpus: 0.9,
    "sglang": lambda n_gpus: 0.79 if n_gpus >= 16 else 0.81 if n_gpus >= 8 else 0.85 if n_gpus >= 4
    else 0.87 if n_gpus >= 2 else 0.88,
}
DEFAULT_CONTEXT = 4096
# The keys a launch may set the context with (Xinference's unified one, then the engines' own).
CONTEXT_KWARGS = ("context_length", "max_model_len", "n_ctx", "max_seq_len")
# As vLLM derives max_model_len from config.json: the smallest of these it holds.
CONFIG_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                       "max_sequence_length", "max_seq_length", "seq_len", "model_max_length")
# One checkpoint is often stored twice (model.safetensors beside pytorch_model.bin): the first
# group that has files is the one counted.
WEIGHT_SUFFIXES = ((".safetensors",), (".bin", ".pt", ".pth"), (".gguf",))
# Xinference's QUANT_NORMALIZE: quantization names -> bits, for weights not on disk.
QUANT_BITS = {"2bit": 2, "2-bit": 2, "3bit": 3, "3-bit": 3, "4bit": 4, "4-bit": 4, "int4": 4, "fp4": 4,
              "mxfp4": 4, "nvfp4": 4, "5bit": 5, "5-bit": 5, "6bit": 6, "6-bit": 6, "8bit": 8, "8bits": 8,
              "8-bit": 8, "int8": 8, "fp8": 8}
FULL_PRECISION = ("none", "bf16", "fp16", "f16")


@dataclass(frozen=True)
class ModelFiles:
    """What a model directory tells about memory: its config.json and its weights' size."""

    config: Optional[dict[str, Any]]  # parsed config.json; None when absent or not a JSON object
    weights_bytes: int  # 0: no weight files
    weight_files: int


def read_model_files(directory: Path) -> Optional[ModelFiles]:
    """The model directory's config.json and weights' size; None when the directory is not here."""
    if not directory.is_dir():
        return None
    config = None
    try:
        loaded = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError):
        pass
    files = [p for p in directory.rglob("*") if p.is_file()]  # a symlink counts as what it points at (hub caches)
    for suffixes in WEIGHT_SUFFIXES:
        group = [p for p in files if p.name.lower().endswith(suffixes)]
        if group:
            return ModelFiles(config, sum(p.stat().st_size for p in group), len(group))
    return ModelFiles(config, 0, 0)


@dataclass(frozen=True)
class VramEstimate:
    """A model's VRAM on each of its GPUs: declared, computed from its files, unknown (gb None), or
    reserved: a share of each whole GPU that the engine takes when it starts (gb None, ``share`` set,
    its GB known only against a GPU's capacity; ``need`` is what the model itself needs in it)."""

    gb: Optional[float]
    kind: Literal["declared", "computed", "unknown", "reserved"]
    how: str  # e.g. "declared", "computed from config.json: ...", "weights x 1.5", "unknown: no files"
    share: Optional[float] = None
    need: Optional["VramEstimate"] = None


@dataclass(frozen=True)
class LayerDims:
    """The dimensions cal-model-mem reads from config.json (its ModelLayersInfo)."""

    vocab_size: int
    heads: int
    kv_heads: int
    head_dim: float
    hidden: int
    inter: int
    layers: int  # attention layers that keep a KV cache
    active_experts: int = 1
    shared_inter: int = 0


@dataclass(frozen=True)
class LlmMemory:
    """cal-model-mem's terms, in MiB, for the whole model (not yet split across GPUs)."""

    weights: float
    kv_cache: float
    activation: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activation + self.overhead


def layer_dims(config: dict[str, Any]) -> tuple[Optional[LayerDims], str]:
    """Dimensions as Xinference's ModelMetadata.from_config reads them; (None, why) for what it cannot."""
    if any(isinstance(config.get(k), dict) for k in ("thinker_config", "language_config", "llm_config", "text_config")):
        return None, "a multimodal config.json"
    if config.get("kv_lora_rank") is not None:
        return None, "an MLA attention config.json"
    if any("linear" in str(t) or "mamba" in str(t) for t in config.get("layer_types") or []) or any(
            config.get(k) for k in ("linear_num_key_heads", "mamba_d_state", "ssm_cfg")):
        return None, "a hybrid-attention config.json"

    def first(*keys: str) -> Any:
        return next((config[k] for k in keys if config.get(k) is not None), None)

    vocab, heads = first("vocab_size", "padded_vocab_size"), first("num_attention_heads", "num_heads", "n_head")
    hidden, layers = first("hidden_size", "d_model", "n_embd"), first("num_hidden_layers", "num_layers", "n_layer")
    inter = first("intermediate_size", "n_inner", "d_ff", "ffn_hidden_size", "ffn_dim", "moe_intermediate_size")
    kv_heads = first("num_key_value_heads", "n_head_kv")
    if config.get("multi_query_attention") and "multi_query_group_num" in config:
        kv_heads = config["multi_query_group_num"]
    experts = first("num_experts", "num_local_experts", "n_routed_experts")
    if experts and config.get("moe_intermediate_size"):
        inter = config["moe_intermediate_size"]
    dims = (vocab, heads, hidden, layers, inter)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims):
        return None, "a config.json without vocab_size, heads, hidden size, layers and intermediate size"
    layer_types = config.get("layer_types")
    kv_layers = layers
    if isinstance(layer_types, list):
        if len(layer_types) != layers or any(t not in ("full_attention", "sliding_attention") for t in layer_types):
            return None, "a config.json with an unknown attention layout"
        kv_layers = len(layer_types)
    def whole(value: Any, default: Any) -> Any:  # a positive int, else the default
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    active = whole(first("num_experts_per_tok"), whole(experts, 1))
    return LayerDims(vocab, heads, whole(kv_heads, heads), whole(config.get("head_dim"), hidden / heads), hidden,
                     inter, kv_layers, active, whole(config.get("shared_expert_intermediate_size"), 0)), ""


def llm_memory(dims: LayerDims, *, context: int, weights_mib: float, model_format: Optional[str] = None,
               engine: Optional[str] = None, kv_cache_dtype: int = 16) -> LlmMemory:
    """estimate_llm_gpu_memory_details for one request of ``context`` tokens (concurrency 1, no vision)."""
    kv_cache = 2 * context * dims.layers * dims.kv_heads * dims.head_dim * (kv_cache_dtype / 8) / MIB
    overhead = OVERHEAD_MIB + (context * 0.1 if model_format == "ggufv2" else 0.0)
    ffn = dims.inter * dims.active_experts + dims.shared_inter
    engine = (engine or "").lower()
    if not engine:  # what cal-model-mem itself prints: it passes no engine
        activation = (context * dims.hidden * 5 * 2 + context ** 2 * dims.heads * 2) / MIB
    elif engine in PREALLOCATING_ENGINES:  # a bounded prefill batch and fused attention
        batch = min(context, 16384)
        activation = (batch * (5 * dims.hidden + 3 * ffn) * 2 + batch * dims.heads * (dims.head_dim + 4) * 4
                      + dims.vocab_size * 4) / MIB
    else:  # eager attention over a prefill chunk
        chunk = min(context, 2048) if engine in ("mlx", "llama.cpp") else context
        activation = (chunk * (5 * dims.hidden + 3 * ffn) * 2 + chunk * context * dims.heads * 2
                      + chunk * dims.vocab_size * 4) / MIB
    return LlmMemory(weights_mib, kv_cache, activation, overhead)


def billions(size: Any) -> float:
    """Xinference's convert_model_size_to_float: `1_8` is 1.8 (Python's float() reads it as 18)."""
    try:
        return float(size.replace("_", ".")) if isinstance(size, str) else float(size)
    except ValueError:
        return math.nan


def weights_from_size_mib(size_in_billions: float, quantization: Optional[str]) -> Optional[float]:
    """Xinference's _convert_to_mb_model_size: 2 bytes a parameter, or the quantization's bits + 6%."""
    if not math.isfinite(size_in_billions) or size_in_billions <= 0:
        return None
    size = size_in_billions * 1e9 * 2 / MIB
    q = (quantization or "none").lower()
    if q in FULL_PRECISION:
        return size
    if q not in QUANT_BITS:
        return None
    return size * QUANT_BITS[q] / 16 + 0.06 * size


def context_of(model: ModelConfig, config: dict[str, Any]) -> tuple[int, str]:
    """The context the estimate counts, and where it came from."""
    for key in CONTEXT_KWARGS:
        value = model.extra.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"extra.{key}"
    native = [config[k] for k in CONFIG_CONTEXT_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    maximum = min(native) if native else 2048
    if (model.engine or "").lower() in PREALLOCATING_ENGINES:
        return maximum, "config.json's maximum"
    return min(maximum, DEFAULT_CONTEXT), f"default {DEFAULT_CONTEXT}" if maximum > DEFAULT_CONTEXT else "config.json"


def kv_cache_bits(model: ModelConfig) -> int:
    return 8 if str(model.extra.get("kv_cache_dtype", "")).lower().startswith("fp8") else 16


def bits_text(quantization: Optional[str]) -> str:
    return "16-bit" if quantization is None or quantization.lower() in FULL_PRECISION else quantization


def gb(mib: float) -> float:
    return math.ceil(mib / 1024 * 10) / 10  # one decimal, rounded up: an estimate must not understate


def reserved_share(model: ModelConfig) -> Optional[tuple[float, str]]:
    """(share of each GPU, where it came from) for an engine that reserves one; None for the others."""
    engine = (model.engine or "").lower()
    if engine not in RESERVED_SHARE_KWARGS:
        return None
    key = RESERVED_SHARE_KWARGS[engine]
    value = model.extra.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value), f"{engine} reserves {value:g} of each GPU (extra.{key})"
    default = RESERVED_SHARE_DEFAULTS[engine](max(1, len(model.gpus)))
    return default, f"{engine} reserves {default:g} of each GPU ({key} not set: Xinference's default)"


def estimate_vram(model: ModelConfig, files: Optional[ModelFiles]) -> VramEstimate:
    """The model's VRAM on each of its GPUs: the share its engine reserves (vLLM, SGLang), else its
    vram_gb, else computed from its files. A reserving engine's model keeps the other figure as its
    ``need``: it must fit inside the share."""
    reserved = reserved_share(model)
    if reserved is not None:
        share, how = reserved
        return VramEstimate(None, "reserved", how, share=share, need=_needed_vram(model, files))
    return _needed_vram(model, files)


def _needed_vram(model: ModelConfig, files: Optional[ModelFiles]) -> VramEstimate:
    if model.vram_gb is not None:
        return VramEstimate(model.vram_gb, "declared", "declared")
    if files is None:
        return VramEstimate(None, "unknown", "unknown: no files here")
    n_gpus = max(1, len(model.gpus))
    dims, why = None, ""
    if model.type == "LLM":
        dims, why = layer_dims(files.config) if files.config is not None else (None, "an LLM without a readable config.json")
    if dims is not None and files.config is not None:
        on_disk = files.weights_bytes > 0 and model.format != "bnb"  # bnb quantizes full weights at load
        weights = files.weights_bytes / MIB if on_disk else (
            weights_from_size_mib(billions(model.size_in_billions), model.quantization)
            if model.size_in_billions is not None else None)
        if weights is not None:
            context, context_from = context_of(model, files.config)
            mem = llm_memory(dims, context=context, weights_mib=weights, model_format=model.format,
                             engine=model.engine, kv_cache_dtype=kv_cache_bits(model))
            # Tensor parallelism splits the weights and the KV cache; each GPU keeps its own
            # activations and CUDA context.
            per_gpu = (mem.weights + mem.kv_cache) / n_gpus + mem.activation + mem.overhead
            split = f", split over {n_gpus} GPUs" if n_gpus > 1 else ""
            return VramEstimate(gb(per_gpu), "computed", (
                f"computed from config.json: weights {gb(mem.weights):g} "
                f"({'on disk' if on_disk else f'{billions(model.size_in_billions):g}B at {bits_text(model.quantization)}'}) "
                f"+ KV cache {gb(mem.kv_cache):g} ({context} tokens, {context_from}) "
                f"+ activations {gb(mem.activation):g} + overhead {gb(mem.overhead):g}{split}"))
        why = "no weights and no size_in_billions (or an unknown quantization)"
    if files.weights_bytes == 0:
        return VramEstimate(None, "unknown", "unknown: no weight files" + (f" ({why})" if why else ""))
    per_gpu = files.weights_bytes / MIB * WEIGHTS_FACTOR / n_gpus + OVERHEAD_MIB
    note = f", as {why}" if why else ""
    return VramEstimate(gb(per_gpu), "computed", f"weights {gb(files.weights_bytes / MIB):g} x {WEIGHTS_FACTOR:g} "
                                                 f"+ overhead{note}")


def local_model_dir(model: ModelConfig, models_dir: str, docker_host: Optional[str]) -> Optional[Path]:
    """Where the model's files are on this machine: under models_dir when the docker engine is
    this machine's (a ``unix://`` socket); None when it is another's (ssh://, tcp://) or unknown."""
    if docker_host is None or not docker_host.startswith("unix://"):
        return None
    path = model.path or model.uid
    return Path(path) if path.startswith("/") else Path(models_dir) / path
