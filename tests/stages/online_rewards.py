"""A marker reward the tiny model can learn in a few steps, for the grpo and rloo tests (named in their recipes as
`python:tests.stages.online_rewards.low_token_share`): the share of a reply's tokens among the lowest quarter of
the tiny vocabulary — dense, so a random policy's replies already differ in it (PPO's test rewards the same)."""

from __future__ import annotations

TARGET_BELOW = 256  # a quarter of the tiny model's 1,024 tokens
MARKER_TERM = "python:tests.stages.online_rewards.low_token_share"


def low_token_share(prompts, completions, completion_ids, **_):
    return [sum(i < TARGET_BELOW for i in ids) / max(len(ids), 1) for ids in completion_ids]
