"""The PPO loop's settings: the one place their names, defaults, help texts and ranges are written.

`PPOLoopOptions` are the knobs of the loop a recipe sets, each declared with `opt` (default, help, range); the
recipe's `ppo` section (stages/ppo.py `Options`) is these plus TrainOptions' generic knobs and the stage's own
(data, reward model, comparison). `PPOSettings` is what align.ppo.trainer.PPOTrainer reads: the loop options plus
the generic knobs it uses, with the loop's own defaults (tests build it directly); `from_options` fills it from a
resolved section by name. Imports nothing heavy (the recipe schema is loaded on every CLI start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from align.config import LR_SCHEDULERS, POSITIVE, SHARE, opt

KL_ESTIMATORS = ("k1", "k3", "abs", "mse")


@dataclass
class PPOLoopOptions:
    """The loop's recipe knobs (the `ppo` section's, beside TrainOptions' and the stage's own)."""

    # Rollouts.
    batch_size: int = opt(16, "prompts per rollout (one PPO step)", **POSITIVE)
    max_new_tokens: int = opt(48, "longest reply sampled; a reply that does not end by then counts as unfinished",
                              **POSITIVE)
    temperature: float = opt(0.7, "sampling temperature; training log-probs use the same (N-details)", above=0)
    # Rewards.
    normalize_reward: bool = opt(True, "normalise the RM score to mean 0 / std 1 on the initial policy's replies "
                                       "(Ziegler et al. 2019)")
    reward_clip: float = opt(0.0, "clip the (normalised) score to [-c, c]; 0 = off", min=0.0)
    whiten_rewards: bool = opt(False, "whiten the per-token rewards of each rollout (N-details option)")
    missing_eos_score: Optional[float] = opt(-1.0, "score of a reply that never ends (N-details); null = off")
    length_penalty: float = opt(0.0, "subtract this times the reply's token count from its score", min=0.0)
    # KL to the reference.
    kl_coef: float = opt(0.05, "initial KL coefficient beta", min=0.0)
    adaptive_kl: bool = opt(True, "adapt beta towards kl_target (Ziegler et al. 2019); false = fixed beta")
    kl_target: float = opt(6.0, "target KL per reply, in nats (Ziegler et al. 2019)", above=0)
    kl_horizon: float = opt(10000.0, "the adaptive controller's horizon, in replies (Ziegler et al. 2019)", above=0)
    kl_estimator: str = opt("k1", "per-token KL estimate in the reward: k1 (log ratio), k3, abs, mse",
                            choices=KL_ESTIMATORS)
    # PPO.
    ppo_epochs: int = opt(4, "passes over each rollout", **POSITIVE)
    mini_batch_size: int = opt(8, "replies per gradient step (split into grad_accum micro-batches)", **POSITIVE)
    gamma: float = opt(1.0, "discount", **SHARE)
    lam: float = opt(0.95, "GAE lambda", **SHARE)
    clip_range: float = opt(0.2, "PPO ratio clip", above=0)
    clip_range_value: float = opt(0.2, "value clip around the rollout's values", above=0)
    vf_coef: float = opt(0.1, "value loss weight", min=0.0)
    adam_eps: float = opt(1e-5, "Adam epsilon (N-details)", above=0)
    lr: float = opt(1e-5, "peak learning rate", above=0)
    lr_scheduler: str = opt("linear", "learning-rate schedule (linear decay to 0, as N-details)",
                            choices=LR_SCHEDULERS)
    warmup_ratio: float = opt(0.0, "share of updates spent warming up", **SHARE)


@dataclass
class PPOSettings(PPOLoopOptions):
    """What the loop reads: the loop options, and the generic knobs it uses (in a recipe they are TrainOptions',
    the seed is the recipe's), here with the loop's own defaults."""

    max_steps: int = 10
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    save_steps: int = 10
    save_total_limit: int = 2
    seed: int = 42

    @classmethod
    def from_options(cls, options, seed: int, max_steps: int) -> "PPOSettings":
        names = {f for f in cls.__dataclass_fields__}
        values = {name: getattr(options, name) for name in names if hasattr(options, name)}
        values.update(seed=seed, max_steps=max_steps)
        return cls(**values)
