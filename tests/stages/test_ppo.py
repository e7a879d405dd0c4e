"""PPO on the tiny model: a rule-based reward is learned while the KL stays near its target, resume is exact,
the missing-EOS penalty applies, and the stage runs end to end (full and LoRA, value head and RM value model)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import run_cli

TARGET_TOKENS = set(range(256))  # a quarter of the tiny vocabulary
PROMPTS = [[{"role": "user", "content": f"Say something about {word}."}]
           for word in ("cats", "dogs", "rain", "tea", "maps", "boats", "snow", "bread")]


def _target_share(tokenizer):
    """Reward = the share of the reply's tokens that are in TARGET_TOKENS (a rule the policy can learn)."""

    def reward(prompts, replies):
        shares = []
        for reply in replies:
            ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
            shares.append(sum(i in TARGET_TOKENS for i in ids) / max(len(ids), 1))
        return shares

    return reward


def _trainer(tiny_model_dir, tmp_path, reward=None, **settings):
    from align import models
    from align.ppo.trainer import ActorCritic, PPOSettings, PPOTrainer

    source = str(tiny_model_dir)
    tokenizer = models.load_tokenizer(source)
    policy = models.load_causal_lm(source, device="cpu")
    reference = models.load_causal_lm(source, device="cpu")
    base = dict(batch_size=16, mini_batch_size=8, ppo_epochs=4, lr=5e-3, max_new_tokens=16, temperature=1.0,
                missing_eos_score=None, save_steps=0, lr_scheduler="constant")
    base.update(settings)
    return PPOTrainer(ActorCritic(policy), tokenizer, PROMPTS, reward or _target_share(tokenizer),
                      PPOSettings(**base), reference=reference, checkpoints_dir=tmp_path / "checkpoints",
                      logs_dir=tmp_path / "logs", progress=False)


def test_rule_based_reward_rises_while_kl_follows_its_target(tiny_model_dir, tmp_path):
    target = 4.0
    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=16, kl_coef=0.3, adaptive_kl=True, kl_target=target,
                       kl_horizon=32)
    summary = trainer.train()
    history = trainer.history
    rewards = [h["reward"] for h in history]
    kls = [h["kl"] for h in history]
    coefs = [h["kl_coef"] for h in history]
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout comes from the reference itself
    assert sum(rewards[8:]) / 8 > sum(rewards[:3]) / 3 + 0.05, rewards
    assert summary["train_reward_last"] > summary["train_reward_first"]
    # The adaptive controller (Ziegler et al. 2019) holds the KL around the target: beta falls while the KL is
    # below it, rises once the KL overshoots and pulls it back; the KL never runs away.
    assert sum(kls) / len(kls) <= target * 1.5, kls
    assert max(kls) <= target * 2.5, kls
    assert kls[-1] <= target * 1.5, kls
    lowest = coefs.index(min(coefs))
    assert 0 < lowest < len(coefs) - 1 and coefs[-1] > coefs[lowest], coefs
    assert all(kls[i] > target for i in range(lowest, lowest + 2)), (kls, coefs)  # it rose because KL > target
    # Every required statistic is logged per step, in history.json and TensorBoard.
    for key in ("reward", "kl", "entropy", "clip_frac", "value_loss", "reply_length", "kl_coef"):
        assert all(key in h for h in history), key
    assert json.loads((tmp_path / "logs" / "history.json").read_text()) == history
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_resume_continues_exactly_where_the_interrupted_run_would_have_gone(tiny_model_dir, tmp_path):
    settings = dict(max_steps=4, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=8, save_steps=2,
                    kl_horizon=64)
    straight = _trainer(tiny_model_dir, tmp_path / "straight", **settings)
    straight.train()

    calls = {"n": 0}
    share = None

    def interrupted_reward(prompts, replies):
        calls["n"] += 1
        if calls["n"] == 3:  # the rollout of step 3: killed after the checkpoint of step 2
            raise KeyboardInterrupt
        return share(prompts, replies)

    crashed = _trainer(tiny_model_dir, tmp_path / "crashed", reward=interrupted_reward, **settings)
    share = _target_share(crashed.tokenizer)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    checkpoints = sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2"]

    resumed = _trainer(tiny_model_dir, tmp_path / "crashed", **settings)
    resumed.train(resume_from=tmp_path / "crashed" / "checkpoints" / "checkpoint-2")
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    for ours, theirs in zip(resumed.history, straight.history):
        assert ours["reward"] == theirs["reward"] and ours["kl_coef"] == theirs["kl_coef"]
    a, b = straight.trainable_state(), resumed.trainable_state()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_replies_that_never_end_get_the_fixed_score(tiny_model_dir, tmp_path):
    from align.ppo.rollout import Rollout, reply_mask_after_stop

    trainer = _trainer(tiny_model_dir, tmp_path, reward=lambda p, r: [2.0, 3.0, 4.0], normalize_reward=False,
                       missing_eos_score=-1.0, length_penalty=0.5)
    eos = trainer.tokenizer.eos_token_id
    reply_ids = torch.tensor([[5, eos, 7], [5, 6, 7], [eos, 6, 6]])
    mask, ended = reply_mask_after_stop(reply_ids, [eos])
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert ended.tolist() == [True, False, True]
    rollout = Rollout(prompts=PROMPTS[:3], replies=["a", "b", ""], query_ids=torch.zeros(3, 1, dtype=torch.long),
                      query_mask=torch.ones(3, 1, dtype=torch.long), reply_ids=reply_ids, reply_mask=mask,
                      ended=ended)
    score, parts = trainer.scores(rollout)
    # score - 0.5 * tokens; the unfinished reply gets -1 whatever its reward
    assert score.tolist() == pytest.approx([2.0 - 1.0, -1.0, 4.0 - 0.5])
    assert parts["reward"] == pytest.approx(3.0)


@pytest.mark.parametrize("extra", [[], ["lora.enabled=true", "value_model=rm"]], ids=["full-head", "lora-rm-value"])
def test_stage_end_to_end(tiny_sft, tiny_rm, tmp_path, extra):
    from transformers import AutoModelForCausalLM

    runs = tmp_path / "runs"
    code = run_cli("ppo", "--config", "tiny", "--from", tiny_sft, f"runs_dir={runs}", "--run", "p",
                   f"reward={tiny_rm}", *extra)
    assert code == 0
    folder = runs / "p" / "ppo"
    manifest = json.loads((folder / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert manifest["status"] == "ungated" and metrics["steps"] == 2  # the tiny recipe turns the gate off
    assert manifest["model"]["format"] == ("lora-merged" if extra else "full")
    history = json.loads((folder / "logs" / "history.json").read_text())
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the reference is the parent (adapter off, for LoRA)
    for key in ("win_rate_vs_parent", "rm_reward_child", "rm_reward_parent", "kl_per_token", "reply_tokens_child",
                "pref_acc_logp_mean_child"):
        assert key in metrics, key
    assert metrics["reward_model"] == str(tiny_rm)
    AutoModelForCausalLM.from_pretrained(folder)  # a plain model folder


def test_a_missing_reward_model_is_one_clear_error(tiny_sft, tmp_path, capsys):
    code = run_cli("ppo", "--config", "tiny", "--from", tiny_sft, f"runs_dir={tmp_path / 'runs'}",
                   f"reward={tmp_path / 'nowhere'}")
    assert code == 2
    assert "ppo.reward" in capsys.readouterr().err
