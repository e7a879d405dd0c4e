"""The output filter: each finished reply scored by the gates' toxicity scorer (`ui.chat.ToxicityFilter`, the same
scorer and loading as the chat app's filter); a reply above the threshold is replaced by `REFUSAL` (action refuse,
finish_reason "content_filter") or passed on marked as flagged (action flag). Streams are held back until the reply
is scored, so no toxic text is shown first. Every filtered reply is logged (completion id, choice, score, action;
never its text)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from align.errors import AlignError
from align.serving.options import FILTER_ACTIONS as ACTIONS

REFUSAL = "I'm sorry, but I can't help with that."
log = logging.getLogger("align.serving")


@dataclass(frozen=True)
class Verdict:
    score: float
    filtered: bool
    content: str  # what the caller gets
    action: str

    def extra(self) -> dict:
        """The fields a choice carries beside OpenAI's (the openai client keeps unknown fields)."""
        return {"align_filter": {"toxicity": round(self.score, 4), "filtered": self.filtered,
                                 "action": self.action if self.filtered else None}}


class OutputFilter:
    def __init__(self, threshold: float, action: str = "refuse", scorer: str = "offline"):
        from align.ui.chat import ToxicityFilter

        if not 0.0 <= float(threshold) <= 1.0:
            raise AlignError(f"--filter-toxicity must be between 0 and 1, got {threshold}")
        if action not in ACTIONS:
            raise AlignError(f"--filter-action must be one of {', '.join(ACTIONS)}, got {action!r}")
        self.toxicity = ToxicityFilter(threshold, scorer)
        self.action = action
        self._lock = threading.Lock()  # one scoring at a time: the scorer is a model on the same CPU

    def load(self) -> None:
        self.toxicity.load()

    def check(self, text: str, *, where: str) -> Verdict:
        with self._lock:
            score = self.toxicity.score(text)
        filtered = score > self.toxicity.threshold
        if filtered:
            log.warning("output filter: %s toxicity %.3f > %g: %s", where, score, self.toxicity.threshold,
                        "replaced by the refusal" if self.action == "refuse" else "flagged")
        content = REFUSAL if filtered and self.action == "refuse" else text
        return Verdict(score, filtered, content, self.action)

    def describe(self) -> str:
        return f"toxicity above {self.toxicity.threshold:g} is {'refused' if self.action == 'refuse' else 'flagged'} " \
               f"(scorer {self.toxicity.spec})"
