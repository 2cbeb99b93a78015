"""Check the project's import layers; exit 1 naming each violation (tests/test_layers.py runs it).

Layers, bottom to top; a module imports only its own layer and those its layer names:

  stackspec/              the stack spec: pydantic and PyYAML, never pulumi
  bundle/format/     the bundle format: standard library only
  bundle/contents/   what a bundle holds: pure functions of the stack configs
  bundle/install/    unpack and install, on the site: the format alone (a bare python3 runs them)
  bundle/build/      build, sign and pack, on the online machine
  bundle/plan/       plan and diff: what will happen, said before it does
  bundle/            the command line (cli.py, __main__.py): each command's module imported by name
  components/        the Pulumi components: of bundle/, only bundle/format/ and bundle/contents/
  __main__.py        the program: the same

Also refused: an import circle among the project's modules (imports inside functions
count too), a project module imported inside a function, a private name (``_x``) imported
from another module, and any third-party import reachable from the offline commands (unpack,
verify, install run with a bare ``python3 -S``).

Usage: python3 tools/check_layers.py [ROOT]
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

FIRST_PARTY = ("stackspec", "bundle", "components", "__main__")
# (module prefix, layer), the most specific prefix first.
LAYERS = [("stackspec", "stackspec/"), ("bundle.format", "bundle/format/"), ("bundle.contents", "bundle/contents/"),
          ("bundle.install", "bundle/install/"), ("bundle.build", "bundle/build/"), ("bundle.plan", "bundle/plan/"),
          ("bundle", "bundle/ (command line)"), ("components", "components/"), ("__main__", "__main__.py")]
# The layers each layer may import (its own included); one not listed is refused.
CORE = ("stackspec/", "bundle/format/", "bundle/contents/")
MAY_IMPORT = {
    "stackspec/": {"stackspec/"},
    "bundle/format/": {"stackspec/", "bundle/format/"},
    "bundle/contents/": set(CORE),
    # install runs on the site with a bare python3: the format and itself (the stack spec needs pydantic)
    "bundle/install/": {"bundle/format/", "bundle/install/"},
    # build checks its wheel lock with the pip environment install will use (bundle/install/pip_env.py)
    "bundle/build/": {*CORE, "bundle/build/", "bundle/install/"},
    "bundle/plan/": {*CORE, "bundle/plan/"},
    # the command line imports each command's module by name, when it runs (bundle/cli.py's table)
    "bundle/ (command line)": {"bundle/format/", "bundle/ (command line)"},
    "components/": {*CORE, "components/"},
    "__main__.py": {*CORE, "components/", "__main__.py"},
}
# The order in which the layers stand, for the message: an import of a higher one is "a layer above it".
RANK = {"stackspec/": 0, "bundle/format/": 1, "bundle/contents/": 2, "bundle/install/": 3, "bundle/build/": 4,
        "bundle/plan/": 4, "bundle/ (command line)": 5, "components/": 5, "__main__.py": 6}
# Third-party packages each layer may import (the standard library is always allowed).
COMMAND_PACKAGES = {"pydantic", "yaml", "tqdm", "packaging", "cyclonedx", "packageurl"}
ALLOWED_THIRD_PARTY = {"stackspec/": {"pydantic", "pydantic_core", "yaml"}, "bundle/format/": set(),
                       "bundle/contents/": {"pydantic", "yaml"}, "bundle/install/": set(),
                       "bundle/build/": COMMAND_PACKAGES, "bundle/plan/": COMMAND_PACKAGES,
                       "bundle/ (command line)": set(),
                       "components/": {"pulumi", "pulumi_docker", "pulumi_command", "requests", "urllib3", "dill"},
                       "__main__.py": {"pulumi"}}
# Optional third-party imports a module makes inside a function and does without (no hard need).
OPTIONAL_INSIDE = {("bundle.format.progress", "tqdm"), ("bundle.build.fetch", "modelscope"),
                   ("bundle.build.fetch", "huggingface_hub")}
OFFLINE_COMMANDS = ("bundle.build.pack", "bundle.build.sign", "bundle.install.unpack", "bundle.format.verify",
                    "bundle.install.command", "bundle.plan.diff", "bundle.cli", "bundle.__main__")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module: "bundle.format.manifest", or a top-level package: "pydantic"
    names: tuple[str, ...]
    line: int
    inside_function: bool


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise ValueError(module)


def project_modules(root: Path) -> dict[str, Path]:
    found = {"__main__": root / "__main__.py"} if (root / "__main__.py").is_file() else {}
    for package in ("stackspec", "bundle", "components"):
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    functions: list[ast.AST] = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, resolve(alias.name, modules), (), node.lineno, id(node) in inner)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            # `from bundle.build import pack` imports the module bundle.build.pack
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules] or [resolve(base, modules)]
            for target in targets:
                yield Import(module, target, names, node.lineno, id(node) in inner)


def resolve(name: str, modules: dict[str, Path]) -> str:
    """A project module's full name; a third-party or standard library import's top-level package."""
    return name if name in modules or name.split(".")[0] in FIRST_PARTY else name.split(".")[0]


def problems(root: Path) -> list[str]:
    modules = project_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    found: list[str] = []
    stdlib = set(sys.stdlib_module_names)
    third_party: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for imp in imports_of(module, path, modules):
            where = f"{path.relative_to(root)}:{imp.line}"
            if imp.target in modules:
                graph[module].add(imp.target)
                if imp.inside_function:
                    found.append(f"{where}: imports {imp.target} inside a function (import it at the top; "
                                 "a circle it would break is a layering mistake)")
                mine, theirs = layer_of(module), layer_of(imp.target)
                if RANK[theirs] > RANK[mine]:
                    found.append(f"{where}: {module} ({mine}) imports {imp.target} ({theirs}), a layer above it")
                elif theirs not in MAY_IMPORT[mine]:
                    found.append(f"{where}: {module} ({mine}) imports {imp.target} ({theirs}), which {mine} may not "
                                 f"import (it imports only {', '.join(sorted(MAY_IMPORT[mine]))})")
                private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
                if private:
                    found.append(f"{where}: imports the private name(s) {', '.join(private)} from {imp.target}")
            elif imp.target.split(".")[0] in FIRST_PARTY:
                if imp.target.split(".")[0] != "__main__":
                    found.append(f"{where}: imports {imp.target}, which is not a module of the project")
            elif imp.target not in stdlib and imp.target != "__future__":
                if imp.inside_function and (module, imp.target) in OPTIONAL_INSIDE:
                    continue
                third_party[module].add(imp.target)
                if imp.target not in ALLOWED_THIRD_PARTY[layer_of(module)]:
                    found.append(f"{where}: {module} ({layer_of(module)}) imports the third-party "
                                 f"package {imp.target}, which its layer may not use")
    found += [f"import circle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    for command in OFFLINE_COMMANDS:
        if command not in modules:
            continue
        reach = reachable(graph, command)
        for dependency in sorted(reach):
            for package in sorted(third_party[dependency]):
                found.append(f"{command} (an offline command, run with a bare python3 -S) reaches {dependency}, "
                             f"which imports the third-party package {package}")
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative circle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component) + [sorted(component)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parent.parent)
    found = problems(root)
    for line in found:
        print(line)
    modules = project_modules(root)
    counts = {layer: sum(1 for m in modules if layer_of(m) == layer) for _prefix, layer in LAYERS}
    print("check_layers: " + ", ".join(f"{layer} {n}" for layer, n in counts.items()), file=sys.stderr)
    print(f"check_layers: {len(modules)} modules, "
          f"{'no problems' if not found else f'{len(found)} problem(s)'}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
