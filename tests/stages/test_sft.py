"""The SFT stage end to end on the tiny model: masking, learning, saving, crashing and resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass?"},
    {"role": "assistant", "content": "Green, mostly."},
]


def test_user_and_system_tokens_get_no_loss(tiny_model_dir, tmp_path):
    """SFTTrainer, given align's training template, labels only the assistant's tokens (and their end of turn)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from align import models

    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = models.training_chat_template(tokenizer)
    model = models.load_causal_lm(str(tiny_model_dir), device="cpu")
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False, report_to=[])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": CONVERSATION}]),
                         processing_class=tokenizer)
    row = trainer.train_dataset[0]
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    untrained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == -100])
    assert trained == "Blue.<|im_end|>Green, mostly.<|im_end|>"  # the replies and their end-of-turn token
    for text in ("You are terse.", "What colour is the sky?", "And grass?", "<|im_start|>user"):
        assert text in untrained


def test_training_template_renders_exactly_like_smollm2(tiny_model_dir):
    """SmolLM2's template has no generation markers: align swaps in a twin that renders byte for byte alike."""
    from align import models
    from align.paths import TEMPLATES_DIR

    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = (TEMPLATES_DIR / "smollm2.jinja").read_text()
    twin = models.training_chat_template(tokenizer)
    assert "{% generation %}" in twin
    for conversation in (CONVERSATION, CONVERSATION[1:3]):
        assert (tokenizer.apply_chat_template(conversation, tokenize=False, chat_template=twin)
                == tokenizer.apply_chat_template(conversation, tokenize=False))


def test_unknown_template_without_markers_is_refused(tiny_model_dir):
    from align import models
    from align.errors import ModelError

    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ModelError, match="training_chat_template"):
        models.training_chat_template(tokenizer)


def test_short_run_lowers_perplexity_and_the_model_reloads(tiny_sft):
    """The session's tiny SFT run: held-out perplexity drops, and plain transformers loads and generates."""
    from align.evaluate import assistant_perplexity
    from align.generate import generate_replies
    from align.data.registry import load_chat

    manifest = json.loads((tiny_sft / "manifest.json").read_text())
    assert manifest["status"] == "ungated" and manifest["stage"] == "sft"  # the tiny recipe turns the gate off
    metrics = manifest["metrics"]
    assert metrics["eval_perplexity_after"] < metrics["eval_perplexity_before"]
    assert metrics["steps"] == 4 and metrics["train_tokens"] > 0

    model, tokenizer = _load(tiny_sft)
    train = [row["messages"] for row in load_chat("hh-harmless-chosen", "train", limit=16).rows]
    from align.models import ensure_tiny

    base, _ = _load(ensure_tiny())
    assert assistant_perplexity(model, tokenizer, train) < assistant_perplexity(base, tokenizer, train)
    replies = generate_replies(model, tokenizer, [[{"role": "user", "content": "Hello"}]], n=2, max_new_tokens=8,
                               progress=False)
    assert len(replies[0]) == 2 and all(isinstance(r, str) for r in replies[0])


def test_run_folder_has_everything_the_manifest_promises(tiny_sft):
    manifest = json.loads((tiny_sft / "manifest.json").read_text())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "README.md",
                 "logs/history.json", "logs/loss.png"):
        assert (tiny_sft / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (tiny_sft / "logs").iterdir())
    assert [d["split"] for d in manifest["data"]] == ["train", "test"]
    assert all(len(d["sha256"]) == 64 for d in manifest["data"])
    assert manifest["versions"]["trl"] and manifest["versions"]["torch"]
    assert manifest["config"]["sft"]["max_steps"] == 4
    assert manifest["timing"]["peak_rss_mb"] > 0
    assert "sft" in (tiny_sft / "README.md").read_text()
    assert not (tiny_sft.parent / ".work").exists()


def test_lora_adapter_is_kept_when_asked(runs_dir, tiny_model_dir):
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs_dir}", "--run", "lora", "max_steps=2",
                   "lora.enabled=true", "lora.save=adapter", "lora.r=4") == 0
    folder = runs_dir / "lora" / "sft"
    assert (folder / "adapter_config.json").is_file()
    assert json.loads((folder / "manifest.json").read_text())["model"]["format"] == "lora-adapter"
    model, _ = _load(folder)  # transformers loads a peft adapter folder onto its base
    assert any("lora" in name for name, _ in model.named_parameters())


def _start_sft(runs: Path, run: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "align.run", "sft", "--config", "tiny", f"runs_dir={runs}", "--run", run,
         "max_steps=40", "save_steps=4", "logging_steps=1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def test_killed_run_leaves_no_finished_folder_and_resume_continues(runs_dir, tiny_model_dir):
    process = _start_sft(runs_dir, "crash")
    checkpoints = runs_dir / "crash" / ".work" / "sft" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-8")):
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{process.stdout.read()}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (runs_dir / "crash" / "sft").exists(), "a killed run must not look finished"
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    saved = max(int(p.name.split("-")[1]) for p in complete)  # one being written when killed is passed over
    assert saved >= 4

    resumed = _start_sft(runs_dir, "crash", "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming sft from {checkpoints}/checkpoint-{saved}" in output
    manifest = json.loads((runs_dir / "crash" / "sft" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 40
    logged_by_resumed_run = output.count("{'loss'")
    assert logged_by_resumed_run == 40 - saved, "the resumed run must not redo the steps before its checkpoint"
    assert not (runs_dir / "crash" / ".work").exists()


@pytest.mark.slow
def test_embedded_model_converts_trains_and_reloads(tmp_path):
    """The default path on the real embedded SmolLM2-135M: GGUF → safetensors (cached), SFT steps, a plain reload."""
    runs = tmp_path / "runs"
    assert run_cli("sft", f"runs_dir={runs}", "--run", "embedded", "max_steps=2", "max_rows=16", "eval_rows=8",
                   "max_length=128", "batch_size=4", "gate.enabled=false") == 0
    folder = runs / "embedded" / "sft"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["source"] == "embedded:smollm2-135m-instruct"
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["eval_perplexity_before"] < 100
    model, tokenizer = _load(folder)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                                   add_generation_prompt=True)
