"""`python -m bundle diff OLD NEW [--json]`: what an update changes, before it is carried.

OLD and NEW are bundles: a MANIFEST.json, a bundle directory or an archive (or its first part).
Per stack it says: the image (the same, or new with N new layers and their size: read from the
image's manifest.json and config in directories and archives; a bare manifest tells only that it changed); the
models added, removed or changed (files, bytes); the wheels changed (name, old -> new version);
the program files changed; the Pulumi plugins (name, old -> new version) and the CLI and plugin
files changed; the stack file; and what
`pulumi up` will then do on that server: a new image replaces the container, and a replaced
container relaunches every model, else exactly the models whose files changed relaunch. Last,
the bytes a delta archive on OLD would carry (`build --base OLD`) against the full archive.

Standard library only: it runs on the site's bare python3 as well as on the online machine.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional, TextIO

from bundle.format.delta import base_of, read_base
from bundle.format.image_layers import image_dir_layers, image_layers
from bundle.format.manifest import FileEntry, Manifest, StackManifest
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.progress import human, plural

WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.+\.whl$")
PLUGIN_RE = re.compile(r"^pulumi/plugins/resource-(?P<name>.+)-v(?P<version>[^/]+)/")
TAR_BLOCK, TAR_RECORD = 512, 10240


def archive_size(files: list[FileEntry], manifest_bytes: int, signature_bytes: int = 0) -> int:
    """The bytes of a plain tar `pack` writes of ``files`` after a manifest of ``manifest_bytes`` (and the
    signature of ``signature_bytes``, when the bundle is signed): a header per member (three for a long
    name: pax), data padded to 512 bytes, the end marker, rounded up to tar's 10 KiB record."""
    total = TAR_BLOCK + -(-manifest_bytes // TAR_BLOCK) * TAR_BLOCK
    if signature_bytes:
        total += TAR_BLOCK + -(-signature_bytes // TAR_BLOCK) * TAR_BLOCK
    for entry in files:
        headers = 3 if len(entry.path) > 100 else 1
        total += headers * TAR_BLOCK + -(-entry.size // TAR_BLOCK) * TAR_BLOCK
    total += 2 * TAR_BLOCK
    return -(-total // TAR_RECORD) * TAR_RECORD


def _by_path(files: list[FileEntry], role: str, prefix: str = "") -> dict[str, FileEntry]:
    return {f.path: f for f in files if f.role == role and f.path.startswith(prefix)}


def changed_paths(old: dict[str, FileEntry], new: dict[str, FileEntry]) -> dict[str, list[str]]:
    """{"added", "removed", "changed": [paths]} between two path -> entry maps."""
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "changed": sorted(p for p in set(old) & set(new) if old[p].sha256 != new[p].sha256)}


def wheel_versions(files: list[FileEntry]) -> dict[str, str]:
    """{normalised distribution name: version} of the wheels among ``files``."""
    versions = {}
    for entry in files:
        match = WHEEL_RE.match(entry.path.rsplit("/", 1)[-1])
        if match:
            versions[re.sub(r"[-_.]+", "-", match.group("name")).lower()] = match.group("version")
    return versions


def wheel_changes(old: list[FileEntry], new: list[FileEntry]) -> list[dict]:
    return version_changes(wheel_versions(old), wheel_versions(new))


def version_changes(before: dict[str, str], after: dict[str, str]) -> list[dict]:
    return [{"name": name, "old": before.get(name), "new": after.get(name)}
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def plugin_versions(files: list[FileEntry]) -> dict[str, str]:
    """{plugin name: version} of the Pulumi plugins among ``files`` (pulumi/plugins/resource-NAME-vX/...)."""
    return {m.group("name"): m.group("version") for m in (PLUGIN_RE.match(f.path) for f in files) if m}


def model_changes(old: Optional[StackManifest], new: StackManifest) -> dict[str, list[dict]]:
    """Models added, removed and changed, each with its files and bytes (of the new files, for changed)."""
    def files_of(view: Optional[StackManifest], uid: str) -> dict[str, FileEntry]:
        if view is None or uid not in view.entry.models:
            return {}
        prefixes = tuple(d.rstrip("/") + "/" for d in view.entry.models[uid])
        return {f.path: f for f in view.files if f.role == "model" and f.path.startswith(prefixes)}

    old_uids = set(old.entry.models) if old else set()
    result: dict[str, list[dict]] = {"added": [], "removed": [], "changed": []}
    for uid in sorted(old_uids | set(new.entry.models)):
        before, after = files_of(old, uid), files_of(new, uid)
        if uid not in old_uids:
            result["added"].append({"uid": uid, "files": len(after), "bytes": sum(f.size for f in after.values())})
        elif uid not in new.entry.models:
            result["removed"].append({"uid": uid, "files": len(before),
                                      "bytes": sum(f.size for f in before.values())})
        else:
            paths = changed_paths(before, after)
            touched = paths["added"] + paths["changed"]
            if touched or paths["removed"]:
                result["changed"].append({"uid": uid, "files": len(touched) + len(paths["removed"]),
                                          "bytes": sum(after[p].size for p in touched), **paths})
    return result


def layers_of(source: Path, view: Optional[StackManifest]) -> Optional[dict[str, int]]:
    """The layers of the stack's image in ``source``: kept as the tar's members, or one tar."""
    if view is not None and view.entry.image_dir:
        return image_dir_layers(source, view.entry.image_dir, {m.name: m.size for m in view.image_members()})
    return image_layers(source, view.entry.image_tar) if view is not None and view.entry.image_tar else None


def image_change(old: Optional[StackManifest], new: StackManifest, old_layers: Optional[dict[str, int]],
                 new_layers: Optional[dict[str, int]]) -> dict:
    # the same content, or the same image id (the sha256 of its config: the same image kept in another form)
    same = old is not None and old.entry.image == new.entry.image and (
        old.image_sha256() == new.image_sha256() or bool(old.entry.image_id and old.entry.image_id == new.entry.image_id))
    change: dict = {"same": same, "image": new.entry.image, "old_image": old.entry.image if old else None}
    if not same and new_layers is not None:
        fresh = {name: size for name, size in new_layers.items() if name not in (old_layers or {})}
        change.update(new_layers=len(fresh), new_layer_bytes=sum(fresh.values()), layers=len(new_layers))
    return change


def stack_diff(name: str, old: Manifest, new: Manifest, old_source: Path, new_source: Path) -> dict:
    view = new.for_stack(name)
    before = old.for_stack(name) if name in old.stacks else None
    layers = [layers_of(src, v) for src, v in ((old_source, before), (new_source, view))]
    image = image_change(before, view, layers[0], layers[1])
    models = model_changes(before, view)
    old_files = before.files if before else []
    program = changed_paths(_by_path(old_files, "program"), _by_path(view.files, "program"))
    pulumi = changed_paths(_by_path(old_files, "pulumi"), _by_path(view.files, "pulumi"))
    stack_file = changed_paths(_by_path(old_files, "stack"), _by_path(view.files, "stack"))
    replaced = not image["same"]
    kept = sorted(set(view.entry.models) & set(before.entry.models if before else ()))
    relaunch = kept if replaced else sorted(m["uid"] for m in models["changed"])  # a new container runs none
    return {
        "stack": name, "new_stack": before is None, "image": image, "models": models,
        "wheels": wheel_changes([f for f in old_files if f.path.endswith(".whl")],
                                [f for f in view.files if f.path.endswith(".whl")]),
        "program": program, "pulumi": pulumi, "stack_file_changed": any(stack_file.values()),
        "plugins": version_changes(plugin_versions(old_files), plugin_versions(view.files)),
        "up": {"container_replaced": replaced, "relaunch": relaunch,
               "launch": [m["uid"] for m in models["added"]], "terminate": [m["uid"] for m in models["removed"]]},
    }


def diff(old_source: Path, new_source: Path) -> dict:
    old, new = read_base(old_source), read_base(new_source)
    known = {f.sha256 for f in old.files}
    carried = [f for f in new.files if f.sha256 not in known]
    delta_manifest = replace(new, base=base_of(old, new))  # what `build --base OLD` would write
    signature = new_source / SIGNATURE_NAME  # a signed bundle directory: pack carries it (signed again for a delta)
    signed = signature.stat().st_size if new_source.is_dir() and signature.is_file() else 0
    return {
        "old": old.bundle_id, "new": new.bundle_id, "same": old.bundle_id == new.bundle_id,
        "stacks": [stack_diff(name, old, new, old_source, new_source) for name in sorted(new.stacks)],
        "dropped_stacks": sorted(set(old.stacks) - set(new.stacks)),
        "delta_archive_bytes": archive_size(carried, len(delta_manifest.to_json().encode()), signed),
        "full_archive_bytes": archive_size(new.files, len(new.to_json().encode()), signed),
        "delta_files": len(carried), "files": len(new.files),
    }


# ---------------------------------------------------------------------------------------------
# the report


def _paths_line(label: str, paths: dict[str, list[str]]) -> Optional[str]:
    parts = [f"{len(paths[k])} {k}" for k in ("changed", "added", "removed") if paths[k]]
    if not parts:
        return None
    shown = (paths["changed"] + paths["added"] + paths["removed"])[:6]
    more = " ..." if sum(map(len, paths.values())) > len(shown) else ""
    return f"  {label:<9}{', '.join(parts)}: {' '.join(p.split('/', 1)[-1] for p in shown)}{more}"


def render(report: dict) -> str:
    lines = [f"bundle diff: {report['old'][:12]} -> {report['new'][:12]}"
             + ("  (the same bundle)" if report["same"] else "")]
    for stack in report["stacks"]:
        lines.append(f"stack {stack['stack']}" + ("  (new in this bundle)" if stack["new_stack"] else ""))
        image = stack["image"]
        if image["same"]:
            lines.append(f"  image    the same ({image['image']})")
        else:
            layers = (f"{plural(image['new_layers'], 'new layer')} of {image['layers']}, "
                      f"{human(image['new_layer_bytes'])}"
                      if "new_layers" in image else "layers unknown (give the bundle directories or archives)")
            names = (f"{image['image']}, new content" if image["old_image"] == image["image"]
                     else f"{image['old_image'] or '(none)'} -> {image['image']}")
            lines.append(f"  image    new: {names}; {layers}")
        models = stack["models"]
        for kind in ("added", "removed", "changed"):
            for model in models[kind]:
                lines.append(f"  model    {kind} {model['uid']}: {plural(model['files'], 'file')}, "
                             f"{human(model['bytes'])}")
        for wheel in stack["wheels"]:
            lines.append(f"  wheel    {wheel['name']} {wheel['old'] or '(none)'} -> {wheel['new'] or '(none)'}")
        for plugin in stack["plugins"]:
            lines.append(f"  plugin   {plugin['name']} {plugin['old'] or '(none)'} -> {plugin['new'] or '(none)'}")
        for label, key in (("program", "program"), ("pulumi", "pulumi")):
            line = _paths_line(label, stack[key])
            if line:
                lines.append(line)
        if stack["stack_file_changed"]:
            lines.append("  stack    the stack file changed: `pulumi preview` shows what its changes do")
        up = stack["up"]
        actions = ["replaces the container (new image)"] if up["container_replaced"] else []
        if up["relaunch"]:
            actions.append(f"relaunches {', '.join(up['relaunch'])}")
        if up["launch"]:
            actions.append(f"launches {', '.join(up['launch'])}")
        if up["terminate"]:
            actions.append(f"terminates {', '.join(up['terminate'])}")
        lines.append(f"  up       {'; '.join(actions) or 'no change to the container or the models'}")
    for name in report["dropped_stacks"]:
        lines.append(f"stack {name}: not in the new bundle")
    lines.append(f"carry: a delta archive (`build --base OLD`) about {human(report['delta_archive_bytes'])} "
                 f"({report['delta_files']} of {report['files']} files); the full archive about "
                 f"{human(report['full_archive_bytes'])}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diff", help="what an update changes, per stack (before it is carried)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, metavar="OLD", help="MANIFEST.json, bundle directory or archive")
    parser.add_argument("new", type=Path, metavar="NEW", help="MANIFEST.json, bundle directory or archive")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    report = diff(args.old, args.new)
    print(json.dumps(report, indent=2) if args.json else render(report), file=out)
    return 0
