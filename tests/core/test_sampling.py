"""align.sampling draws from the distribution transformers' temperature / top-k / top-p sampling draws from."""

from __future__ import annotations

import numpy as np
import pytest

from align.sampling import NucleusSampler, effective_top_k, reply_seed, supports


def _transformers_probs(logits, temperature, top_p, top_k=None):
    """The distribution `generate(do_sample=True)` samples from, through transformers' own warpers."""
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return torch.softmax(LogitsProcessorList(warpers)(None, logits.clone()), dim=-1)[0]


def _draws(logits, rows, **options):
    """`rows` draws from one logits row (one sampler row each, as a batch of replies would draw)."""
    import torch

    sampler = NucleusSampler(seeds=[reply_seed(0, r, 0) for r in range(rows)], **options)
    out = sampler(None, logits.expand(rows, -1).clone())
    assert torch.isfinite(out).sum(dim=1).tolist() == [1] * rows  # exactly one token left to take
    return out.argmax(dim=1).numpy()


@pytest.mark.parametrize("scale, vocab, top_p, top_k, temperature", [
    (4.0, 5000, 0.9, None, 1.0),    # peaked: the nucleus is among the top candidates
    (0.5, 5000, 0.9, None, 1.0),    # flat: the nucleus reaches past the 256 candidates (4096 searched)
    (0.1, 5000, 0.95, None, 1.0),   # flatter: past 4096 too (the whole vocabulary sorted)
    (2.0, 300, 0.8, None, 0.7),     # fewer tokens than candidates, a temperature
    (2.0, 5000, 0.95, 40, 1.3),     # a model's top_k, then top_p
    (2.0, 5000, 1.0, None, 1.0),    # no nucleus: the whole distribution
])
def test_draws_follow_transformers_distribution(scale, vocab, top_p, top_k, temperature):
    import torch

    logits = (torch.randn(1, vocab, generator=torch.Generator().manual_seed(1)) * scale)
    expected = _transformers_probs(logits, temperature, top_p, top_k).numpy()
    draws = _draws(logits, 4000, temperature=temperature, top_p=top_p, top_k=top_k)
    assert expected[draws].min() > 0  # never a token outside transformers' nucleus / top-k
    support = expected > 0
    if top_p < 1.0 or top_k:
        assert set(draws.tolist()) and len(set(draws.tolist())) <= support.sum()
    # Frequencies of the most likely tokens agree within sampling error (4000 draws: sd <= 0.008).
    frequencies = np.bincount(draws, minlength=vocab) / len(draws)
    ranked = np.argsort(-expected)
    for token in ranked[:5]:
        assert abs(frequencies[token] - expected[token]) < 0.035, (token, frequencies[token], expected[token])
    # ... and so do the shares drawn from beyond the 256 and the 4096 top candidates (the wider searches).
    for rank in (256, 4096):
        beyond = ranked[rank:]
        assert abs(frequencies[beyond].sum() - expected[beyond].sum()) < 0.035, rank


def test_top_p_zero_keeps_the_most_likely_token_and_seeds_are_per_row():
    import torch

    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(2))
    assert set(_draws(logits, 50, temperature=1.0, top_p=0.0).tolist()) == {int(logits.argmax())}
    sampler = NucleusSampler(1.0, 1.0, [11, 12])
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        sampler(None, torch.zeros(3, 10))
    assert reply_seed(0, 1, 2) == reply_seed(0, 1, 2) != reply_seed(0, 2, 1)


def test_supports_only_what_it_implements():
    from transformers import GenerationConfig

    assert supports(GenerationConfig()) and supports(GenerationConfig(top_k=20, temperature=0.7))
    assert not supports(GenerationConfig(min_p=0.1)) and not supports(GenerationConfig(typical_p=0.5))
    # generate samples from transformers' default top_k when the model's config sets none; 0 means no cut.
    assert effective_top_k(GenerationConfig()) == 50
    assert effective_top_k(GenerationConfig(top_k=20)) == 20 and effective_top_k(GenerationConfig(top_k=0)) is None


def test_same_seeds_couple_the_draws_of_two_close_models():
    """Common random numbers: with the same seeds, two slightly different distributions draw the same token far
    more often than independent draws would (the paired gate rests on this); each still follows its own
    distribution."""
    import torch

    generator = torch.Generator().manual_seed(3)
    parent = torch.randn(1, 2000, generator=generator) * 2.0
    child = parent + 0.2 * torch.randn(1, 2000, generator=generator)  # a fine-tuned neighbour
    rows = 3000
    same_seeds = (_draws(parent, rows, temperature=1.0, top_p=0.9) == _draws(child, rows, temperature=1.0, top_p=0.9))
    sampler = NucleusSampler(1.0, 0.9, seeds=[reply_seed(1, r, 0) for r in range(rows)])  # other seeds
    independent = sampler(None, child.expand(rows, -1).clone()).argmax(dim=1).numpy()
    other_seeds = _draws(parent, rows, temperature=1.0, top_p=0.9) == independent
    p_parent = _transformers_probs(parent, 1.0, 0.9).numpy()
    p_child = _transformers_probs(child, 1.0, 0.9).numpy()
    assert abs(other_seeds.mean() - float((p_parent * p_child).sum())) < 0.03  # independent: sum of p·q
    assert same_seeds.mean() > 0.8 > other_seeds.mean() + 0.3
    frequencies = np.bincount(_draws(child, rows, temperature=1.0, top_p=0.9), minlength=2000) / rows
    top = np.argsort(-p_child)[:3]
    assert np.abs(frequencies[top] - p_child[top]).max() < 0.035
