"""POST /v1/feedback: a rating of a served reply, or a preferred alternative to it, into the label store as the chat
app's feedback (`LabelStore.add_feedback`), so `labels:<store>` trains on it.

The completions wait for their feedback where the recipe's `serve.keep_completions` says: in the label store
(`StoredCompletions`: feedback on a completion made before a restart still lands) or in this process's memory only
(`RememberedCompletions`: prompts and replies never reach the disk; a restart forgets them). Either way only the
newest `keep_max`, for `keep_days`. One feedback per choice: the store's unique index says so, across restarts.
On a server that takes API keys a completion belongs to the key that made it: feedback from any other key is
answered as for a completion that does not exist (404), so that a key holder who learns another caller's completion
id can neither rate it nor pre-empt its owner's one feedback per choice, nor learn that it exists.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from align.data.store import FeedbackExists
from align.serving import protocol
from align.serving.protocol import ApiError


@dataclass
class Kept:
    """A finished completion, for feedback."""

    model: str
    prompt: list[dict]
    replies: list[str]
    withheld: list[bool]
    created_at: float = field(default_factory=time.time)
    owner: str | None = None  # the API key's name that made it; None on a server without keys (any caller)


class RememberedCompletions:
    """The newest `keep_max` completions of this process, in memory."""

    where = "memory"

    def __init__(self, keep_max: int = 10_000, keep_days: float = 7.0):
        self.keep_max, self.keep_seconds = keep_max, keep_days * 86400.0
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, cid: str, kept: Kept) -> None:
        with self._lock:
            self._kept[cid] = kept
            while len(self._kept) > self.keep_max:
                self._kept.popitem(last=False)

    def get(self, cid: str) -> Kept | None:
        with self._lock:
            kept = self._kept.get(cid)
        return kept if kept is not None and kept.created_at >= time.time() - self.keep_seconds else None

    def missing(self, cid: str) -> str:
        return (f"no completion {cid!r} on this server: serve.keep_completions=memory keeps the newest "
                f"{self.keep_max} completions since the server started, for feedback")


class StoredCompletions(RememberedCompletions):
    """The newest `keep_max` completions, in the label store's `completions` table (they outlive the process)."""

    where = "store"

    def __init__(self, store, keep_max: int = 10_000, keep_days: float = 7.0):
        super().__init__(keep_max, keep_days)
        self.store = store

    def keep(self, cid: str, kept: Kept) -> None:
        self.store.keep_completion(cid, kept.prompt, kept.replies, kept.withheld, model=kept.model,
                                   owner=kept.owner, keep_max=self.keep_max, keep_seconds=self.keep_seconds, now=kept.created_at)

    def get(self, cid: str) -> Kept | None:
        row = self.store.completion(cid, since=time.time() - self.keep_seconds)
        if row is None:
            return None
        return Kept(row["model"], row["conversation"], row["replies"], row["withheld"], row["created_at"],
                    row["owner"])

    def missing(self, cid: str) -> str:
        return (f"no completion {cid!r} in this server's label store (it keeps the newest {self.keep_max} "
                f"completions, for {self.keep_seconds / 86400:g} days, for feedback)")


def completions_keeper(where: str, store, keep_max: int, keep_days: float) -> RememberedCompletions:
    """Where `serve.keep_completions` keeps completions (memory when there is no store)."""
    if where == "store" and store is not None:
        return StoredCompletions(store, keep_max, keep_days)
    return RememberedCompletions(keep_max, keep_days)


def _checked(kept: Kept, body: protocol.FeedbackRequest) -> str | None:
    """The preferred alternative's text (None for a rating); ApiError 400 for feedback this completion cannot
    take."""
    if body.choice >= len(kept.replies):
        raise ApiError(400, f"choice {body.choice}: the completion has {len(kept.replies)} choice(s)",
                       param="choice", code="invalid_value")
    if (body.rating is None) == (body.preferred is None):
        raise ApiError(400, "feedback takes either a rating ('up' or 'down') or a preferred alternative",
                       param="rating", code="invalid_value")
    preferred = body.preferred
    if isinstance(preferred, int) and not isinstance(preferred, bool):
        if not 0 <= preferred < len(kept.replies) or preferred == body.choice:
            raise ApiError(400, f"preferred {preferred}: not another choice of this completion", param="preferred",
                           code="invalid_value")
        if kept.withheld[preferred]:
            raise ApiError(400, "a reply the output filter withheld cannot be preferred", param="preferred")
        preferred = kept.replies[preferred]
    elif preferred is not None and not preferred.strip():
        raise ApiError(400, "preferred: the alternative reply is empty", param="preferred", code="invalid_value")
    if kept.withheld[body.choice]:
        raise ApiError(400, "a reply the output filter withheld takes no feedback", param="choice")
    return preferred


def record_feedback(store, completions: RememberedCompletions, body: protocol.FeedbackRequest, user: str,
                    auth: str) -> int:
    """Store the feedback as the chat app does: a rating of the reply, or the preferred alternative chosen over it
    (model "<model> > <model>", as the chat app's compare choices). Returns the feedback row's id. `user` is the
    caller's name; a completion with an owner takes feedback from its owner only (404 for anyone else)."""
    kept = completions.get(body.completion_id)
    if kept is None or (kept.owner is not None and kept.owner != user):
        raise ApiError(404, completions.missing(body.completion_id), param="completion_id",
                       code="completion_not_found")
    preferred = _checked(kept, body)
    reply = kept.replies[body.choice]
    rated = {"user": user, "auth": auth, "completion_id": body.completion_id, "choice": body.choice}
    try:
        if preferred is None:
            return store.add_feedback(kept.prompt, reply, rating=body.rating, model=kept.model, **rated)
        return store.add_feedback(kept.prompt, preferred, rejected=reply, model=f"{kept.model} > {kept.model}",
                                  **rated)
    except FeedbackExists as error:
        raise ApiError(409, str(error), type="conflict", param="choice", code="feedback_exists") from error
