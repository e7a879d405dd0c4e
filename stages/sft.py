"""Supervised fine-tuning: teach the base model to answer like the assistant in chat data.

TRL's SFTTrainer, full or LoRA, loss on the assistant's tokens only (through a chat template with
{% generation %} markers that renders exactly like the model's own), optional packing. Held-out perplexity of
the assistant's replies before and after goes into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import TrainOptions, opt

PARENT_STAGES: tuple[str, ...] = ()  # starts from the recipe's base model unless --from says otherwise


@dataclass
class Options(TrainOptions):
    data: str = opt("hh-harmless-chosen", "chat data: a shipped name, a JSONL/JSON/Parquet/CSV file, or a hub id")
    eval_data: str | None = opt(None, "held-out chat data (default: the test split of `data`)")
    assistant_only_loss: bool = opt(True, "train on the assistant's tokens only (user and system tokens get no loss)")
    packing: bool = opt(False, "pack several conversations into each sequence (faster on short rows)")


def run(ctx) -> dict:
    from align import models, training
    from align.evaluate import assistant_perplexity
    from align.data.registry import load_chat

    options = ctx.options

    # 1. The parent model and its tokenizer.
    model, tokenizer = load_model(ctx)

    # 2. Data: a training split and a held-out split, both validated row by row.
    train_rows = load_chat(options.data, "train", limit=options.max_rows)
    eval_rows = load_chat(options.eval_data or options.data, "test", limit=options.eval_rows)
    ctx.record_data(train_rows)
    ctx.record_data(eval_rows)
    held_out = [row["messages"] for row in eval_rows.rows]

    # 3. Perplexity of the held-out replies before training.
    ppl_before = assistant_perplexity(model, tokenizer, held_out, max_length=options.max_length)

    # 4. Train.
    trainer = build_trainer(ctx, model, tokenizer, train_rows.to_dataset())
    metrics = training.train(trainer, ctx)

    # 5. Perplexity after, then save a model plain AutoModelForCausalLM loads.
    ppl_after = assistant_perplexity(trainer.model, tokenizer, held_out, max_length=options.max_length)
    ctx.model_format = models.save_model(trainer.model, tokenizer, ctx.output_dir, ctx.cfg.lora.save)
    return {"eval_perplexity_before": round(ppl_before, 3), "eval_perplexity_after": round(ppl_after, 3),
            "eval_rows": len(held_out), "train_rows": len(train_rows.rows), **metrics}


def load_model(ctx):
    """The parent causal LM and its tokenizer (with the training twin of its chat template for assistant-only loss)."""
    from align import models

    options, model_options = ctx.options, ctx.cfg.model
    tokenizer = models.load_tokenizer(ctx.parent.source, model_options)
    template = models.training_chat_template(tokenizer, model_options) if options.assistant_only_loss else None
    if template:
        tokenizer.chat_template = template  # renders identically, plus the markers TRL needs for the mask
    model = models.load_causal_lm(ctx.parent.source, model_options, device=ctx.device, dtype=ctx.dtype)
    return model, tokenizer


def build_trainer(ctx, model, tokenizer, dataset):
    """The SFTTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL)."""
    from trl import SFTConfig, SFTTrainer

    from align import models, training

    options = ctx.options
    args = training.trainer_args(
        SFTConfig, ctx, options,
        max_length=options.max_length,
        packing=options.packing,
        assistant_only_loss=options.assistant_only_loss,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=models.lora_config(ctx.cfg.lora))
    return training.tune_for_speed(trainer, options)
