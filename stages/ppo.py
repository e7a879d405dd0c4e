"""PPO: reinforcement learning from the reward model, as InstructGPT did (RLHF).

The policy (the SFT parent, full or LoRA) answers prompts; the reward model scores each finished reply; the
score minus a per-token KL penalty to the frozen SFT model is maximised with PPO (align/ppo: GAE, clipped policy
and value losses, several epochs over minibatches per rollout, fixed or adaptive KL coefficient). Replies that
never reach EOS get a fixed low score. Optional extra terms: a toxicity penalty from the gates' scorer and a
length penalty. With LoRA the reference is the parent itself, the adapter switched off, so only one copy of the
weights is held.

Afterwards the child is compared with its parent on held-out prompts exactly as the DPO stage does
(align.compare: RM win rate and mean reward, KL, reply length, preference accuracy), so DPO and PPO fill one table.

    python -m align.run ppo --from runs/<run>/sft reward=runs/<run>/rm
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from align.config import ALL_OR_POSITIVE, POSITIVE, TrainOptions, opt
from align.ppo.settings import PPOLoopOptions

PARENT_STAGES: tuple[str, ...] = ("sft",)
# One process only for now: every process would sample the same prompts and write the same checkpoints.
DISTRIBUTED = False


@dataclass
class Options(PPOLoopOptions, TrainOptions):
    """The loop's knobs (align.ppo.settings.PPOLoopOptions: rollouts, rewards, KL, PPO), TrainOptions', and these."""

    # Data and reward.
    data: str = opt("hh-harmless", "prompts to train on: the prompts of preference or chat data, or prompt rows "
                                   "({\"prompt\": [messages]}); its test split is held out for evaluation")
    eval_data: Optional[str] = opt(None, "held-out preference data for the comparison with the parent "
                                         "(default: the test split of `data`)")
    reward: Optional[str] = opt(None, "reward model: an rm stage folder (default: the rm of this run, else of the "
                                      "parent's run, else the latest promoted rm, said so)")
    max_length: int = opt(320, "prompt + reply tokens; longer prompts are left out", **POSITIVE)
    max_prompt_length: int = opt(-1, "prompt token budget: the earliest turns of a longer prompt are left out (the "
                                     "last user turn always stays), for training and held-out prompts; -1 = all",
                                 **ALL_OR_POSITIVE)
    toxicity_penalty: float = opt(0.0, "subtract this times P(toxic) from the gates' scorer; 0 = off", min=0.0)
    toxicity_model: str = opt("offline", "toxicity scorer for the penalty (see `align.run toxicity-model`)")
    value_model: str = opt("head", "value function: head (a head on the policy) or rm (separate, initialised "
                                   "from the reward model, as InstructGPT)", choices=("head", "rm"))
    # The comparison with the parent.
    eval_temperature: float = opt(1.0, "sampling temperature of the comparison with the parent (DPO uses the same)",
                                    above=0)
    eval_max_new_tokens: int = opt(48, "reply length of the comparison with the parent", **POSITIVE)


def run(ctx) -> dict:
    from align import models, training
    from align.compare import compare_to_parent
    from align.policy import policy_and_reference
    from align.ppo.rollout import reward_model_function, toxicity_penalty_function
    from align.ppo.trainer import ActorCritic, PPOSettings, PPOTrainer
    from align.reward import load_reward_model
    from align.data.preferences import trim_prompt
    from align.stages._online import held_out_pairs, training_prompts

    options, model_options = ctx.options, ctx.cfg.model

    # 1. The policy, its reference (the parent, frozen) and the reward model.
    loaded = policy_and_reference(ctx.parent.source, model_options, ctx.cfg.lora, device=ctx.device, dtype=ctx.dtype,
                                  wrap_lora=True, gradient_checkpointing=options.gradient_checkpointing,
                                  trainable_layers=options.trainable_layers)  # the value head added later trains
    tokenizer, policy, reference, reference_context = (loaded.tokenizer, loaded.policy, loaded.reference,
                                                       loaded.reference_context)
    lora = loaded.lora
    reward_dir = resolve_reward(ctx)
    reward_model = load_reward_model(reward_dir, device=ctx.device)
    value_model = load_value_model(reward_dir, tokenizer, ctx) if options.value_model == "rm" else None

    # 2. Prompts: the training split (prompts too long to answer within max_length left out), held-out pairs.
    prompts, too_long = training_prompts(ctx, tokenizer)
    held_out, dropped = held_out_pairs(ctx)
    pairs = [{**pair, "prompt": trim_prompt(pair["prompt"], tokenizer, options.max_prompt_length)} for pair in held_out]

    # 3. PPO.
    steps = options.max_steps if options.max_steps > 0 else math.ceil(options.epochs * len(prompts) / options.batch_size)
    settings = PPOSettings.from_options(options, seed=ctx.cfg.seed, max_steps=steps)
    extra = []
    if options.toxicity_penalty:
        from align.gates.toxicity import load_scorer

        extra.append(("toxicity_penalty", toxicity_penalty_function(load_scorer(options.toxicity_model, ctx.device),
                                                                    options.toxicity_penalty)))
    value_lora = models.lora_config(ctx.cfg.lora, "FEATURE_EXTRACTION") if value_model is not None else None
    trainer = PPOTrainer(ActorCritic(policy, value_model, value_lora=value_lora),
                         tokenizer, prompts, reward_model_function(reward_model, options.mini_batch_size),
                         settings, reference=None if lora is not None else reference,
                         reference_context=reference_context, extra_rewards=extra,
                         checkpoints_dir=ctx.work.checkpoints_dir, logs_dir=ctx.output_dir / "logs",
                         trackers=training.trackers(ctx.cfg))
    training.start_trackers(ctx)  # MLflow: the stage's run, which the driver closes with the manifest and gate
    metrics = trainer.train(resume_from=ctx.resume_checkpoint)

    # 4. The child against its parent on held-out prompts (the same report as DPO's).
    if pairs:
        comparison = compare_to_parent(
            policy, reference, tokenizer, pairs, [p["prompt"] for p in pairs], beta=trainer.kl.value,
            reward_model=reward_model, max_length=options.max_length, batch_size=options.mini_batch_size,
            max_new_tokens=options.eval_max_new_tokens, temperature=options.eval_temperature, seed=ctx.cfg.seed,
            parent_context=reference_context)
        metrics.update(comparison)

    # 5. Save a model plain AutoModelForCausalLM loads.
    ctx.model_format = models.save_model(policy, tokenizer, ctx.output_dir, ctx.cfg.lora.save)
    return {**metrics, "reward_model": str(reward_dir), "train_prompts": len(prompts),
            "prompts_too_long": too_long, "eval_rows": len(pairs), "dropped_rows": dropped}


def resolve_reward(ctx) -> Path:
    """The reward model, by align.reward.find_reward_model's rule: `ppo.reward`, else the promoted rm of this run,
    else of the parent's run, else (said so) the latest promoted rm under runs_dir; ConfigError when none."""
    from align.reward import stage_reward_model

    return stage_reward_model(ctx, ctx.options.reward, required=True, key="reward")


def load_value_model(reward_dir: Path, tokenizer, ctx):
    """A trainable copy of the reward model, to start the value function from (InstructGPT)."""
    from align.errors import ConfigError
    from align.models import load_sequence_classifier, load_tokenizer

    if load_tokenizer(str(reward_dir)).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"ppo.value_model=rm: the reward model {reward_dir} has another tokenizer than the policy; "
                          f"use value_model=head")
    return load_sequence_classifier(str(reward_dir), device=ctx.device, dtype=ctx.dtype)
