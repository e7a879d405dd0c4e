"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024), reinforcement learning without a value
model.

For each prompt the policy samples `num_generations` replies; each reply's advantage is its reward minus the
mean reward of the other replies to the same prompt, and TRL's RLOOTrainer maximises the clipped,
advantage-weighted likelihood, the KL to the parent (`beta`) subtracted from the reward. The rewards are the
recipe's terms (stages/_online.py): the run's reward model (`rm`), and rule-based ones — `length`, `toxicity`,
`contains:<text>`, `regex:<pattern>`, `python:<module>.<function>` — weighted by `reward_weights`. The
reference is the parent's own folder (TRL's copy of it, or with LoRA the adapter switched off).

Afterwards the child is compared with its parent as dpo and ppo are (align.compare: KL, reply length, the RM's
win rate, preference accuracy on held-out pairs).

    python -m align.run rloo --from runs/<run>/sft rewards=[rm,toxicity]
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import opt
from align.stages._online import OnlineOptions

PARENT_STAGES: tuple[str, ...] = ("sft",)


@dataclass
class Options(OnlineOptions):
    normalize_advantages: bool = opt(False, "scale the advantages of each generation batch to mean 0, std 1")


def run(ctx) -> dict:
    from align.stages._online import train_online

    return train_online(ctx, build_trainer)


def build_trainer(ctx, policy, tokenizer, dataset, reward_funcs):
    """The RLOOTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL)."""
    from trl import RLOOConfig, RLOOTrainer

    from align.stages._online import build_online_trainer

    options = ctx.options
    return build_online_trainer(ctx, RLOOConfig, RLOOTrainer, policy, tokenizer, dataset, reward_funcs,
                                normalize_advantages=options.normalize_advantages)
