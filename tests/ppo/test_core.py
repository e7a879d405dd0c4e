"""PPO's arithmetic against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from align.ppo import core


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-5)


def test_gae_and_returns_by_hand():
    # one reply of 2 tokens then padding; gamma 1, lambda 0.5. Values and rewards past the end must not count.
    rewards = torch.tensor([[0.1, 1.0, 0.5]])
    values = torch.tensor([[0.5, 0.2, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    advantages, returns = core.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=1: delta = 1.0 + 0 (episode over) - 0.2 = 0.8; A_1 = 0.8
    # t=0: delta = 0.1 + 0.2 - 0.5 = -0.2;              A_0 = -0.2 + 0.5 * 0.8 = 0.2
    close(advantages, [[0.2, 0.8, 0.0]])
    close(returns, [[0.7, 1.0, 0.0]])


def test_gae_with_discount():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.zeros(1, 3)
    advantages, _ = core.gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    close(advantages, [[0.81, 0.9, 1.0]])  # Monte Carlo returns when lambda = 1


def test_kl_penalty_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert core.kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 = (r - 1) - log r with r = pi_ref / pi = 0.5
    assert core.kl_penalty(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert core.kl_penalty(ref, logp, "abs").item() == pytest.approx(math.log(2))
    assert core.kl_penalty(logp, ref, "mse").item() == pytest.approx(0.5 * math.log(2) ** 2)
    with pytest.raises(ValueError):
        core.kl_penalty(logp, ref, "k9")


def test_shaped_rewards_pay_kl_per_token_and_the_score_at_the_last_token():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards = core.shaped_rewards(scores, kl, mask, kl_coef=0.5)
    close(rewards, [[-0.05, 0.1 + 2.0, 0.0], [-0.2 - 1.0, 0.0, 0.0]])


def test_masked_whiten_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased variance (1 + 0 + 1) / 2 = 1
    close(core.masked_whiten(values, mask), [[-1.0, 0.0, 1.0, 0.0]])
    close(core.masked_whiten(values, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 7.0]]))
    advantages = torch.tensor([[1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = core.policy_loss(new, old, advantages, mask, clip_range=0.2)
    # ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); ratio 0.5, A=1: max(-0.5, -0.8) = -0.5; third is padding
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert stats["clip_frac"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2))


def test_clipped_value_loss_by_hand():
    loss, stats = core.value_loss(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                                  torch.ones(1, 1), clip_range=0.2)
    # clipped prediction 0.2: max((0.5-1)^2, (0.2-1)^2) = 0.64, halved
    assert loss.item() == pytest.approx(0.32)
    assert stats["value_clip_frac"] == 1.0


def test_adaptive_kl_controller_follows_ziegler():
    controller = core.kl_controller(0.1, adaptive=True, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    controller.update(current_kl=6.6, n_steps=100)  # error +0.1
    assert controller.value == pytest.approx(0.1 * 1.002 * 1.001)
    restored = core.kl_controller(1.0, adaptive=True, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
    fixed = core.kl_controller(0.1, adaptive=False, target=6.0, horizon=10000)
    fixed.update(current_kl=100.0, n_steps=100)
    assert fixed.value == 0.1


def test_last_token_index():
    assert core.last_token_index(torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])).tolist() == [1, 2, 0]
