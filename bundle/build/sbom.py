"""sbom.cdx.json: a CycloneDX 1.6 inventory of everything a bundle carries, written by `bundle build`.

Made with cyclonedx-python-lib (an online-machine tool, requirements-build.txt; never carried as a
site dependency) and checked with its own CycloneDX 1.6 JSON schema validator before it is written.
It is a bundle file like any other: hashed in the manifest, so a signature of MANIFEST.json covers it.

Components, each with the property ``xinference-offline:kind`` (what `plan --bundle` counts):

  image            each Xinference image: a `container` (name, tag, image id, the tar's sha256), holding
    debian-package   every package its dpkg status records as installed (purl pkg:deb/...)
    image-python     the Python distributions of its site-packages that holds xinference (pkg:pypi/...)
  site-wheel       the site's wheels (wheels/*.whl), each with the sha256 the lock pins
  engine-wheel     the models' engine-package wheels; ``engine-stand-in`` the metadata-only stand-ins
                   for a distribution the image has (no code)
  pulumi           the Pulumi CLI, language host and plugins: version and sha256 of each executable
  model            each model, a `machine-learning-model`: hub, id, revision (``unpinned`` when the stack
                   pins none), the digest of its files, and each file (a `file` component with its sha256)
  program          this program (the Pulumi program and the bundle tool): the digest of its files

Dependencies: the bundle depends on every top-level component; each model on the engine wheels its
virtualenv installs; the program on the site wheels and the Pulumi toolchain.

The document is the same for the same bundle (no time stamp, a serial number derived from its
content): a rebuild with no change keeps the bundle id.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterable, Optional

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from bundle.contents.items import packages_bundle_dir
from bundle.contents.items import SBOM_KIND
from bundle.contents.stacks import Source
from bundle.format.errors import BundleError
from bundle.format.manifest import FileEntry, files_digest
from bundle.build.image_env import ImageEnv
from bundle.build.stub_wheel import is_stub_filename

PREFIX = "xinference-offline:"
UNPINNED = "unpinned"
HUB_URLS = {"huggingface": "https://huggingface.co/{id}", "modelscope": "https://modelscope.cn/models/{id}"}


@dataclass(frozen=True)
class ImageFacts:
    """One image tar of the bundle and what its layers say (env None: not an image with a readable Python)."""

    name: str  # the reference inside the tar, e.g. xprobe/xinference:v4.1.0
    path: str  # its bundle path, images/...
    image_id: Optional[str]
    env: Optional[ImageEnv]
    unread: Optional[str] = None  # why env is None


@dataclass(frozen=True)
class ModelFacts:
    """One model of the bundle: its uid, its bundle directories (companions included) and their sources."""

    uid: str
    name: str
    model_type: str
    dirs: tuple[str, ...]  # models/DIR, the model's own first
    sources: tuple[Optional[Source], ...]  # per dir (None: copied from models_dir, no hub)


@dataclass(frozen=True)
class SbomInputs:
    files: list[FileEntry]  # every file of the bundle (the manifest's entries but the SBOM itself)
    images: list[ImageFacts]
    models: list[ModelFacts]
    engine_records: list[dict]  # packages.json "models": per model, the wheel files its virtualenv installs
    pulumi_versions: dict[str, str]  # executable name (pulumi, pulumi-language-python, ...) -> version
    stacks: list[str]


class SbomError(BundleError):
    """The SBOM the build made does not validate (a bug, never the user's input)."""


def _sha256(value: str) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=value)]


def _props(kind: str, **extra: Optional[str]) -> list[Property]:
    props = [Property(name=SBOM_KIND, value=kind)]
    props += [Property(name=PREFIX + key.replace("_", "-"), value=value) for key, value in extra.items()
              if value is not None]
    return props


def _wheel_name_version(file_name: str) -> tuple[str, str]:
    name, version = file_name.split("-")[:2]
    return name, version


def _wheel(entry: FileEntry, kind: str, ref: str) -> Component:
    file_name = posixpath.basename(entry.path)
    name, version = _wheel_name_version(file_name)
    stand_in = kind == "engine-stand-in"
    return Component(
        type=ComponentType.LIBRARY, name=name, version=version, bom_ref=ref, hashes=_sha256(entry.sha256),
        purl=PackageURL(type="pypi", name=name.lower().replace("_", "-"), version=version,
                        qualifiers={"file_name": file_name}),
        description=(f"metadata-only stand-in for the image's {name} {version}: its name, version and "
                     "requirements, no code" if stand_in else None),
        properties=_props(kind, bundle_path=entry.path, stand_in="true" if stand_in else None))


