"""align.logprobs: the one log-prob core, against the reference computation (full logits -> log_softmax -> gather)."""

import pytest
import torch

from align.logprobs import eval_mode, score_targets, token_logprobs


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _batch(rows, side):
    """Rows of different lengths padded on `side`, with a target mask on each row's last tokens."""
    width = max(len(r) for r, _ in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    for i, (tokens, start) in enumerate(rows):
        offset = 0 if side == "right" else width - len(tokens)
        ids[i, offset:offset + len(tokens)] = torch.tensor(tokens)
        attention[i, offset:offset + len(tokens)] = 1
        targets[i, offset + start:offset + len(tokens)] = True
    return ids, attention, targets


def _reference(model, ids, attention, targets, **forward):
    logits = model(input_ids=ids, attention_mask=attention, **forward).logits.float()
    picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked * targets[:, 1:]


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_logprobs_equal_the_full_softmax_on_a_padded_batch_of_different_lengths(tiny_lm, side):
    g = torch.Generator().manual_seed(1)
    lengths = [(11, 4), (5, 2), (8, 7), (3, 1)]  # (tokens, where the targets start)
    rows = [(torch.randint(1, 97, (n,), generator=g).tolist(), start) for n, start in lengths]
    ids, attention, targets = _batch(rows, side)
    forward = {}
    if side == "left":  # as generate() numbers left-padded rows
        forward["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        got = token_logprobs(tiny_lm, ids, attention, targets, **forward)
        want = _reference(tiny_lm, ids, attention, targets, **forward)
    assert got.shape == ids.shape and got.dtype == torch.float32
    assert torch.equal(got[:, 0], torch.zeros(len(rows)))  # column 0 has no predictor
    assert torch.allclose(got[:, 1:], want, atol=1e-5)
    assert (got[~targets] == 0).all() and (got[targets] < 0).all()
    # Each row's sum is its own: the same row scored alone gives the same figure.
    for i, (tokens, start) in enumerate(rows):
        alone = _batch([(tokens, start)], "right")
        with torch.no_grad():
            single = token_logprobs(tiny_lm, *alone).sum()
        assert torch.allclose(got[i].sum(), single, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_temperature_and_entropy_equal_the_full_softmax_of_the_scaled_logits(tiny_lm, temperature):
    """PPO's use: left-padded queries, right-padded replies (targets: the replies' real tokens), logits / T."""
    g = torch.Generator().manual_seed(2)
    rows = [(torch.randint(1, 97, (n,), generator=g).tolist(), start) for n, start in [(9, 5), (6, 2), (7, 6)]]
    ids, attention, targets = _batch(rows, "left")
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        got = score_targets(tiny_lm, ids, attention, targets, temperature=temperature, entropy=True,
                            position_ids=positions, output_hidden_states=True)
        logits = tiny_lm(input_ids=ids, attention_mask=attention, position_ids=positions).logits.float()[:, :-1]
    full = torch.log_softmax(logits / temperature, -1)
    want = full.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * targets[:, 1:]
    want_entropy = -(full.exp() * full).sum(-1) * targets[:, 1:]
    assert torch.allclose(got.logprobs[:, 1:], want, atol=1e-5)
    assert torch.allclose(got.entropy[:, 1:], want_entropy, atol=1e-5)
    assert (got.entropy[targets] > 0).all() and (got.entropy[~targets] == 0).all()
    # the temperature matters (the figures are not those at T = 1), and token_logprobs takes it too
    assert not torch.allclose(got.logprobs, token_logprobs(tiny_lm, ids, attention, targets, position_ids=positions))
    assert torch.allclose(got.logprobs, token_logprobs(tiny_lm, ids, attention, targets, temperature,
                                                       position_ids=positions), atol=1e-6)
    # the model's output comes back (its hidden states cover every position, for a value head on the same pass)
    assert got.output.hidden_states[-1].shape[:2] == ids.shape


def test_a_model_without_logits_to_keep_gets_the_same_figures(tiny_lm):
    class Plain(torch.nn.Module):  # a forward that takes only ids and mask: the full-logits fallback
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    ids, attention, targets = _batch([([5, 6, 7, 8, 9], 2), ([10, 11, 12], 1)], "right")
    with torch.no_grad():
        assert torch.allclose(token_logprobs(Plain(tiny_lm), ids, attention, targets),
                              token_logprobs(tiny_lm, ids, attention, targets), atol=1e-5)


def test_eval_mode_restores_every_module_of_every_model_exactly(tiny_lm):
    other = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    tiny_lm.train()
    tiny_lm.model.layers[0].eval()  # a mixed model: one submodule frozen in eval mode
    other.eval()
    before = [(m, m.training) for model in (tiny_lm, other) for m in model.modules()]
    with pytest.raises(RuntimeError), eval_mode(tiny_lm, None, other):
        assert not tiny_lm.training and not any(m.training for m in tiny_lm.modules())
        raise RuntimeError("restored on errors too")
    assert [(m, m.training) for model in (tiny_lm, other) for m in model.modules()] == before
    tiny_lm.eval()
