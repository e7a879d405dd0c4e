"""The online RL stages, grpo and rloo, on the tiny model (each test runs for both): trained with the session's
reward model, a length penalty and a marker rule reward, gated and promoted, compared with their parent; the
marker reward rises; a stage resumes after a real kill; bad reward terms are one clear error before any model
loads; the pipeline runs them after sft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import align_process, kill_after_first_checkpoint, run_cli
from tests.stages.online_rewards import MARKER_TERM

pytestmark = pytest.mark.timeout(300)

STAGES = ("grpo", "rloo")
# A gate of one cheap check (CrowS-Pairs likelihoods: no generation, no toxicity scorer) on 6 pairs.
GATE = ["gate.enabled=true", "gate.benchmarks=[crows_pairs]", "gate.crows_pairs=6"]
MARKER_METRIC = "rewards/low_token_share/mean"  # TRL names a python: reward after its function
STEPS = 12


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _history(folder: Path) -> list[dict]:
    return json.loads((folder / "logs" / "history.json").read_text())


@pytest.fixture(scope="module", params=STAGES)
def marker_run(request, tmp_path_factory, tiny_sft, tiny_rm):
    """A gated run of the stage from the session's SFT: the RM, the length penalty and the marker reward (weighted
    so the marker leads), 12 steps of 4 prompts x 4 replies. Returns (stage, its folder)."""
    stage = request.param
    runs = tmp_path_factory.mktemp(stage) / "runs"
    code = run_cli(stage, "--config", "tiny", "--from", tiny_sft, "--run", "marker", f"runs_dir={runs}",
                   "--allow-ungated", f"reward_model={tiny_rm}", f"rewards=[rm,length,{MARKER_TERM}]",
                   "reward_weights=[0.1,0.1,1.0]", f"max_steps={STEPS}", "batch_size=16", "max_rows=64", "lr=2e-2",
                   "lr_scheduler=constant", "save_steps=100", *GATE)
    assert code == 0
    return stage, runs / "marker" / stage


def test_the_stage_trains_is_gated_promoted_and_compared_with_its_parent(marker_run, tiny_sft, tiny_rm):
    stage, folder = marker_run
    manifest = _manifest(folder)
    assert manifest["stage"] == stage and manifest["status"] == "promoted"
    assert manifest["gate"]["verdict"] == "pass" and manifest["gate"]["checks"]
    assert manifest["parent"]["path"] == str(tiny_sft) and manifest["model"]["format"] == "full"
    metrics = manifest["metrics"]
    assert metrics["steps"] == STEPS and metrics["train_prompts"] > 0 and metrics["train_tokens"] > 0
    assert metrics["rewards"] == ["rm", "length", MARKER_TERM] and metrics["reward_weights"] == [0.1, 0.1, 1.0]
    assert metrics["reward_model"] == str(tiny_rm)
    # The comparison with the parent, as dpo's and ppo's: KL on the child's samples, lengths, the RM's win rate,
    # the preference accuracy on the held-out pairs of the training data.
    assert metrics["eval_kl_per_sequence"] > 0 and metrics["eval_reply_tokens_child"] > 0
    assert 0 <= metrics["eval_win_rate_vs_parent"] <= 1 and "eval_rm_reward_child" in metrics
    assert metrics["eval_rows"] > 0 and 0 <= metrics["eval_pref_acc_logp_mean_child"] <= 1
    steps = [entry for entry in _history(folder) if MARKER_METRIC in entry]
    assert len(steps) == STEPS and all("rewards/rm/mean" in e and "rewards/length/mean" in e for e in steps)
    assert any(entry.get("kl", 0) > 0 for entry in steps)  # beta > 0: the KL to the parent is computed
    samples = json.loads((folder / "samples.json").read_text())
    assert len(samples["child"]) == len(samples["parent"]) == len(samples["prompts"]) > 0


def test_the_marker_reward_rises(marker_run):
    """The marker's mean reward over the last four steps beats the first four's: the policy learned it."""
    stage, folder = marker_run
    marker = [entry[MARKER_METRIC] for entry in _history(folder) if MARKER_METRIC in entry]
    assert sum(marker[-4:]) / 4 > sum(marker[:4]) / 4 + 0.05, (stage, marker)
    metrics = _manifest(folder)["metrics"]
    assert metrics["train_reward_first"] != metrics["train_reward_last"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_stage_resumes_after_a_real_kill(stage, tmp_path, tiny_sft):
    runs = tmp_path / "runs"
    command = [stage, "--config", "tiny", "--from", str(tiny_sft), "--run", "k", f"runs_dir={runs}",
               f"rewards=[{MARKER_TERM}]", "max_steps=10", "save_steps=2"]
    kill_after_first_checkpoint(align_process(*command), runs / "k" / ".work" / stage / "checkpoints")
    assert not (runs / "k" / stage).exists()
    assert run_cli(*command, "--resume") == 0
    manifest = _manifest(runs / "k" / stage)
    assert manifest["resumed"]["changed"] == {} and "checkpoint-" in manifest["resumed"]["checkpoint"]
    assert manifest["metrics"]["steps"] == 10 and manifest["status"] == "ungated"
    assert int(manifest["resumed"]["checkpoint"].rsplit("-", 1)[1]) >= 2  # from the checkpoint on, not step 0
    logged = [entry["step"] for entry in _history(runs / "k" / stage) if MARKER_METRIC in entry]
    assert logged == list(range(1, 11))  # the checkpoint's history, then the rest: every step once


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("overrides, message", [
    (["rewards=[rm,lenght]"], "{stage}.rewards: unknown reward 'lenght'"),
    (["rewards=[rm,length]", "reward_weights=[1.0]"], "{stage}.reward_weights has 1 weights for 2 rewards"),
    (["rewards=['regex:(']"], "is not a valid regular expression"),
    (["rewards=[python:tests.stages.online_rewards.nothing]"], "cannot be imported"),
    (["rewards=[length]", "batch_size=6"], "{stage}.batch_size=6 (x grad_accum=1) is not a multiple of "
                                            "num_generations=4"),
    (["rewards=[rm]", "reward_model=none"], "{stage} needs a reward model"),
])
def test_bad_reward_terms_are_one_error_line_and_nothing_is_written(stage, overrides, message, tmp_path, tiny_sft,
                                                                    capsys):
    runs = tmp_path / "runs"
    assert run_cli(stage, "--config", "tiny", "--from", tiny_sft, "--run", "bad", f"runs_dir={runs}", *overrides) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert message.format(stage=stage) in line
    assert not (runs / "bad" / stage).exists()


def test_the_rule_rewards_score_replies_as_named(tiny_model_dir):
    from types import SimpleNamespace

    from align.stages._online import reward_functions, reward_terms

    options = SimpleNamespace(rewards=["length", "contains:Banana", r"regex:^\d+$", MARKER_TERM], reward_weights=[],
                              max_new_tokens=8, batch_size=8, max_length=128)
    ctx = SimpleNamespace(name="grpo", options=options, device="cpu")
    terms = reward_terms(ctx)
    assert terms == {"length": 1.0, "contains:Banana": 1.0, r"regex:^\d+$": 1.0, MARKER_TERM: 1.0}
    length, contains, regex, marker = reward_functions(ctx, terms, None)
    assert [f.__name__ for f in (length, contains, regex)] == ["length", "contains_Banana", "regex_d"]
    prompts = [[{"role": "user", "content": "Hi?"}]] * 3
    completions = [[{"role": "assistant", "content": text}] for text in ("a banana split", "42", "no")]
    ids = [[5, 300, 7, 900], [1, 2], []]
    assert length(prompts=prompts, completions=completions, completion_ids=ids) == [-0.5, -0.25, 0.0]
    assert contains(prompts=prompts, completions=completions, completion_ids=ids) == [1.0, 0.0, 0.0]
    assert regex(prompts=prompts, completions=completions, completion_ids=ids) == [0.0, 1.0, 0.0]
    assert marker(prompts=prompts, completions=completions, completion_ids=ids) == [0.5, 1.0, 0.0]


def test_the_pipeline_runs_grpo_and_rloo_after_the_runs_sft(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    assert run_cli("pipeline", "--config", "tiny", "--run", "loop", f"runs_dir={runs}",
                   "pipeline.stages=[sft,grpo,rloo]", "pipeline.eval_final=false", "sft.max_steps=1",
                   "grpo.max_steps=1", "rloo.max_steps=1", f"grpo.rewards=[{MARKER_TERM}]",
                   f"rloo.rewards=[{MARKER_TERM}]") == 0
    for stage in STAGES:
        manifest = _manifest(runs / "loop" / stage)
        assert manifest["parent"]["path"] == str(runs / "loop" / "sft") and manifest["metrics"]["steps"] == 1


def test_the_toxicity_term_is_minus_the_gate_scorers_probability(small_scorer):
    from types import SimpleNamespace

    from align.gates.toxicity import load_scorer
    from align.stages._online import reward_functions

    options = SimpleNamespace(toxicity_model=small_scorer, max_new_tokens=8, batch_size=8, max_length=128)
    [toxicity] = reward_functions(SimpleNamespace(name="rloo", options=options, device="cpu"), {"toxicity": 1.0}, None)
    replies = ["You are a wonderful person.", "I hate you, you idiot."]
    scores = toxicity(prompts=[[{"role": "user", "content": "Hi?"}]] * 2,
                      completions=[[{"role": "assistant", "content": text}] for text in replies], completion_ids=[[]] * 2)
    expected = load_scorer(small_scorer, "cpu").score(replies, progress=False)["toxicity"]
    assert scores == pytest.approx([-float(p) for p in expected]) and all(-1 <= s <= 0 for s in scores)


def test_with_lora_the_parent_is_the_adapter_switched_off(tmp_path, tiny_sft):
    runs = tmp_path / "runs"
    assert run_cli("grpo", "--config", "tiny", "--from", tiny_sft, "--run", "lora", f"runs_dir={runs}",
                   f"rewards=[{MARKER_TERM}]", "lora.enabled=true", "lora.r=4", "lora.alpha=8", "lr=2e-2") == 0
    manifest = _manifest(runs / "lora" / "grpo")
    assert manifest["model"]["format"] == "lora-merged" and manifest["metrics"]["steps"] == 2
    assert manifest["metrics"]["eval_kl_per_sequence"] > 0  # the merged child differs from the adapter-free parent