def _image(facts: ImageFacts, tar: Optional[FileEntry]) -> Component:
    repo, _, tag = facts.name.rpartition(":") if ":" in facts.name.split("/")[-1] else (facts.name, "", "")
    env = facts.env
    nested: list[Component] = []
    ref = f"image:{facts.path}"
    if env is not None:
        for name, version, arch in env.debian_packages:
            nested.append(Component(
                type=ComponentType.LIBRARY, name=name, version=version, bom_ref=f"{ref}/deb:{name}:{arch}",
                purl=PackageURL(type="deb", namespace="debian", name=name, version=version,
                                qualifiers={"arch": arch} if arch else None),
                properties=_props("debian-package")))
        for name, version in env.installed.items():
            nested.append(Component(
                type=ComponentType.LIBRARY, name=name, version=version, bom_ref=f"{ref}/pypi:{name}",
                purl=PackageURL(type="pypi", name=name.lower().replace("_", "-"), version=version),
                properties=_props("image-python")))
    return Component(
        type=ComponentType.CONTAINER, name=repo or facts.name, version=tag or None, bom_ref=ref,
        # the tar's sha256; for an image kept as the tar's members, its id: the sha256 of its config file
        hashes=_sha256(tar.sha256) if tar else _sha256(facts.image_id[7:]) if facts.image_id else None,
        components=nested,
        purl=PackageURL(type="docker", name=repo or facts.name, version=tag or None),
        properties=_props("image", image_reference=facts.name, image_id=facts.image_id, tar_path=facts.path,
                          python=env.python_version if env else None, glibc=env.glibc if env else None,
                          machine=env.machine if env else None, packages_not_read=facts.unread))


def _model(facts: ModelFacts, entries: list[FileEntry]) -> Component:
    ref = model_ref(facts)
    source = facts.sources[0]
    hub = source.hub if source else "local"
    revision = (source.revision or UNPINNED) if source and source.hub != "local" else None
    urls = []
    if source and source.id and source.hub in HUB_URLS:
        urls = [ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                  url=XsUri(HUB_URLS[source.hub].format(id=source.id)))]
    purl = None
    if source and source.hub == "huggingface" and source.id and source.revision:
        namespace, _, name = source.id.rpartition("/")
        purl = PackageURL(type="huggingface", namespace=namespace or None, name=name, version=source.revision)
    companions = [f"{d} ({s.describe() if s else 'local'})" for d, s in zip(facts.dirs[1:], facts.sources[1:], strict=True)]
    files = [Component(type=ComponentType.FILE, name=e.path, bom_ref=f"{ref}/file:{e.path}", hashes=_sha256(e.sha256),
                       properties=[Property(name=PREFIX + "size", value=str(e.size))])
             for e in sorted(entries, key=lambda e: e.path)]
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL, name=facts.uid, version=revision, bom_ref=ref,
        hashes=_sha256(files_digest(entries)) if entries else None, components=files, purl=purl,
        external_references=urls,
        properties=_props("model", hub=hub, id=source.id if source else None, revision=revision,
                          local_path=source.path if source and source.hub == "local" else None,
                          model_name=facts.name, model_type=facts.model_type,
                          companions="; ".join(companions) or None))


def model_ref(facts: ModelFacts) -> str:
    """A model's bom-ref: its own bundle directory (a uid may recur in two stacks with other files)."""
    return f"model:{facts.dirs[0]}"


def _pulumi(entry: FileEntry, versions: dict[str, str]) -> Component:
    parts = entry.path.split("/")  # pulumi/bin/NAME or pulumi/plugins/resource-NAME-vX.Y.Z/...
    name = parts[-1]
    version = versions.get(name)
    if parts[1] == "plugins":
        plugin_dir = parts[2]
        version = plugin_dir.rpartition("-v")[2] if "-v" in plugin_dir else version
    return Component(type=ComponentType.APPLICATION, name=name, version=version, bom_ref=f"pulumi:{entry.path}",
                     hashes=_sha256(entry.sha256), properties=_props("pulumi", bundle_path=entry.path))


