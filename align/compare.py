"""A trained policy against its parent: what DPO (and PPO) report after training.

Definitions (every figure is on held-out data; all log-probabilities are of the reply's tokens only, given the
prompt under the chat template, tokenized the way TRL's DPOTrainer does):

- `reply_logprobs`: summed log-probability of each reply and its token count.
- Preference accuracy, likelihood form (defined for any model, the parent included): the share of held-out pairs
  where the model gives the chosen reply a higher log-probability than the rejected one, either summed over the
  reply's tokens (`logp_sum`) or per token (`logp_mean`, length-normalised). Ties count half.
- Preference accuracy, implicit-reward form (DPO's own, defined for a child against its reference = the parent):
  reward(y) = beta * (log pi(y|x) - log pi_parent(y|x)); the share of pairs with reward(chosen) > reward(rejected).
  For the parent itself every implicit reward is 0, so its implicit-reward accuracy is 0.5 by construction: that
  is why the parent's figure is the likelihood form above.
- Unpaired held-out examples (KTO: each reply labelled desirable or undesirable, no pairs): the implicit reward
  beta * (log pi(y|x) - log pi_parent(y|x)) of each reply; its mean over the desirable and over the undesirable
  replies and their gap (`implicit_reward_gap`, > 0 when training moved the policy the labelled way); the share
  of replies whose implicit reward has the label's sign (`label_acc_implicit_child`, zero counts half); and, for
  both models, how well the per-token log-probability ranks desirable above undesirable replies (`label_auroc_
  logp_mean_{child,parent}`: the share of (desirable, undesirable) pairs, over all such pairs, ordered right).
- KL to the parent, on the child's own samples: for each sampled reply y ~ pi, the exact per-position
  KL(pi(.|x, y<t) || pi_parent(.|x, y<t)) over the whole vocabulary, summed over the reply's tokens. Its mean over
  replies (`kl_per_sequence`) estimates the sequence-level KL(pi || pi_parent); divided by the tokens
  (`kl_per_token`) it is the average per-token KL. Non-negative by construction, unlike the sampled log-ratio.
- Win rate against the parent, judged by a reward model: both models answer the same held-out prompts; a child
  reply wins when the RM scores it above the parent's reply to the same prompt (a tie counts half).
- Mean reply length, in tokens, of each model's sampled replies (a win rate bought with longer replies shows
  here).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

from align.logprobs import eval_mode, target_logits, token_logprobs
from align.reward_diagnostics import pair_wins, win_rate

Messages = list[dict]


# --------------------------------------------------------------------------------------------- tokenization


def _prompt_and_reply_ids(tokenizer, prompt: Messages, reply: Messages) -> tuple[list[int], int]:
    """Token ids of prompt + reply under the chat template, and where the reply starts (as DPOTrainer does)."""
    prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]
    start = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        start += 1
    return full_ids, start


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _padded(rows: list[tuple[list[int], int]], pad_id: int, max_length: int | None):
    """Right-padded ids, attention mask and reply mask (1 on reply tokens) for (ids, reply start) rows."""
    import torch

    if max_length:
        rows = [(ids[:max_length], start) for ids, start in rows]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    reply = torch.zeros_like(ids, dtype=torch.bool)
    for i, (tokens, start) in enumerate(rows):
        ids[i, :len(tokens)] = torch.tensor(tokens)
        attention[i, :len(tokens)] = 1
        reply[i, start:len(tokens)] = True
    return ids, attention, reply


# -------------------------------------------------------------------------------------------- log-probs


def reply_logprobs(model, tokenizer, prompts: Sequence[Messages], replies: Sequence[Messages],
                   max_length: int | None = 1024, batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed log-probability of each reply given its prompt, and the reply's token count."""
    import torch

    device = next(model.parameters()).device
    encoded = [_prompt_and_reply_ids(tokenizer, list(p), list(r)) for p, r in zip(prompts, replies)]
    sums, counts = [], []
    with eval_mode(model), torch.no_grad():
        for chunk in _batches(encoded, batch_size):
            ids, attention, reply = _padded(chunk, tokenizer.pad_token_id, max_length)
            ids, attention, reply = ids.to(device), attention.to(device), reply.to(device)
            sums.extend(token_logprobs(model, ids, attention, reply).sum(dim=1).tolist())
            counts.extend(reply[:, 1:].sum(dim=1).tolist())
    return sums, [int(c) for c in counts]


def pair_logprobs(model, tokenizer, pairs: Sequence[dict], max_length: int | None = 1024,
                  batch_size: int = 8) -> dict[str, list]:
    """Summed log-probs and token counts of the chosen and the rejected reply of each preference pair."""
    prompts = [p["prompt"] for p in pairs]
    chosen, chosen_n = reply_logprobs(model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length, batch_size)
    rejected, rejected_n = reply_logprobs(model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length,
                                          batch_size)
    return {"chosen": chosen, "rejected": rejected, "chosen_tokens": chosen_n, "rejected_tokens": rejected_n}


