"""The DPO stage on the tiny model: it moves the policy's implicit reward towards the chosen replies, keeps the
parent as its reference (full: a frozen copy from the parent's folder; LoRA: the adapter disabled), and reports
the comparison with its parent."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli
from tests.stages.marker_pairs import marker_pairs, write_marker_pairs


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _logratio_gap(child, parent, tokenizer, pairs):
    """Per pair: (chosen log-ratio) - (rejected log-ratio) of the child against the parent, i.e. DPO's margin / beta."""
    from align.compare import pair_logprobs

    c, p = pair_logprobs(child, tokenizer, pairs), pair_logprobs(parent, tokenizer, pairs)
    return [(c["chosen"][i] - p["chosen"][i]) - (c["rejected"][i] - p["rejected"][i]) for i in range(len(pairs))]


@pytest.fixture(scope="module")
def marker_dpo(tmp_path_factory, tiny_sft):
    """Full-weight DPO for a few steps from the session's tiny SFT artifact, on the marker preference."""
    root = tmp_path_factory.mktemp("dpo")
    data = write_marker_pairs(root / "marker.jsonl")
    runs = root / "runs"
    code = run_cli("dpo", "--config", "tiny", "--from", tiny_sft, "--run", "marker", f"runs_dir={runs}",
                   f"data={data}", "max_rows=48", "max_steps=12", "lr=1e-3", "reward_model=none")
    assert code == 0
    return runs / "marker" / "dpo", data


def test_dpo_moves_the_implicit_reward_towards_the_chosen_replies(marker_dpo, tiny_sft):
    folder, _ = marker_dpo
    child, tokenizer = _load(folder)
    parent, _ = _load(tiny_sft)
    # The rows trained on: a file spec holds out rows 10, 20, ..., and max_rows=48 takes the first 48 of the rest.
    train_pairs = [p for i, p in enumerate(marker_pairs(200), 1) if i % 10][:48]
    gaps = _logratio_gap(child, parent, tokenizer, train_pairs)
    assert sum(gaps) / len(gaps) > 0.5, gaps  # before training every gap is exactly 0
    assert sum(g > 0 for g in gaps) / len(gaps) > 0.9


def test_dpo_reports_the_comparison_with_its_parent(marker_dpo, tiny_sft):
    folder, _ = marker_dpo
    manifest = json.loads((folder / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert manifest["parent"]["path"] == str(tiny_sft) and manifest["model"]["format"] == "full"
    assert metrics["eval_pref_acc_implicit_child"] > 0.8
    assert metrics["eval_pref_acc_logp_sum_child"] > metrics["eval_pref_acc_logp_sum_parent"]
    assert metrics["eval_implicit_reward_margin"] > 0
    assert metrics["eval_kl_per_sequence"] > 0 and metrics["eval_kl_per_token"] > 0
    assert metrics["eval_reply_tokens_child"] > 0 and metrics["eval_reply_tokens_parent"] > 0
    assert "eval_win_rate_vs_parent" not in metrics and metrics["reward_model"] is None  # reward_model=none
    samples = json.loads((folder / "samples.json").read_text())
    assert len(samples["child"]) == len(samples["parent"]) == len(samples["prompts"]) > 0


def test_reference_is_the_parent_not_the_trained_policy(tiny_sft, tmp_path):
    """Full fine-tuning: the frozen reference holds the parent's weights, loaded from its folder, after training."""
    import torch
    from trl import DPOConfig, DPOTrainer

    from align import models
    from align.data.registry import Rows

    tokenizer = models.load_tokenizer(str(tiny_sft))
    policy = models.load_causal_lm(str(tiny_sft), device="cpu")
    reference = models.load_causal_lm(str(tiny_sft), device="cpu").requires_grad_(False).eval()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    rows = Rows(spec="marker", split="train", rows=marker_pairs(16), source="-", sha256="-")
    args = DPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8,
                     learning_rate=1e-3, use_cpu=True, bf16=False, report_to=[], gradient_checkpointing=False,
                     save_strategy="no")
    DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=rows.to_dataset(),
               processing_class=tokenizer).train()
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_lora_dpo_with_precomputed_reference_and_a_reward_model_judge(tmp_path, tiny_sft):
    """LoRA: the reference is the adapter-disabled parent (no second copy); log-probs precomputed; the same run's
    rm judges the win rate; the saved model is merged and plain AutoModelForCausalLM loads it."""
    data = write_marker_pairs(tmp_path / "marker.jsonl", n=40)
    runs = tmp_path / "runs"
    common = ["--config", "tiny", "--from", str(tiny_sft), "--run", "r", f"runs_dir={runs}", f"data={data}"]
    assert run_cli("rm", *common, "max_steps=2") == 0
    assert run_cli("dpo", *common, "max_steps=2", "lora.enabled=true", "lora.r=4", "lora.alpha=8",
                   "precompute_ref_log_probs=true", "loss_type=ipo") == 0
    manifest = json.loads((runs / "r" / "dpo" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert manifest["model"]["format"] == "lora-merged"
    assert manifest["config"]["dpo"]["loss_type"] == "ipo"
    assert metrics["reward_model"] == str(runs / "r" / "rm")
    assert 0.0 <= metrics["eval_win_rate_vs_parent"] <= 1.0
    assert metrics["eval_kl_per_token"] >= 0
    model, _ = _load(runs / "r" / "dpo")
    assert not any("lora" in name for name, _ in model.named_parameters())
