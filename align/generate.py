"""Batched generation under the chat template: used by candidates, gates, evaluation and PPO rollouts."""

from __future__ import annotations

from typing import Sequence

from align.logprobs import eval_mode
from align.prompt_cache import encode_prompts

Messages = list[dict]


def chat_inputs(tokenizer, prompts: Sequence[Messages], device) -> dict:
    """Left-padded token ids of each conversation with the assistant's turn opened."""
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in batch.items()}


def even_chunks(items: Sequence, size: int) -> list[list]:
    """items cut into the fewest chunks of at most `size`, their sizes differing by one at most."""
    count = -(-len(items) // max(size, 1))
    bounds = [round(k * len(items) / count) for k in range(count + 1)] if count else [0]
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:])]


def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[Messages],
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_p: float = 0.9,
    do_sample: bool = True,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    desc: str = "generating",
) -> list[list[str]]:
    """n replies per prompt (each a chat message list), batched with a KV cache; returns [[reply]*n]*len(prompts).

    Prompts go by length (less padding) in chunks of about batch_size replies (at least one prompt's n). Each
    prompt runs through the model once, the beginning the chunk's prompts share (the template's system turn) once
    for all (align.prompt_cache), and its cache is copied for its n replies. Sampling (temperature, top_k as
    transformers applies it, top_p) goes through align.sampling: each reply draws from its own random numbers, seeded
    by (seed, prompt index, sample index), so a reply does not depend on batch_size or on the other prompts.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    from align import sampling

    replies: list[list[str]] = [[] for _ in prompts]
    if n < 1 or not prompts:
        return replies
    eos = tokenizer.eos_token_id
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(rows[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generation_config = getattr(model, "generation_config", None)
    own_sampler = do_sample and sampling.supports(generation_config)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample and not own_sampler,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True)
    if do_sample and not own_sampler:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    with eval_mode(model):
        with tqdm(total=len(prompts) * n, desc=desc, unit="reply", disable=not progress, leave=False) as bar:
            for chunk in even_chunks(order, batch_size // n):
                if own_sampler:  # each reply draws from its own generator, seeded by (seed, prompt, sample)
                    seeds = [sampling.reply_seed(seed, i, k) for i in chunk for k in range(n)]
                    kwargs["logits_processor"] = LogitsProcessorList([sampling.NucleusSampler(
                        temperature, top_p, seeds, top_k=sampling.effective_top_k(generation_config))])
                with torch.no_grad():
                    encoded = encode_prompts(model, [rows[i] for i in chunk], pad_id, keep_last=True)
                    encoded = encoded.select([j for j in range(len(chunk)) for _ in range(n)])
                    out = model.generate(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
                                         past_key_values=encoded.cache, **kwargs)
                new_tokens = out[:, encoded.input_ids.shape[1]:]
                for row, tokens in enumerate(new_tokens):
                    replies[chunk[row // n]].append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
                bar.update(len(new_tokens))
    return replies
