"""Pure placement arithmetic: host GPU ids -> container indices, VRAM per GPU (figures from stackspec/vram.py).

Docker gives the container only the GPUs it was granted (``--gpus device=2,3``) and the
container renumbers them from 0 in PCI bus order (we set CUDA_DEVICE_ORDER=PCI_BUS_ID so
CUDA agrees with nvidia-smi). Xinference's ``gpu_idx`` is that container-side index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from stackspec.vram import VramEstimate


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


def docker_device_requests(server_gpus: Sequence[int]) -> list[dict[str, Any]]:
    """The container's device request for exactly these host GPUs ([] : no GPU).

    Not pulumi-docker's ``gpus`` string: the plugin parses it as CSV, so ``device=0,1`` turns
    into device id 0 plus a count of 1, which the daemon refuses ("cannot set both Count and
    DeviceIDs on device request"). A device request with explicit ids is what `--gpus` means.
    """
    ids = gpu_device_ids(server_gpus)
    if not ids:
        return []
    return [{"driver": "nvidia", "device_ids": ids, "capabilities": ["gpu"]}]


# A computed figure is an estimate (stackspec/vram.py: within 10% of Xinference's own for the LLMs it
# was checked on, a rule of thumb for the others): a GPU over its memory only by computed figures
# is warned about, and refused once it is over by more than this share of its memory.
COMPUTED_MARGIN = 0.2
EPSILON = 1e-9


@dataclass(frozen=True)
class GpuBudget:
    """VRAM use of one host GPU against its capacity: each model's figure, declared, estimated or
    the share of the GPU its engine reserves.

    Refused (``over``): reserved shares above the whole GPU; declared and reserved figures over its
    memory; or everything, estimates included, over it by more than COMPUTED_MARGIN. Warned
    (``tight``): over it, but only by estimates within that margin.
    """

    gpu: int
    capacity_gb: Optional[float]
    entries: tuple[tuple[str, VramEstimate], ...]  # (uid, its figure on this GPU), in stack order

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(uid for uid, _ in self.entries)

    def figure_gb(self, est: VramEstimate) -> Optional[float]:
        """A model's GB on this GPU: a reserved share of its capacity, else the model's own figure."""
        if est.share is not None:
            return None if self.capacity_gb is None else round(est.share * self.capacity_gb, 6)
        return est.gb

    def _sum(self, kinds: tuple[str, ...]) -> float:
        figures = (self.figure_gb(e) for _, e in self.entries if e.kind in kinds)
        return round(sum(f for f in figures if f is not None), 6)

    @property
    def used_gb(self) -> float:
        """The sum of the known figures (an unknown one counts for nothing)."""
        return self._sum(("declared", "computed", "reserved"))

    @property
    def certain_gb(self) -> float:
        """What the engines will surely take: declared figures and reserved shares."""
        return self._sum(("declared", "reserved"))

    @property
    def reserved_share(self) -> float:
        return round(sum(e.share for _, e in self.entries if e.share is not None), 6)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(uid for uid, e in self.entries if e.gb is None and e.share is None)

    @property
    def over(self) -> bool:
        if self.reserved_share > 1 + EPSILON:
            return True
        if self.capacity_gb is None:
            return False
        return (self.certain_gb > self.capacity_gb + EPSILON
                or self.used_gb > self.capacity_gb * (1 + COMPUTED_MARGIN) + EPSILON)

    @property
    def tight(self) -> bool:
        return not self.over and self.capacity_gb is not None and self.used_gb > self.capacity_gb + EPSILON

    def short_of_share(self) -> list[tuple[str, VramEstimate, float, float]]:
        """(uid, need, its GB, its share in GB) for each reserving model whose known need exceeds its share."""
        short = []
        for uid, e in self.entries:
            share_gb = self.figure_gb(e)
            if e.need is not None and e.need.gb is not None and share_gb is not None and e.need.gb > share_gb + EPSILON:
                short.append((uid, e.need, e.need.gb, share_gb))
        return short


def vram_budgets(gpus: Sequence[tuple[int, Optional[float]]],
                 models: Sequence[tuple[str, Sequence[int], VramEstimate]]) -> list[GpuBudget]:
    """Each GPU's models and their figures. ``gpus``: (id, capacity); ``models``: (uid, gpus, estimate)."""
    return [GpuBudget(gpu, capacity, tuple((uid, est) for uid, model_gpus, est in models if gpu in model_gpus))
            for gpu, capacity in gpus]
