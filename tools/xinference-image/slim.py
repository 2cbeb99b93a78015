"""The slim step of tools/xinference-image.sh --slim, run by the CPU image's Python as root in a
`--network none` container of the CPU image, then committed as the stand-in of the official slim
image (xprobe/xinference:v4.x, xinference/deploy/docker/Dockerfile + requirements-runtime.txt).
Arguments: the venv path, the wheel dir (torchaudio, torchcodec), the output dir.

What it changes, each as the official image has it:
1. Its runtime set: torch, torchvision, torchaudio, torchcodec, transformers, accelerate, numpy,
   pandas, xinference and what they require, uv and pip. Everything else the CPU image has is
   uninstalled: sentence-transformers (no engine in the image) and what only it or the test
   model package needed. torchaudio and torchcodec are added from the wheel dir (--no-deps).
2. Its Python is the system's, no venv: the official image installs into
   /usr/local/lib/python3.12/dist-packages. Moving the CPU image's 5 GB site-packages would copy it
   into a new layer, so the venv stops being one instead: its pyvenv.cfg goes (its python is then
   /usr/bin/python3.11, sys.prefix == sys.base_prefix) and a .pth in the system's
   /usr/local/lib/python3.11/dist-packages adds the site-packages as a site dir. A model's
   virtualenv (`uv venv --system-site-packages`) then sees the image's packages through the system
   site dir, as on the official image, not through Xinference's parent-venv .pth.
   The Python stays 3.11 (Debian bookworm's): bundle build's Python rule is tested on its own.
3. The torch family's installed metadata carries a CUDA local label, as the PyTorch index's wheels
   do (the official image: torch 2.11.0+cu130): this rewrites `Version:` in their dist-info and
   renames the folder (and RECORD's paths) to <name>-<version>+cu<XY>. The label is the CUDA this
   torch was built for (torch.version.cuda). The code is PyPI's: only the metadata says so.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

RUNTIME = ("xinference", "torch", "torchvision", "torchaudio", "torchcodec", "transformers", "accelerate", "numpy",
           "pandas", "uv", "pip")
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "torchcodec")


def closure(roots: tuple[str, ...]) -> set[str]:
    """The canonical names of the roots and everything they require, with the extras asked on the way
    (torch asks cuda-toolkit[cudart,...]), markers evaluated for this Python."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(r), "") for r in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name not in installed:
            continue
        seen.add((name, extra))
        for line in installed[name].requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ("", *req.extras)]
    return {name for name, _ in seen}


def relabel(site: Path, name: str, label: str) -> str:
    dist = metadata.distribution(name)
    old = Path(dist._path)  # type: ignore[attr-defined]
    version = dist.version.split("+")[0]
    new_dir = site / f"{old.name[:-len('.dist-info')].rsplit('-', 1)[0]}-{version}+{label}.dist-info"
    meta = (old / "METADATA").read_text()
    (old / "METADATA").write_text(re.sub(r"^Version: .*$", f"Version: {version}+{label}", meta, count=1, flags=re.M))
    record = old / "RECORD"
    if record.is_file():
        record.write_text(record.read_text().replace(f"{old.name}/", f"{new_dir.name}/"))
    shutil.copytree(old, new_dir)  # not a rename: overlayfs refuses renaming a lower layer's directory (EXDEV)
    shutil.rmtree(old)
    return f"{version}+{label}"


def main() -> int:
    venv, wheels, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    site = next((venv / "lib").glob("python3*/site-packages"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--no-compile", *map(str, wheels.glob("*.whl"))],
                   check=True)
    keep = closure(RUNTIME)
    names = {canonicalize_name(d.metadata["Name"]): d.metadata["Name"] for d in metadata.distributions()}
    drop = sorted(names[n] for n in names if n not in keep)
    subprocess.run([*pip, "uninstall", "-q", "-y", *drop], check=True)
    import torch  # noqa: E402 - after the uninstall: it must still import
    label = "cu" + torch.version.cuda.replace(".", "")
    versions = {name: relabel(site, name, label) for name in TORCH_FAMILY}
    (venv / "pyvenv.cfg").unlink()
    system_site = Path(f"/usr/local/lib/python{sys.version_info.major}.{sys.version_info.minor}/dist-packages")
    system_site.mkdir(parents=True, exist_ok=True)
    (system_site / "xinference-image-site.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")
    (out / "slim.txt").write_text("removed " + " ".join(drop) + "\n" + "".join(
        f"relabelled {n} {v}\n" for n, v in versions.items()) + f"cuda {torch.version.cuda}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
