"""Batched generation under the chat template: used by candidates, gates, evaluation and PPO rollouts."""

from __future__ import annotations

from typing import Sequence

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
    """n replies per prompt (each a chat message list), batched with a KV cache; returns [[reply]*n]*len(prompts)."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    jobs = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
    replies: list[list[str]] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        with tqdm(total=len(jobs), desc=desc, unit="reply", disable=not progress, leave=False) as bar:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start:start + batch_size]
                inputs = chat_inputs(tokenizer, [p for _, p in chunk], device)
                kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=eos, use_cache=True)
                if do_sample:
                    kwargs.update(temperature=temperature, top_p=top_p)
                else:
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                with torch.no_grad():
                    out = model.generate(**inputs, **kwargs)
                new_tokens = out[:, inputs["input_ids"].shape[1]:]
                for (i, _), tokens in zip(chunk, new_tokens):
                    replies[i].append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return replies
