"""Faults a real Xinference will not produce on demand, from a small local fault-injecting server
(tests/fault_server.py): 500s, hangs past the read timeout, connections dropped before or in the
middle of an answer, refused connections, expired tokens, a server without the autostart API.
Also: the provider adds no serialisation (4 creates in parallel take the time of one).
"""

from __future__ import annotations

import threading
import time

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from components.model import LaunchError, XinferenceModelProvider
from components.xinference_client import (XinferenceAuthError, XinferenceClient, XinferenceError,
                                          XinferenceHTTPError, XinferenceUnreachable)
from tests.fault_server import PREFIX, FakeXinference
from tests.xinference_server import free_port


@pytest.fixture
def fake():
    server = FakeXinference().start()
    yield server
    server.stop()


def props(fake, uid="m1", **overrides):
    return {"endpoint": fake.endpoint, "model_uid": uid, "model_name": "bge-small-en-v1.5",
            "model_type": "embedding", "model_path": "/models/minilm", "launch_timeout": 20.0, **overrides}


def provider(secret=None, **kwargs) -> XinferenceModelProvider:
    p = XinferenceModelProvider(**{"retry_window": 5.0, **kwargs})
    p.configure(ConfigureRequest(Config({"xinference-offline:api_key": secret} if secret else {},
                                        "xinference-offline")))
    return p


# --- transport: retries within the deadline, messages from the server ---------------------


def test_5xx_is_retried_with_backoff_then_succeeds(fake):
    fake.inject("GET", "/status", ("status", 500, "boom"), ("status", 502, "bad gateway"))
    assert XinferenceClient(fake.endpoint).status() is not None
    assert fake.calls("GET", "/status") == 3


def test_a_persistent_500_surfaces_the_servers_message_quickly(fake):
    fake.inject("POST", "/v1/models", *[("status", 500, "[address=x, pid=1] worker pool exploded")] * 20)
    started = time.monotonic()
    with pytest.raises(XinferenceHTTPError) as failed:
        provider().create(props(fake))
    assert "worker pool exploded" in str(failed.value) and failed.value.status == 500
    assert time.monotonic() - started < 15
    assert fake.calls("POST", "/v1/models") <= 6


def test_a_hang_past_the_read_timeout_is_retried(fake):
    # The hang outlasts the bound by far, so passing the bound proves the read timeout fired
    # (a loaded CI machine gets slack without the test losing its point).
    fake.inject("GET", "/v1/models/m1", ("hang", 10))
    client = XinferenceClient(fake.endpoint, read_timeout=0.5, retry_window=20)
    started = time.monotonic()
    assert client.describe("m1").state == "ABSENT"
    assert time.monotonic() - started < 7
    assert fake.calls("GET", "/v1/models/m1") == 2


