"""The policy a preference stage trains and the reference it stays close to (dpo, ppo and the other RL stages).

Contract of `policy_and_reference`: the tokenizer and the policy are loaded from the parent's own source; the
reference is the parent itself, never a hub path:
- full fine-tuning: a second, frozen copy (`requires_grad_(False)`, eval mode) loaded from the same source;
- LoRA with `wrap_lora=True` (stages with their own training loop, e.g. ppo): the policy is wrapped with the peft
  adapter here, and the reference is the same model with the adapter switched off (`reference_context`);
- LoRA with `wrap_lora=False` (TRL trainers that take `peft_config` and wrap the model themselves, e.g. dpo):
  `reference` is None and `lora` holds the LoraConfig to pass on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class PolicyAndReference:
    tokenizer: Any
    policy: Any
    reference: Any  # the frozen parent, the peft policy itself (wrapped LoRA), or None (TRL applies the adapter)
    reference_context: Optional[Callable] = None  # context factory under which `reference` computes the parent
    lora: Any = None  # the peft LoraConfig, or None when LoRA is off


def policy_and_reference(source: str, model_options, lora_options, *, device: str = "auto", dtype=None,
                         wrap_lora: bool = False, gradient_checkpointing: bool = False,
                         trainable_layers: int = -1, load_reference: bool = True) -> PolicyAndReference:
    """Tokenizer, policy and reference for a stage whose parent is `source` (see the module docstring).

    gradient_checkpointing: switched on on the policy before any adapter (generation still passes use_cache=True).
    trainable_layers: with full fine-tuning, freeze all but the top layers (align.models.freeze_lower_layers).
    load_reference=False: no frozen copy (`reference` None) for trainers that build their own from the policy's
    folder (TRL's GRPOTrainer, RLOOTrainer).
    """
    from align import models

    tokenizer = models.load_tokenizer(source, model_options)
    policy = models.load_causal_lm(source, model_options, device=device, dtype=dtype)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        policy.config.use_cache = False
    lora = models.lora_config(lora_options)
    if lora is not None:
        if not wrap_lora:
            return PolicyAndReference(tokenizer, policy, None, None, lora)
        from peft import get_peft_model

        policy = get_peft_model(policy, lora)
        return PolicyAndReference(tokenizer, policy, policy, policy.disable_adapter, lora)
    models.freeze_lower_layers(policy, trainable_layers)
    if not load_reference:
        return PolicyAndReference(tokenizer, policy, None, None, None)
    reference = models.load_causal_lm(source, model_options, device=device, dtype=dtype)
    reference.requires_grad_(False).eval()
    return PolicyAndReference(tokenizer, policy, reference, None, None)
