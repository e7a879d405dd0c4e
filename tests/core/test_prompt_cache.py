"""Prompts encoded with their shared beginning run once equal each prompt run alone."""

from __future__ import annotations

import pytest

from align.prompt_cache import common_prefix_length, encode_prompts

SHARED = [5, 17, 300, 41, 8, 99]
ROWS = [SHARED + [7, 7, 12], SHARED + [400], SHARED + [3, 600, 2, 9, 11, 70], SHARED[:4] + [13, 14]]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from align.models import load_causal_lm

    return load_causal_lm(str(tiny_model_dir), device="cpu")


def _alone(model, row):
    """Logits after the row, run on its own (no padding, no cache)."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([row])).logits[0, -1]


def test_common_prefix_length():
    assert common_prefix_length(ROWS) == 4
    assert common_prefix_length(ROWS[:3]) == 6
    assert common_prefix_length([[1, 2], [1, 2]]) == 2
    assert common_prefix_length([[1], [2]]) == 0 and common_prefix_length([]) == 0


@pytest.mark.parametrize("rows", [ROWS[:3], ROWS, [[1, 2], [1, 2, 3]], [[9], [9]], [[4, 5, 6], [7]]],
                         ids=["shared-6", "shared-4", "one-row-is-the-prefix", "identical-one-token", "nothing-shared"])
def test_last_logits_equal_each_prompt_alone(model, rows):
    import torch

    encoded = encode_prompts(model, rows, pad_id=0)
    for j, row in enumerate(rows):
        torch.testing.assert_close(encoded.last_logits[j], _alone(model, row), atol=1e-4, rtol=0)
    assert encoded.lengths.tolist() == [len(r) for r in rows]


def test_keep_last_leaves_one_column_for_generate_and_select_copies_rows(model):
    import torch

    encoded = encode_prompts(model, ROWS, pad_id=0, keep_last=True)
    assert encoded.last_logits is None
    assert encoded.cache.get_seq_length() == encoded.input_ids.shape[1] - 1
    picked = encoded.select([2, 2, 0])
    positions = picked.lengths.unsqueeze(1) - 1
    with torch.no_grad():
        logits = model(input_ids=picked.input_ids[:, -1:], attention_mask=picked.attention_mask,
                       position_ids=positions, past_key_values=picked.cache).logits[:, -1]
    for k, j in enumerate([2, 2, 0]):
        torch.testing.assert_close(logits[k], _alone(model, ROWS[j]), atol=1e-4, rtol=0)


def test_empty_prompts_are_refused(model):
    with pytest.raises(ValueError, match="at least one token"):
        encode_prompts(model, [[1, 2], []])
