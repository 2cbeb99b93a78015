"""Xinference's autostart registry in a stopped container: one entry disabled with the server down.

Xinference keeps its autostart entries in ``$XINFERENCE_HOME/launch_history.db`` (SQLite in WAL
mode) and launches every enabled one when it starts. A model deleted while its container is
stopped cannot be taken out through the API; its entry, left there, brings the model back
unmanaged at the container's next start, holding memory no stack accounts for. So the delete
takes the registry out with `docker cp` (a stopped container's files, bind mounts included, on a
local or an ssh:// engine alike), disables the entry with the statement Xinference 4.1's own
``LaunchHistoryStore.remove_autostart`` runs, and copies the database back.

The server is down, so nothing else writes the database meanwhile. A WAL file left by a killed
server is read in with the database, checkpointed into it, and put back empty (before the
database: a copy cut short between the two leaves the last checkpointed database, never new
pages beside stale WAL frames).
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Mapping, Optional, Sequence

from components.docker_cli import run_docker, run_docker_bytes

DEFAULT_HOME = "/root/.xinference"  # ~ of the root user the container runs as
DB_NAME = "launch_history.db"
SIDE_FILES = ("-wal", "-shm")
# Xinference 4.1.0, xinference/core/launch_history_store.py, LaunchHistoryStore.remove_autostart
DISABLE_ENTRY = ("UPDATE launch_history SET autostart_enabled = 0, updated_at = CURRENT_TIMESTAMP "
                 "WHERE model_uid = ? AND autostart_enabled = 1")


class RegistryEditFailed(Exception):
    """The stopped container's registry could not be read, changed or written back."""


def registry_path(env: Mapping[str, str]) -> PurePosixPath:
    """Where the server in a container with ``env`` keeps its autostart registry (xinference/constants.py)."""
    if env.get("XINFERENCE_LAUNCH_HISTORY_DB_PATH"):
        return PurePosixPath(env["XINFERENCE_LAUNCH_HISTORY_DB_PATH"])
    return PurePosixPath(env.get("XINFERENCE_HOME") or DEFAULT_HOME) / DB_NAME


def _container_env(docker_host: str, container: str, ssh_argv: Optional[Sequence[str]]) -> dict[str, str]:
    answer = run_docker(docker_host, ["container", "inspect", "--format", "{{json .Config.Env}}", container],
                        ssh_argv=ssh_argv)
    if answer.returncode != 0:
        raise RegistryEditFailed(f"`docker container inspect {container}`: {answer.stderr.strip()}")
    pairs = (item.partition("=") for item in json.loads(answer.stdout) or [])
    return {key: value for key, _, value in pairs}


def _copy_out(docker_host: str, container: str, path: PurePosixPath, ssh_argv: Optional[Sequence[str]]
              ) -> Optional[tuple[bytes, int]]:
    """(the file's bytes, its mode), or None when the container has no such file."""
    done = run_docker_bytes(docker_host, ["cp", f"{container}:{path}", "-"], ssh_argv=ssh_argv)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        if "could not find the file" in message.lower() or "no such file" in message.lower():
            return None
        raise RegistryEditFailed(f"`docker cp {container}:{path} -`: {message}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:") as archive:
        member = archive.next()
        if member is None or not member.isfile():
            raise RegistryEditFailed(f"`docker cp {container}:{path} -` gave no regular file")
        data = archive.extractfile(member)
        assert data is not None  # a regular file always has data
        return data.read(), member.mode


def _tar(files: Sequence[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def disable_entry(db: Path, uid: str) -> bool:
    """Disable ``uid``'s entry in the registry file ``db`` (WAL beside it folded in); True when one was enabled."""
    try:
        connection = sqlite3.connect(db)
        try:
            changed = connection.execute(DISABLE_ENTRY, (uid,)).rowcount > 0
            connection.commit()
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise RegistryEditFailed(f"{DB_NAME}: {exc} (is this the registry of Xinference 4.1?)") from None
    return changed


def remove_autostart_entry(docker_host: str, container: str, uid: str,
                           ssh_argv: Optional[Sequence[str]] = None) -> bool:
    """Disable ``uid``'s autostart entry in the stopped ``container``'s registry. True when there was one;
    False when there was none, or no registry. Raises RegistryEditFailed (DockerHostUnreachable when the
    engine does not answer); the registry is then as it was, or as the server last left it."""
    db_path = registry_path(_container_env(docker_host, container, ssh_argv))
    found = _copy_out(docker_host, container, db_path, ssh_argv)
    if found is None:
        return False
    side = {suffix: _copy_out(docker_host, container, db_path.with_name(db_path.name + suffix), ssh_argv)
            for suffix in SIDE_FILES}
    with tempfile.TemporaryDirectory(prefix="xo-registry-") as scratch:
        db = Path(scratch) / DB_NAME
        db.write_bytes(found[0])
        for suffix, copy in side.items():
            if copy is not None:
                Path(f"{db}{suffix}").write_bytes(copy[0])
        if not disable_entry(db, uid):
            return False
        back = [(db_path.name + suffix, b"", copy[1]) for suffix, copy in side.items() if copy is not None]
        back.append((db_path.name, db.read_bytes(), found[1]))
    done = run_docker_bytes(docker_host, ["cp", "-", f"{container}:{db_path.parent}"], stdin=_tar(back),
                            ssh_argv=ssh_argv)
    if done.returncode != 0:
        raise RegistryEditFailed(f"`docker cp - {container}:{db_path.parent}`: "
                                 f"{done.stderr.decode(errors='replace').strip()}")
    return True