def likelihood_accuracy(logps: dict[str, list]) -> dict[str, float]:
    """Preference accuracy in the likelihood form: summed and per-token log-prob of chosen vs rejected."""
    mean_c = [s / max(n, 1) for s, n in zip(logps["chosen"], logps["chosen_tokens"])]
    mean_r = [s / max(n, 1) for s, n in zip(logps["rejected"], logps["rejected_tokens"])]
    return {"logp_sum": win_rate(logps["chosen"], logps["rejected"]), "logp_mean": win_rate(mean_c, mean_r)}


def implicit_rewards(policy: dict[str, list], reference: dict[str, list], beta: float) -> tuple[list, list]:
    """DPO's implicit rewards beta * (log pi - log pi_ref) of the chosen and the rejected replies."""
    chosen = [beta * (p - r) for p, r in zip(policy["chosen"], reference["chosen"])]
    rejected = [beta * (p - r) for p, r in zip(policy["rejected"], reference["rejected"])]
    return chosen, rejected


def implicit_accuracy(policy: dict[str, list], reference: dict[str, list], beta: float) -> dict[str, float]:
    """Implicit-reward preference accuracy and mean margin of a policy against its reference."""
    chosen, rejected = implicit_rewards(policy, reference, beta)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": win_rate(chosen, rejected), "margin": round(sum(margins) / len(margins), 4)}


def _auroc(desirable: Sequence[float], undesirable: Sequence[float]) -> float | None:
    """Share of (desirable, undesirable) pairs, over all of them, where the desirable scores higher (ties half)."""
    if not desirable or not undesirable:
        return None
    import numpy as np

    d, u = np.asarray(desirable, dtype=float)[:, None], np.asarray(undesirable, dtype=float)[None, :]
    return round(float(((d > u) + 0.5 * (d == u)).mean()), 4)


def unpaired_figures(child, parent, tokenizer, rows: Sequence[dict], beta: float, max_length: int | None = 1024,
                     batch_size: int = 8, parent_context: Callable | None = None) -> dict:
    """The unpaired figures of the module docstring for held-out {"prompt", "completion", "label"} rows."""
    prompts, replies = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    child_lp, counts = reply_logprobs(child, tokenizer, prompts, replies, max_length, batch_size)
    with (parent_context or nullcontext)():
        parent_lp, _ = reply_logprobs(parent, tokenizer, prompts, replies, max_length, batch_size)
    rewards = [beta * (c - p) for c, p in zip(child_lp, parent_lp)]
    labels = [bool(r["label"]) for r in rows]
    good = [x for x, label in zip(rewards, labels) if label]
    bad = [x for x, label in zip(rewards, labels) if not label]
    signs = [(x > 0) + 0.5 * (x == 0) if label else (x < 0) + 0.5 * (x == 0) for x, label in zip(rewards, labels)]
    metrics = {"implicit_reward_desirable": round(sum(good) / len(good), 4) if good else None,
               "implicit_reward_undesirable": round(sum(bad) / len(bad), 4) if bad else None,
               "label_acc_implicit_child": round(sum(signs) / len(signs), 4)}
    if good and bad:
        metrics["implicit_reward_gap"] = round(metrics["implicit_reward_desirable"]
                                               - metrics["implicit_reward_undesirable"], 4)
    for who, logps in (("child", child_lp), ("parent", parent_lp)):
        per_token = [s / max(n, 1) for s, n in zip(logps, counts)]
        metrics[f"label_auroc_logp_mean_{who}"] = _auroc([x for x, label in zip(per_token, labels) if label],
                                                         [x for x, label in zip(per_token, labels) if not label])
    return metrics


# ------------------------------------------------------------------------------------------------------ KL


def kl_to_reference(policy, reference, tokenizer, prompts: Sequence[Messages], replies: Sequence[str],
                    max_length: int | None = 1024, batch_size: int = 8,
                    reference_context: Callable | None = None) -> dict[str, float]:
    """Exact per-position KL(policy || reference) summed over each reply's tokens (see the module docstring).

    reference_context: a context manager factory under which `reference` computes the reference's outputs
    (for a peft policy whose reference is the same model with its adapter disabled).
    """
    import torch

    device = next(policy.parameters()).device
    encoded = [_prompt_and_reply_ids(tokenizer, list(p), [{"role": "assistant", "content": r}])
               for p, r in zip(prompts, replies)]
    total_kl, total_tokens, per_sequence = 0.0, 0, []
    with eval_mode(policy, reference), torch.no_grad():
        for chunk in _batches(encoded, batch_size):
            ids, attention, reply = _padded(chunk, tokenizer.pad_token_id, max_length)
            ids, attention, reply = ids.to(device), attention.to(device), reply.to(device)
            # Only the positions predicting a reply token: (reply tokens, vocabulary) rows for both models.
            logits, rows = target_logits(policy, ids, attention, reply)
            logp = torch.log_softmax(logits.float(), -1)
            with (reference_context() if reference_context else nullcontext()):
                ref_logp = torch.log_softmax(target_logits(reference, ids, attention, reply)[0].float(), -1)
            kl = (logp.exp() * (logp - ref_logp)).sum(-1)  # KL at each position, predicting the next token
            sequence_kl = torch.zeros(len(chunk), dtype=kl.dtype, device=device).index_add_(0, rows, kl)
            per_sequence.extend(sequence_kl.tolist())
            total_kl += float(sequence_kl.sum())
            total_tokens += int(reply[:, 1:].sum())
    return {"kl_per_sequence": round(sum(per_sequence) / max(len(per_sequence), 1), 5),
            "kl_per_token": round(total_kl / max(total_tokens, 1), 6)}


