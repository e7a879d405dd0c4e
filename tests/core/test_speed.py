"""align's training speed-ups (align/training.py) keep the results: padding-free batches give the padded loss and
gradients, length-grouped batches still visit every row once per epoch, and the stages' trainers use them."""

from __future__ import annotations

import pytest


@pytest.fixture()
def tiny_sft_trainer(tiny_model_dir, tmp_path):
    """A plain TRL SFTTrainer on the tiny model and six chat rows of different lengths (assistant-only loss)."""
    from trl import SFTConfig, SFTTrainer

    from align import models
    from align.data.registry import load_chat

    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = models.training_chat_template(tokenizer)
    model = models.load_causal_lm(str(tiny_model_dir), device="cpu")
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], assistant_only_loss=True,
                     max_length=400, gradient_checkpointing=False)
    rows = load_chat("hh-harmless-chosen", "train", limit=6).to_dataset()
    return SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)


def _loss_and_grad(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grad = trainer.model.get_input_embeddings().weight.grad.clone()
    return float(loss.detach()), grad


def test_padding_free_batches_give_the_padded_loss_and_gradients(tiny_sft_trainer):
    import torch

    from align.training import use_padding_free_batches

    trainer = tiny_sft_trainer
    rows = [{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(6)]
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1, "the rows must differ in length for padding to matter"
    padded = trainer.data_collator(rows)
    assert (padded["attention_mask"] == 0).any()

    assert use_padding_free_batches(trainer)
    flat = trainer.data_collator(rows)
    assert flat["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in flat

    trainer.model.train()
    padded_loss, padded_grad = _loss_and_grad(trainer, padded)
    flat_loss, flat_grad = _loss_and_grad(trainer, flat)
    assert flat_loss == pytest.approx(padded_loss, rel=1e-5)
    torch.testing.assert_close(flat_grad, padded_grad, rtol=1e-4, atol=1e-6)

    # Control: the same tokens as one long sequence (attention across rows) give another loss, so the check above
    # could fail if transformers did not keep attention within each row.
    leaky = dict(flat, position_ids=torch.arange(sum(lengths))[None])
    leaky.pop("cu_seq_lens_q"), leaky.pop("cu_seq_lens_k"), leaky.pop("seq_idx")
    assert _loss_and_grad(trainer, leaky)[0] != pytest.approx(padded_loss, rel=1e-4)


def test_length_grouped_sampler_visits_every_row_once_with_less_padding():
    import random

    from align.training import LengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(203)]  # 25 full batches of 8 and a short one
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=42, window_batches=4)

    def padded_positions(order):
        return sum(max(lengths[i] for i in order[s:s + 8]) * len(order[s:s + 8]) for s in range(0, len(order), 8))

    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(lengths)))  # a permutation: every row once
        assert len(sampler.batches()[-1]) == 203 % 8  # the short batch comes last, so batches never straddle
        epochs.append(order)
    assert epochs[0] != epochs[1] != epochs[2]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # same (seed, epoch), same order: a resumed run sees the same batches

    shuffled = list(range(len(lengths)))
    random.Random(1).shuffle(shuffled)
    assert padded_positions(epochs[0]) < 0.8 * padded_positions(shuffled)


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_stage_trainers_draw_length_grouped_batches(stage, tiny_model_dir, tmp_path):
    """Each stage's own build_trainer (what `run` and the benchmark use) applies align's speed-ups; an epoch of its
    dataloader covers every prepared row once."""
    from align.bench.trainers import align_trainer, bench_recipe, training_rows
    from align.training import sequence_lengths

    cfg = bench_recipe({"stage": stage, "model": "tiny", "recipe": "tiny", "steps": 2, "work_dir": str(tmp_path)})
    trainer, _ = align_trainer(stage, cfg, training_rows(stage, cfg[stage], 2), tmp_path)
    fused_head = [] if stage == "rm" else ["LM head on labelled positions only"]  # the rm has a score head
    assert trainer.align_speedups == ["no gradient checkpointing", "length-grouped batches", *fused_head]
    assert not trainer.args.gradient_checkpointing

    lengths = sequence_lengths(trainer.train_dataset, cfg[stage].max_length)
    rows_seen = [i for i in trainer._get_train_sampler()]
    assert sorted(rows_seen) == list(range(len(lengths)))
    batch = next(iter(trainer.get_train_dataloader()))
    expected_rows = cfg[stage].batch_size * (1 if stage == "sft" else 2)  # preference batches: chosen + rejected
    assert batch["input_ids"].shape[0] == expected_rows


def test_padding_free_batching_is_refused_where_trl_pads(tiny_model_dir, tmp_path):
    from align.bench.trainers import align_trainer, bench_recipe, training_rows
    from align.errors import ConfigError

    cfg = bench_recipe({"stage": "rm", "model": "tiny", "recipe": "tiny", "steps": 1, "work_dir": str(tmp_path),
                        "overrides": ["rm.batching=padding_free"]})
    with pytest.raises(ConfigError, match="sft only"):
        align_trainer("rm", cfg, training_rows("rm", cfg.rm, 1), tmp_path)


def test_lm_head_on_labelled_positions_only_keeps_loss_and_gradients(tiny_sft_trainer, monkeypatch):
    """On CPU align makes TRL's fused LM head project only the positions with a label (the assistant's tokens here):
    fewer rows reach the vocabulary projection, and the loss and gradients are those of projecting every row."""
    import torch
    from trl.trainer import utils as trl_utils

    from align.training import project_labelled_positions_only

    # TRL's own choice for this test (an earlier test's trainer may have switched it), restored afterwards
    trl_choice = getattr(trl_utils._use_triton, "align_original", trl_utils._use_triton)
    monkeypatch.setattr(trl_utils, "_use_triton", trl_choice)
    projected = []
    chunked = trl_utils._ChunkedLogProbFunction

    class CountingChunkedLogProb:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingChunkedLogProb)
    trainer = tiny_sft_trainer
    collate = trainer.data_collator
    batch = collate([trainer.train_dataset[i] for i in range(4)])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    every_loss, every_grad = _loss_and_grad(trainer, batch)
    every_position = batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1)
    assert projected[-1] == every_position

    assert project_labelled_positions_only()
    compact_loss, compact_grad = _loss_and_grad(trainer, batch)
    assert projected[-1] == labelled < 0.6 * every_position  # the assistant's tokens only
    assert compact_loss == pytest.approx(every_loss, rel=1e-5)
    torch.testing.assert_close(compact_grad, every_grad, rtol=1e-4, atol=1e-6)
