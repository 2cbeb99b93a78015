"""Each model is checked against the pinned Xinference catalog at plan and preview (issue 14,
item 1): a misspelled name with "did you mean", a wrong type, an engine or format the model does
not have; a custom model is exempt, but not under a built-in name."""

from __future__ import annotations

import pytest

from stackspec.catalog import builtin_clash, catalog_problems, image_version, image_version_note, pinned_catalog
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from tests.stack_configs import docker_stack, namespaced, reference_models

MINILM_CUSTOM = {"dimensions": 384, "max_tokens": 512, "language": ["en"]}


def problems_of(models: list[dict]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(docker_stack(models=models)))
    return [str(p) for p in info.value.problems]


def with_first(**changes) -> list[dict]:
    models = reference_models()
    models[0].update(changes)
    return models


def test_the_seed_stack_passes():
    cfg = load_stack_config(namespaced(docker_stack()))
    assert [m.model_name for m in cfg.models] == ["bce-embedding-base_v1", "bce-reranker-base_v1", "CosyVoice-300M",
                                                   "SenseVoiceSmall"]


def test_a_misspelled_name_is_refused_with_did_you_mean():
    assert problems_of(with_first(name="bce-embeding-base_v1")) == [
        "models[0].name = 'bce-embeding-base_v1': not among Xinference 4.1.0's embedding models (47 names); fix: did "
        "you mean `bce-embedding-base_v1`, `jina-embeddings-v2-base-zh`, `jina-embeddings-v2-base-en`? use the "
        "model_name Xinference lists (`xinference registrations -t embedding`), or declare your own model under `custom`"]


def test_a_uid_that_stands_for_the_name_is_named_as_such():
    [problem] = problems_of(with_first(uid="emb"))
    assert problem.startswith("models[0].name = 'emb': not among Xinference 4.1.0's embedding models (47 names); "
                              "name is not set, so the uid is the model_name; fix: ")


def test_a_case_slip_suggests_the_catalog_spelling_first():
    [problem] = problems_of(with_first(name="BCE-Embedding-Base_v1"))
    assert "did you mean `bce-embedding-base_v1`?" in problem


def test_a_model_under_the_wrong_type_names_its_type():
    models = reference_models()
    models[3]["type"] = "embedding"
    assert [p for p in problems_of(models) if "SenseVoiceSmall is not" in p] == [
        "models[3].type = 'embedding': SenseVoiceSmall is not among Xinference 4.1.0's embedding models; its type is "
        "audio; fix: set type: audio"]


def test_an_engine_and_a_format_the_model_does_not_have_are_refused():
    assert problems_of(with_first(engine="llama.cpp", format="awq")) == [
        "models[0].engine = 'llama.cpp': bce-embedding-base_v1 has no engine llama.cpp in Xinference 4.1.0; fix: use "
        "one of ['sentence_transformers', 'vllm']",
        "models[0].format = 'awq': bce-embedding-base_v1 has no format awq in Xinference 4.1.0; fix: use one of "
        "['pytorch']"]


def test_engines_compare_ignoring_case_as_xinference_does():
    catalog = pinned_catalog()
    assert catalog_problems(catalog, "LLM", "qwen2.5-instruct", "VLLM", "PyTorch") == []
    assert catalog_problems(catalog, "LLM", "qwen2.5-instruct", "transformers", "ggufv2") == []


def test_a_disabled_model_is_not_judged():
    load_stack_config(namespaced(docker_stack(models=with_first(name="no-such-model", enabled=False))))


def test_a_custom_model_is_exempt_and_its_name_must_not_clash():
    cfg = load_stack_config(namespaced(docker_stack(models=with_first(uid="minilm", name="all-MiniLM-L6-v2",
                                                                      custom=MINILM_CUSTOM))))
    assert cfg.models[0].custom == MINILM_CUSTOM
    assert problems_of(with_first(uid="minilm", name="bge-small-en-v1.5", custom=MINILM_CUSTOM)) == [
        "models[0].name = 'bge-small-en-v1.5': is a built-in embedding model of Xinference 4.1.0: Xinference refuses "
        "to register a custom model over it (it answers \"Model bge-small-en-v1.5 already registered\"); fix: give "
        "your model its own name (e.g. add your site or version to it)"]


