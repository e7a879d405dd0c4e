"""Run a batch of prompts through a causal LM once, computing what the prompts share only once.

Chat prompts begin alike (the template's system turn and the opening of the user turn: 25 of the ~50 to ~110
tokens of a gate prompt on SmolLM2), and a prompt sampled n times, or followed by several answers to score, need
not run n times. `encode_prompts` runs the rows' longest common beginning once, copies its KV cache to every row,
and runs the rest of each row after it, right-aligned: the padding sits between the shared beginning and the rest,
masked, and positions count only real tokens (as `generate` counts them from the attention mask), so every row
sees exactly what it would see alone, up to float rounding. `PromptCache.select` then copies rows (n samples of a
prompt, one row per answer to score).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PromptCache:
    """The KV cache of a batch of prompts and the layout it was computed on.

    `input_ids` / `attention_mask`: the prompts as laid out (shared beginning, padding, rest), for `generate` or
    for masks of later tokens; `cache` covers every column but the last when `keep_last`; `last_logits`: the
    logits at the last column (what comes after each prompt), or None when the last column was not run.
    """

    input_ids: object
    attention_mask: object
    cache: object
    last_logits: object = None

    @property
    def lengths(self):
        """Real tokens per row (the position of the token after each prompt)."""
        return self.attention_mask.sum(dim=1)

    def select(self, rows) -> "PromptCache":
        """The prompts of `rows` (indices, repeats allowed: [0, 0, 1] is prompt 0 twice, then prompt 1).

        The cache is re-indexed in place: use the result, not this object, afterwards.
        """
        import torch

        index = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        if self.cache is not None:
            self.cache.batch_select_indices(index)
        logits = None if self.last_logits is None else self.last_logits[index]
        return PromptCache(self.input_ids[index], self.attention_mask[index], self.cache, logits)


def common_prefix_length(rows: list[list[int]]) -> int:
    """Length of the longest beginning that every row shares."""
    if not rows:
        return 0
    shortest = min(len(r) for r in rows)
    for k in range(shortest):
        token = rows[0][k]
        if any(r[k] != token for r in rows):
            return k
    return shortest


def encode_prompts(model, rows: list[list[int]], pad_id: int = 0, keep_last: bool = False) -> PromptCache:
    """The prompts' KV cache, their common beginning computed once (see the module's docstring).

    `rows`: token ids of each prompt (at least one token each). keep_last=False runs every token and returns the
    last column's logits; keep_last=True leaves the last column out of the cache (for `generate`, which needs
    one token still to run).
    """
    import torch

    if not rows or not all(rows):
        raise ValueError("encode_prompts: every prompt needs at least one token")
    device = next(model.parameters()).device
    # Keep at least one token of each row after the shared part (its logits or `generate`'s first step need it).
    shared = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
    rests = [r[shared:] for r in rows]
    width = max(len(r) for r in rests)
    ids = torch.full((len(rows), shared + width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
    ids[:, :shared] = torch.tensor(rows[0][:shared], dtype=torch.long)
    mask[:, :shared] = 1
    for j, rest in enumerate(rests):
        ids[j, shared + width - len(rest):] = torch.tensor(rest, dtype=torch.long)
        mask[j, shared + width - len(rest):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = None
    if shared:
        cache = model(input_ids=ids[:1, :shared], attention_mask=mask[:1, :shared],
                      position_ids=positions[:1, :shared], use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(len(rows))
    stop = ids.shape[1] - 1 if keep_last else ids.shape[1]
    logits = None
    if stop > shared:
        out = model(input_ids=ids[:, shared:stop], attention_mask=mask[:, :stop],
                    position_ids=positions[:, shared:stop], past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = None if keep_last else out.logits[:, -1]
    return PromptCache(ids, mask, cache, logits)