# ------------------------------------------------------------------------------------------ RM judgement


def mean_reply_tokens(tokenizer, replies: Sequence[str]) -> float:
    """Mean length of replies in tokens (a win rate bought with longer or shorter replies shows here)."""
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies]
    return round(sum(lengths) / max(len(lengths), 1), 2)


def rm_judgement(prompts: Sequence[Messages], child_replies: Sequence[str], parent_replies: Sequence[str],
                 reward_model, batch_size: int = 8, max_length: int | None = 1024) -> dict:
    """Two models' replies to the same prompts, judged by a reward model: the child's win rate (a tie counts
    half) and both mean rewards, with paired-bootstrap 95% intervals over the prompts."""
    import numpy as np

    from align.gates.stats import bootstrap_ci
    from align.reward import score

    def scores(replies):
        return np.array(score([list(p) + [{"role": "assistant", "content": r}] for p, r in zip(prompts, replies)],
                              reward_model, batch_size, max_length))

    child, parent = scores(child_replies), scores(parent_replies)
    wins = pair_wins(child, parent)
    low, high = bootstrap_ci(np.mean, wins)
    gain_low, gain_high = bootstrap_ci(np.mean, child - parent)
    return {"win_rate_vs_parent": round(float(wins.mean()), 4),
            "win_rate_vs_parent_ci95": [round(low, 4), round(high, 4)],
            "rm_reward_child": round(float(child.mean()), 4), "rm_reward_parent": round(float(parent.mean()), 4),
            "rm_reward_gain_ci95": [round(gain_low, 4), round(gain_high, 4)]}


# ------------------------------------------------------------------------------------------ whole report


def compare_to_parent(child, parent, tokenizer, pairs: Sequence[dict], prompts: Sequence[Messages], *, beta: float,
                      reward_model=None, max_length: int | None = 1024, batch_size: int = 8,
                      max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0,
                      parent_context: Callable | None = None, unpaired: Sequence[dict] = ()) -> dict:
    """Every figure of the module docstring for a child and its parent; returns a flat dict of metrics.

    pairs: held-out preference rows; unpaired: held-out labelled replies (KTO); prompts: held-out prompts both models answer (sampled at `temperature`,
    top_p 1, so the KL is an estimate of the true one). reward_model: anything align.reward.score takes, or None
    to skip the win rate. parent_context: see `kl_to_reference` (LoRA: the child with its adapter disabled).
    """
    from align.generate import generate_replies

    in_parent = parent_context or nullcontext
    metrics: dict = {}
    if pairs:  # prompt-only data (PPO) has no pairs: the preference figures are left out
        child_lp = pair_logprobs(child, tokenizer, pairs, max_length, batch_size)
        with in_parent():
            parent_lp = pair_logprobs(parent, tokenizer, pairs, max_length, batch_size)
        for who, lp in (("child", child_lp), ("parent", parent_lp)):
            for form, value in likelihood_accuracy(lp).items():
                metrics[f"pref_acc_{form}_{who}"] = value
        implicit = implicit_accuracy(child_lp, parent_lp, beta)
        metrics["pref_acc_implicit_child"] = implicit["accuracy"]
        metrics["implicit_reward_margin"] = implicit["margin"]
    if unpaired:
        metrics.update(unpaired_figures(child, parent, tokenizer, unpaired, beta, max_length, batch_size,
                                        parent_context))

    generate = dict(n=1, max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, do_sample=True,
                    batch_size=batch_size, seed=seed)
    child_replies = [r[0] for r in generate_replies(child, tokenizer, prompts, desc="child replies", **generate)]
    with in_parent():
        parent_replies = [r[0] for r in generate_replies(parent, tokenizer, prompts, desc="parent replies",
                                                         **generate)]
    metrics.update(kl_to_reference(child, parent, tokenizer, prompts, child_replies, max_length, batch_size,
                                   reference_context=parent_context))
    for who, replies in (("child", child_replies), ("parent", parent_replies)):
        metrics[f"reply_tokens_{who}"] = mean_reply_tokens(tokenizer, replies)
    if reward_model is not None:
        metrics.update(rm_judgement(prompts, child_replies, parent_replies, reward_model, batch_size, max_length))
    metrics["samples"] = {"prompts": [p[-1]["content"] for p in prompts[:3]], "child": child_replies[:3],
                          "parent": parent_replies[:3]}
    return metrics
