"""LocalModelRepair: the model files on this machine's docker host, checked at refresh against the
bundle manifest's sha256 and restored from the bundle by `up`.

The same check as for an ssh:// host (components/remote_check.py RemoteFilesCheck: one
component for both kinds of host), run here with no ssh. Bit rot keeps a file's size and mtime,
so only reading the bytes finds it: refresh reads every file of every model directory, split
over this machine's cores (largest files first, one `sha256sum -c` per core). A `preview`
without `--refresh` reads nothing.

Damaged or missing files bump the check's ``generation``; the next `up` then restores exactly
the files that fail their sha256 from the unpacked bundle (a temp copy renamed into place,
checked again after), and the models that use the directory carry the generation in their
weights digest, so exactly they are relaunched (a running model maps the old bytes).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pulumi
import pulumi_command as command

from components.remote_check import RemoteFilesCheck
from components.remote_sync import DirectoryCopy, checksum_line, verify_script

HEREDOC = "XINFERENCE_OFFLINE_SHA256"


def split_by_size(files: Sequence[tuple[str, str, int]], parts: int) -> list[list[tuple[str, str]]]:
    """(rel, sha256, size) -> at most ``parts`` groups of about equal bytes (largest first, each to
    the lightest group): one `sha256sum` per core."""
    groups: list[list[tuple[str, str]]] = [[] for _ in range(max(1, parts))]
    weights = [0] * len(groups)
    for rel, sha, size in sorted(files, key=lambda f: (-f[2], f[0])):
        lightest = weights.index(min(weights))
        groups[lightest].append((rel, sha))
        weights[lightest] += size
    return [g for g in groups if g]


def parallel_check_script(directory: str, groups: list[list[tuple[str, str]]]) -> str:
    """`sha256sum -c` of every file of ``directory``, one process per group at once; exit 1 when
    any file fails (each named `NAME: FAILED`, as RemoteFilesCheck reads them)."""
    where = shlex.quote(directory)
    # a directory gone as a whole is named "." (as RemoteFilesCheck reads it), whatever the shell's words
    lines = ["set -u", f"[ -d {where} ] || {{ echo '.: FAILED open or read'; exit 1; }}", f"cd {where} || exit 1",
             "status=0", "pids="]
    for group in groups:
        listing = "\n".join(checksum_line(rel, sha) for rel, sha in group)
        lines.append(f"sha256sum -c --quiet --strict - <<'{HEREDOC}' &\n{listing}\n{HEREDOC}")
        lines.append('pids="$pids $!"')
    lines.append('for pid in $pids; do wait "$pid" || status=1; done')
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def restore_script(copy: DirectoryCopy, bundle_root: str) -> str:
    """Copy from the bundle exactly the files of the directory whose sha256 fails (missing ones
    too), each into a temp file renamed into place, then check the whole directory again."""
    source = shlex.quote(str(Path(bundle_root) / copy.bundle_dir))
    listing = "\n".join(checksum_line(rel, sha) for rel, sha in copy.files)
    return "\n".join([
        "set -eu",
        f"mkdir -p {shlex.quote(copy.remote_dir)}",
        f"cd {shlex.quote(copy.remote_dir)}",
        f"failed=$(sha256sum -c --quiet - 2>/dev/null <<'{HEREDOC}' | sed -n 's/: FAILED.*$//p'\n{listing}\n{HEREDOC}\n)",
        'printf "%s\\n" "$failed" | while IFS= read -r name; do',
        '  [ -n "$name" ] || continue',
        '  mkdir -p "$(dirname "$name")"',
        f'  cp {source}/"$name" "$name.xinference-offline-restore"',
        '  mv -f "$name.xinference-offline-restore" "$name"',
        f'  echo "restored $name from the bundle ({copy.bundle_dir})"',
        "done",
    ]) + "\n" + verify_script(copy)


@dataclass
class LocalModelRepairArgs:
    """Inputs of LocalModelRepair."""

    bundle_root: str
    """The unpacked bundle (this machine)."""
    copies: Sequence[DirectoryCopy]
    """Each model directory: its bundle path, its host path, its files' sha256."""
    cores: int = 0
    """sha256sum processes per directory at refresh (0: this machine's cores)."""


class LocalModelRepair(pulumi.ComponentResource):
    """Model directories on this machine, checked at refresh and restored from the bundle by up."""

    generations: dict[str, pulumi.Output[int]]
    """{host directory: the check's generation}: a new one relaunches the models using it."""

    def __init__(self, name: str, args: LocalModelRepairArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:LocalModelRepair", name, None, opts)
        cores = args.cores or os.cpu_count() or 1
        self.generations = {}
        for copy in args.copies:
            label = copy.bundle_dir.split("/")[-1]
            source = Path(args.bundle_root) / copy.bundle_dir
            sized = [(rel, sha, _size(source / rel)) for rel, sha in copy.files]
            check = RemoteFilesCheck(f"{name}-{label}-check", [], copy.remote_dir, copy.digest,
                                     parallel_check_script(copy.remote_dir, split_by_size(sized, cores)),
                                     opts=pulumi.ResourceOptions(parent=self))
            repair = restore_script(copy, args.bundle_root)
            command.local.Command(
                f"{name}-{label}-restore",
                # nothing to do until a refresh finds damage (install put the files there, checked)
                # the script bound now: apply runs after the loop has moved on to the next directory
                create=check.generation.apply(lambda generation, script=repair: script if generation else "true"),
                triggers=[copy.digest, check.generation],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[check]),
            )
            self.generations[copy.remote_dir] = check.generation
        self.register_outputs({})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
