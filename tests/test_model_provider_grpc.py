"""The provider driven as the Pulumi engine drives it: through Pulumi's own dynamic provider server
(`python -m pulumi.dynamic`, started with the project root as cwd so that `components` imports),
with gRPC Configure/Check/Diff/Create/Read/Update/Delete and properties serialized by
`pulumi.runtime.rpc`. Proves that the provider pickles by reference, takes the API key from a
secret stack config value, round-trips its properties, and never hands the key back.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.json_format import MessageToJson
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2

from components.model import API_KEY_CONFIG, XinferenceModelProvider
from tests.fault_server import FakeXinference
from tests.xinference_server import DynamicProviderServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "grpc-secret-api-key-7f3a9c51d2"


@pytest.fixture
def dynamic():
    server = DynamicProviderServer(ROOT)
    yield server
    server.close()


def configure(server: DynamicProviderServer, secret=SECRET) -> provider_pb2.ConfigureResponse:
    config = {"xinference-offline:mode": "existing"}
    if secret is not None:
        config[API_KEY_CONFIG] = rpc.wrap_rpc_secret(secret)  # as the engine sends a secret config value
    return server.stub.Configure(provider_pb2.ConfigureRequest(args=server.serialize(config), acceptSecrets=True,
                                                               acceptResources=True))


def blob(**kwargs) -> str:
    return serialize_provider(XinferenceModelProvider(**kwargs))


def wire(message) -> str:
    return MessageToJson(message)


def test_lifecycle_through_the_dynamic_provider_server(dynamic, model_props, uid, xinference_server, cleanup):
    server, s = xinference_server, dynamic
    cleanup((server.endpoint, uid))
    responses = []
    assert configure(s).acceptSecrets is False  # so the engine sends plain values back and forth
    urn = s.urn(uid)
    provider_blob = blob(retry_window=20.0)
    news = {**model_props(uid), "__provider": provider_blob}

    # Check: normalized inputs back; bad inputs are failures naming the property
    check = s.stub.Check(provider_pb2.CheckRequest(urn=urn, olds=s.serialize({}), news=s.serialize(news)))
    responses.append(check)
    assert list(check.failures) == []
    inputs = s.deserialize(check.inputs)
    assert inputs["replica"] == 1 and inputs["autostart"] is True and inputs["__provider"] == provider_blob
    bad = s.stub.Check(provider_pb2.CheckRequest(
        urn=urn, olds=s.serialize({}), news=s.serialize({**news, "model_type": "tts", "gpu_idx": [0, 0]})))
    assert {f.property for f in bad.failures} == {"model_type", "gpu_idx"}

    # Create: launches, waits, smoke-tests, registers for autostart
    create = s.stub.Create(provider_pb2.CreateRequest(urn=urn, properties=s.serialize(inputs), timeout=300))
    responses.append(create)
    assert create.id == uid
    outs = s.deserialize(create.properties)
    assert outs["status"] == "READY" and outs["autostart_registered"] is True and outs["model_uid"] == uid
    assert uid in server.running() and uid in server.autostart()

    # Diff: same -> none; timeout -> in place; gpu_idx -> replace, delete before replace
    def diff(changed: dict) -> provider_pb2.DiffResponse:
        return s.stub.Diff(provider_pb2.DiffRequest(id=uid, urn=urn, olds=create.properties,
                                                    news=s.serialize({**inputs, **changed})))

    assert diff({}).changes == provider_pb2.DiffResponse.DIFF_NONE
    in_place = diff({"launch_timeout": 120.0})
    assert in_place.changes == provider_pb2.DiffResponse.DIFF_SOME and list(in_place.replaces) == []
    replace = diff({"gpu_idx": [1]})
    assert list(replace.replaces) == ["gpu_idx"] and replace.deleteBeforeReplace is True
    unknown = diff({"container_id": rpc.UNKNOWN})  # a container being replaced, at preview
    assert list(unknown.replaces) == ["container_id"]

    # Read: the live state
    read = s.stub.Read(provider_pb2.ReadRequest(id=uid, urn=urn, properties=create.properties,
                                                inputs=s.serialize(inputs)))
    responses.append(read)
    assert read.id == uid and s.deserialize(read.properties)["status"] == "READY"

    # Update in place
    new_inputs = {**inputs, "launch_timeout": 120.0}
    update = s.stub.Update(provider_pb2.UpdateRequest(id=uid, urn=urn, olds=create.properties,
                                                      news=s.serialize(new_inputs)))
    responses.append(update)
    assert s.deserialize(update.properties)["launch_timeout"] == 120.0
    assert uid in server.running()

    # Delete, then Read says gone (empty id), and Delete again is fine
    s.stub.Delete(provider_pb2.DeleteRequest(id=uid, urn=urn, properties=update.properties))
    assert uid not in server.running() and uid not in server.autostart()
    gone = s.stub.Read(provider_pb2.ReadRequest(id=uid, urn=urn, properties=update.properties))
    assert gone.id == ""
    s.stub.Delete(provider_pb2.DeleteRequest(id=uid, urn=urn, properties=update.properties))

    for response in responses:
        assert SECRET not in wire(response)
    assert SECRET not in s.stderr_text()


def test_a_failure_through_grpc_carries_the_servers_message_not_the_key(dynamic, model_props, uid,
                                                                        xinference_server, cleanup):
    cleanup((xinference_server.endpoint, uid))
    configure(dynamic)
    missing = "/nowhere/model-dir"
    props = {**model_props(uid, model_path=missing), "__provider": blob(retry_window=10.0)}
    with pytest.raises(grpc.RpcError) as failed:
        dynamic.stub.Create(provider_pb2.CreateRequest(urn=dynamic.urn(uid), properties=dynamic.serialize(props)))
    details = failed.value.details()
    assert missing in details and "does not exist" in details
    assert SECRET not in details and SECRET not in dynamic.stderr_text()
    assert uid not in xinference_server.running()


def test_the_configured_key_is_sent_as_a_bearer_token(dynamic):
    fake = FakeXinference(users={}).start()  # auth on: only known tokens pass
    fake.tokens.add(SECRET)
    try:
        configure(dynamic)
        props = {"endpoint": fake.endpoint, "model_uid": "k1", "model_name": "bge-small-en-v1.5",
                 "model_type": "embedding", "launch_timeout": 20.0, "__provider": blob(retry_window=5.0)}
        create = dynamic.stub.Create(provider_pb2.CreateRequest(urn=dynamic.urn("k1"),
                                                                properties=dynamic.serialize(props)))
        assert create.id == "k1" and SECRET not in wire(create)
        assert {h.get("Authorization") for _, p, h, _ in fake.log if p != "/status"} == {f"Bearer {SECRET}"}
    finally:
        fake.stop()


def test_without_the_key_the_error_names_the_stack_secret():
    fake = FakeXinference(users={}).start()
    fake.tokens.add(SECRET)
    server = DynamicProviderServer(ROOT, env={k: v for k, v in __import__("os").environ.items()
                                             if k != "XINFERENCE_API_KEY"})
    try:
        configure(server, secret=None)
        props = {"endpoint": fake.endpoint, "model_uid": "k2", "model_name": "bge-small-en-v1.5",
                 "model_type": "embedding", "__provider": blob(retry_window=5.0)}
        with pytest.raises(grpc.RpcError) as failed:
            server.stub.Create(provider_pb2.CreateRequest(urn=server.urn("k2"), properties=server.serialize(props)))
        assert "xinference-offline:api_key" in failed.value.details()
        assert "HTTP 401" in failed.value.details()
    finally:
        server.close()
        fake.stop()
