"""Pure placement arithmetic: host GPU ids -> container indices, VRAM per GPU.

Docker gives the container only the GPUs it was granted (``--gpus device=2,3``) and the
container renumbers them from 0 in PCI bus order (we set CUDA_DEVICE_ORDER=PCI_BUS_ID so
CUDA agrees with nvidia-smi). Xinference's ``gpu_idx`` is that container-side index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence


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
    """Declared VRAM use of one host GPU against its capacity."""

    gpu: int
    capacity_gb: Optional[float]
    used_gb: float
    models: tuple[str, ...]
    undeclared: tuple[str, ...]  # models on this GPU without a vram_gb

    @property
    def over(self) -> bool:
        return self.capacity_gb is not None and self.used_gb > self.capacity_gb + 1e-9


def vram_budgets(gpus: Sequence[tuple[int, Optional[float]]],
                 models: Sequence[tuple[str, Sequence[int], Optional[float]]]) -> list[GpuBudget]:
    """Sum each GPU's declared model VRAM. ``gpus``: (id, capacity); ``models``: (uid, gpus, vram_gb)."""
    budgets = []
    for gpu, capacity in gpus:
        on_gpu = [(uid, vram) for uid, model_gpus, vram in models if gpu in model_gpus]
        budgets.append(GpuBudget(
            gpu=gpu,
            capacity_gb=capacity,
            used_gb=sum(v for _, v in on_gpu if v is not None),
            models=tuple(uid for uid, _ in on_gpu),
            undeclared=tuple(uid for uid, v in on_gpu if v is None),
        ))
    return budgets