def make_bom(inputs: SbomInputs) -> Bom:
    """The bundle's SBOM (pure: from the inputs alone)."""
    by_path = {e.path: e for e in inputs.files}
    engine_dir = packages_bundle_dir()
    bom = Bom()
    bom.metadata.timestamp = None  # type: ignore[assignment]  # the same bundle gives the same document
    bundle = Component(type=ComponentType.APPLICATION, name="xinference-offline bundle",
                       version=", ".join(sorted(inputs.stacks)), bom_ref="bundle",
                       properties=_props("bundle", stacks=", ".join(sorted(inputs.stacks))))
    bom.metadata.component = bundle
    bom.metadata.tools.components.add(Component(type=ComponentType.LIBRARY, name="cyclonedx-python-lib",
                                                version=importlib.metadata.version("cyclonedx-python-lib")))
    top: list[Component] = []
    for facts in inputs.images:
        top.append(_image(facts, by_path.get(facts.path)))
    site_wheels = [_wheel(e, "site-wheel", f"wheel:{e.path}") for e in inputs.files
                   if e.role == "wheel" and e.path.endswith(".whl")]
    engine = {posixpath.basename(e.path): _wheel(e, "engine-stand-in" if is_stub_filename(posixpath.basename(e.path))
                                                 else "engine-wheel", f"engine:{e.path}")
              for e in inputs.files if e.path.startswith(engine_dir) and e.path.endswith(".whl")}
    pulumi = [_pulumi(e, inputs.pulumi_versions) for e in inputs.files if e.role == "pulumi"]
    program_files = [e for e in inputs.files if e.role == "program"]
    program_digest = files_digest(program_files, strip_prefix=False) if program_files else None
    program = Component(type=ComponentType.APPLICATION, name="xinference-offline", bom_ref="program",
                        version=program_digest[:12] if program_digest else None,
                        hashes=_sha256(program_digest) if program_digest else None,
                        description="the Pulumi program and the bundle tool (program/ in the bundle)",
                        properties=_props("program", files=str(len(program_files))))
    models = {}
    for facts in inputs.models:
        prefixes = tuple(d.rstrip("/") + "/" for d in facts.dirs if d.rstrip("/") + "/" != engine_dir)
        models[facts] = _model(facts, [e for e in inputs.files if e.role == "model" and e.path.startswith(prefixes)])
    top += site_wheels + list(engine.values()) + pulumi + [program] + list(models.values())
    for component in top:
        bom.components.add(component)
    bom.register_dependency(bundle, top)
    for facts, model in models.items():
        installs = {name for r in inputs.engine_records if r.get("model") == facts.uid for name in r.get("wheels", [])}
        bom.register_dependency(model, [engine[name] for name in sorted(installs) if name in engine])
    bom.register_dependency(program, site_wheels + pulumi)
    return bom


def sbom_json(inputs: SbomInputs) -> str:
    """The SBOM as CycloneDX 1.6 JSON, validated against the schema; its serial number derives from its content."""
    bom = make_bom(inputs)
    content = JsonV1Dot6(bom).output_as_string()
    doc = json.loads(content)
    doc.pop("serialNumber", None)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    bom.serial_number = uuid.UUID(digest[:32])
    text = JsonV1Dot6(bom).output_as_string(indent=1) + "\n"
    problem = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if problem is not None:
        raise SbomError(f"the SBOM made for this bundle does not validate as CycloneDX 1.6: {problem}")
    return text


def model_facts(stacks: Iterable[tuple[object, dict[str, list[str]]]], sources: dict[str, Source]) -> list[ModelFacts]:
    """ModelFacts of each (stack config, its manifest models {uid: dirs}); one per uid and directory set."""
    seen: dict[tuple[str, tuple[str, ...]], ModelFacts] = {}
    for cfg, models in stacks:
        for model in cfg.enabled_models:  # type: ignore[attr-defined]
            dirs = tuple(models.get(model.uid, ()))
            key = (model.uid, dirs)
            if dirs and key not in seen:
                seen[key] = ModelFacts(model.uid, model.name or model.uid, model.type, dirs,
                                       tuple(sources.get(d.rstrip("/") + "/") for d in dirs))
    return list(seen.values())
