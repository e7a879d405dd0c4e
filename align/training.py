"""What every TRL-based stage shares: trainer arguments from the recipe, the training loop with resume,
and the training history (TensorBoard, a JSON log and a loss plot)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from align.log import log


#: the trackers transformers' trainers report to (transformers.integrations' names) that `report_to` accepts
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "clearml", "dvclive", "neptune", "swanlab",
            "azure_ml", "codecarbon", "dagshub", "flyte")


def trackers(cfg) -> list[str]:
    """The recipe's `report_to` as a list of tracker names ([] for `none`); an unknown name is a ConfigError."""
    from align.errors import ConfigError

    value = cfg.get("report_to", ["tensorboard"]) if hasattr(cfg, "get") else getattr(cfg, "report_to")
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for part in names for n in str(part).split(",") if str(n).strip()]
    if names in ([], ["none"]):
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or "none" in names:
        raise ConfigError(f"report_to: unknown tracker {(unknown or ['none'])[0]!r} (known: {', '.join(TRACKERS)}; "
                          "or `none` alone)")
    return list(dict.fromkeys(names))


def start_trackers(ctx) -> None:
    """MLflow: one run per stage in the local file store under the runs folder (unless MLFLOW_TRACKING_URI says
    otherwise), experiment = the run's name, started here so that it stays open for the gate's artifacts."""
    if "mlflow" not in trackers(ctx.cfg):
        return
    import mlflow

    runs_dir = Path(ctx.cfg.runs_dir).resolve()
    if "MLFLOW_TRACKING_URI" not in os.environ:  # MLflow 3 asks for this opt-in to its (maintained) file store
        os.environ["MLFLOW_TRACKING_URI"] = (runs_dir / "mlruns").as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(ctx.work.run_dir.name if hasattr(ctx.work, "run_dir") else "align")
    if mlflow.active_run() is None:
        mlflow.start_run(run_name=ctx.name)


def finish_trackers(cfg, output_dir: Path, manifest: dict | None) -> None:
    """MLflow: the gate's figures and the manifest as artifacts, the gate's verdict as a tag; the run ended
    (FAILED when there is no manifest: the stage raised)."""
    if "mlflow" not in trackers(cfg):
        return
    import mlflow

    if mlflow.active_run() is None:
        return
    if manifest is None:
        mlflow.end_run(status="FAILED")
        return
    for name in ("manifest.json", "gate.json", "gate_report.html", "README.md"):
        if (output_dir / name).is_file():
            mlflow.log_artifact(str(output_dir / name))
    for figure in sorted(output_dir.rglob("*.png")):
        mlflow.log_artifact(str(figure), artifact_path=str(figure.parent.relative_to(output_dir)).replace(".", "")
                            or None)
    gate = manifest.get("gate") or {}
    figures = {c["name"]: c["value"] for c in gate.get("checks") or [] if isinstance(c.get("value"), (int, float))}
    if figures:
        mlflow.log_metrics({f"gate.{k}": float(v) for k, v in figures.items()})
    mlflow.set_tags({"align.stage": manifest["stage"], "align.status": manifest["status"],
                     "align.gate": str(gate.get("verdict"))})
    mlflow.end_run()


