"""components/autostart_registry.py against the real engine: a model's autostart entry disabled in a
stopped container's registry, written by Xinference's own LaunchHistoryStore (the pinned 4.1 in the
venv) and read back with it, in the container's file system and in a bind-mounted data_dir, on this
machine's engine and on one reached over ssh (tests/remote_engine.py)."""

from __future__ import annotations

import io
import shutil
import sqlite3
import tarfile
import uuid
from pathlib import Path

import pytest

from components.autostart_registry import RegistryEditFailed, registry_path, remove_autostart_entry
from tests.docker_engines import docker, require_main_engine
from tests.remote_engine import RemoteEngine, busybox_image

pytestmark = pytest.mark.docker  # the machine's real engine

LaunchHistoryStore = pytest.importorskip("xinference.core.launch_history_store").LaunchHistoryStore


def registry(db: Path, *uids: str) -> LaunchHistoryStore:
    store = LaunchHistoryStore(str(db))
    for uid in uids:
        store.upsert_autostart({"enabled": True, "launch": {"model_name": "bge-small-en-v1.5", "model_uid": uid,
                                                            "model_type": "embedding"}})
    return store


def autostarting(db: Path) -> list[str]:
    return sorted(entry["launch"]["model_uid"] for entry in LaunchHistoryStore(str(db)).list_autostart())


@pytest.fixture
def engine():
    host = require_main_engine()
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    made: list[str] = []

    def stopped_container(*options: str) -> str:
        made.append(docker(host, "create", "--label", "managed-by=xinference-offline-tests", *options, image.ref
                           ).stdout.decode().strip())
        return made[-1]

    yield host, stopped_container
    for container in made:
        docker(host, "rm", "-f", container, check=False)


def test_the_registry_path_follows_the_container_s_environment():
    assert str(registry_path({})) == "/root/.xinference/launch_history.db"
    assert str(registry_path({"XINFERENCE_HOME": "/data/home"})) == "/data/home/launch_history.db"
    assert str(registry_path({"XINFERENCE_HOME": "/data/home", "XINFERENCE_LAUNCH_HISTORY_DB_PATH": "/x/h.db"})) \
        == "/x/h.db"


def in_own_files(docker_cli, container: str, tmp_path: Path) -> None:
    """A registry with "dropped" and "kept" in the container's own files (XINFERENCE_HOME=/tmp/.xinference)."""
    registry(tmp_path / "made" / "launch_history.db", "dropped", "kept")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(tmp_path / "made", arcname=".xinference")
    docker_cli("cp", "-", f"{container}:/tmp", stdin=buffer.getvalue())


def kept_entries(docker_cli, container: str, tmp_path: Path) -> list[str]:
    back = tmp_path / "back"
    back.mkdir(exist_ok=True)
    tar = docker_cli("cp", f"{container}:/tmp/.xinference/launch_history.db", "-").stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(back, filter="data")
    return autostarting(back / "launch_history.db")


def test_an_entry_in_the_container_s_own_files_is_disabled_and_the_others_kept(engine, tmp_path):
    host, stopped_container = engine
    container = stopped_container("--env", "XINFERENCE_HOME=/tmp/.xinference")
    in_own_files(lambda *args, **kw: docker(host, *args, **kw), container, tmp_path)

    assert remove_autostart_entry(host, container, "dropped") is True
    assert remove_autostart_entry(host, container, "dropped") is False  # done already: nothing changes
    assert remove_autostart_entry(host, container, "never-there") is False
    assert kept_entries(lambda *args, **kw: docker(host, *args, **kw), container, tmp_path) == ["kept"]


def test_on_an_ssh_engine_the_entry_is_disabled_there_through_ssh_alone(tmp_path):
    """The registry goes out and back through `ssh HOST docker cp` (the stack's ssh options), as for a
    stack whose docker.host is ssh://."""
    with RemoteEngine() as remote:
        image = remote.busybox()
        container = remote.docker("create", "--env", "XINFERENCE_HOME=/tmp/.xinference", image.ref
                                  ).stdout.decode().strip()
        in_own_files(remote.docker, container, tmp_path)
        assert remove_autostart_entry("ssh://remote", container, "dropped", remote.ssh_argv()) is True
        assert kept_entries(remote.docker, container, tmp_path) == ["kept"]
        assert docker(require_main_engine(), "container", "inspect", container, check=False).returncode != 0


def test_a_wal_left_by_a_killed_server_in_a_data_dir_is_folded_in(engine, tmp_path):
    """The entry to drop exists only in the WAL (a server killed before its checkpoint)."""
    host, stopped_container = engine
    live, data_dir = tmp_path / "live", tmp_path / "data-dir"
    live.mkdir()
    registry(live / "launch_history.db", "kept")
    holder = sqlite3.connect(live / "launch_history.db")  # keeps the WAL from being checkpointed away
    holder.execute("SELECT count(*) FROM launch_history").fetchall()
    registry(live / "launch_history.db", "dropped")
    shutil.copytree(live, data_dir)  # the files as a SIGKILL leaves them: database, -wal, -shm
    holder.close()
    assert (data_dir / "launch_history.db-wal").stat().st_size > 0
    container = stopped_container("--mount", f"type=bind,source={data_dir},target=/root/.xinference")

    assert remove_autostart_entry(host, container, "dropped") is True
    assert (data_dir / "launch_history.db-wal").stat().st_size == 0
    assert autostarting(data_dir / "launch_history.db") == ["kept"]


def test_no_registry_is_nothing_to_remove_and_a_damaged_one_is_refused_as_it_was(engine, tmp_path):
    host, stopped_container = engine
    assert remove_autostart_entry(host, stopped_container(), "any") is False  # never started: no registry
    data_dir = tmp_path / "data-dir"
    data_dir.mkdir()
    (data_dir / "launch_history.db").write_bytes(b"not a database " * 100)
    container = stopped_container("--mount", f"type=bind,source={data_dir},target=/root/.xinference")
    with pytest.raises(RegistryEditFailed, match=r"launch_history.db: file is not a database"):
        remove_autostart_entry(host, container, "any")
    assert (data_dir / "launch_history.db").read_bytes() == b"not a database " * 100
    with pytest.raises(RegistryEditFailed, match="No such container"):
        remove_autostart_entry(host, f"xo-gone-{uuid.uuid4().hex[:6]}", "any")


def test_deleting_a_model_whose_container_is_stopped_disables_its_entry_there(engine, tmp_path):
    """The provider's delete, as `pulumi up` runs it for a model dropped from the stack while its container
    was stopped: the server cannot be asked, so the entry goes from the registry the container keeps."""
    from components.model import XinferenceError, XinferenceModelProvider
    from tests.docker_site import free_port

    host, stopped_container = engine
    data_dir = tmp_path / "data-dir"
    registry(data_dir / "launch_history.db", "dropped", "kept")
    container = stopped_container("--mount", f"type=bind,source={data_dir},target=/root/.xinference")
    props = {"endpoint": f"http://127.0.0.1:{free_port()}", "model_uid": "dropped", "model_name": "x",
             "model_type": "embedding", "docker_host": host, "container_id": container}
    XinferenceModelProvider(retry_window=1.0).delete("dropped", props)
    assert autostarting(data_dir / "launch_history.db") == ["kept"]

    (data_dir / "launch_history.db").write_bytes(b"not a database " * 100)
    with pytest.raises(XinferenceError, match=r"model 'dropped': its container \w{12} is stopped, .* could not be "
                                              r"removed .*Start the container \(`docker start \w{12}`\)"):
        XinferenceModelProvider(retry_window=1.0).delete("dropped", props)
