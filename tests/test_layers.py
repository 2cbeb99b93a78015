"""The import layers are checked, not hoped for (issue 13, item 7): tools/check_layers.py walks every
import of stackspec/, bundle/, components/ and __main__.py and fails on a circle, an upward import, a
project import inside a function, a private name imported across modules, or a third-party
package reachable from the offline commands. Run on the project (no problems), and on small
trees that break each rule (each named)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_layers  # noqa: E402


def test_the_project_keeps_its_layers():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems" in proc.stderr


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"stackspec/__init__.py": "", "bundle/__init__.py": "", "bundle/format/__init__.py": "",
                      "components/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"stackspec/a.py": "from components.c import X\n", "components/c.py": "X = 1\n"},
     "stackspec/a.py:1: stackspec.a (stackspec/) imports components.c (components/), a layer above it"),
    ({"bundle/format/m.py": "from bundle.plan.command import P\n", "bundle/plan/command.py": "P = 1\n"},
     "bundle/format/m.py:1: bundle.format.m (bundle/format/) imports bundle.plan.command (bundle/plan/), "
     "a layer above it"),
    ({"stackspec/a.py": "import stackspec.b\n", "stackspec/b.py": "import stackspec.a\n"},
     "import circle: stackspec.a -> stackspec.b -> stackspec.a"),
    ({"stackspec/a.py": "def f():\n    from stackspec.b import y\n", "stackspec/b.py": "y = 1\n"},
     "stackspec/a.py:2: imports stackspec.b inside a function"),
    ({"stackspec/a.py": "from stackspec.b import _hidden\n", "stackspec/b.py": "_hidden = 1\n"},
     "stackspec/a.py:1: imports the private name(s) _hidden from stackspec.b"),
    ({"stackspec/a.py": "import pulumi\n"},
     "stackspec/a.py:1: stackspec.a (stackspec/) imports the third-party package pulumi, which its layer may not use"),
    ({"bundle/format/m.py": "import yaml\n"},
     "bundle/format/m.py:1: bundle.format.m (bundle/format/) imports the third-party package yaml"),
    ({"bundle/install/command.py": "from bundle.install.helper import h\n",
      "bundle/install/helper.py": "import pydantic\nh = 1\n"},
     "bundle.install.command (an offline command, run with a bare python3 -S) reaches bundle.install.helper, which imports the "
     "third-party package pydantic"),
    ({"components/c.py": "from bundle.build.command import b\n", "bundle/build/command.py": "b = 1\n"},
     "components/c.py:1: components.c (components/) imports bundle.build.command (bundle/build/), which components/ "
     "may not import"),
    ({"bundle/contents/i.py": "from bundle.build.command import b\n", "bundle/build/command.py": "b = 1\n"},
     "bundle/contents/i.py:1: bundle.contents.i (bundle/contents/) imports bundle.build.command (bundle/build/), "
     "a layer above it"),
    ({"bundle/install/command.py": "from bundle.build.pack import p\n", "bundle/build/pack.py": "p = 1\n"},
     "bundle/install/command.py:1: bundle.install.command (bundle/install/) imports bundle.build.pack (bundle/build/), "
     "a layer above it"),
    ({"bundle/plan/command.py": "from bundle.build.pack import p\n", "bundle/build/pack.py": "p = 1\n"},
     "bundle/plan/command.py:1: bundle.plan.command (bundle/plan/) imports bundle.build.pack (bundle/build/), which "
     "bundle/plan/ may not import"),
    ({"bundle/plan/command.py": "import bundle.nothere\n"},
     "bundle/plan/command.py:1: imports bundle.nothere, which is not a module of the project"),
])
def test_each_rule_is_enforced_and_named(tmp_path, files, expected):
    found = check_layers.problems(tree(tmp_path, files))
    assert any(line.startswith(expected) for line in found), found


def test_the_program_imports_what_a_bundle_holds_but_no_command(tmp_path):
    root = tree(tmp_path, {"bundle/contents/__init__.py": "", "bundle/contents/items.py": "X = 1\n",
                           "components/c.py": "from bundle.contents.items import X\nfrom bundle.format.m import Y\n",
                           "bundle/format/m.py": "Y = 1\n", "__main__.py": "from bundle.contents.items import X\n"})
    assert check_layers.problems(root) == []


def test_an_optional_import_inside_a_function_is_allowed_where_declared(tmp_path):
    root = tree(tmp_path, {"bundle/format/progress.py": "def bar():\n    import tqdm\n"})
    assert check_layers.problems(root) == []
