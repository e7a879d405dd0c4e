"""Batched generation: prompts encoded once (align.prompt_cache) give the replies of running each reply alone."""

from __future__ import annotations

import pytest

from align.generate import even_chunks, generate_replies

PROMPTS = [[{"role": "user", "content": text}] for text in
           ("Hi", "Tell me a long story about a cat and a dog in the garden", "What is two plus two?", "Why?")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from align.models import load_causal_lm, load_tokenizer

    return load_causal_lm(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))


def test_even_chunks():
    assert even_chunks(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    assert even_chunks(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
    assert even_chunks([1], 8) == [[1]] and even_chunks([], 8) == []


def test_replies_do_not_depend_on_the_batching(tiny):
    """Each reply draws its own random numbers: chunks of 1, 2 or all prompts give the same replies."""
    model, tokenizer = tiny
    sampling = dict(n=3, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=5, progress=False)
    replies = [generate_replies(model, tokenizer, PROMPTS, batch_size=size, **sampling) for size in (3, 6, 12)]
    assert replies[0] == replies[1] == replies[2]
    # Nor on the other prompts: the first prompt alone (still prompt 0) gets the same replies.
    assert generate_replies(model, tokenizer, PROMPTS[:1], batch_size=3, **sampling) == replies[0][:1]
    assert sum(bool(r) for group in replies[0] for r in group) > len(PROMPTS)  # real text, not empty replies


def test_replies_sample_from_the_tokens_transformers_would_sample_from(tiny):
    """transformers' default top_k (50, the tiny model's config sets none) applies before top_p, as in generate."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    model, tokenizer = tiny
    assert model.generation_config.top_k is None
    prompt = PROMPTS[1]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits[:, -1].float()
    allowed = TopPLogitsWarper(0.95)(None, TopKLogitsWarper(50)(None, logits))[0]
    texts = {tokenizer.decode([t], skip_special_tokens=True).strip() for t in torch.isfinite(allowed).nonzero()[:, 0]}
    drawn = generate_replies(model, tokenizer, [prompt], n=300, max_new_tokens=1, temperature=1.0, top_p=0.95,
                             batch_size=300, progress=False)[0]
    assert set(drawn) <= texts
    assert len(set(drawn)) > 20  # a random model: many of the 50 appear (not a greedy or broken draw)


def test_a_config_asking_for_other_sampling_goes_through_transformers(tiny):
    """min_p (not implemented by align.sampling) falls back to transformers' own sampling, seeded as before."""
    import copy

    model, tokenizer = tiny
    other = copy.deepcopy(model)
    other.generation_config.min_p = 0.05
    sampling = dict(n=2, max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=8, seed=3, progress=False)
    first = generate_replies(other, tokenizer, PROMPTS, **sampling)
    assert first == generate_replies(other, tokenizer, PROMPTS, **sampling)
    assert [len(r) for r in first] == [2] * len(PROMPTS)


def test_sampled_replies_are_reproducible_and_differ_between_samples(tiny):
    model, tokenizer = tiny
    sampling = dict(n=3, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=6, progress=False)
    first = generate_replies(model, tokenizer, PROMPTS, seed=1, **sampling)
    assert first == generate_replies(model, tokenizer, PROMPTS, seed=1, **sampling)
    assert all(len(r) == 3 for r in first)
    assert any(len(set(r)) > 1 for r in first)  # the n replies of a prompt are separate samples
    assert first != generate_replies(model, tokenizer, PROMPTS, seed=2, **sampling)
