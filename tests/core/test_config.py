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
