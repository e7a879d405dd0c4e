"""Reward model: learn to score replies so that the preferred one of each pair gets the higher reward.

TRL's RewardTrainer (Bradley-Terry loss on chosen vs rejected) over a sequence-classification head with one
output, put on the parent (the SFT artifact by default, or any base); full or LoRA. The held-out pairs are
scored before and after training: pairwise accuracy, mean margin, and the reward-hacking signals — how much the
reward follows reply length (Pearson and Spearman over every held-out reply, length in characters), and the
accuracy on the pairs whose chosen reply is the shorter one. A scatter plot of chosen vs rejected reward goes to
reward_scatter.png. The saved folder loads with AutoModelForSequenceClassification (LoRA merged by default) and
is what `align.reward.score` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import opt
from data.preferences import PreferenceTrainOptions

PARENT_STAGES: tuple[str, ...] = ("sft",)
GATED = False  # a reward model generates no text: the toxicity and bias gate does not apply


@dataclass
class Options(PreferenceTrainOptions):
    base: str = opt("parent", "what the reward head goes on: parent (the SFT artifact, as InstructGPT) or any model "
                              "source: a hub id, a folder, or embedded:minilm-l6-v2 (the shipped 22M-parameter "
                              "MiniLM encoder, ~10x cheaper per token on CPU, like OpenAssistant's DeBERTa RMs); "
                              "a tokenizer without a chat template gets align's role-tagged `encoder` one")
    max_length: int = opt(512, "tokens per prompt + reply; longer pairs are left out of training (TRL's rule; the "
                               "manifest counts the pairs kept), held-out pairs are cut at the end when scored")
    eval_before: bool = opt(False, "also score the held-out pairs with the untrained head (a chance baseline; "
                                   "costs one more pass over them)")
    center_rewards_coefficient: float = opt(0.0, "pull rewards towards mean zero (0 = off; 0.01 is typical)")


def run(ctx) -> dict:
    from align import models, training
    from align.reward import RewardModel, score_pairs
    from data.preferences import load_stage_pairs

    options, model_options = ctx.options, ctx.cfg.model

    # 1. The parent (or the recipe's base) under a one-output sequence-classification head (the head starts random).
    source, base_options = (ctx.parent.source, model_options) if options.base == "parent" else (options.base, None)
    tokenizer = models.load_tokenizer(source, base_options, fallback_template="encoder")
    model = load_reward_head(source, base_options, ctx)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the reward at the last non-pad token

    # 2. Preference pairs: training and held-out, each row checked (bad ones dropped with their row numbers).
    train_rows, eval_rows = load_stage_pairs(ctx, tokenizer)
    held_out = eval_rows.rows

    # 3. The held-out pairs under the untrained head, when asked (a random head: chance, give or take noise).
    before = pair_metrics(*score_pairs(held_out, (model, tokenizer), options.batch_size, options.max_length),
                          held_out) if options.eval_before else None

    # 4. Train.
    trainer = build_trainer(ctx, model, tokenizer, train_rows.to_dataset())
    used_rows = len(trainer.train_dataset)  # pairs longer than max_length are left out by TRL
    metrics = training.train(trainer, ctx)

    # 5. Held-out evaluation after training, the plot, and a folder AutoModelForSequenceClassification loads.
    trained = RewardModel(model=trainer.model, tokenizer=tokenizer)
    chosen, rejected = score_pairs(held_out, trained, options.batch_size, options.max_length)
    after = pair_metrics(chosen, rejected, held_out)
    reward_scatter(chosen, rejected, ctx.output_dir / "reward_scatter.png")
    ctx.model_format = models.save_model(trainer.model, tokenizer, ctx.output_dir, ctx.cfg.lora.save)
    return {**{f"eval_{k}": v for k, v in after.items()},
            "eval_accuracy_before": before["accuracy"] if before else None, "eval_rows": len(held_out),
            "base": source,
            "train_rows": len(train_rows.rows), "train_rows_within_max_length": used_rows,
            "dropped_rows": len(train_rows.dropped) + len(eval_rows.dropped), **metrics}


def build_trainer(ctx, model, tokenizer, dataset):
    """The RewardTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL)."""
    from trl import RewardConfig, RewardTrainer

    from align import models, training

    options = ctx.options
    args = training.trainer_args(
        RewardConfig, ctx, options,
        max_length=options.max_length,
        center_rewards_coefficient=options.center_rewards_coefficient or None,
        dataset_num_proc=None,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=models.lora_config(ctx.cfg.lora, task_type="SEQ_CLS"))
    return training.tune_for_speed(trainer, options)


def load_reward_head(source: str, model_options, ctx):
    """AutoModelForSequenceClassification with num_labels=1 on any causal-LM or encoder source (the head is new)."""
    from transformers import AutoModelForSequenceClassification

    from align.errors import ModelError
    from align.models import resolve_source

    folder = resolve_source(source)
    kwargs = {"num_labels": 1, "dtype": ctx.dtype,
              "trust_remote_code": bool(getattr(model_options, "trust_remote_code", False))}
    if getattr(model_options, "attn_implementation", None):
        kwargs["attn_implementation"] = model_options.attn_implementation
    import torch

    torch.manual_seed(ctx.cfg.seed)  # the new head's initialisation
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot put a reward head on {source}: {exc}".splitlines()[0]) from None
    return model.to(ctx.device)


def pair_metrics(chosen: list[float], rejected: list[float], pairs: list[dict]) -> dict:
    """Accuracy, margin and length signals of rewards on preference pairs.

    accuracy: share of pairs with reward(chosen) > reward(rejected) (a tie counts half).
    length_pearson / length_spearman: correlation of reward with reply length in characters, over all replies.
    accuracy_chosen_shorter: accuracy on the pairs whose chosen reply is strictly shorter (None when none are).
    """
    import numpy as np
    from scipy import stats

    c, r = np.array(chosen), np.array(rejected)
    wins = (c > r) + 0.5 * (c == r)
    chosen_len = np.array([sum(len(m["content"]) for m in p["chosen"]) for p in pairs])
    rejected_len = np.array([sum(len(m["content"]) for m in p["rejected"]) for p in pairs])
    rewards, lengths = np.concatenate([c, r]), np.concatenate([chosen_len, rejected_len])
    shorter = chosen_len < rejected_len

    def corr(fn):
        if np.std(rewards) == 0 or np.std(lengths) == 0:
            return None
        return round(float(fn(rewards, lengths)[0]), 4)

    return {
        "accuracy": round(float(wins.mean()), 4),
        "mean_margin": round(float((c - r).mean()), 4),
        "reward_mean": round(float(rewards.mean()), 4),
        "reward_std": round(float(rewards.std()), 4),
        "length_pearson": corr(stats.pearsonr),
        "length_spearman": corr(stats.spearmanr),
        "accuracy_chosen_shorter": round(float(wins[shorter].mean()), 4) if shorter.any() else None,
        "pairs_chosen_shorter": int(shorter.sum()),
    }


def reward_scatter(chosen: list[float], rejected: list[float], path) -> None:
    """Reward of the chosen vs the rejected reply of each held-out pair; points above the diagonal are right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(rejected, chosen, s=12, alpha=0.7)
    low, high = min(chosen + rejected), max(chosen + rejected)
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("reward of the rejected reply")
    ax.set_ylabel("reward of the chosen reply")
    right = sum(c > r for c, r in zip(chosen, rejected))
    ax.set_title(f"held-out pairs: {right}/{len(chosen)} ranked right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
