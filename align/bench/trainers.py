"""One training stage on one side, measured: align's trainer (built by the stage's own `build_trainer`, from the
recipe) or plain TRL's (its config class with documented defaults, plus only what is needed to run here and to
match the workload: CPU, bf16 off on CPUs without bf16, the same batch size, gradient accumulation, max_length,
steps, model, tokenizer and rows).

Both sides load the model the same way (float32 on CPU, the reward head initialised from the recipe's seed) and
get the same rows in the same format; assistant-only loss, when the recipe trains on the assistant's tokens only,
is part of the workload, so TRL gets it too (with the same chat template). Everything else on the TRL side is
TRL's default, e.g. gradient checkpointing on, padded random batches and, for DPO, a reference model TRL loads
itself and runs in every step. KTO gets the same unpaired rows on both sides, shuffled once with the recipe's seed
as the stage does (its KL term pairs each row with its batch neighbours), and both sides keep TRL's default loss
weights (the stage's balancing by the counts changes the loss, not the work). GRPO and RLOO get the same prompts
and the same reward functions (the recipe's `rewards`; the benchmark's default is the length penalty alone, as
it has no reward model), and the workload settings of the group: replies per prompt, reply length, sampling
temperature and beta (beta > 0 adds a reference forward per step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

STAGES = ("sft", "rm", "dpo", "kto", "grpo", "rloo")
ONLINE = ("grpo", "rloo")
SIDES = ("align", "trl")

#: Config fields that name paths or are derived, not chosen: left out of the "what ran" listing.
_NOT_SETTINGS = {"output_dir", "logging_dir", "run_name", "hub_model_id"}


def bench_recipe(spec: dict):
    """The recipe the align side runs: the named recipe with the benchmark's model, steps and scratch folder."""
    from align.config import load_recipe

    stage = spec["stage"]
    steps = spec["steps"]
    # No checkpoint inside the timed steps, as on TRL's side (its save_steps=500 lies beyond them).
    overrides = [f"model.source={spec['model']}", "device=cpu", f"runs_dir={Path(spec['work_dir']) / 'runs'}",
                 f"{stage}.max_steps={steps}", f"{stage}.save_steps={steps + 1}",
                 *([f"{stage}.rewards=[length]"] if stage in ONLINE else []), *spec.get("overrides", [])]
    return load_recipe(spec["recipe"], overrides)


def training_rows(stage: str, options, steps: int, seed: int = 0):
    """The rows both sides train on: the recipe's data, enough for `steps` optimizer steps (more for the reward
    model, which leaves out pairs longer than max_length, and for KTO, which leaves out prompts that fill it)."""
    from align.data.preferences import load_preferences
    from datasets import Dataset

    from align.data.registry import load_chat, load_prompts
    from align.data.unpaired import load_unpaired

    needed = steps * options.batch_size * options.grad_accum
    if stage in ONLINE:
        return Dataset.from_list([{"prompt": row["prompt"]} for row in load_prompts(options.data, "train",
                                                                                     limit=needed).rows])
    if stage == "sft":
        return load_chat(options.data, "train", limit=needed).to_dataset()
    if stage == "kto":
        # more than needed: TRL leaves out the rows whose prompt alone fills max_length (long ones, in the demo)
        rows = load_unpaired(options.data, "train", limit=needed * 4, on_bad=options.on_bad_rows)
        return rows.to_dataset().shuffle(seed=seed)
    limit = needed * (4 if stage == "rm" else 1)
    return load_preferences(options.data, "train", limit=limit, on_bad=options.on_bad_rows).to_dataset()


def settings(args) -> dict:
    """The config fields whose values differ from the config class with only use_cpu=True: what this side chose."""
    baseline = type(args)(output_dir=args.output_dir, use_cpu=True)
    chosen = {}
    for field in dataclasses.fields(args):
        if field.name in _NOT_SETTINGS or field.name.startswith("_"):
            continue
        value, default = getattr(args, field.name, None), getattr(baseline, field.name, None)
        if value != default:
            value = getattr(value, "value", value)  # enums
            chosen[field.name] = value if isinstance(value, (bool, int, float, str, list, type(None))) else str(value)
    return chosen


