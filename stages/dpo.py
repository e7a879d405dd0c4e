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
from pathlib import Path

from align.config import POSITIVE, SHARE, opt
from align.stages._pairs import PreferenceTrainOptions
from align.log import log

PARENT_STAGES: tuple[str, ...] = ("sft",)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL's DPOConfig.loss_type


@dataclass
class Options(PreferenceTrainOptions):
    beta: float = opt(0.1, "strength of the pull towards the parent (higher = stay closer); IPO's tau",
                       above=0)
    loss_type: str = opt("sigmoid", "DPO loss: sigmoid, ipo, hinge, robust, ... (TRL's names; comma-separated to "
                                    "combine, e.g. sigmoid,sft)", choices=LOSS_TYPES, sep=",")
    label_smoothing: float = opt(0.0, "share of labels assumed flipped (robust / exo_pair losses)",
                                **SHARE)
    precompute_ref_log_probs: bool = opt(False, "compute the parent's log-probs once before training (faster steps)")
    reward_model: str = opt("auto", "reward model judging the win rate vs the parent: a folder, `auto` (the "
                                    "promoted rm of the same run, else of the parent's run, if any) or `none`")
    eval_prompts: int = opt(32, "held-out prompts both the child and the parent answer (win rate, KL, length)",
                            min=0)
    eval_max_new_tokens: int = opt(64, "reply length cap when sampling for the comparison", **POSITIVE)
    eval_temperature: float = opt(1.0, "sampling temperature for the comparison (1.0: KL estimates the true KL)",
                                    above=0)


def run(ctx) -> dict:
    import torch

    from align import models, training
    from align.compare import compare_to_parent
    from align.data.preferences import unique_prompts
    from align.stages._pairs import load_stage_pairs

    from align.policy import policy_and_reference

    options = ctx.options

    # 1. The policy, and the reference: the parent's own weights, never a hub path (None with LoRA: TRL wraps).
    loaded = policy_and_reference(ctx.parent.source, ctx.cfg.model, ctx.cfg.lora, device=ctx.device, dtype=ctx.dtype)
    tokenizer, policy, reference, lora = loaded.tokenizer, loaded.policy, loaded.reference, loaded.lora

    # 2. Preference pairs (bad rows dropped with their row numbers, or refused), and held-out prompts.
    train_rows, eval_rows = load_stage_pairs(ctx, tokenizer)
    held_out = eval_rows.rows
    prompts = unique_prompts(held_out)[:options.eval_prompts]

    # 3. Train.
    trainer = build_trainer(ctx, policy, reference, tokenizer, train_rows.to_dataset())
    metrics = training.train(trainer, ctx)

    # 4. The child against its parent, then save a model plain AutoModelForCausalLM loads.
    child = trainer.model
    parent, parent_context = (child, child.disable_adapter) if lora is not None else (reference, None)
    judge = reward_model_for(ctx, options.reward_model)
    with torch.no_grad():
        comparison = compare_to_parent(
            child, parent, tokenizer, held_out, prompts, beta=options.beta, reward_model=judge,
            max_length=options.max_length, batch_size=options.batch_size, max_new_tokens=options.eval_max_new_tokens,
            temperature=options.eval_temperature, seed=ctx.cfg.seed, parent_context=parent_context)
    write_samples(comparison.pop("samples"), ctx.output_dir)
    ctx.model_format = models.save_model(child, tokenizer, ctx.output_dir, ctx.cfg.lora.save)
    return {**{f"eval_{k}": v for k, v in comparison.items()},
            "eval_rows": len(held_out), "eval_prompts": len(prompts),
            "reward_model": str(judge) if judge else None,
            "train_rows": len(train_rows.rows),
            "dropped_rows": len(train_rows.dropped) + len(eval_rows.dropped), **metrics}


def build_trainer(ctx, policy, reference, tokenizer, dataset):
    """The DPOTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL).

    `reference`: the frozen parent, or None with LoRA (the adapter switched off is the parent)."""
    from trl import DPOConfig, DPOTrainer

    from align import models, training

    options = ctx.options
    args = training.trainer_args(
        DPOConfig, ctx, options,
        beta=options.beta,
        loss_type=[t.strip() for t in options.loss_type.split(",") if t.strip()],
        label_smoothing=options.label_smoothing,
        max_length=options.max_length,
        precompute_ref_log_probs=options.precompute_ref_log_probs,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=models.lora_config(ctx.cfg.lora))
    return training.tune_for_speed(trainer, options)


def reward_model_for(ctx, choice: str):
    """The reward model judging the win rate: align.reward.find_reward_model's rule (explicit folder, else the
    promoted rm of this run, else of the parent's run), or None (skipped, said so)."""
    from align.reward import find_reward_model

    found = find_reward_model(choice, run_dir=Path(ctx.work.run_dir), parent_run_dir=ctx.parent.run_dir,
                              key="dpo.reward_model")
    if found is not None:
        log.info(f"dpo: win rate judged by {found}")
    elif choice in (None, "", "auto"):
        log.info(f"dpo: no promoted rm in {ctx.work.run_dir} or the parent's run: the win rate vs the parent "
                 f"is skipped (set dpo.reward_model=<folder> to judge with one)")
    return found


def write_samples(samples: dict, folder) -> None:
    """A few held-out prompts with the child's and the parent's replies, for a quick look."""
    import json
    from pathlib import Path

    (Path(folder) / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False), encoding="utf-8")
