"""align: SFT → reward model → DPO/PPO, with human labels from align's own UI and gates between stages."""

__version__ = "0.1.0"