def test_a_server_that_always_hangs_fails_within_the_window(fake):
    fake.inject("GET", "/v1/models/m1", *[("hang", 2)] * 20)
    p = provider(retry_window=2.0, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(XinferenceUnreachable) as failed:
        p.read("m1", props(fake))
    assert time.monotonic() - started < 6
    assert "cannot tell whether model 'm1' still runs" in str(failed.value)


def test_a_connection_dropped_mid_response_is_retried(fake):
    fake.inject("GET", "/v1/models/instances", ("truncate",))
    fake.inject("GET", "/v1/autostart/models", ("drop",))
    client = XinferenceClient(fake.endpoint)
    assert client.instances("m1") == []
    assert client.autostart_entries() == {}
    assert fake.calls("GET", "/v1/models/instances") == 2 and fake.calls("GET", "/v1/autostart/models") == 2


def test_every_request_has_its_own_connection_even_where_the_server_would_keep_it_open():
    # A kept-alive connection costs ~40 ms a call on Xinference (delayed ACK), and a request sent on
    # a socket the server is closing fails in a way a launch cannot be retried from.
    fake = FakeXinference(keep_alive=True).start()
    try:
        p = provider()
        outs = p.create(props(fake)).outs
        assert p.read("m1", outs).id == "m1"
        p.delete("m1", outs)
        assert len(fake.log) >= 8 and fake.connections == len(fake.log), (fake.connections, len(fake.log))
    finally:
        fake.stop()


def test_a_launch_cut_off_before_the_server_acted_is_sent_again(fake):
    fake.inject("POST", "/v1/models", ("drop",))
    outs = provider().create(props(fake))
    assert outs.outs["status"] == "READY"
    assert fake.calls("POST", "/v1/models") == 2


def test_a_launch_whose_answer_was_cut_is_not_sent_twice(fake):
    fake.inject("POST", "/v1/models", ("truncate",))  # the server launched it, the answer is lost
    outs = provider().create(props(fake))
    assert outs.outs["status"] == "READY"
    assert fake.calls("POST", "/v1/models") == 1


def test_connection_refused_read_is_an_error_never_gone():
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(XinferenceUnreachable) as failed:
        provider(retry_window=1.5).read("m1", {"endpoint": dead, "model_uid": "m1", "model_name": "x",
                                               "model_type": "embedding"})
    assert dead in str(failed.value) and "/status" in str(failed.value)
    assert time.monotonic() - started < 5


def test_a_worker_the_supervisor_cannot_reach_is_an_error_never_gone(fake):
    # What a real supervisor answers for a model whose worker just died (seen on the local
    # cluster, tests/test_model_cluster.py) until it declares the worker dead.
    unreachable = f"{PREFIX}[Errno 111] Connect call failed ('10.0.0.2', 30001)"
    fake.inject("GET", "/v1/models/m1", *[("status", 500, unreachable)] * 10)
    with pytest.raises(XinferenceError) as failed:
        provider().read("m1", props(fake))
    message = str(failed.value)
    assert "cannot reach the worker" in message and "10.0.0.2" in message and "pulumi refresh" in message


def test_connection_refused_while_the_server_starts_is_waited_for():
    port = free_port()
    late: dict = {}

    def start_later():
        time.sleep(1.5)
        late["server"] = FakeXinference(port=port).start()

    threading.Thread(target=start_later).start()
    try:
        assert XinferenceClient(f"http://127.0.0.1:{port}", retry_window=15).status() is not None
    finally:
        time.sleep(1.6)
        late["server"].stop()


def test_4xx_surfaces_the_servers_own_message_at_once(fake):
    fake.inject("POST", "/v1/models", ("status", 400, "[address=x, pid=1] GPU index 3 is not available, "
                                                      "available: [0, 1]"))
    started = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        provider().create(props(fake, gpu_idx=[3]))
    assert "GPU index 3 is not available, available: [0, 1]" in str(failed.value)
    assert "Nothing was launched" in str(failed.value)
    # One call: a 4xx is not retried; the bound only catches a wait that should not be there
    assert fake.calls("POST", "/v1/models") == 1 and time.monotonic() - started < 5


def test_delete_of_an_absent_model_is_success(fake):
    provider().delete("never-launched", props(fake, "never-launched"))
    assert fake.calls("DELETE", "/v1/models/never-launched") == 1


def test_delete_of_a_loading_model_cancels_it(fake):
    fake.load_seconds = 30
    fake.handle("POST", "/v1/models", {}, {"model_uid": "slow", "model_name": "x", "model_type": "embedding"})
    provider().delete("slow", props(fake, "slow"))
    assert "slow" not in fake.models and fake.calls("POST", "/v1/models/slow/cancel") >= 1


def test_a_server_without_the_autostart_api_falls_back_to_plain_launches():
    fake = FakeXinference(autostart_api=False).start()
    try:
        p = provider()
        outs = p.create(props(fake)).outs
        assert outs["status"] == "READY" and outs["autostart_registered"] is False
        assert p.read("m1", outs).id == "m1"
        p.delete("m1", outs)
        assert "m1" not in fake.models
        fake.models.clear()
        assert p.read("m1", outs).id is None
    finally:
        fake.stop()


def test_autostart_false_removes_a_stale_registry_entry(fake):
    fake.autostart["m1"] = {"enabled": True, "launch": {"model_uid": "m1", "model_name": "bge-small-en-v1.5"}}
    outs = provider().create(props(fake, autostart=False)).outs
    assert outs["autostart_registered"] is False and "m1" not in fake.autostart


# --- smoke tests and cleanup ---------------------------------------------------------------


@pytest.mark.parametrize("model_type, path", [("embedding", "/v1/embeddings"), ("rerank", "/v1/rerank")])
def test_smoke_request_suited_to_the_type(fake, model_type, path):
    provider().create(props(fake, model_type=model_type))
    _, _, _, body = [e for e in fake.log if e[1] == path][-1]
    assert body["model"] == "m1"


def test_other_types_are_smoke_tested_with_a_describe(fake):
    provider().create(props(fake, model_type="audio", model_name="SenseVoiceSmall"))
    assert fake.calls("POST", "/v1/embeddings") == 0 and fake.calls("POST", "/v1/rerank") == 0


def test_a_failed_smoke_test_terminates_what_was_launched(fake):
    fake.inject("POST", "/v1/embeddings", ("status", 400, "[address=x, pid=1] input too long"))
    with pytest.raises(LaunchError) as failed:
        provider().create(props(fake))
    assert "smoke test failed" in str(failed.value) and "input too long" in str(failed.value)
    assert "m1" not in fake.models and "m1" not in fake.autostart


def test_a_failed_smoke_test_does_not_terminate_an_adopted_model(fake):
    fake.handle("POST", "/v1/models", {}, {"model_uid": "m1", "model_name": "bge-small-en-v1.5",
                                           "model_type": "embedding"})
    time.sleep(fake.load_seconds)
    fake.inject("POST", "/v1/embeddings", ("status", 400, "nope"))
    with pytest.raises(LaunchError):
        provider().create(props(fake))
    assert "m1" in fake.models


def test_a_launch_that_fails_on_the_server_reports_its_error(fake):
    fake.load_seconds = 30
    original = fake.handle

    def failing(method, path, query, body):
        status, answer = original(method, path, query, body)
        if method == "POST" and path == "/v1/models":
            fake.models.pop(body["model_uid"])
            fake.errors[body["model_uid"]] = "[address=x, pid=1] CUDA out of memory"
        return status, answer

    fake.handle = failing
    with pytest.raises(LaunchError) as failed:
        provider().create(props(fake))
    assert "failed on the server: [address=x, pid=1] CUDA out of memory" in str(failed.value)


def test_timeout_cancels_the_launch(fake):
    fake.load_seconds = 60
    started = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        provider().create(props(fake, launch_timeout=1.0))
    assert "launch_timeout=1s" in str(failed.value) and time.monotonic() - started < 5
    assert "m1" not in fake.models and fake.calls("POST", "/v1/models/m1/cancel") >= 1


# --- auth ------------------------------------------------------------------------------------


def test_without_a_key_the_error_says_which_secret_to_set():
    fake = FakeXinference(users={"admin": "pw-123456789"}).start()
    try:
        with pytest.raises(XinferenceAuthError) as failed:
            provider().create(props(fake))
        assert "xinference-offline:api_key" in str(failed.value) and "no credential" in str(failed.value)
    finally:
        fake.stop()


def test_a_wrong_key_is_refused_and_never_printed():
    fake = FakeXinference(users={"admin": "pw-123456789"}).start()
    try:
        for secret in ("sk-wrong-secret-0123456789", "admin:wrong-password-42"):
            with pytest.raises(XinferenceAuthError) as failed:
                provider(secret).create(props(fake))
            text = str(failed.value)
            assert "xinference-offline:api_key" in text
            assert secret not in text and secret.split(":")[-1] not in text
    finally:
        fake.stop()


def test_username_password_logs_in_and_again_when_the_token_expires():
    fake = FakeXinference(users={"admin": "pw-123456789"}).start()
    try:
        p = provider("admin:pw-123456789")
        outs = p.create(props(fake)).outs
        assert outs["status"] == "READY" and fake.calls("POST", "/token") == 1
        fake.expire_tokens()
        assert p.read("m1", outs).id == "m1"
        assert fake.calls("POST", "/token") == 2
        for _, _, headers, _body in fake.log:
            assert "pw-123456789" not in str(headers)
        assert "pw-123456789" not in str(outs)
    finally:
        fake.stop()


# --- no serialisation ----------------------------------------------------------------------------


def test_concurrent_creates_are_not_serialised(fake):
    fake.load_seconds = 2.0
    p = provider()
    errors: list = []

    def create(uid):
        try:
            p.create(props(fake, uid))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(f"m{i}",)) for i in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    assert not errors, errors
    # One load is 2 s, seen at ~2.7 s on the poll schedule; four one after another would take
    # more than 8 s. The bound leaves room for a loaded CI machine and still tells the two apart.
    assert wall < 5.5, wall
    assert len(fake.models) == 4
