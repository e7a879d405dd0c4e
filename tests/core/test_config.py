"""Recipes: shipped files load, overrides land where they should, unknown keys and bad values are refused."""

from __future__ import annotations

import pytest

from align.config import load_recipe, shipped_recipes
from align.errors import ConfigError
from tests.helpers import run_cli


def test_shipped_recipes_all_load():
    assert {"default", "tiny"} <= set(shipped_recipes())
    assert any(name.startswith("gpu-") for name in shipped_recipes())
    for name in shipped_recipes():
        assert load_recipe(name).name == name


def test_base_recipe_is_merged_underneath():
    tiny = load_recipe("tiny")
    assert tiny.model.source == "tiny"
    assert tiny.sft.data == load_recipe("default").sft.data  # inherited from `base: default`
    gpu = load_recipe("gpu-qwen2.5-1.5b-lora")
    assert gpu.lora.enabled and gpu.model.dtype == "bfloat16"


def test_stage_keys_need_no_prefix_and_values_are_typed():
    cfg = load_recipe("tiny", ["lr=1e-4", "sft.max_steps=7", "lora.enabled=true", "seed=3"], command="sft")
    assert cfg.sft.lr == pytest.approx(1e-4) and cfg.sft.max_steps == 7
    assert cfg.lora.enabled is True and cfg.seed == 3


@pytest.mark.parametrize("override, named", [("lrr=1", "lrr"), ("sft.batchsize=4", "sft.batchsize"),
                                             ("model.sorce=x", "model.sorce")])
def test_unknown_override_keys_are_refused_by_name(override, named):
    with pytest.raises(ConfigError, match=f"unknown key '{named}'"):
        load_recipe("tiny", [override], command="sft")


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Did you mean: sft.batch_size"):
        load_recipe("tiny", ["sft.batchsize=4"], command="sft")


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError):
        load_recipe("tiny", ["max_steps=lots"], command="sft")


