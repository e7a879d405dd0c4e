"""Log-probabilities of chosen tokens under a causal LM: the one core that compare, evaluate and the bias gate use.

Contract: `targets` is a boolean mask over `input_ids` (batch, width) marking the tokens to score; token t is
predicted by position t - 1, so column 0 (no predictor) is never scored. Only the positions that predict a target
go through the LM head (transformers' `logits_to_keep` with the columns any row needs) and only their rows get a
softmax over the vocabulary (in float32): on CPU the head and the softmax over every position of a long prompt
are most of a forward pass. The result equals full logits -> log_softmax -> gather, up to float rounding. Padding
may be on either side: the attention mask says which tokens are real, and position ids are left to the model
unless given in `forward`. `temperature` divides the logits before the softmax (PPO scores its samples at the
temperature it drew them at); `score_targets` also gives each target's entropy and the model's output (its hidden
states, when `forward` asks for them, e.g. for a value head on the same pass).

`eval_mode(*models)` puts models in eval mode for a block and restores each one's own train/eval flag after,
exactly (every submodule's flag, not one flag for the whole model).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, NamedTuple


@contextmanager
def eval_mode(*models):
    """Eval mode for the block; afterwards every module of every model is back in the mode it was in (None skipped)."""
    saved = [(module, module.training) for model in models if model is not None for module in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def gather_logprobs(logits, tokens):
    """log p(token) under each row of logits (rows: positions, columns: the vocabulary), in float32."""
    import torch

    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (peft wrappers pass it on to the model inside)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


class TargetScores(NamedTuple):
    """What `score_targets` returns: float32 (batch, width) tensors, 0.0 off the targets, and the model's output."""

    logprobs: Any
    entropy: Any  # None unless asked for
    output: Any


def _forward_at_targets(model, input_ids, attention_mask, targets, **forward):
    """(the model's output, its logits at the positions predicting a target as (n_targets, vocabulary) rows,
    row-major over (batch row, position), and each one's batch row)."""
    predicts = targets[:, 1:].to(input_ids.device)
    rows = predicts.nonzero()[:, 0]
    if _keeps_logits(model):
        columns = predicts.any(dim=0).nonzero()[:, 0]
        output = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=columns, **forward)
        return output, output.logits[predicts[:, columns]], rows
    output = model(input_ids=input_ids, attention_mask=attention_mask, **forward)
    return output, output.logits[:, :-1][predicts], rows


def target_logits(model, input_ids, attention_mask, targets, **forward):
    """Logits (float as the model gives them) of the positions predicting a target: (n_targets, vocabulary), row-major
    over (batch row, position); also returns each one's batch row."""
    _, logits, rows = _forward_at_targets(model, input_ids, attention_mask, targets, **forward)
    return logits, rows


def score_targets(model, input_ids, attention_mask, targets, *, temperature: float = 1.0, entropy: bool = False,
                  **forward) -> TargetScores:
    """log p(input_ids[b, t] | input_ids[b, :t]) at every target (b, t) from logits / temperature, 0.0 elsewhere;
    with `entropy`, the entropy of each target's predicted distribution (same temperature); and the model's output.
    Runs under the caller's grad mode and model mode."""
    import torch

    output, logits, _ = _forward_at_targets(model, input_ids, attention_mask, targets, **forward)
    predicts = targets[:, 1:].to(input_ids.device)
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)

    def placed(values):
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        out[:, 1:][predicts] = values
        return out

    picked = logprobs.gather(-1, input_ids[:, 1:][predicts].unsqueeze(-1)).squeeze(-1)
    spread = placed(-(logprobs.exp() * logprobs).sum(-1)) if entropy else None
    return TargetScores(placed(picked), spread, output)


def token_logprobs(model, input_ids, attention_mask, targets, temperature: float = 1.0, **forward):
    """log p(input_ids[b, t] | input_ids[b, :t]) at every target (b, t), 0.0 elsewhere: a float32 (batch, width)
    tensor; `.sum(1)` is each row's summed log-probability. Runs under the caller's grad mode and model mode."""
    return score_targets(model, input_ids, attention_mask, targets, temperature=temperature, **forward).logprobs
