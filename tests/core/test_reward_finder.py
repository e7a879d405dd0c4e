"""align.reward.find_reward_model: one rule for dpo and ppo (explicit, this run, the parent's run, said fallback)."""

import json

import pytest

from align.errors import ConfigError
from align.reward import find_reward_model


def _rm(runs, run, status="promoted", finished="2026-01-01T00:00:00"):
    folder = runs / run / "rm"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "rm", "status": status, "finished_at": finished}))
    return folder


def test_the_rule_explicit_then_this_run_then_the_parents_run_then_said_latest(tmp_path):
    runs = tmp_path / "runs"
    parent_rm = _rm(runs, "parent")
    this_rm = _rm(runs, "this")
    latest = _rm(runs, "other", finished="2027-01-01T00:00:00")
    explicit = _rm(tmp_path / "elsewhere", "x")
    said = []
    kwargs = dict(run_dir=runs / "this", parent_run_dir=runs / "parent", runs_dir=runs, say=said.append)
    assert find_reward_model(str(explicit), **kwargs) == explicit
    assert find_reward_model("auto", **kwargs) == this_rm
    assert find_reward_model(None, **{**kwargs, "run_dir": tmp_path / "empty"}) == parent_rm
    assert said == []
    assert find_reward_model(None, **{**kwargs, "run_dir": tmp_path / "empty", "parent_run_dir": None}) == latest
    assert len(said) == 1 and str(latest) in said[0]  # never silent
    # Without runs_dir (dpo) there is no "latest anywhere": None, the caller skips the win rate.
    assert find_reward_model("auto", run_dir=tmp_path / "empty", parent_run_dir=None) is None
    assert find_reward_model("none", **kwargs) is None


def test_an_unpromoted_rm_is_passed_over_and_a_missing_folder_is_a_config_error(tmp_path):
    runs = tmp_path / "runs"
    _rm(runs, "this", status="rejected")
    parent_rm = _rm(runs, "parent")
    assert find_reward_model("auto", run_dir=runs / "this", parent_run_dir=runs / "parent") == parent_rm
    with pytest.raises(ConfigError, match="ppo.reward"):
        find_reward_model(str(tmp_path / "nowhere"), key="ppo.reward")
