"""Hostile and careless stack files: read as Pulumi reads them, or refused by name (issue 12, class 8).

Every case writes a real stack file and reads it through stackspec/stack_file.py (what
`bundle plan`, `bundle build` and the sibling-stack check use), and asserts the exact
report: the key path, the value, what is wrong and the fix.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from bundle.cli import main as bundle_main
from bundle.contents.items import bundle_items
from bundle.contents.stacks import sibling_clashes
from stackspec.errors import ConfigError
from stackspec.launch import model_dir_on_host, model_dir_on_server
from stackspec.stack_file import from_stack_file

BASE = """\
config:
  xinference-offline:image:
    name: xprobe/xinference:v4.1.0
  xinference-offline:gpus: [0, 1]
  xinference-offline:models_dir: /data/docker_models
  xinference-offline:models:
    - uid: emb
      name: bge-small-en-v1.5
      type: embedding
      gpus: [0]
      path: emb
"""
BOOL_FIX = "write a number (true and false are booleans, not numbers or GPU ids)"
FINITE_FIX = "write a finite number (.nan and .inf are not sizes, budgets or timeouts)"


def stack_file(tmp_path: Path, content, name: str = "Pulumi.t.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def refused(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_stack_file(path)
    assert info.value.source == str(path)
    return [str(p) for p in info.value.problems]


def with_model_lines(*lines: str) -> str:
    return BASE + "".join(f"      {line}\n" for line in lines)


# --- encoding ------------------------------------------------------------------------


def test_a_gbk_comment_names_the_file_the_offset_line_and_column(tmp_path):
    text = BASE.replace("  xinference-offline:gpus:", "  # 两块显卡\n  xinference-offline:gpus:")
    path = stack_file(tmp_path, text.encode("gbk"))
    offset = text.encode("gbk").index("两".encode("gbk"))
    assert refused(path) == [
        f"{path} = b'\\xc1\\xbd\\xbf\\xe9': byte 0xc1 at offset {offset} (line 4, column 5) is not UTF-8; "
        "fix: save the file as UTF-8 (Pulumi reads stack files as UTF-8 only), e.g. "
        "`iconv -f GBK -t UTF-8 OLD > Pulumi.t.yaml`"]


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = stack_file(tmp_path, BASE.encode("utf-16"))
    assert refused(path) == [
        f"{path} = b'\\xff\\xfec\\x00': is UTF-16 (it starts with a UTF-16 byte order mark), not UTF-8; "
        "fix: save the file as UTF-8 (Pulumi reads stack files as UTF-8 only), e.g. "
        "`iconv -f UTF-16 -t UTF-8 OLD > Pulumi.t.yaml`"]


def test_a_utf8_byte_order_mark_is_read_like_any_utf8_file(tmp_path):
    cfg = from_stack_file(stack_file(tmp_path, b"\xef\xbb\xbf" + BASE.encode()))
    assert [m.uid for m in cfg.models] == ["emb"]


def test_a_raw_control_byte_is_refused_with_its_line(tmp_path):
    path = stack_file(tmp_path, BASE.replace("path: emb", "path: e\x01mb"))
    assert refused(path) == [
        f"{path} = '\\x01': not valid YAML at line 11, column 14: character #x0001 is not allowed in YAML; "
        "fix: remove the control character (an editor can show it)"]


# --- duplicate and non-string keys ------------------------------------------------------


def test_models_given_twice_is_refused_with_both_lines(tmp_path):
    path = stack_file(tmp_path, BASE + "  xinference-offline:models: []\n")
    assert refused(path) == [
        "models = 'xinference-offline:models': key given twice in one mapping (line 6 and line 12); "
        "Pulumi refuses the file; fix: keep one `xinference-offline:models:` (merge the two entries)"]


def test_gpus_twice_in_one_model_is_refused_with_both_lines(tmp_path):
    path = stack_file(tmp_path, with_model_lines("gpus: [1]"))
    assert refused(path) == [
        "models[0].gpus = 'gpus': key given twice in one mapping (line 10 and line 12); Pulumi refuses the file; "
        "fix: keep one `gpus:` (merge the two entries)"]


def test_a_duplicate_spelled_differently_is_still_a_duplicate(tmp_path):
    # `"path"` and `path` are the same key once read; so are two spellings in flow style.
    path = stack_file(tmp_path, with_model_lines('"path": other'))
    assert refused(path) == [
        "models[0].path = 'path': key given twice in one mapping (line 11 and line 12); Pulumi refuses the file; "
        "fix: keep one `path:` (merge the two entries)"]


def test_a_merge_key_may_override_what_it_merges(tmp_path):
    text = BASE.replace("    - uid: emb\n", "    - &base {uid: emb, name: bce-reranker-base_v1, type: rerank, path: r}\n"
                        "    - <<: *base\n      uid: emb2\n      name: bge-small-en-v1.5\n      type: embedding\n"
                        "      gpus: [1]\n      path: emb2\n    - uid: emb3\n")
    cfg = from_stack_file(stack_file(tmp_path, text))
    assert [(m.uid, m.type) for m in cfg.models] == [("emb", "rerank"), ("emb2", "embedding"), ("emb3", "embedding")]


def test_numeric_boolean_and_null_keys_are_refused(tmp_path):
    text = BASE.replace("      path: emb\n", "      path: emb\n      1: x\n      true: y\n      ~: z\n")
    assert refused(stack_file(tmp_path, text)) == [
        "models[0].1 = '1': a key that is a number: keys are text (line 12); fix: quote the key ('1')",
        "models[0].true = 'true': a key that is a boolean: keys are text (line 13); fix: quote the key ('true')",
        "models[0].~ = '~': a key that is empty (null): keys are text (line 14); fix: quote the key ('~')",
    ]


def test_a_key_with_a_nul_character_is_refused(tmp_path):
    path = stack_file(tmp_path, with_model_lines('"ex\\0tra": {}'))
    assert refused(path) == ["models[0] = 'ex\\x00tra': contains a NUL character (\\0) (line 12); fix: remove it"]


# --- aliases and size -------------------------------------------------------------------


def test_an_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 values
    path = stack_file(tmp_path, BASE + "\n".join(lines) + "\n")
    started = time.monotonic()
    assert refused(path) == [
        "(document) = '100001 values': holds more than 100000 values (each alias counted as often as it is used: "
        "an alias bomb?); fix: write the values out instead of repeating aliases (*name)"]
    assert time.monotonic() - started < 0.5


def test_an_alias_that_contains_itself_is_refused(tmp_path):
    path = stack_file(tmp_path, with_model_lines("extra: &loop {again: [*loop]}"))
    assert refused(path) == [
        "models[0].extra.again[0] = 'a mapping': an alias refers to a value that contains it (a loop) (line 12); "
        "fix: alias only values that are complete before the alias"]


def test_nesting_past_the_limit_is_refused_before_python_recursion_could_fail(tmp_path):
    path = stack_file(tmp_path, with_model_lines("extra: {deep: " + "[" * 5000 + "]" * 5000 + "}"))
    (problem,) = refused(path)
    assert problem.startswith(f"{path} = 'extra: {{deep: [[[[")
    assert problem.endswith(": not valid YAML at line 12, column 48: nested deeper than 32 levels; "
                            "fix: a stack config needs far fewer than 32 levels: flatten it")


def test_a_10_mb_scalar_is_refused_before_parsing(tmp_path):
    path = stack_file(tmp_path, with_model_lines("engine: " + "x" * (10 * 1024 * 1024)))
    started = time.monotonic()
    assert refused(path) == [f"{path} = 'over 262144 bytes': larger than 256 KiB; "
                             "fix: a stack file holds settings only: remove the data pasted into it"]
    assert time.monotonic() - started < 0.5


def test_an_endless_file_is_read_only_up_to_the_limit():
    started = time.monotonic()
    assert refused(Path("/dev/zero")) == ["/dev/zero = 'over 262144 bytes': larger than 256 KiB; "
                                          "fix: a stack file holds settings only: remove the data pasted into it"]
    assert time.monotonic() - started < 0.5


def test_a_missing_stack_file_is_named(tmp_path):
    path = tmp_path / "Pulumi.nowhere.yaml"
    assert refused(path) == [f"{path} = None: cannot read the stack file (No such file or directory); "
                             "fix: check the path, or pass --config FILE"]


@pytest.mark.parametrize("written, read", [("0x_", "0x_"), ("0b", "0b"), ("1_000", 1000), ("0o17", 15),
                                           ("-0x1F", -31), ("1e3", 1000.0), (".5", 0.5), ("+.inf", float("inf"))])
def test_numbers_are_resolved_as_pulumi_resolves_them(tmp_path, written, read):
    from stackspec.stack_yaml import load_stack_yaml

    assert load_stack_yaml(stack_file(tmp_path, f"value: {written}\n")) == {"value": read}


# --- syntax -------------------------------------------------------------------------------


def test_a_tab_indented_line_says_to_indent_with_spaces(tmp_path):
    path = stack_file(tmp_path, BASE.replace("      path: emb", "\t\tpath: emb"))
    assert refused(path) == [
        f"{path} = 'path: emb': not valid YAML at line 11, column 1: while scanning for the next token found "
        "character '\\t' that cannot start any token; fix: indent with spaces: YAML does not allow tabs for "
        "indentation"]


def test_a_second_document_is_refused(tmp_path):
    path = stack_file(tmp_path, BASE + "---\nconfig: {}\n")
    assert refused(path) == [
        f"{path} = '---': not valid YAML at line 12, column 1: expected a single document in the stream but "
        "found another document; fix: keep one document: remove the second `---`"]


def test_tags_other_than_the_core_ones_are_refused(tmp_path):
    path = stack_file(tmp_path, with_model_lines("engine: !!python/object/apply:os.system [touch x]",
                                                 "format: !!binary aGk=", "quantization: !vault secret"))
    assert refused(path) == [
        "models[0].engine = '!!python/object/apply:os.system': YAML tag !!python/object/apply:os.system is not "
        "read by this program (line 12); fix: remove the tag (write plain text, numbers, lists and mappings)",
        "models[0].format = '!!binary': YAML tag !!binary is not read by this program (line 13); "
        "fix: remove the tag (write plain text, numbers, lists and mappings)",
        "models[0].quantization = '!vault': YAML tag !vault is not read by this program (line 14); "
        "fix: remove the tag (write plain text, numbers, lists and mappings)",
    ]


def test_an_explicit_int_tag_on_text_is_refused(tmp_path):
    path = stack_file(tmp_path, with_model_lines("replica: !!int two"))
    assert refused(path) == ["models[0].replica = 'two': is not a valid !!int (line 12); "
                             "fix: remove the tag or fix the value"]


def test_a_lone_surrogate_escape_is_refused(tmp_path):
    path = stack_file(tmp_path, with_model_lines('engine: "\\ud800"'))
    assert refused(path) == [
        "models[0].engine = '\\ud800': contains a lone UTF-16 surrogate (\\uD800-\\uDFFF), not a character "
        "(line 12); fix: write the character itself, or its \\U escape"]


# --- values mean what Pulumi reads -----------------------------------------------------------


def test_on_yes_off_no_dates_and_sexagesimals_stay_text(tmp_path):
    text = BASE + ("  xinference-offline:container:\n    env: {A: on, B: yes, C: off, D: no, E: 2024-01-01, F: 1:20,"
                   " G: =, H: true, I: 1_000, J: 0x1f}\n")
    cfg = from_stack_file(stack_file(tmp_path, text))
    assert cfg.container.env == {"A": "on", "B": "yes", "C": "off", "D": "no", "E": "2024-01-01", "F": "1:20",
                                 "G": "=", "H": "true", "I": "1000", "J": "31"}


def test_a_revision_that_looks_like_a_date_stays_text(tmp_path):
    source = "source: {hub: modelscope, id: a/b, revision: 2024-06-01}"
    cfg = from_stack_file(stack_file(tmp_path, with_model_lines(source)))
    assert cfg.models[0].source.revision == "2024-06-01"


def test_a_leading_zero_number_is_refused_as_ambiguous(tmp_path):
    path = stack_file(tmp_path, BASE.replace("gpus: [0]", "gpus: [01]"))
    assert refused(path) == [
        "models[0].gpus[0] = '01': a number with a leading zero: Pulumi reads it as octal, YAML 1.2 as decimal "
        "(line 10); fix: write it without the leading zero, or quote it as text ('01')"]


# --- strict numbers at the config boundary ---------------------------------------------------


def test_a_boolean_is_not_a_gpu_id(tmp_path):
    path = stack_file(tmp_path, BASE.replace("gpus: [0]", "gpus: [true]"))
    assert refused(path) == [
        f"models[0].gpus = [True]: expected whole numbers, got the boolean true at index 0; fix: {BOOL_FIX}"]


def test_a_boolean_is_not_a_server_gpu_a_port_or_a_replica_count(tmp_path):
    text = BASE.replace("xinference-offline:gpus: [0, 1]", "xinference-offline:gpus: [0, false]")
    text += "      replica: true\n      n_gpu: true\n  xinference-offline:container: {port: true}\n"
    assert refused(stack_file(tmp_path, text)) == [
        f"gpus[1].id = False: expected a number, got the boolean false; fix: {BOOL_FIX}",
        f"models[0].replica = True: expected a number, got the boolean true; fix: {BOOL_FIX}",
        f"models[0].n_gpu = True: expected a number, got the boolean true; fix: {BOOL_FIX}",
        f"container.port = True: expected a number, got the boolean true; fix: {BOOL_FIX}",
    ]


def test_yes_where_a_number_is_meant_is_text_and_refused_as_such(tmp_path):
    path = stack_file(tmp_path, with_model_lines("replica: yes"))
    assert refused(path) == ["models[0].replica = 'yes': Input should be a valid integer, unable to parse string "
                             "as an integer; fix: write a whole number"]


def test_nan_and_inf_are_not_vram_sizes(tmp_path):
    text = BASE.replace("xinference-offline:gpus: [0, 1]", "xinference-offline:gpus: [{id: 0, vram_gb: .nan}, 1]")
    path = stack_file(tmp_path, text + "      vram_gb: .inf\n")
    assert refused(path) == [
        f"gpus[0].vram_gb = nan: expected a finite number, got nan; fix: {FINITE_FIX}",
        f"models[0].vram_gb = inf: expected a finite number, got inf; fix: {FINITE_FIX}",
    ]


def test_a_huge_integer_is_refused_as_beyond_what_pulumi_carries(tmp_path):
    path = stack_file(tmp_path, with_model_lines("replica: 1000000000000000000000000000000"))
    assert refused(path) == [
        "models[0].replica = 1000000000000000000000000000000: a 100-bit number: larger than 2**53, which Pulumi "
        "cannot carry exactly; fix: write a whole number within ±9007199254740992"]


def test_a_number_too_long_to_convert_is_refused_without_a_traceback(tmp_path):
    path = stack_file(tmp_path, with_model_lines("replica: " + "9" * 5000))
    (problem,) = refused(path)
    assert problem.endswith(": not valid YAML at line 12, column 16: a number of 5000 digits is too long; "
                            "fix: fix the YAML syntax there")


# --- model paths: one spelling ------------------------------------------------------------------


@pytest.mark.parametrize("written, canonical", [("emb/", "emb"), ("./emb", "emb"), ("a//emb", "a/emb"),
                                                ("a/./emb/", "a/emb"), ("/data/docker_models/a/emb", "a/emb"),
                                                ("//data//docker_models/a/emb/", "a/emb")])
def test_model_paths_are_normalized_once_where_they_enter(tmp_path, written, canonical):
    cfg = from_stack_file(stack_file(tmp_path, BASE.replace("path: emb", f"path: '{written}'")))
    model = cfg.models[0]
    assert model.path == canonical
    assert model_dir_on_host(cfg, model) == f"/data/docker_models/{canonical}"
    assert model_dir_on_server(cfg, model) == f"/root/.xinference/models/{canonical}"
    assert [i.path for i in bundle_items(cfg, "t") if i.role == "model"] == [f"models/{canonical}/"]


def test_companion_paths_are_normalized_like_model_paths(tmp_path):
    cfg = from_stack_file(stack_file(tmp_path, with_model_lines("companions: [{path: ./vad/}, "
                                                                "{path: /data/docker_models/vad2}]")))
    assert [c.path for c in cfg.models[0].companions] == ["vad", "vad2"]


@pytest.mark.parametrize("written, problem", [
    (".", "'.': names models_dir itself, not a model's directory; fix: write the model's directory under "
          "models_dir, e.g. bce-embedding-base_v1"),
    ("''", "'': is empty; fix: write the model's directory under models_dir, e.g. bce-embedding-base_v1"),
    ("..", "'..': must not contain `..`; fix: move the model under models_dir and write its path relative to "
           "models_dir"),
    ("a/../emb", "'a/../emb': must not contain `..`; fix: write `emb` (the same directory named directly)"),
    ("/data/docker_models/", "'/data/docker_models': names models_dir itself, not a model's directory; "
                             "fix: write the model's directory under models_dir, e.g. bce-embedding-base_v1"),
    ("/opt/elsewhere/emb", "'/opt/elsewhere/emb': is outside models_dir /data/docker_models (only that is "
                           "mounted); fix: move the model under /data/docker_models and write the path relative to it"),
    ('"e\\nmb"', "'e\\nmb': contains a control character (newline, tab, NUL, ...); "
                 "fix: write the directory name without it"),
])
def test_model_paths_without_a_canonical_form_are_refused(tmp_path, written, problem):
    path = stack_file(tmp_path, BASE.replace("path: emb", f"path: {written}"))
    assert refused(path) == [f"models[0].path = {problem}"]


def test_models_dir_is_normalized_too(tmp_path):
    cfg = from_stack_file(stack_file(tmp_path, BASE.replace("models_dir: /data/docker_models",
                                                            "models_dir: /data//docker_models/")))
    assert cfg.models_dir == "/data/docker_models"


# --- the same files through the commands ----------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    (BASE.replace("gpus: [0]", "gpus: [true]"), "models[0].gpus = [True]: expected whole numbers"),
    (BASE + "  xinference-offline:models: []\n", "models = 'xinference-offline:models': key given twice"),
    (BASE.replace("  xinference-offline:gpus", "  # 显卡\n  xinference-offline:gpus").encode("gbk"),
     "is not UTF-8; fix: save the file as UTF-8"),
])
def test_plan_config_exits_2_with_the_report(tmp_path, capsys, content, expected):
    path = stack_file(tmp_path, content)
    out = io.StringIO()
    code = bundle_main(["plan", "--config", str(path)], out=out)
    err = capsys.readouterr().err
    assert code == 2 and out.getvalue() == ""
    assert err.startswith(f"{path}: 1 problem (keys under `xinference-offline:`):\n  - ")
    assert expected in err and "Traceback" not in err


def test_a_hostile_sibling_stack_file_does_not_break_this_stacks_preview(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    remote = BASE + "  xinference-offline:docker: {host: 'ssh://ops@gpu-2'}\n"
    mine = from_stack_file(stack_file(stacks, remote, "Pulumi.mine.yaml"))
    stack_file(stacks, remote.encode("utf-16"), "Pulumi.utf16.yaml")
    stack_file(stacks, remote + "  xinference-offline:models: []\n", "Pulumi.dup.yaml")
    stack_file(stacks, remote.replace("gpus: [0]", "gpus: [true]"), "Pulumi.bool.yaml")
    assert sibling_clashes("mine", mine, stacks) == []
