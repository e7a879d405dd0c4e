"""Held-out evaluations shared by stages."""

from __future__ import annotations

import math


def assistant_perplexity(model, tokenizer, conversations: list[list[dict]], chat_template: str | None = None,
                         max_length: int = 512, batch_size: int = 8) -> float:
    """Perplexity of the assistant's tokens only (the tokens SFT trains on), given the rest of each conversation.

    chat_template: a template with {% generation %} markers (see align.models.training_chat_template); None uses
    the tokenizer's own, which must have them.
    """
    import torch

    from align.logprobs import eval_mode, token_logprobs

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start:start + batch_size]
            encoded = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, chat_template=chat_template,
                                                     return_assistant_tokens_mask=True) for c in chunk]
            width = min(max_length, max(len(e["input_ids"]) for e in encoded))
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            target_mask = torch.zeros_like(ids, dtype=torch.bool)
            for row, e in enumerate(encoded):
                n = min(width, len(e["input_ids"]))
                ids[row, :n] = torch.tensor(e["input_ids"][:n])
                attention[row, :n] = 1
                target_mask[row, :n] = torch.tensor(e["assistant_masks"][:n], dtype=torch.bool)
            ids, attention, target_mask = ids.to(device), attention.to(device), target_mask.to(device)
            with torch.no_grad():
                token_lp = token_logprobs(model, ids, attention, target_mask)
            total_nll -= token_lp.sum().item()
            total_tokens += int(target_mask[:, 1:].sum().item())
    if total_tokens == 0:
        return float("nan")
    return math.exp(total_nll / total_tokens)
