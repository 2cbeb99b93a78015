"""The README stays true: its config reference is the one generated from the models, and its
first two commands are the ones CI and a newcomer run."""

from __future__ import annotations

import re
from pathlib import Path

from stackspec.reference import END, START, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_config_reference_matches_the_pydantic_models():
    block = README.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == reference_markdown().strip(), "run: venv/bin/python -m stackspec.reference --write"


def test_the_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert "main job" in first_block[0] and "tests" in first_block[1]
    assert first_block[1].startswith("bash tools/test.sh")
    assert (ROOT / ".ci" / "run").read_text().count("tools/test.sh") == 1


def test_every_stack_is_described():
    for stack in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        name = stack.name[len("Pulumi."):-len(".yaml")]
        assert f"`{name}`" in README, f"README does not describe stack {name}"


def test_the_config_reference_headings_print_dotted_key_paths():
    headings = re.findall(r"^#### `([^`]+)`", README, re.M)
    assert "container.healthcheck" in headings and "models[].source" in headings and "models[].companions[]" in headings
    assert all(re.fullmatch(r"[a-z_]+(\[\])?(\.[a-z_]+(\[\])?)*", h) for h in headings), headings


def test_the_site_block_is_a_script_the_e2e_test_can_run_with_only_its_places_moved():
    from tests.readme_site import absolute_paths, first_directory, passphrase_file, site_block, site_script

    block = site_block(README)
    script = site_script(block, Path("/tmp/t"), "f" * 64)
    assert script.startswith("set -eux\n") and f"BUNDLE_ID={'f' * 64}" in script
    assert all(p.startswith("/tmp/t/") for p in absolute_paths(script)), absolute_paths(script)
    assert first_directory(block).startswith("/") and passphrase_file(block).startswith("/")
    # the steps a site types, through to the running service (tests/test_e2e_readme_site.py runs them)
    # (install takes the archive itself: unpack and the hash of every file happen inside it)
    for step in ("sha256sum -c", "tar -xf", "bundle install ../gpu-node-1.tar", "pulumi preview", "pulumi up"):
        assert step in script, step


def test_the_scripts_the_docs_name_as_commands_run_as_typed():
    """`tools/docker-engine.sh stop`, as the README writes it, must not answer "Permission denied"."""
    docs = README + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    named = set(re.findall(r"`(tools/[\w.-]+\.sh)\b", docs))
    assert "tools/docker-engine.sh" in named
    for script in sorted(named | {str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("*.sh")}):
        path = ROOT / script
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), script
        assert path.stat().st_mode & 0o111 == 0o111, f"{script} is not executable: git update-index --chmod=+x {script}"
