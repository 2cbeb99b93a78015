"""GPU paths against the real server: /v1/cluster/devices and a launch pinned with gpu_idx.

Runs only where an NVIDIA GPU is present (nvidia-smi on PATH and listing a GPU) and the venv's
torch is a CUDA build (PyPI's default); elsewhere it skips with the reason. On a CPU machine
the refusal of an unseen gpu_idx is covered by test_model_provider.py.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from components.model import LaunchError

NVIDIA_SMI = shutil.which("nvidia-smi")


def gpu_count() -> int:
    if NVIDIA_SMI is None:
        return 0
    try:
        out = subprocess.run([NVIDIA_SMI, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


GPUS = gpu_count()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.xinference,
    pytest.mark.skipif(GPUS == 0, reason="no NVIDIA GPU here (nvidia-smi missing or lists no GPU): gpu_idx and "
                                         "/v1/cluster/devices are checked on a GPU machine"),
]


def test_cluster_devices_counts_the_gpus(xinference_server):
    response = requests.get(f"{xinference_server.endpoint}/v1/cluster/devices", timeout=(5, 30))
    assert response.status_code == 200, response.text
    assert int(response.json()) == GPUS


def test_launch_on_a_chosen_gpu_and_replace_on_a_gpu_change(provider, model_props, uid, xinference_server, cleanup):
    cleanup((xinference_server.endpoint, uid))
    last = GPUS - 1
    outs = provider.create(provider.check({}, model_props(uid, gpu_idx=[last])).inputs).outs
    assert outs["status"] == "READY"
    assert [int(a) for a in xinference_server.running()[uid]["accelerators"]] == [last]
    assert outs["accelerators"] == [str(last)]
    assert provider.read(uid, outs).outs["gpu_idx"] == [last]
    if GPUS > 1:
        diff = provider.diff(uid, outs, model_props(uid, gpu_idx=[0]))
        assert diff.replaces == ["gpu_idx"] and diff.delete_before_replace
    provider.delete(uid, outs)
    assert uid not in xinference_server.running()


def test_a_gpu_index_the_worker_cannot_see_is_refused(provider, model_props, uid, xinference_server, cleanup):
    cleanup((xinference_server.endpoint, uid))
    with pytest.raises(LaunchError) as refused:
        provider.create(model_props(uid, gpu_idx=[GPUS]))
    assert str(GPUS) in str(refused.value)
    assert uid not in xinference_server.running()
