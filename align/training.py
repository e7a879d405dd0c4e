"""What every TRL-based stage shares: trainer arguments from the recipe, the training loop with resume,
and the training history (TensorBoard, a JSON log and a loss plot)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def trainer_args(config_class, ctx, options, **stage_specific):
    """A TRL config (SFTConfig, RewardConfig, DPOConfig...) filled from the recipe's shared training knobs.

    CPU: use_cpu and fp32 (TRL defaults to bf16). GPU: bf16 when the card has it. Checkpoints go to the stage's
    work folder so `--resume` finds them.
    """
    import torch

    # TensorBoard's callback reads its folder when the trainer is built: the stage's logs/ beside the model.
    logs_dir = ctx.work.output_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(logs_dir)
    on_cpu = ctx.device == "cpu"
    bf16 = (not on_cpu) and ctx.dtype == torch.bfloat16
    fp16 = (not on_cpu) and ctx.dtype == torch.float16
    kwargs = dict(
        output_dir=str(ctx.work.checkpoints_dir),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.lr,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_ratio,  # < 1 means a share of the steps
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        logging_steps=options.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        seed=ctx.cfg.seed,
        data_seed=ctx.cfg.seed,
        report_to=["tensorboard"],
        use_cpu=on_cpu,
        bf16=bf16,
        fp16=fp16,
        gradient_checkpointing=options.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=False,
        eval_strategy="no",
    )
    kwargs.update(stage_specific)
    return config_class(**kwargs)


def train(trainer, ctx) -> dict:
    """Run (or resume) training; returns loss, steps, tokens and throughput, and saves the history."""
    logs_dir = ctx.work.output_dir / "logs"
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint)
    wall = time.perf_counter() - started
    state = trainer.state
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    save_history(state.log_history, logs_dir)
    return {
        "train_loss": round(float(result.training_loss), 4),
        "steps": int(state.global_step),
        "train_tokens": tokens,
        "train_wall_s": round(wall, 1),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
    }


def save_history(history: list[dict], logs_dir: Path) -> None:
    """history.json and loss.png beside the TensorBoard logs."""
    (logs_dir / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(*zip(*points), marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(logs_dir / "loss.png", dpi=100)
    plt.close(fig)
