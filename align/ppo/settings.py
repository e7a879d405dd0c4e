"""The PPO loop's settings: the one place their defaults live.

`PPOSettings` is what align.ppo.trainer.PPOTrainer reads; tests build it directly. The recipe's `ppo` section
(stages/ppo.py `Options`) takes every default it shares with the loop from here, and `from_options` fills the
settings back from a resolved section by name, so a default is written once. Imports nothing heavy (the recipe
schema is loaded on every CLI start).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PPOSettings:
    """What the loop reads (the stage fills it from the recipe's `ppo` section; tests build it directly)."""

    max_steps: int = 10
    batch_size: int = 16
    mini_batch_size: int = 8
    grad_accum: int = 1
    ppo_epochs: int = 4
    lr: float = 1e-5
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-5
    max_new_tokens: int = 48
    temperature: float = 0.7
    kl_coef: float = 0.05
    adaptive_kl: bool = True
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    normalize_reward: bool = True
    reward_clip: float = 0.0
    whiten_rewards: bool = False
    missing_eos_score: float | None = -1.0
    length_penalty: float = 0.0
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
