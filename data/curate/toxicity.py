"""Toxic replies, scored by the gates' own toxicity scorer (align.gates.toxicity.load_scorer), batched.

The replies judged are the ones a model is trained to give: a chat's assistant turns (SFT targets) and a pair's
chosen reply. A pair's rejected reply may stay toxic — it teaches the reward model what not to do — unless
`rejected: true`. A row goes when any judged reply scores at least `threshold` on the scorer's `toxicity` label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from align.config import SHARE, opt
from align.data.curate import Removed, StepResult, trained_replies

STEP = "toxicity"


@dataclass
class Options:
    enabled: bool = opt(True, "drop rows whose trained replies the toxicity scorer flags")
    threshold: float = opt(0.5, "toxicity probability from which a reply is toxic", **SHARE)
    rejected: bool = opt(False, "judge a pair's rejected reply too (by default it may stay toxic)")
    scorer: Optional[str] = opt(None, "toxicity scorer (default: the gate's, gate.scorer)")
    batch_size: int = opt(32, "texts per scorer batch", min=1)


class Step:
    """The scorer loaded once, each chunk's replies scored in batches."""

    def __init__(self, options, env):
        from align.gates.toxicity import load_scorer

        self.options, self.progress = options, env.progress
        self.scorer_spec = options.scorer or env.scorer
        self.scorer = load_scorer(self.scorer_spec, device=env.device)

    def apply(self, records) -> StepResult:
        options = self.options
        texts, owners = [], []
        for index, record in enumerate(records):
            for text in trained_replies(record.row, rejected=options.rejected):
                texts.append(text)
                owners.append(index)
        scores = self.scorer.score(texts, batch_size=options.batch_size, progress=self.progress)["toxicity"] \
            if texts else []
        worst: dict[int, float] = {}
        for owner, score in zip(owners, scores):
            worst[owner] = max(worst.get(owner, 0.0), float(score))
        result = StepResult(kept=[], notes={"scorer": self.scorer_spec, "threshold": options.threshold},
                            counts={"replies_scored": len(texts)})
        for index, record in enumerate(records):
            if worst.get(index, 0.0) >= options.threshold:
                result.removed.append(Removed(record, STEP, "toxic_reply", f"toxicity {worst[index]:.3f}"))
            else:
                result.kept.append(record)
        return result


def apply(records, options, env) -> StepResult:
    return Step(options, env).apply(records)
