"""Temperature, top-k and nucleus (top-p) sampling for `generate`, fast on a CPU, each reply with its own randomness.

transformers samples with `TopKLogitsWarper` (top_k 50 when the model's generation config sets none) and
`TopPLogitsWarper`, which sorts the whole vocabulary of every row at every step, then draws with one
`torch.multinomial` over the whole vocabulary; on a CPU with a 49k vocabulary (SmolLM2) the two take more than
half as long as the 135M model's decoding step itself. `NucleusSampler` is a logits processor that applies the
same temperature and top_k, finds the same nucleus among the most likely tokens (`torch.topk`; wider for a row
whose top candidates hold less than top_p of the probability, the whole vocabulary sorted only when that is not
enough either), draws each row's token with that row's own `torch.Generator` by the Gumbel-max trick with one
Gumbel variable per vocabulary id (`gumbel_argmax`), and leaves only the drawn token's score finite, so that
`generate(do_sample=False)` takes it. Because token v's noise depends only on the seed and the step, two models
sampled with the same seeds make the same choice whenever their distributions are close: the gate compares a child
with its parent on common random numbers, so what differs between their replies is the models, not the dice.

The nucleus, as in transformers: the most likely tokens, in order, while the probability of the tokens before
them is below top_p (so at least one token); the draw is proportional to their probabilities. Seeding each reply
by (seed, prompt, sample) makes a reply independent of which other replies share its batch.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
from transformers import LogitsProcessor

#: Top candidates searched for the nucleus, then (for flat distributions) more, then the whole vocabulary sorted.
CANDIDATES = 256
WIDER_CANDIDATES = 4096


def reply_seed(seed: int, prompt: int, sample: int) -> int:
    """A well-mixed 63-bit seed for sample `sample` of prompt `prompt` under the run's `seed`."""
    state = np.random.SeedSequence([seed, prompt, sample]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def effective_top_k(generation_config) -> int | None:
    """The top_k that transformers' `generate` applies when sampling: the model's generation config's, else
    transformers' own default (50; a config that leaves top_k unset still samples from the 50 best tokens)."""
    top_k = getattr(generation_config, "top_k", None)
    if top_k is None:
        from transformers import GenerationConfig

        defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
        top_k = defaults().get("top_k") if defaults else 50
    return int(top_k) if top_k else None


def supports(generation_config) -> bool:
    """Whether the model's generation config asks for nothing that NucleusSampler leaves out (min_p, typical_p,
    epsilon or eta sampling); top_k (`effective_top_k`) is applied before top_p, as transformers does."""
    g = generation_config
    return (getattr(g, "min_p", None) in (None, 0.0) and getattr(g, "typical_p", None) in (None, 1.0)
            and not getattr(g, "epsilon_cutoff", None) and not getattr(g, "eta_cutoff", None))


def gumbel_argmax(weights, token_ids, vocabulary: int, generator) -> int:
    """The position drawn among `weights` (proportional to them), by the Gumbel-max trick with one Gumbel variable
    per *vocabulary id*: every step consumes `vocabulary` uniforms of the row's generator, and token v gets the same
    noise whatever the model. Two models that sample with the same seeds therefore pick the same token whenever
    their distributions are close (common random numbers), which is what makes a paired comparison of a child with
    its parent precise; each draw is still exactly proportional to `weights`."""
    import torch

    uniform = torch.rand(vocabulary, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    scores = torch.log(weights.double().clamp_min(1e-300)) + gumbel[token_ids]
    scores[weights <= 0] = float("-inf")
    return int(scores.argmax())


class NucleusSampler(LogitsProcessor):
    """A `generate` logits processor that draws the next token itself (use with do_sample=False).

    Scores are divided by `temperature`, cut to the `top_k` best (None or 0: no cut), then to the top_p nucleus.
    `seeds`: one per row of the batch, in row order.
    """

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int], top_k: int | None = None,
                 candidates: int = CANDIDATES):
        import torch

        if temperature <= 0:
            raise ValueError(f"temperature must be positive to sample, got {temperature}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k) if top_k else None
        self.candidates = candidates
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def with_generators(self, generators) -> "NucleusSampler":
        """The same settings drawing with `generators` (one per row, their states shared, not copied): rows that
        belong to several samplers (the serving engine's batch) sampled in one call."""
        other = copy.copy(self)
        other.generators = list(generators)
        return other

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != len(self.generators):
            raise ValueError(f"NucleusSampler has {len(self.generators)} seeds for a batch of {scores.shape[0]} rows")
        logits = scores.float()  # on the model's device; only the candidates' probabilities move to the CPU
        if self.temperature != 1.0:
            logits = logits / self.temperature
        index = None  # vocabulary ids of the columns of `probs` (None: all, in order)
        if self.top_k and self.top_k < logits.shape[-1]:
            logits, index = logits.topk(self.top_k, dim=-1)
        probs = torch.softmax(logits, dim=-1)
        if self.top_p >= 1.0:
            top, columns = probs.cpu(), None  # draw from every column
        elif probs.shape[-1] > self.candidates:
            top, columns = (t.cpu() for t in probs.topk(self.candidates, dim=-1))
        else:
            top, columns = (t.cpu() for t in probs.sort(dim=-1, descending=True))
        index = None if index is None else index.cpu()
        chosen = torch.empty(len(self.generators), dtype=torch.long)
        vocabulary = scores.shape[-1]
        for row, generator in enumerate(self.generators):
            weights = top[row]
            row_columns = None if columns is None else columns[row]
            if columns is not None:
                for wider in (WIDER_CANDIDATES, None):  # the nucleus reaches past the candidates: look further
                    if weights.shape[0] == probs.shape[-1] or float(weights.sum()) >= self.top_p:
                        break
                    if wider and wider < probs.shape[-1]:
                        weights, row_columns = (t.cpu() for t in probs[row].topk(wider))
                    else:
                        weights, row_columns = (t.cpu() for t in probs[row].sort(descending=True))
                keep = weights.cumsum(0) - weights < self.top_p  # the tokens ranked above hold less than top_p
                keep[0] = True  # at least the most likely token
                weights = weights[:int(keep.sum())]  # a prefix: the probability above a token only grows
                row_columns = row_columns[:len(weights)]
            ids = torch.arange(len(weights)) if row_columns is None else row_columns
            if index is not None:
                ids = index[row, ids]
            chosen[row] = ids[gumbel_argmax(weights, ids, vocabulary, generator)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen), device=scores.device), chosen.to(scores.device)] = 0.0
        return out
