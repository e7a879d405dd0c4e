"""Direct preference optimisation: move the policy towards the chosen replies and away from the rejected ones,
staying close to its parent.

TRL's DPOTrainer with the recipe's loss (sigmoid by default; ipo, hinge, robust, ... as TRL offers) and beta;
full or LoRA. The reference model is the parent itself: with LoRA, the same weights with the adapter disabled (no
second copy); in full fine-tuning, a frozen copy loaded from the parent's local folder. Its log-probabilities can
be precomputed once before training (`precompute_ref_log_probs`), which saves a forward pass per step.

After training the child is compared with its parent on held-out data (definitions in align/compare.py):
preference accuracy (the likelihood form for both, DPO's implicit reward for the child), KL to the parent on the
child's own samples, mean reply length, and the win rate over the parent's replies judged by a reward model
(`reward_model`: a folder; by default align.reward.find_reward_model's rule: the promoted rm of the same run, else
of the parent's run, skipped with a note when there is none).
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import SHARE, opt
from align.stages._pairs import PolicyPreferenceOptions

PARENT_STAGES: tuple[str, ...] = ("sft",)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL's DPOConfig.loss_type


@dataclass
class Options(PolicyPreferenceOptions):
    beta: float = opt(0.1, "strength of the pull towards the parent (higher = stay closer); IPO's tau",
                       above=0)
    loss_type: str = opt("sigmoid", "DPO loss: sigmoid, ipo, hinge, robust, ... (TRL's names; comma-separated to "
                                    "combine, e.g. sigmoid,sft)", choices=LOSS_TYPES, sep=",")
    label_smoothing: float = opt(0.0, "share of labels assumed flipped (robust / exo_pair losses)",
                                **SHARE)


def run(ctx) -> dict:
    from align import training
    from align.data.preferences import unique_prompts
    from align.policy import policy_and_reference
    from align.stages._pairs import compare_and_save, load_stage_pairs

    options = ctx.options

    # 1. The policy, and the reference: the parent's own weights, never a hub path (None with LoRA: TRL wraps).
    loaded = policy_and_reference(ctx.parent.source, ctx.cfg.model, ctx.cfg.lora, device=ctx.device, dtype=ctx.dtype)

    # 2. Preference pairs (bad rows dropped with their row numbers, or refused), and held-out prompts.
    train_rows, eval_rows = load_stage_pairs(ctx, loaded.tokenizer)
    held_out = eval_rows.rows
    prompts = unique_prompts(held_out)[:options.eval_prompts]

    # 3. Train.
    trainer = build_trainer(ctx, loaded.policy, loaded.reference, loaded.tokenizer, train_rows.to_dataset())
    metrics = training.train(trainer, ctx)

    # 4. The child against its parent, then save a model plain AutoModelForCausalLM loads.
    comparison = compare_and_save(ctx, trainer, loaded, prompts, beta=options.beta, pairs=held_out)
    return {**comparison, "eval_rows": len(held_out), "train_rows": len(train_rows.rows),
            "dropped_rows": len(train_rows.dropped) + len(eval_rows.dropped), **metrics}


def build_trainer(ctx, policy, reference, tokenizer, dataset):
    """The DPOTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL).

    `reference`: the frozen parent, or None with LoRA (the adapter switched off is the parent)."""
    from trl import DPOConfig, DPOTrainer

    from align.stages._pairs import build_policy_trainer

    options = ctx.options
    return build_policy_trainer(ctx, DPOConfig, DPOTrainer, policy, reference, tokenizer, dataset,
                                beta=options.beta,
                                loss_type=[t.strip() for t in options.loss_type.split(",") if t.strip()],
                                label_smoothing=options.label_smoothing)