@contextlib.contextmanager
def time_calls(cls, method: str, seconds: list[float]):
    """Add the wall time of every `cls.method` call to `seconds` (DPO's reference precompute runs in __init__)."""
    original = getattr(cls, method)

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(cls, method, timed)
    try:
        yield
    finally:
        setattr(cls, method, original)


# ------------------------------------------------------------------------------------------------ align's side


def align_trainer(stage: str, cfg, dataset, work_dir: Path):
    """(trainer, trained model): the stage's own model loading and `build_trainer`, in a scratch run folder."""
    from align import models
    from align.driver import StageContext
    from align.runs import Parent, StageWork
    from align.stages import stage_module

    module = stage_module(stage)
    work = StageWork(Path(cfg.runs_dir) / "bench", stage)
    work.begin(resume=False)
    ctx = StageContext(name=stage, cfg=cfg, parent=Parent(cfg.model.source), work=work, device="cpu",
                       dtype=models.choose_dtype(cfg.model.dtype, "cpu"))
    source = cfg.model.source
    if stage in ONLINE:
        tokenizer = models.load_tokenizer(source, cfg.model)
        model = models.load_causal_lm(source, cfg.model, device="cpu", dtype=ctx.dtype)
        return module.build_trainer(ctx, model, tokenizer, dataset, online_rewards(cfg, stage)), model
    if stage == "sft":
        model, tokenizer = module.load_model(ctx)
        return module.build_trainer(ctx, model, tokenizer, dataset), model
    tokenizer = models.load_tokenizer(source, cfg.model)
    if stage == "rm":
        model = module.load_reward_head(source, cfg.model, ctx)
        return module.build_trainer(ctx, model, tokenizer, dataset), model
    model = models.load_causal_lm(source, cfg.model, device="cpu", dtype=ctx.dtype)
    reference = None
    if not cfg.lora.enabled:
        reference = models.load_causal_lm(source, cfg.model, device="cpu", dtype=ctx.dtype)
        reference.requires_grad_(False).eval()
    return module.build_trainer(ctx, model, reference, tokenizer, dataset), model


def online_rewards(cfg, stage: str) -> list:
    """The reward functions of the recipe's `rewards` (the same callables on both sides)."""
    from types import SimpleNamespace

    from align.runs import Parent
    from align.reward import stage_reward_model
    from align.stages._online import reward_functions, reward_terms

    ctx = SimpleNamespace(name=stage, options=cfg[stage], cfg=cfg, device="cpu", parent=Parent(cfg.model.source),
                          work=SimpleNamespace(run_dir=Path(cfg.runs_dir) / "bench"))
    terms = reward_terms(ctx)
    reward_dir = stage_reward_model(ctx, cfg[stage].reward_model, required="rm" in terms)
    return reward_functions(ctx, terms, reward_dir)


# ------------------------------------------------------------------------------------------------- TRL's side


