"""The cached BBQ scoring (context once, targets against its KV cache) equals scoring every sequence in full."""

from __future__ import annotations

import numpy as np
import pytest

from align.gates.bias import (
    _answer_sequences,
    bbq_predictions,
    continuation_logprobs,
    load_bbq,
    shared_context_logprobs,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from align.models import load_causal_lm, load_tokenizer

    return load_causal_lm(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))


def _bbq_items_of_varied_length(tokenizer, n=5):
    """BBQ items whose prompts all differ in length (so that one batch mixes lengths)."""
    items, lengths = [], set()
    for item in load_bbq(60, seed=2):
        length = len(_answer_sequences(tokenizer, item)[0][0])
        if length not in lengths:
            items.append(item)
            lengths.add(length)
        if len(items) == n:
            return items
    raise AssertionError("not enough BBQ items of distinct prompt lengths")


def test_bbq_options_scored_against_the_cached_prompt_equal_full_sequences(tiny):
    model, tokenizer = tiny
    items = _bbq_items_of_varied_length(tokenizer)
    sequences = [seq for item in items for seq in _answer_sequences(tokenizer, item)]
    groups = [(seqs[0][0], [reply for _, reply in seqs])
              for seqs in (_answer_sequences(tokenizer, item) for item in items)]
    pad = tokenizer.pad_token_id
    full, full_counts = continuation_logprobs(model, sequences, batch_size=4, pad_id=pad)
    for batch_size in (1, 3, 8):  # one item per batch; batches of mixed lengths; everything in one batch
        cached, counts = shared_context_logprobs(model, groups, batch_size=batch_size, pad_id=pad)
        np.testing.assert_allclose(cached, full, rtol=0, atol=1e-4)
        assert counts.tolist() == full_counts.tolist()
    assert len({len(g[0]) for g in groups}) == len(groups)  # really different prompt lengths
    assert np.all(full < 0) and np.ptp(full) > 0.1  # real, distinct figures (not all zeros)


def test_groups_of_any_size_and_target_length_come_back_in_order(tiny):
    model, _ = tiny
    rng = np.random.default_rng(0)

    def tokens(n):
        return rng.integers(3, 1000, n).tolist()

    groups = [(tokens(9), [tokens(1), tokens(4)]), (tokens(2), [tokens(6)]), (tokens(15), []),
              (tokens(1), [tokens(3), tokens(1), tokens(7), tokens(2)])]
    cached, counts = shared_context_logprobs(model, groups, batch_size=2, pad_id=0)
    flat = [(context, target) for context, targets in groups for target in targets]
    one_at_a_time = np.array([continuation_logprobs(model, [seq], batch_size=1)[0][0] for seq in flat])
    np.testing.assert_allclose(cached, one_at_a_time, rtol=0, atol=1e-4)
    assert counts.tolist() == [1, 4, 6, 3, 1, 7, 2]
    with pytest.raises(ValueError, match="context"):
        shared_context_logprobs(model, [([], [tokens(2)])])


def test_bbq_predictions_pick_the_option_with_the_best_mean_log_probability(tiny):
    model, tokenizer = tiny
    items = _bbq_items_of_varied_length(tokenizer, 4)
    sequences = [seq for item in items for seq in _answer_sequences(tokenizer, item)]
    sums, counts = continuation_logprobs(model, sequences, batch_size=8, pad_id=tokenizer.pad_token_id)
    for normalise, scores in ((True, sums / counts), (False, sums)):
        expected = scores.reshape(len(items), 3).argmax(axis=1)
        assert bbq_predictions(model, tokenizer, items, 3, normalise).tolist() == expected.tolist()
