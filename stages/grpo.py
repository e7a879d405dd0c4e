"""GRPO: group relative policy optimisation (DeepSeekMath), reinforcement learning without a value model.

For each prompt the policy samples `num_generations` replies; each reply's advantage is its reward minus the
mean of its group (scaled by the group's standard deviation, `scale_rewards`), and TRL's GRPOTrainer maximises
the clipped, advantage-weighted likelihood with a KL term to the parent (`beta`). The rewards are the recipe's
terms (stages/_online.py): the run's reward model (`rm`), and rule-based ones — `length`, `toxicity`,
`contains:<text>`, `regex:<pattern>`, `python:<module>.<function>` — weighted by `reward_weights`. The
reference is the parent's own folder (TRL's copy of it, or with LoRA the adapter switched off).

Afterwards the child is compared with its parent as dpo and ppo are (align.compare: KL, reply length, the RM's
win rate, preference accuracy on held-out pairs).

    python -m align.run grpo --from runs/<run>/sft rewards=[rm,length] reward_weights=[1.0,0.2]
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import opt
from align.stages._online import OnlineOptions

PARENT_STAGES: tuple[str, ...] = ("sft",)
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")  # TRL's GRPOConfig.loss_type (token-level ones)


@dataclass
class Options(OnlineOptions):
    loss_type: str = opt("dapo", "how token losses are averaged: dapo (over the batch's tokens), grpo (per reply), "
                                 "dr_grpo, bnpo, cispo, sapo (TRL's names)", choices=LOSS_TYPES)
    scale_rewards: str = opt("group", "advantages divided by the reward's standard deviation in the group, the "
                                      "batch, or none (Dr. GRPO)", choices=("group", "batch", "none"))


def run(ctx) -> dict:
    from align.stages._online import train_online

    return train_online(ctx, build_trainer)


def build_trainer(ctx, policy, tokenizer, dataset, reward_funcs):
    """The GRPOTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL)."""
    from trl import GRPOConfig, GRPOTrainer

    from align.stages._online import build_online_trainer

    options = ctx.options
    return build_online_trainer(ctx, GRPOConfig, GRPOTrainer, policy, tokenizer, dataset, reward_funcs,
                                loss_type=options.loss_type, scale_rewards=options.scale_rewards)
