"""Log-probabilities of chosen tokens under a causal LM: the one core that compare, evaluate and the bias gate use.

Contract: `targets` is a boolean mask over `input_ids` (batch, width) marking the tokens to score; token t is
predicted by position t - 1, so column 0 (no predictor) is never scored. Only the positions that predict a target
go through the LM head (transformers' `logits_to_keep` with the columns any row needs) and only their rows get a
softmax over the vocabulary (in float32): on CPU the head and the softmax over every position of a long prompt
are most of a forward pass. The result equals full logits -> log_softmax -> gather, up to float rounding. Padding
may be on either side: the attention mask says which tokens are real, and position ids are left to the model
unless given in `forward`.

`eval_mode(*models)` puts models in eval mode for a block and restores each one's own train/eval flag after,
exactly (every submodule's flag, not one flag for the whole model).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager


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


def target_logits(model, input_ids, attention_mask, targets, **forward):
    """Logits (float as the model gives them) of the positions predicting a target: (n_targets, vocabulary), row-major
    over (batch row, position); also returns each one's batch row."""
    predicts = targets[:, 1:].to(input_ids.device)
    rows = predicts.nonzero()[:, 0]
    if _keeps_logits(model):
        columns = predicts.any(dim=0).nonzero()[:, 0]
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=columns, **forward).logits
        return logits[predicts[:, columns]], rows
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **forward).logits
    return logits[:, :-1][predicts], rows


def token_logprobs(model, input_ids, attention_mask, targets, **forward):
    """log p(input_ids[b, t] | input_ids[b, :t]) at every target (b, t), 0.0 elsewhere: a float32 (batch, width)
    tensor; `.sum(1)` is each row's summed log-probability. Runs under the caller's grad mode and model mode."""
    import torch

    logits, rows = target_logits(model, input_ids, attention_mask, targets, **forward)
    predicts = targets[:, 1:].to(input_ids.device)
    picked = gather_logprobs(logits, input_ids[:, 1:][predicts])
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:][predicts] = picked
    return out
