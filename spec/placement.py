"""Pure placement arithmetic: host GPU ids -> container indices, VRAM per GPU (figures from spec/vram.py).

Docker gives the container only the GPUs it was granted (``--gpus device=2,3``) and the
container renumbers them from 0 in PCI bus order (we set CUDA_DEVICE_ORDER=PCI_BUS_ID so
CUDA agrees with nvidia-smi). Xinference's ``gpu_idx`` is that container-side index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from spec.vram import VramEstimate


def container_gpu_indices(server_gpus: Sequence[int], model_gpus: Iterable[int]) -> list[int]:
    """Map host GPU ids to the indices the container sees.

    >>> container_gpu_indices([2, 3], [3])
    [1]
    """
    order = sorted(set(server_gpus))
    missing = [g for g in model_gpus if g not in order]
    if missing:
        raise ValueError(f"GPU(s) {missing} are not among the server's GPUs {order}")
    return [order.index(g) for g in model_gpus]


def gpu_device_ids(server_gpus: Sequence[int]) -> list[str]:
    """The host GPU ids a container is granted, as Docker's device ids (sorted, unique)."""
    return [str(g) for g in sorted(set(server_gpus))]


def docker_gpu_request(server_gpus: Sequence[int]) -> Optional[str]:
    """How `docker run --gpus` would name exactly these host GPUs (None: no GPU); for display."""
    ids = gpu_device_ids(server_gpus)
    return "device=" + ",".join(ids) if ids else None


def docker_device_requests(server_gpus: Sequence[int]) -> list[dict]:
    """The container's device request for exactly these host GPUs ([] : no GPU).

    Not pulumi-docker's ``gpus`` string: the plugin parses it as CSV, so ``device=0,1`` turns
    into device id 0 plus a count of 1, which the daemon refuses ("cannot set both Count and
    DeviceIDs on device request"). A device request with explicit ids is what `--gpus` means.
    """
    ids = gpu_device_ids(server_gpus)
    if not ids:
        return []
    return [{"driver": "nvidia", "device_ids": ids, "capabilities": ["gpu"]}]


@dataclass(frozen=True)
class GpuBudget:
    """VRAM use of one host GPU against its capacity: each model's figure, declared or estimated."""

    gpu: int
    capacity_gb: Optional[float]
    entries: tuple[tuple[str, VramEstimate], ...]  # (uid, its figure on this GPU), in stack order

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(uid for uid, _ in self.entries)

    @property
    def used_gb(self) -> float:
        """The sum of the known figures (an unknown one counts for nothing)."""
        return round(sum(e.gb for _, e in self.entries if e.gb is not None), 6)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(uid for uid, e in self.entries if e.gb is None)

    @property
    def over(self) -> bool:
        return self.capacity_gb is not None and self.used_gb > self.capacity_gb + 1e-9


def vram_budgets(gpus: Sequence[tuple[int, Optional[float]]],
                 models: Sequence[tuple[str, Sequence[int], VramEstimate]]) -> list[GpuBudget]:
    """Each GPU's models and their figures. ``gpus``: (id, capacity); ``models``: (uid, gpus, estimate)."""
    return [GpuBudget(gpu, capacity, tuple((uid, est) for uid, model_gpus, est in models if gpu in model_gpus))
            for gpu, capacity in gpus]
