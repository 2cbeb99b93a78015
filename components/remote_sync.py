"""RemoteModelSync: the bundle's model files reach a remote Docker host (copy, then verify).

When a stack drives a server over `ssh://`, the operator machine holds the unpacked bundle
and the server does not. Each model directory is copied with `command.remote.CopyToRemote`
(re-copied when its digest changes) and then checked on the server with `sha256sum -c`
against the manifest, so a container never starts on files that arrived damaged. Before the
copy, a RemoteFilesCheck (components/remote_check.py) runs that check again at every refresh:
a file damaged there since is found, and the next `up` copies and verifies the directory again.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pulumi
import pulumi_command as command

from bundle.format.manifest import FileEntry, StackManifest, files_digest
from components.remote_check import RemoteFilesCheck
from components.ssh_keys import known_host_key
from stackspec.config import DockerHostConfig
from stackspec.ssh import SshTarget


@dataclass(frozen=True)
class DirectoryCopy:
    """One model directory: where it is in the bundle, where it goes on the server, its files."""

    bundle_dir: str  # e.g. models/bce-embedding-base_v1 (relative to the bundle root)
    remote_dir: str  # e.g. /data/docker_models/bce-embedding-base_v1
    files: tuple[tuple[str, str], ...]  # (path relative to the directory, sha256)
    digest: str


def directory_copies(manifest: StackManifest, bundle_dirs: dict[str, str]) -> list[DirectoryCopy]:
    """{bundle dir: remote dir} -> the copies, each with its files from the manifest."""
    copies = []
    for bundle_dir, remote_dir in sorted(bundle_dirs.items()):
        prefix = bundle_dir.rstrip("/") + "/"
        entries: list[FileEntry] = [e for e in manifest.files if e.path.startswith(prefix)]
        if not entries:
            continue
        files = tuple(sorted((e.path[len(prefix):], e.sha256) for e in entries))
        copies.append(DirectoryCopy(bundle_dir.rstrip("/"), remote_dir.rstrip("/"), files, files_digest(entries)))
    return copies


def checksum_line(rel: str, sha: str) -> str:
    """One line of `sha256sum -c` input. A name holding a backslash or a newline is written in
    sha256sum's own escaped form (a leading backslash), so no raw newline of a file name ever
    reaches the script: it cannot end the here-document early and run what follows."""
    if "\\" in rel or "\n" in rel:
        return "\\" + sha + "  " + rel.replace("\\", "\\\\").replace("\n", "\\n")
    return f"{sha}  {rel}"


def verify_script(copy: DirectoryCopy) -> str:
    """`sha256sum -c` of every file of the directory, as the server runs it."""
    listing = "\n".join(checksum_line(rel, sha) for rel, sha in copy.files)
    return (f"set -eu\ncd {shlex.quote(copy.remote_dir)}\n"
            f"sha256sum -c --quiet --strict - <<'XINFERENCE_OFFLINE_SHA256'\n{listing}\nXINFERENCE_OFFLINE_SHA256\n")


def ssh_connection(target: SshTarget) -> command.remote.ConnectionArgs:
    """Go's ssh client, told what OpenSSH reads from the stack's options: the same user (OpenSSH's
    default is the local user, pulumi-command's is root), port, key (secret; else the ssh agent)
    and the host key that known_hosts holds for the host (pulumi-command accepts any host without one)."""
    key_file = os.path.expanduser(target.identity_file) if target.identity_file else None
    key = Path(key_file).read_text() if key_file else None
    host_key = known_host_key(target) if target.strict_host_key_checking != "no" else None
    return command.remote.ConnectionArgs(
        host=target.host,
        user=target.user or getpass.getuser(),
        port=float(target.port or 22),
        private_key=pulumi.Output.secret(key) if key else None,
        host_key=host_key,
    )


@dataclass
class RemoteModelSyncArgs:
    """Inputs of RemoteModelSync."""

    host: DockerHostConfig
    """The ssh:// docker host the files go to."""
    bundle_root: str
    """The unpacked bundle on the operator machine."""
    copies: Sequence[DirectoryCopy]
    """What to copy where."""


class RemoteModelSync(pulumi.ComponentResource):
    """Copies and verifies model directories on a remote server."""

    def __init__(self, name: str, args: RemoteModelSyncArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:RemoteModelSync", name, None, opts)
        assert args.host.ssh is not None  # only ssh:// hosts get their files copied
        connection = ssh_connection(args.host.ssh)
        self.verified: list[command.remote.Command] = []
        self.generations: dict[str, pulumi.Output[int]] = {}  # remote dir -> its check's generation
        for copy in args.copies:
            label = copy.bundle_dir.split("/")[-1]
            script = verify_script(copy)
            # refresh checks the files there; damage found bumps generation, so up copies and verifies again
            check = RemoteFilesCheck(f"{name}-{label}-check", args.host.ssh.argv(), copy.remote_dir, copy.digest,
                                     script, opts=pulumi.ResourceOptions(parent=self))
            triggers = [copy.digest, check.generation]
            self.generations[copy.remote_dir] = check.generation
            copied = command.remote.CopyToRemote(
                f"{name}-{label}-copy",
                connection=connection,
                source=pulumi.FileArchive(str(Path(args.bundle_root) / copy.bundle_dir)),
                # Copying a directory into an existing directory lands it as a sub-directory.
                remote_path=posixpath.dirname(copy.remote_dir),
                triggers=triggers,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.verified.append(command.remote.Command(
                f"{name}-{label}-verify",
                connection=connection,
                create=script,
                triggers=triggers,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[copied]),
            ))
        self.register_outputs({})
