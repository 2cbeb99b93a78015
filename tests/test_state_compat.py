"""State written by an earlier main still works with this code (issue 13, item 6).

The dynamic provider is pickled into the state by module path (`components.model`); the
layering moved the stack spec to spec/ and the bundle format to bundle/format/. A stack made
with the main of before that move (commit BEFORE_LAYERS, taken from this repository's own
history with `git archive`), then previewed with this checkout's program, shows no changes;
`up` and `destroy` then run with the new code against that state.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile

import pytest

from tests.docker_site import running_models
from tests.test_e2e_pulumi import PULUMI, ROOT, Project, model_entry, xinference  # noqa: F401 - fixture

BEFORE_LAYERS = "fbf3230"  # main before spec/ and bundle/format/ (the last commit CI passed before them)
BEFORE_RENAME = "a48b63a"  # main before spec/ became stackspec/ (and bundle/ was split into subpackages)
# commit -> (what its program is made of, a file only that layout has)
OLD_MAINS = {BEFORE_LAYERS: (("components", "bundle"), "components/config.py"),
             BEFORE_RENAME: (("components", "bundle", "spec"), "spec/xinference.py")}
UID = "compat-minilm"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(PULUMI is None, reason="no pulumi CLI on PATH (tools/test.sh)")]


def old_program(dest, commit: str):
    """The program as it was at ``commit``, unpacked into ``dest``."""
    packages, marker = OLD_MAINS[commit]
    git = shutil.which("git")
    found = subprocess.run([git or "git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                           capture_output=True) if git else None
    if found is None or found.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone's history (a shallow clone?): "
                    "the old state cannot be made")
    archive = subprocess.run([git, "archive", "--format=tar", commit, "Pulumi.yaml", "__main__.py",
                              "requirements.txt", *packages], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    assert (dest / marker).is_file()  # the old layout, really
    return dest


@pytest.mark.parametrize("commit", list(OLD_MAINS))
def test_a_stack_made_by_the_old_main_previews_with_no_changes(tmp_path, xinference, commit):  # noqa: F811
    old = old_program(tmp_path / "old", commit)
    (tmp_path / "project").mkdir()
    project = Project(tmp_path / "project", xinference.endpoint, xinference.models_dir, program=old)
    project.write_models([model_entry(uid=UID)])
    proc = subprocess.run([PULUMI, "stack", "init", "e2e", "--non-interactive"], cwd=project.root, env=project.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    try:
        project.pulumi("up", "--yes", "--skip-preview")
        assert UID in running_models(xinference.endpoint)

        project.use_program()  # this checkout's code, same stack, same state
        assert (project.root / "stackspec" / "xinference.py").is_file()  # this checkout's layout
        preview = project.pulumi("preview", "--expect-no-changes", "--diff")
        assert "Traceback" not in preview.stdout + preview.stderr
        project.pulumi("up", "--yes", "--skip-preview", "--refresh")
        assert UID in running_models(xinference.endpoint)
    finally:
        project.pulumi("destroy", "--yes", "--skip-preview", check=False)
    assert UID not in running_models(xinference.endpoint)
