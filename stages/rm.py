"""Reward model: learn to score replies so that the preferred one of each pair gets the higher reward.

TRL's RewardTrainer (Bradley-Terry loss on chosen vs rejected) over a sequence-classification head with one
output, put on the parent (the SFT artifact by default, or any base); full or LoRA. The held-out pairs are
scored before and after training: pairwise accuracy, mean margin, and the reward-hacking signals of
align.reward_diagnostics — the length-only baseline (longer or shorter reply, whichever ranks the training pairs
better) and the accuracy over it, the accuracy on length-matched pairs (length ratio 0.8–1.25, in characters)
with its 95% interval, the reward–length correlation (Pearson and Spearman over every held-out reply) and the
accuracy on the pairs whose chosen reply is the shorter / the longer one. A scatter plot of chosen vs rejected
reward goes to reward_scatter.png. The saved folder loads with AutoModelForSequenceClassification (LoRA merged
by default) and is what `align.reward.score` reads.

Two length mitigations (recipe options): `length_balance` trains on pairs subsampled so that chosen-shorter and
chosen-longer pairs are equally many; `length_regression` (ODIN-style, post hoc) fits reward ~ a + b * length on
the replies of (up to 512) training pairs after training and stores b in the folder's length_term.json, which
align.reward.score subtracts everywhere the reward model is used (the eval_ metrics are then the corrected ones,
eval_raw_* the uncorrected).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from align.config import opt
from align.reward_diagnostics import pair_metrics
from align.stages._pairs import PreferenceTrainOptions
from align.log import log

PARENT_STAGES: tuple[str, ...] = ("sft",)
GATED = False  # a reward model generates no text: the toxicity and bias gate does not apply


@dataclass
class Options(PreferenceTrainOptions):
    base: str = opt("parent", "what the reward head goes on: parent (the SFT artifact, as InstructGPT) or any model "
                              "source: a hub id, a folder, or embedded:minilm-l6-v2 (the shipped 22M-parameter "
                              "MiniLM encoder, ~10x cheaper per token on CPU, like OpenAssistant's DeBERTa RMs); "
                              "a tokenizer without a chat template gets align's role-tagged `encoder` one")
    max_length: int = opt(512, "tokens per prompt + reply; longer pairs are left out of training (TRL's rule; the "
                               "manifest counts the pairs kept), held-out pairs are cut at the end when scored", min=8)
    eval_before: bool = opt(False, "also score the held-out pairs with the untrained head (a chance baseline; "
                                   "costs one more pass over them)")
    center_rewards_coefficient: float = opt(0.0, "pull rewards towards mean zero (0 = off; 0.01 is typical)", min=0.0)
    length_balance: bool = opt(False, "train on pairs subsampled (seeded) so that those whose chosen reply is the "
                                      "shorter and those whose chosen reply is the longer are equally many")
    length_regression: bool = opt(False, "after training, fit reward ~ a + b * length (characters) on the "
                                         "training replies and store b in length_term.json: align.reward.score "
                                         "then returns reward - b * length wherever this reward model is used")


def run(ctx) -> dict:
    from align import models, training
    from align.distributed import is_main
    from align.reward import RewardModel, fit_length_term, save_length_term, score_pairs
    from align.reward_diagnostics import length_balanced, pair_lengths
    from align.stages._pairs import load_stage_pairs

    options, model_options = ctx.options, ctx.cfg.model

    # 1. The parent (or the recipe's base) under a one-output sequence-classification head (the head starts random).
    source, base_options = (ctx.parent.source, model_options) if options.base == "parent" else (options.base, None)
    tokenizer = models.load_tokenizer(source, base_options, fallback_template="encoder")
    model = load_reward_head(source, base_options, ctx)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the reward at the last non-pad token

    # 2. Preference pairs: training and held-out, each row checked (bad ones dropped with their row numbers);
    #    with length_balance, as many chosen-shorter as chosen-longer training pairs.
    train_rows, eval_rows = load_stage_pairs(ctx, tokenizer)
    train_split, held_out = train_rows.rows, eval_rows.rows  # the length-only rule is chosen on the whole split
    train_pairs, balance = (length_balanced(train_split, ctx.cfg.seed) if options.length_balance
                            else (train_split, None))
    if balance:
        log.info(f"length_balance: {balance['chosen_shorter']} chosen-shorter and {balance['chosen_longer']} "
                 f"chosen-longer pairs -> {balance['kept']} pairs kept")

    def held_out_metrics(net) -> tuple[dict, tuple[list, list]]:
        scores = score_pairs(held_out, net, options.batch_size, options.max_length)
        return pair_metrics(*scores, held_out, train_split), scores

    # 3. The held-out pairs under the untrained head, when asked (a random head: chance, give or take noise).
    before = held_out_metrics((model, tokenizer))[0] if options.eval_before else None

    # 4. Train.
    trainer = build_trainer(ctx, model, tokenizer, replace(train_rows, rows=train_pairs).to_dataset())
    used_rows = len(trainer.train_dataset)  # pairs longer than max_length are left out by TRL
    metrics = training.train(trainer, ctx)

    # 5. Held-out evaluation after training (with length_regression: the length term fitted on the training
    #    replies, then subtracted), the plot, and a folder AutoModelForSequenceClassification loads.
    trained = RewardModel(model=trainer.model, tokenizer=tokenizer)
    after, (chosen, rejected) = held_out_metrics(trained)
    extra: dict = {}
    if options.length_regression:
        fit_pairs = train_pairs[:LENGTH_FIT_PAIRS]
        train_chosen, train_rejected = score_pairs(fit_pairs, trained, options.batch_size, options.max_length)
        term = fit_length_term(train_chosen + train_rejected, list(np.concatenate(pair_lengths(fit_pairs))))
        trained.length_coef = term["per_character"]
        extra = {"length_term_per_character": round(term["per_character"], 8),
                 **{f"eval_raw_{k}": after[k] for k in RAW_KEYS}}
        after, (chosen, rejected) = held_out_metrics(trained)
    reward_scatter(chosen, rejected, ctx.output_dir / "reward_scatter.png")
    ctx.model_format = models.save_model(trainer.model, tokenizer, ctx.output_dir, ctx.cfg.lora.save)
    if options.length_regression and is_main():
        save_length_term(ctx.output_dir, term)
    return {**{f"eval_{k}": v for k, v in after.items()}, **extra,
            "eval_accuracy_before": before["accuracy"] if before else None, "eval_rows": len(held_out),
            "base": source,
            "train_rows": len(train_split), "train_rows_within_max_length": used_rows,
            **({"train_rows_length_balanced": balance["kept"], "train_rows_chosen_shorter": balance["chosen_shorter"],
                "train_rows_chosen_longer": balance["chosen_longer"]} if balance else {}),
            "dropped_rows": len(train_rows.dropped) + len(eval_rows.dropped), **metrics}


# length_regression fits its line on the replies of the first this many training pairs (a two-parameter fit needs
# no more; scoring every pair of a large set would cost a pass over it).
LENGTH_FIT_PAIRS = 512
# The uncorrected figures kept beside the corrected ones when length_regression is on.
RAW_KEYS = ("accuracy", "accuracy_over_length_only", "accuracy_over_length_only_ci95", "length_matched_accuracy",
            "length_matched_accuracy_ci95", "length_spearman")


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
