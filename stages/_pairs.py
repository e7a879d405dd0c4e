"""What the stages that train on preferences (rm, dpo, kto) share: their common options, the loading of their
training and held-out rows into the stage's manifest and folder, and, for the policies among them (dpo, kto), the
comparison with the parent after training. (data/preferences.py and data/unpaired.py read and check the rows;
this module is the stage side: recipe options and a stage context.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from align.config import ALL_OR_POSITIVE, POSITIVE, TrainOptions, opt
from align.data.preferences import load_preferences, trim_prompts, write_dropped
from align.data.registry import Rows
from align.log import log


@dataclass
class PreferenceTrainOptions(TrainOptions):
    """Recipe options every stage that trains on preferences shares (rm, dpo, kto)."""

    data: str = opt("hh-harmless", "preference data: a shipped name, a JSONL/JSON/Parquet/CSV file, a hub id, "
                                   "or labels:<label store path or URL>")
    eval_data: str | None = opt(None, "held-out preference data (default: the test split of `data`)")
    on_bad_rows: str = opt("drop", "rows that are ties, identical, empty or malformed: drop (reported with their "
                                   "row numbers) or refuse (stop at the first, naming it)",
                               choices=("drop", "refuse"))
    max_prompt_length: int = opt(-1, "prompt token budget: the earliest turns of a longer prompt are left out (the "
                                     "last user turn always stays), like DeepSpeed-Chat's max_prompt_seq_len; "
                                     "-1 keeps every turn", **ALL_OR_POSITIVE)



@dataclass
class PolicyPreferenceOptions(PreferenceTrainOptions):
    """Recipe options of the stages that train a policy on preferences against its parent (dpo, kto)."""

    precompute_ref_log_probs: bool = opt(False, "compute the parent's log-probs once before training (faster steps)")
    reward_model: str = opt("auto", "reward model judging the win rate vs the parent: a folder, `auto` (the "
                                    "promoted rm of the same run, else of the parent's run, if any) or `none`")
    eval_prompts: int = opt(32, "held-out prompts both the child and the parent answer (win rate, KL, length)",
                            min=0)
    eval_max_new_tokens: int = opt(64, "reply length cap when sampling for the comparison", **POSITIVE)
    eval_temperature: float = opt(1.0, "sampling temperature for the comparison (1.0: KL estimates the true KL)",
                                    above=0)


def load_stage_pairs(ctx, tokenizer=None, load=load_preferences) -> tuple[Rows, Rows]:
    """A preference stage's training and held-out rows (its `data`, `eval_data`, row limits and bad-row policy),
    recorded in the manifest, with any dropped rows listed in the stage's dropped_rows.txt. With a tokenizer and
    `max_prompt_length`, long prompts lose their earliest turns (the manifest's data entry counts them).
    `load`: data.preferences.load_preferences (pairs) or data.unpaired.load_unpaired (kto)."""
    options = ctx.options
    train_rows = load(options.data, "train", limit=options.max_rows, on_bad=options.on_bad_rows)
    eval_rows = load(options.eval_data or options.data, "test", limit=options.eval_rows, on_bad=options.on_bad_rows)
    for rows in (train_rows, eval_rows):
        if tokenizer is not None:
            rows.prompts_trimmed = trim_prompts(rows, tokenizer, options.max_prompt_length)
        ctx.record_data(rows)
        write_dropped(rows, ctx.output_dir)
    return train_rows, eval_rows


def build_policy_trainer(ctx, config_class, trainer_class, policy, reference, tokenizer, dataset, **stage_specific):
    """A TRL preference trainer of a policy against its reference (DPOTrainer, KTOTrainer) from the recipe, with
    align's speed choices; `stage_specific`: the config fields only that stage has. `reference`: the frozen parent,
    or None with LoRA (the trainer wraps the policy; the adapter switched off is the parent)."""
    from align import models, training

    options = ctx.options
    args = training.trainer_args(config_class, ctx, options, max_length=options.max_length,
                                 precompute_ref_log_probs=options.precompute_ref_log_probs, dataset_num_proc=None,
                                 **stage_specific)
    trainer = trainer_class(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=models.lora_config(ctx.cfg.lora))
    return training.tune_for_speed(trainer, options)


def compare_and_save(ctx, trainer, loaded, prompts, *, beta: float, pairs=(), unpaired=(), judge=None) -> dict:
    """After training: the child against its parent (align.compare: held-out `pairs` or `unpaired` rows, and the
    replies of both to `prompts`), a few samples in samples.json, and the child saved as a model plain
    AutoModelForCausalLM loads. `loaded`: align.policy's PolicyAndReference the trainer was built from. Returns the
    stage's eval_* metrics."""
    import torch

    from align import models
    from align.compare import compare_to_parent
    from align.reward import stage_reward_model

    options = ctx.options
    child = trainer.model
    parent, parent_context = (child, child.disable_adapter) if loaded.lora is not None else (loaded.reference, None)
    if judge is None:  # `judge`: one the stage found already (grpo, rloo)
        judge = stage_reward_model(ctx, options.reward_model, required=False, search_runs_dir=False)
    with torch.no_grad():
        comparison = compare_to_parent(
            child, parent, loaded.tokenizer, pairs, prompts, beta=beta, reward_model=judge,
            max_length=options.max_length, batch_size=options.batch_size, max_new_tokens=options.eval_max_new_tokens,
            temperature=options.eval_temperature, seed=ctx.cfg.seed, parent_context=parent_context,
            unpaired=unpaired)
    write_samples(comparison.pop("samples"), ctx.output_dir)
    ctx.model_format = models.save_model(child, loaded.tokenizer, ctx.output_dir, ctx.cfg.lora.save)
    return {**{f"eval_{k}": v for k, v in comparison.items()}, "eval_prompts": len(prompts),
            "reward_model": str(judge) if judge else None}


def write_samples(samples: dict, folder) -> None:
    """A few held-out prompts with the child's and the parent's replies, for a quick look."""
    import json

    (Path(folder) / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False), encoding="utf-8")