class StepTrackers:
    """The recipe's trackers for a training loop of align's own (PPO's), as TRL's trainers report theirs: each
    step's figures go to TensorBoard (events in `logs_dir`, tags `<prefix>/<name>`) and to the MLflow run that
    `start_trackers` opened (metrics by name, by step; `params` once). `names`: `trackers(cfg)`'s list ([] for
    none: nothing is written). A tracker only transformers' trainers drive is named in a warning and left out."""

    OWN = ("tensorboard", "mlflow")

    def __init__(self, names, logs_dir: Path | None, prefix: str, params: dict | None = None):
        self.names = [name for name in names if name in self.OWN]
        others = [name for name in names if name not in self.OWN]
        if others:
            log.warning(f"{prefix}: report_to {', '.join(others)}: this loop reports to {' and '.join(self.OWN)} "
                        f"only; the rest are left out")
        self.prefix, self.writer = prefix, None
        if "tensorboard" in self.names and logs_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            Path(logs_dir).mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(logs_dir))
        if "mlflow" in self.names and params:
            import mlflow

            mlflow.log_params(params)

    def log(self, stats: dict, step: int) -> None:
        """The step's numbers (the `step` entry itself and anything not a number left out)."""
        numbers = {key: float(value) for key, value in stats.items()
                   if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(f"{self.prefix}/{key}", value, step)
            self.writer.flush()
        if "mlflow" in self.names:
            import mlflow

            mlflow.log_metrics(numbers, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
        report_to=trackers(ctx.cfg),
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


#: Callbacks added to every trainer that `train` runs in this process (align.sweep's pruning callback).
EXTRA_CALLBACKS: list = []


def train(trainer, ctx) -> dict:
    """Run (or resume) training; returns loss, steps, tokens and throughput, and saves the history."""
    from align.models import freeze_lower_layers

    logs_dir = ctx.work.output_dir / "logs"
    for callback in EXTRA_CALLBACKS:
        trainer.add_callback(callback)
    if ctx.options.trainable_layers >= 0 and not hasattr(trainer.model, "peft_config"):
        trainable = freeze_lower_layers(trainer.model, ctx.options.trainable_layers)
        log.info(f"training the top {ctx.options.trainable_layers} layers and the head: {trainable:,} "
                 f"parameters")
    start_trackers(ctx)
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


#: the trainers' own history plots: (file, [(history key, axis label), ...]), one panel per key
LOSS_PLOT = ("loss.png", [("loss", "training loss")])
REWARD_PLOT = ("reward.png", [("reward", "mean reward"), ("kl", "KL to the reference (per reply)")])


def save_history(history: list[dict], logs_dir: Path, plot=LOSS_PLOT) -> None:
    """history.json beside the TensorBoard logs, and `plot`'s figure (default loss.png): one panel per key, its
    value per step (the entries without it or without a step left out; no figure when no entry has the first)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    (logs_dir / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    filename, panels = plot
    series = [[(h["step"], h[key]) for h in history if key in h and "step" in h] for key, _ in panels]
    if not series[0]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 if len(panels) == 1 else 8, 3), squeeze=False)
    for number, (ax, (_, label), points) in enumerate(zip(axes[0], panels, series)):
        if points:
            ax.plot(*zip(*points), marker=".", color=f"C{number}")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(logs_dir / filename, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- speed
# TRL's defaults are made for GPUs; align's, for the CPU it mostly runs on (measured by `python -m align.bench`):
# - gradient checkpointing off (TrainOptions.gradient_checkpointing; TRL turns it on): no second forward per step;
# - batches of similar-length rows (`batching: grouped`): less padding to compute, same loss per row;
# - or, for SFT, padding-free batches (`batching: padding_free`): rows concatenated, attention kept within each row;
# - the LM head projects only the positions that have a label (see `project_labelled_positions_only`).


def sequence_lengths(dataset, max_length: int | None) -> list[int] | None:
    """Tokens per row as the trainer's collator will pad them (SFT: input_ids; reward: the longer of chosen and
    rejected; DPO: the prompt plus the longer reply, cut at max_length), or None for an unknown layout or a
    dataset without a length (streamed)."""
    columns = set(getattr(dataset, "column_names", None) or [])
    if not hasattr(dataset, "__len__"):
        return None
    if "input_ids" in columns:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    elif {"chosen_ids", "rejected_ids"} <= columns:
        prompts = dataset["prompt_ids"] if "prompt_ids" in columns else [[]] * len(dataset)
        lengths = [len(p) + max(len(c), len(r))
                   for p, c, r in zip(prompts, dataset["chosen_ids"], dataset["rejected_ids"])]
    else:
        return None
    return [min(n, max_length) for n in lengths] if max_length else lengths


def project_labelled_positions_only() -> bool:
    """TRL's fused LM head (DPO, SFT, GRPO, RLOO) turns hidden states into next-token log-probs in vocabulary tiles.
    With Triton on a GPU it projects only the positions whose label is not -100; elsewhere, on CPU, it projects every
    position and zeroes the unlabelled ones afterwards: for DPO on HH prompts that is mostly prompt positions, each
    a 49k-wide logit row computed (and recomputed in the backward) for nothing. The compact path is plain PyTorch
    indexing and gives the same log-probs, so align takes it on CPU too. Returns whether TRL has the switch."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:  # another TRL version: leave it as it is
        return False
    if not getattr(decide, "align_compact_on_cpu", False):
        def compact(device, _decide=decide):
            return device.type == "cpu" or _decide(device)

        compact.align_compact_on_cpu, compact.align_original = True, decide
        trl_utils._use_triton = compact
    return True


def uses_fused_lm_head(trainer) -> bool:
    """Whether TRL gave the trainer's model its fused LM head (SFT and DPO do; the reward trainer has a score head)."""
    model = trainer.model
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    forward = getattr(model.forward, "__func__", None)
    return getattr(getattr(forward, "__code__", None), "co_name", None) == "_fused_forward"


class LengthGroupedSampler:
    """Row order for a DataLoader: every run of `batch_size` rows has similar lengths, and batches come in random
    order. Each epoch: shuffle the rows, sort each window of `window_batches` batches by length, cut it into
    batches, shuffle the batches (a short last batch stays last). Seeded by (seed, epoch), so a resumed run sees
    the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window_batches: int = 16):
        self.lengths, self.batch_size, self.seed, self.window_batches = lengths, batch_size, seed, window_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = self.batch_size * self.window_batches
        batches = []
        for start in range(0, len(order), window):
            rows = sorted(order[start:start + window], key=self.lengths.__getitem__)
            batches += [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        return [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + short

    def __iter__(self):
        return iter([row for batch in self.batches() for row in batch])


def group_by_length(trainer) -> bool:
    """Make the trainer draw batches of similar-length rows (LengthGroupedSampler); False if its rows are of an
    unknown layout."""
    args = trainer.args
    lengths = sequence_lengths(trainer.train_dataset, getattr(args, "max_length", None))
    if lengths is None:
        return False
    seed = args.data_seed if args.data_seed is not None else args.seed
    sampler = LengthGroupedSampler(lengths, args.per_device_train_batch_size, seed)
    trainer._get_train_sampler = lambda train_dataset=None: sampler  # what Trainer.get_train_dataloader uses
    return True


def use_padding_free_batches(trainer) -> bool:
    """SFT: concatenate each batch's rows into one sequence with per-row position ids and no padding (TRL's
    padding-free collator); transformers keeps attention within each row. The rows are those TRL prepared
    (truncated to max_length), which TRL's own padding_free=True refuses without packing."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = trainer.data_collator
    if not isinstance(collator, DataCollatorForLanguageModeling) or collator.padding_free:
        return False
    trainer.data_collator = DataCollatorForLanguageModeling(
        pad_token_id=collator.pad_token_id, padding_free=True, pad_to_multiple_of=collator.pad_to_multiple_of)
    trainer.padding_free = True
    return True


BATCHING = ("grouped", "random", "padding_free")


def tune_for_speed(trainer, options):
    """align's speed choices on top of the TRL trainer a stage built (see above); the ones applied are listed in
    `trainer.align_speedups` (the benchmark reports them)."""
    from align.errors import ConfigError

    batching = getattr(options, "batching", "grouped")
    if batching not in BATCHING:
        raise ConfigError(f"batching={batching!r}: choose {', '.join(BATCHING)}")
    applied = [] if trainer.args.gradient_checkpointing else ["no gradient checkpointing"]
    if batching == "padding_free":
        if not use_padding_free_batches(trainer):
            raise ConfigError(f"batching=padding_free works for sft only ({type(trainer).__name__} pads its batches)")
        applied.append("padding-free batches")
    elif batching == "grouped" and not getattr(trainer, "padding_free", False) and group_by_length(trainer):
        applied.append("length-grouped batches")
    if trainer.args.use_cpu and uses_fused_lm_head(trainer) and project_labelled_positions_only():
        applied.append("LM head on labelled positions only")
    trainer.align_speedups = applied
    return trainer