def test_unknown_key_in_a_recipe_file_names_the_file(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base: tiny\nsft:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: unknown key 'sft.learning_rate'"):
        load_recipe(str(recipe))


def test_cli_exits_2_with_one_line_on_unknown_key(capsys, tmp_path):
    assert run_cli("sft", "--config", "tiny", f"runs_dir={tmp_path}", "lrr=1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: command line: unknown key 'lrr'") and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_help_lists_every_stage_option(capsys):
    with pytest.raises(SystemExit):
        run_cli("sft", "--help")
    out = capsys.readouterr().out
    for key in ("assistant_only_loss", "packing", "max_length", "lora.enabled", "model.source", "--resume", "--from"):
        assert key in out


def test_opt_declares_what_values_an_option_accepts():
    from align.config import Check

    assert Check(min=1).problem(0) == "must be at least 1"
    assert Check(min=1, also=(-1,)).problem(-1) is None and "(or -1)" in Check(min=1, also=(-1,)).problem(0)
    assert Check(above=0).problem(0.0) == "must be greater than 0" and Check(above=0).problem(1e-9) is None
    assert Check(min=0.0, max=1.0).problem(float("nan")) == "must be a finite number"
    assert Check(choices=("a", "b")).problem("c") == "is not one of a, b"
    assert Check(choices=("a", "b"), sep=",").problem("a, b") is None
    assert "has 'c'" in Check(choices=("a", "b"), sep=",").problem("a,c")
    assert "has 'c'" in Check(choices=("a", "b")).problem(["a", "c"])
    assert Check(min=1).problem(None) is None  # an optional option left unset


def test_every_shared_training_size_ratio_and_rate_is_range_checked():
    import dataclasses

    from align.config import LoraOptions, ModelOptions, TrainOptions

    for options in (TrainOptions, LoraOptions):
        unchecked = [f.name for f in dataclasses.fields(options)
                     if f.type in (int, float, "int", "float") and "check" not in f.metadata]
        assert unchecked == [], f"{options.__name__}: {unchecked} accept any number"
    assert "check" in {f.name: f for f in dataclasses.fields(ModelOptions)}["dtype"].metadata


#: numbers that may take any value: a gate limit is the user's threshold, a missing-EOS score may be any reward
ANY_NUMBER = {"gate.limits.", "ppo.missing_eos_score"}


def numbers_without_checks(options, prefix=""):
    """Keys of int/float options (nested sections included) that declare no accepted range."""
    import dataclasses
    import typing

    for f in dataclasses.fields(options):
        key = prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else \
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            yield from numbers_without_checks(type(default), key + ".")
            continue
        kinds = {f.type} if isinstance(f.type, str) else set(typing.get_args(f.type)) | {f.type}
        numeric = kinds & {int, float, "int", "float", "Optional[int]", "Optional[float]", "int | None",
                           "float | None"}
        if numeric and "check" not in f.metadata and not any(key.startswith(k) for k in ANY_NUMBER):
            yield key


def test_every_number_in_every_section_of_the_recipe_is_range_checked():
    """Across the whole recipe (every stage, gate, eval, pipeline, candidates, curate, sweep): a number without a
    declared range is a `batch_size=0` traceback waiting to happen."""
    import dataclasses
    from typing import Optional

    from align.config import opt, recipe_schema

    @dataclasses.dataclass
    class Probe:  # the walk itself finds what it should
        size: int = opt(1, "unchecked")
        share: Optional[float] = opt(None, "unchecked")
        checked: int = opt(1, "checked", min=1)
        name: str = opt("x", "not a number")

    assert list(numbers_without_checks(Probe)) == ["size", "share"]
    assert list(numbers_without_checks(recipe_schema())) == []


@pytest.mark.parametrize("override, message", [
    ("rm.max_length=0", "command line: rm.max_length=0 must be at least 8"),
    ("ppo.length_penalty=-1", "command line: ppo.length_penalty=-1.0 must be at least 0"),
    ("ppo.lr_scheduler=cosin", "command line: ppo.lr_scheduler='cosin' is not one of"),
    ("candidates.n=1", "command line: candidates.n=1 must be at least 2"),
    ("candidates.top_p=1.5", "command line: candidates.top_p=1.5 must be at most 1"),
    ("gate.planning_correlation=1", "command line: gate.planning_correlation=1.0 must be at most 0.99"),
    ("model.attn_implementation=kernels-community/flash-attn", "command line: model.attn_implementation="),
])
def test_stage_and_command_options_outside_training_are_range_checked_too(override, message):
    with pytest.raises(ConfigError) as error:
        load_recipe("tiny", [override], command="sft")
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "command line: sft.batch_size=0 must be at least 1"),
    ("lr=0", "command line: sft.lr=0.0 must be greater than 0"),
    ("warmup_ratio=1.5", "command line: sft.warmup_ratio=1.5 must be at most 1.0"),
    ("model.dtype=fp8", "command line: model.dtype='fp8' is not one of auto, float32, bfloat16, float16"),
    ("device=tpu", "command line: device='tpu' is not one of auto, cpu, cuda"),
    ("dpo.loss_type=sigmoid,nope", "command line: dpo.loss_type='sigmoid,nope' has 'nope'"),
    ("gate.rule=maybe", "command line: gate.rule='maybe' is not one of"),
    ("sft=[1, 2]", "command line: 'sft' is a section (a mapping of its keys), not [1, 2]"),
    ("lr_scheduler=cosin", "command line: sft.lr_scheduler='cosin' is not one of linear, cosine"),
    ("eval.top_p=0", "command line: eval.top_p=0.0 must be greater than 0"),
    ("eval.harmful_prompts=0", "command line: eval.harmful_prompts=0 must be at least 1 (or -1)"),
    ("eval.refusal_threshold=2", "command line: eval.refusal_threshold=2.0 must be at most 1"),
    ("gate.limits.toxicity_expected_max.max_increase=-0.1",
     "command line: gate.limits.toxicity_expected_max.max_increase=-0.1 must be at least 0"),
    ("gate.limits.bbq_ambiguous_bias.rule=maybe", "command line: gate.limits.bbq_ambiguous_bias.rule='maybe' is not one"),
])
def test_out_of_range_values_and_wrong_shapes_are_refused_by_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_recipe("tiny", [override], command="sft")
    assert str(error.value).startswith(message)


def test_a_bad_value_is_blamed_on_where_it_was_set(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text("base: tiny\nsft:\n  lr: -1\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {parent}\nsft:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match=rf"^{parent}: sft.lr=-1.0 must be greater than 0"):
        load_recipe(str(child))
    # The command line fixes the file's value; its own bad value is blamed on the command line, not on a file.
    assert load_recipe(str(child), ["lr=0.1"], command="sft").sft.batch_size == 4
    with pytest.raises(ConfigError, match=r"^command line: sft.batch_size=0 "):
        load_recipe(str(child), ["lr=0.1", "batch_size=0"], command="sft")
    with pytest.raises(ConfigError, match=r"^command line: sft.max_steps: Value 'lots'"):
        load_recipe(str(child), ["lr=0.1", "max_steps=lots"], command="sft")
    shaped = tmp_path / "shaped.yaml"
    shaped.write_text("base: tiny\nsft: [1, 2]\n")
    with pytest.raises(ConfigError, match=rf"^{shaped}: 'sft' is a section"):
        load_recipe(str(shaped))
