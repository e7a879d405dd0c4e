"""The arithmetic of PPO for language models, as pure functions on tensors (no models, no state but the KL controller).

Shapes: every per-token tensor is (batch, reply_tokens), right-aligned with the reply's first token at column 0;
`mask` is 1 on the reply's tokens (up to and including its EOS) and 0 on the padding after it.

Where each choice comes from:
- Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (the lm-human-preferences code):
  reward = RM score - beta * KL(pi || pi_ref) with the KL penalty paid per token and the score at the last token;
  the adaptive KL controller; PPO with whitened advantages, gamma = 1.
- Huang et al. 2022/2024, "The N (+) Implementation Details of RLHF with PPO" (N-details): masked whitening with
  Bessel's correction; whitening the rewards is optional (off by default); value clipping; GAE with lambda 0.95;
  the approximate KL (0.5 * mean log-ratio^2) and clip fraction as diagnostics.
- Ouyang et al. 2022 (InstructGPT): the same per-token KL penalty against the SFT model.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where mask is 1 (over everything, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where mask is 1; unbiased (Bessel's correction) as in lm-human-preferences."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the masked entries; shift_mean=False keeps the mean (for rewards, N-details).

    Entries outside the mask are returned as 0.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) at the sampled tokens.

    k1: log pi - log pi_ref (Ziegler 2019; unbiased, can be negative per token);
    k3: (r - 1) - log r with r = pi_ref / pi (Schulman's low-variance estimator, always >= 0);
    abs / mse: |log ratio| and 0.5 * log ratio^2 (TRL's older options).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    if estimator == "mse":
        return 0.5 * log_ratio.square()
    raise ValueError(f"unknown KL estimator {estimator!r}: k1, k3, abs or mse")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last reply token (its EOS when it has one): where the score is paid."""
    return (mask.long().sum(dim=1) - 1).clamp(min=0)


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL at every reply token, plus the sequence's score at its last token.

    (Ziegler 2019 eq. 2; InstructGPT; N-details "reward = score at the end, KL penalty per token".)
    """
    rewards = -kl_coef * kl * mask.to(kl.dtype)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each reply; returns (advantages, returns).

    A_t = sum_k (gamma*lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 after the reply's last
    token (the episode ends there). returns = advantages + values are the value function's targets.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017), averaged over reply tokens; returns (loss, stats)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), mask).item(),  # N-details' diagnostic
            "ratio": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within clip_range of the old values
    (lm-human-preferences / N-details); returns (loss, stats)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss_unclipped = (values - returns).square()
    loss_clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item()}
    return loss, stats


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019, section 2.2: steer the KL coefficient so the policy's KL to the reference approaches a
    target. error = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + error * n_steps / horizon, where n_steps is the
    number of episodes (replies) since the last update and KL is per sequence (summed over a reply's tokens)."""

    def __init__(self, value: float, target: float, horizon: float):
        super().__init__(value)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(init: float, adaptive: bool, target: float, horizon: float) -> FixedKLController:
    return AdaptiveKLController(init, target, horizon) if adaptive else FixedKLController(init)
