"""Freeze tuning (`trainable_layers`): only the top layers and the head learn, and training still moves them."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("kind", ["causal", "reward"])
def test_only_the_top_layers_and_the_head_stay_trainable(tiny_model_dir, kind):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from align.models import freeze_lower_layers

    loader = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    model = loader.from_pretrained(str(tiny_model_dir), **({} if kind == "causal" else {"num_labels": 1}))
    layers = model.config.num_hidden_layers
    trainable = freeze_lower_layers(model, 1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert any(f"layers.{layers - 1}." in n for n in names)
    assert not any(f"layers.{i}." in n for n in names for i in range(layers - 1))
    assert "model.norm.weight" in names
    assert not any("embed_tokens" in n for n in names)
    if kind == "reward":
        assert "score.weight" in names
    # -1 changes nothing.
    fresh = loader.from_pretrained(str(tiny_model_dir), **({} if kind == "causal" else {"num_labels": 1}))
    assert freeze_lower_layers(fresh, -1) == sum(p.numel() for p in fresh.parameters())


def test_sft_with_frozen_lower_layers_changes_only_the_top(tiny_model_dir, runs_dir):
    import torch
    from safetensors.torch import load_file

    from tests.helpers import run_cli

    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs_dir}", "--run", "frozen", "max_steps=2",
                   "trainable_layers=1", "lr=1e-2") == 0
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(runs_dir / "frozen" / "sft" / "model.safetensors"))
    top = max(int(k.split("layers.")[1].split(".")[0]) for k in before if "layers." in k)
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert changed and all(f"layers.{top}." in k or k == "model.norm.weight" for k in changed), changed
