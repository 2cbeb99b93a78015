"""The README's site block, taken out as the script a test runs.

Generic on purpose: whatever lines the block holds run, in order, in one `bash -eux`. Only the
site's own places move: every absolute path of the block is taken under the test's directory
(the site root, the model directory, the passphrase file), and the bundle id sent by another
channel is the real one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE_MARK = "sha256sum -c"  # the one bash block of the README that runs on the offline side (it checks the transfer)


def site_block(readme: str) -> str:
    """The fenced bash block of the README that holds the offline side's steps."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if SITE_MARK in b]
    assert len(blocks) == 1, f"expected one README bash block with `{SITE_MARK}`, found {len(blocks)}"
    return blocks[0]


PATH_RE = re.compile(r"(?<![\w$./:])(/(?:[\w.-]+/?)+)")  # an absolute path (not file://, ../x, $PWD/x)


def absolute_paths(block: str) -> list[str]:
    """The absolute paths the block names (the site's places)."""
    return sorted(set(PATH_RE.findall(block)))


def site_script(block: str, root: Path, bundle_id: str) -> str:
    """The block as a script for the test: every absolute path moved under ``root`` (``/opt/x`` ->
    ``ROOT/opt/x``), the real bundle id, and `set -eux` first."""
    script = re.sub(r"^(\s*BUNDLE_ID=)\S+", lambda m: m.group(1) + bundle_id, block, flags=re.M)
    return "set -eux\n" + PATH_RE.sub(lambda m: f"{root}{m.group(1)}", script)


def first_directory(block: str) -> str:
    """Where the block starts (its first `cd`): where the archive and its .sha256 were copied."""
    return re.search(r"^\s*cd\s+(\S+)", block, re.M).group(1)


def passphrase_file(block: str) -> str:
    return re.search(r"PULUMI_CONFIG_PASSPHRASE_FILE=(\S+)", block).group(1)
