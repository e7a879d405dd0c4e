"""Offline by default: nothing downloads at run time unless the user says so (HF_HUB_OFFLINE=0 in the environment).
Every entry point (`python -m align.run`, `python -m align.bench`) calls `set_offline_defaults` before it imports
the libraries that read these variables."""

from __future__ import annotations

import os

DEFAULTS = (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False"),
            ("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"))


def set_offline_defaults() -> None:
    """Set each variable that the environment does not set already."""
    for name, value in DEFAULTS:
        os.environ.setdefault(name, value)
