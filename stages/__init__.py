"""One module per training stage, each following the protocol in align/driver.py.

To add a stage: write stages/<name>.py (PARENT_STAGES, Options, run(ctx)) and add its name here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES = {
    # name: one-line help
    "sft": "supervised fine-tuning on chat data (TRL SFTTrainer), loss on the assistant's tokens",
    "rm": "reward model on preference pairs (TRL RewardTrainer), held-out accuracy and length signals",
    "dpo": "direct preference optimisation (TRL DPOTrainer), evaluated against its parent",
    "kto": "KTO on desirable/undesirable replies, unpaired: a dataset or the label store's thumbs (TRL KTOTrainer), "
           "evaluated against its parent",
    "ppo": "PPO against the reward model with a KL penalty to the parent (RLHF), evaluated against its parent",
    "grpo": "GRPO: replies scored by the reward model and rule rewards, each against its group (TRL GRPOTrainer), "
            "evaluated against its parent",
    "rloo": "RLOO: REINFORCE with a leave-one-out baseline on the reward model and rule rewards (TRL RLOOTrainer), "
            "evaluated against its parent",
}


def stage_module(name: str) -> ModuleType:
    return importlib.import_module(f"align.stages.{name}")


def sections() -> dict:
    """Each registered stage's recipe section (its `Options`), for align.config (the `align.sections` entry point)."""
    return {name: stage_module(name).Options for name in STAGES}
