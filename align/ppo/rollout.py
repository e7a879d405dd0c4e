"""Rollouts: the policy answers a batch of prompts; each reply is scored once it ends.

A reward function is any callable `(prompts, replies) -> list[float]` (prompts: chat message lists, replies: the
decoded reply texts), so tests and users can plug in rule-based rewards; `reward_model_function` turns a reward
model artifact into one through align.reward.score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Messages = list[dict]
RewardFunction = Callable[[list[Messages], list[str]], Sequence[float]]


@dataclass
class Rollout:
    """One batch of episodes. Query ids are left-padded, reply ids right-padded (mask 1 up to and including EOS)."""

    prompts: list[Messages]
    replies: list[str]
    query_ids: torch.Tensor  # (B, Lq)
    query_mask: torch.Tensor  # (B, Lq)
    reply_ids: torch.Tensor  # (B, Lr)
    reply_mask: torch.Tensor  # (B, Lr)
    ended: torch.Tensor  # (B,) bool: the reply stopped at an EOS token before max_new_tokens

    @property
    def reply_lengths(self) -> torch.Tensor:
        return self.reply_mask.sum(dim=1)


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every token that ends a reply: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def reply_mask_after_stop(reply_ids: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is 1 up to and including the first stop token (all 1 when there is none)."""
    is_stop = torch.isin(reply_ids, torch.tensor(stop_ids, device=reply_ids.device))
    ended = is_stop.any(dim=1)
    width = reply_ids.shape[1]
    first = torch.where(ended, is_stop.int().argmax(dim=1), torch.full_like(ended, width - 1, dtype=torch.long))
    mask = (torch.arange(width, device=reply_ids.device).unsqueeze(0) <= first.unsqueeze(1)).long()
    return mask, ended


@torch.no_grad()
def sample(lm, tokenizer, prompts: list[Messages], *, max_new_tokens: int, temperature: float,
           stop_ids: list[int]) -> Rollout:
    """Sample one reply per prompt from the full distribution at `temperature` (no top-k / top-p: the training
    log-probabilities must be those of the sampling distribution; N-details uses temperature 0.7 for both)."""
    from transformers import GenerationConfig

    from align.generate import chat_inputs
    from align.logprobs import eval_mode

    device = next(lm.parameters()).device
    inputs = chat_inputs(tokenizer, prompts, device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=True,
                              temperature=temperature, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=stop_ids, use_cache=True)
    with eval_mode(lm):
        out = lm.generate(**inputs, generation_config=config)
    query_width = inputs["input_ids"].shape[1]
    reply_ids = out[:, query_width:]
    mask, ended = reply_mask_after_stop(reply_ids, stop_ids)
    reply_ids = torch.where(mask.bool(), reply_ids, torch.full_like(reply_ids, tokenizer.pad_token_id))
    replies = [tokenizer.decode(ids[:int(n)], skip_special_tokens=True).strip()
               for ids, n in zip(reply_ids, mask.sum(dim=1))]
    return Rollout(prompts=list(prompts), replies=replies, query_ids=inputs["input_ids"],
                   query_mask=inputs["attention_mask"], reply_ids=reply_ids, reply_mask=mask, ended=ended)


def reward_model_function(reward_model, batch_size: int = 8, max_length: int | None = 1024) -> RewardFunction:
    """Score replies with a reward model (anything align.reward.score takes: a folder, a loaded RewardModel...)."""
    from align.reward import score

    def reward(prompts: list[Messages], replies: list[str]) -> list[float]:
        conversations = [list(p) + [{"role": "assistant", "content": r}] for p, r in zip(prompts, replies)]
        return score(conversations, reward_model, batch_size=batch_size, max_length=max_length)

    return reward


def toxicity_penalty_function(scorer, coef: float) -> RewardFunction:
    """-coef * P(toxic) of each reply, from the gates' toxicity scorer (align.gates.toxicity.load_scorer)."""

    def penalty(prompts: list[Messages], replies: list[str]) -> list[float]:
        probabilities = scorer.score(list(replies), progress=False)["toxicity"]
        return [-coef * float(p) for p in probabilities]

    return penalty
