"""PPO for language models (RLHF against a reward model), on torch + accelerate (+ peft for LoRA).

TRL removed its PPO trainer in 1.13, so align carries a compact one:
- core.py     pure tensor functions: KL penalty, reward shaping, whitening, GAE, clipped losses, KL controllers
- rollout.py  sampling replies from the policy and scoring them (the pluggable reward function)
- trainer.py  the loop: rollout → advantages → PPO epochs over minibatches; logs, checkpoints, resume

The stage that uses it is stages/ppo.py.
"""