def trl_trainer(stage: str, cfg, dataset, work_dir: Path):
    """(trainer, trained model): plain TRL with its documented defaults and only the workload settings."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from align import models
    from align.bench.measure import cpu_has_native_bf16

    options = cfg[stage]
    folder = models.resolve_source(cfg.model.source)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    workload = dict(output_dir=str(work_dir / "trl"), use_cpu=True, bf16=cpu_has_native_bf16(),
                    per_device_train_batch_size=options.batch_size, gradient_accumulation_steps=options.grad_accum,
                    max_steps=options.max_steps, max_length=options.max_length)
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        if options.assistant_only_loss:
            tokenizer.chat_template = models.training_chat_template(tokenizer, cfg.model)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        args = SFTConfig(**workload, assistant_only_loss=options.assistant_only_loss)
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), model
    if stage == "rm":
        from trl import RewardConfig, RewardTrainer

        torch.manual_seed(cfg.seed)  # the new head's initialisation, as on align's side
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
        return RewardTrainer(model=model, args=RewardConfig(**workload), train_dataset=dataset,
                             processing_class=tokenizer), model
    if stage in ONLINE:
        from trl import GRPOConfig, RLOOConfig, GRPOTrainer, RLOOTrainer

        from align.stages._online import reward_terms

        config_class, trainer_class = (GRPOConfig, GRPOTrainer) if stage == "grpo" else (RLOOConfig, RLOOTrainer)
        weights = list(reward_terms(SimpleNamespace(name=stage, options=options)).values())
        del workload["max_length"]  # no such field: prompts are trimmed as the stage trims them
        args = config_class(**workload, num_generations=options.num_generations, beta=options.beta,
                            max_completion_length=options.max_new_tokens, temperature=options.temperature,
                            reward_weights=weights)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return trainer_class(model=model, reward_funcs=online_rewards(cfg, stage), args=args, train_dataset=dataset,
                             processing_class=tokenizer), model
    if stage == "kto":
        from trl import KTOConfig, KTOTrainer

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return KTOTrainer(model=model, args=KTOConfig(**workload), train_dataset=dataset,
                          processing_class=tokenizer), model
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return DPOTrainer(model=model, args=DPOConfig(**workload), train_dataset=dataset,
                      processing_class=tokenizer), model


# ---------------------------------------------------------------------------------------------- measurement


def measure_stage(spec: dict) -> dict:
    """Build and train one stage on one side (spec: stage, side, recipe, model, steps, threads, work_dir);
    returns tokens, times, memory and what ran. Meant to run in a process of its own."""
    import contextlib

    import torch
    from trl import DPOTrainer, KTOTrainer

    from align.bench.measure import MemorySampler, TokenCounter, parameter_count

    torch.set_num_threads(spec["threads"])
    stage, side, work_dir = spec["stage"], spec["side"], Path(spec["work_dir"])
    whole = MemorySampler().start()
    cfg = bench_recipe(spec)
    options = cfg[stage]
    dataset = training_rows(stage, options, spec["steps"], seed=cfg.seed)
    precompute: list[float] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as timing:
        for trainer_class in (DPOTrainer, KTOTrainer):  # a reference precompute runs in __init__
            timing.enter_context(time_calls(trainer_class, "_precompute_ref_logps", precompute))
        build = align_trainer if side == "align" else trl_trainer
        trainer, model = build(stage, cfg, dataset, work_dir)
    build_s = time.perf_counter() - started
    counter = TokenCounter(model)
    before_train_mb = whole.rss_mb()
    during = MemorySampler().start()
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    train_cpu_s = time.process_time() - cpu_started
    train_s = time.perf_counter() - started + sum(precompute)
    during.stop()
    whole.stop()
    counter.close()
    return {
        "tokens": counter.tokens,
        "training_forwards": counter.forwards,
        "steps": int(trainer.state.global_step),
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,  # CPU time of the process during trainer.train(): steadier on a busy machine
        "reference_precompute_s": sum(precompute),
        "build_s": build_s - sum(precompute),
        "tokens_per_s": counter.tokens / train_s if train_s > 0 else 0.0,
        "parameters": parameter_count(model),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "bf16_autocast": bool(trainer.args.bf16),
        "rows": len(trainer.train_dataset),
        "peak_rss_mb": whole.peak_mb,
        "memory_mb": whole.peak_mb - whole.start_mb,
        "train_memory_mb": during.peak_mb - before_train_mb,
        "ran": {"trainer": type(trainer).__name__, "config": type(trainer.args).__name__,
                "settings": settings(trainer.args),
                "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
                "batch_size": trainer.args.per_device_train_batch_size,
                "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
                "max_length": getattr(trainer.args, "max_length", None),  # GRPO, RLOO: prompt + max_completion
                "align_speedups": list(getattr(trainer, "align_speedups", []))},
    }