def test_a_custom_model_missing_what_its_type_requires_is_named_field_by_field():
    assert problems_of(with_first(uid="minilm", name="minilm", custom={"language": ["en"], "model_name": "x"})) == [
        "models[0].custom.model_name = 'x': is filled from the model's own fields; fix: remove custom.model_name; set "
        "name on the model instead",
        "models[0].custom.dimensions = None: a custom embedding model needs dimensions; fix: add custom.dimensions, "
        "e.g. dimensions: 384",
        "models[0].custom.max_tokens = None: a custom embedding model needs max_tokens; fix: add custom.max_tokens, "
        "e.g. max_tokens: 512"]


def test_a_custom_model_s_virtualenv_must_be_a_package_list():
    for bad in ("inflect", {"packages": "inflect"}, {"packages": ["inflect", 3]}):
        assert problems_of(with_first(uid="minilm", name="minilm", custom={**MINILM_CUSTOM, "virtualenv": bad})) == [
            f"models[0].custom.virtualenv = {bad!r}: is Xinference's VirtualEnvSettings: a mapping whose `packages` is "
            "a list of requirement lines; fix: write it as virtualenv: {packages: [\"inflect==7.6.0\"]}"]
    good = {**MINILM_CUSTOM, "virtualenv": {"packages": ["inflect==7.6.0"]}}
    cfg = load_stack_config(namespaced(docker_stack(models=with_first(uid="minilm", name="minilm", custom=good))))
    assert cfg.models[0].custom["virtualenv"] == {"packages": ["inflect==7.6.0"]}


def test_a_custom_name_xinference_cannot_register_is_refused():
    for name in ("my model", "a/b", "x+y", "q?"):
        assert "is not a name Xinference can register" in builtin_clash(pinned_catalog(), "embedding", name)


def test_the_clash_rule_agrees_with_xinference_itself():
    registry = pytest.importorskip("xinference.model.embedding.custom", reason="xinference is not installed")
    from xinference.model.utils import is_valid_model_name

    builtins = set(registry.EmbeddingModelRegistry().builtin_models)
    catalog = pinned_catalog()
    assert builtins == set(catalog.models["embedding"])
    for name in ("all-MiniLM-L6-v2", "bge-small-en-v1.5", "a b", "a\\b", "..", "x=y", "ok_name.v2"):
        refused = builtin_clash(catalog, "embedding", name) is not None
        assert refused == (name in builtins or not is_valid_model_name(name)), name


@pytest.mark.parametrize("image, version", [("xprobe/xinference:v4.1.0", "4.1.0"),
                                            ("xinference-offline/xinference-cpu:4.1.0", "4.1.0"),
                                            ("registry.local:5000/xprobe/xinference:v4.2.1-cu128", "4.2.1"),
                                            ("xprobe/xinference:latest", None), ("xprobe/xinference", None)])
def test_the_image_tag_gives_the_xinference_version(image, version):
    assert image_version(image) == version


def test_an_image_of_another_xinference_is_named_in_a_warning_and_the_pinned_one_is_not():
    catalog = pinned_catalog()
    assert image_version_note(catalog, "xprobe/xinference:v4.1.0") is None
    assert image_version_note(catalog, "xprobe/xinference:latest") is None  # the tag does not say: nothing to compare
    assert image_version_note(catalog, "xprobe/xinference:v4.2.0") == (
        "image xprobe/xinference:v4.2.0 is Xinference 4.2.0, but models are checked against the catalog of "
        "Xinference 4.1.0 (the pinned one): names, engines and formats may differ; use a 4.1.0 image, or regenerate "
        "stackspec/xinference_catalog.json from a 4.2.0 wheel (tools/xinference_catalog.py)")


def test_plan_prints_the_version_warning(tmp_path):
    import io

    from bundle.plan.report import write_report

    cfg = load_stack_config(namespaced(docker_stack(image={"name": "xprobe/xinference:v4.2.0"})))
    out = io.StringIO()
    write_report(cfg, "t", tmp_path / "Pulumi.t.yaml", None, out)
    assert "  WARNING image xprobe/xinference:v4.2.0 is Xinference 4.2.0, but models are checked" in out.getvalue()
