"""RemoteFilesCheck: is a model directory (on an ssh:// host, or on this machine) still what the manifest says?

`command.remote.CopyToRemote` and the `sha256sum -c` Command that follows it run when their
triggers change; `pulumi refresh` does not look at the remote files. This dynamic resource
stands before the copy and makes refresh look:

- create: nothing to check yet (the copy comes after it); ``generation`` 0, ``damaged`` [].
- read (refresh): runs the same `sha256sum -c` on the host, over the stack's ssh command
  (stackspec/ssh.py). Files that fail are listed in ``damaged`` and ``generation`` goes up by one.
  A host that cannot be reached changes nothing (refresh cannot tell, so it claims nothing).
- diff: the inputs only. ``generation`` is one of the copy's and the verify's triggers (and part
  of the weights digest of the models using the directory), so the next `up` copies the
  directory again, verifies it and relaunches those models. The check itself is not updated:
  a dynamic resource updated in a preview shows its inputs as outputs, which would hide the new
  generation from the preview; ``damaged`` says what the last refresh found, and the next
  refresh that finds the files intact empties it.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any, Optional, Sequence

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

TIMEOUT_S = 1800  # hashing a multi-GB model directory on a busy disk


def failed_files(sha256sum_output: str) -> list[str]:
    """The names `sha256sum -c --quiet` reports: `NAME: FAILED` and `NAME: FAILED open or read`."""
    names = []
    for line in sha256sum_output.splitlines():
        name, sep, verdict = line.rpartition(": ")
        if sep and verdict.startswith("FAILED"):
            names.append(name[1:] if name.startswith("\\") else name)  # sha256sum's escaped form
    return sorted(set(names))


def run_check(ssh_argv: Sequence[str], script: str) -> Optional[list[str]]:
    """The damaged files of the directory (empty when intact); None when the host cannot be asked.
    No ``ssh_argv``: the directory is on this machine (components/local_repair.py)."""
    argv = [*ssh_argv, "sh", "-c", shlex.quote(script)] if ssh_argv else ["sh", "-c", script]
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode == 0:
        return []
    failed = failed_files(done.stdout + "\n" + done.stderr)
    if failed:
        return failed
    if "No such file or directory" in done.stderr and "cd:" in done.stderr:  # the whole directory is gone
        return ["."]
    return None  # ssh itself failed (exit 255), or something else: cannot tell


class RemoteFilesCheckProvider(ResourceProvider):
    """Refresh checks the files on the host; a damaged result is cleared by the next up."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"{props['remote_dir']}", {**props, "generation": 0, "damaged": []})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        damaged = run_check(props.get("ssh_argv") or [], props.get("script") or "")
        if damaged is None:  # cannot tell: claim nothing
            return ReadResult(id_, {**props, "damaged": props.get("damaged") or []})
        if not damaged:
            return ReadResult(id_, {**props, "damaged": []})
        return ReadResult(id_, {**props, "damaged": damaged, "generation": int(props.get("generation") or 0) + 1})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("remote_dir", "digest", "ssh_argv", "script") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, "generation": int(olds.get("generation") or 0),
                             "damaged": olds.get("damaged") or []})


class RemoteFilesCheck(pulumi.dynamic.Resource, module="xinference", name="RemoteFilesCheck"):
    """The remote copy of one model directory, checked at every refresh."""

    generation: pulumi.Output[int]
    damaged: pulumi.Output[list]

    def __init__(self, resource_name: str, ssh_argv: Sequence[str], remote_dir: str, digest: str, script: str,
                 opts: Optional[pulumi.ResourceOptions] = None):
        props = {"ssh_argv": list(ssh_argv), "remote_dir": remote_dir, "digest": digest, "script": script,
                 "generation": None, "damaged": None}
        super().__init__(RemoteFilesCheckProvider(), resource_name, props, opts)
