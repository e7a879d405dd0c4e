"""Kahneman-Tversky optimisation: move the policy towards replies labelled desirable and away from those labelled
undesirable, one reply at a time — no pairs needed — staying close to its parent.

TRL's KTOTrainer (loss `kto`, or `apo_zero_unpaired`) on unpaired examples {"prompt", "completion", "label"}
(data/unpaired.py): a shipped unpaired set (`llamafactory-kto-en-demo`), any preference pairs split into a desirable
(chosen) and an undesirable (rejected) example, or a label store, `labels:<store>`: the thumbs up and down given in
the chat app and through the serve API's /v1/feedback, and the labeling app's best- and worst-ranked replies. The
desirable and undesirable losses are weighed to balance their counts (`desirable_weight` / `undesirable_weight`:
`auto`, as the KTO paper suggests), and the reference is the parent itself (as for dpo: a frozen copy, or with
LoRA the adapter disabled).

KTO's KL term is estimated from mismatched (prompt, reply) pairs within each batch, so batches need more than one
row and keep TRL's order: the training rows are shuffled once with the recipe's seed (a resume sees the same
order) rather than grouped by length.

After training the child is compared with its parent as dpo's is (align/compare.py): on held-out unpaired examples,
the implicit rewards of desirable and undesirable replies and their gap, the share with the label's sign, both
models' log-likelihood ranking of desirable over undesirable; KL to the parent, reply lengths, and the win rate
judged by a reward model (`reward_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import opt
from align.log import log
from align.stages._pairs import PolicyPreferenceOptions

PARENT_STAGES: tuple[str, ...] = ("sft",)
LOSS_TYPES = ("kto", "apo_zero_unpaired")  # TRL's KTOConfig.loss_type
AUTO = -1.0


@dataclass
class Options(PolicyPreferenceOptions):
    data: str = opt("llamafactory-kto-en-demo", "unpaired examples (prompt, completion, label): a shipped name, "
                                                "preference pairs (chosen: desirable, rejected: undesirable), a "
                                                "JSONL/JSON/Parquet/CSV file, a hub id, or labels:<label store> "
                                                "(thumbs up/down, best/worst-ranked replies)")
    eval_data: str | None = opt(None, "held-out unpaired examples or pairs (default: the test split of `data`)")
    beta: float = opt(0.1, "strength of the pull towards the parent (higher = stay closer)", above=0)
    loss_type: str = opt("kto", "KTO loss: kto, or apo_zero_unpaired (TRL's names)", choices=LOSS_TYPES)
    desirable_weight: float = opt(AUTO, "weight of the desirable examples' loss; -1 for both weights: balanced by "
                                        "the counts (the rarer kind weighs the ratio of the counts, the other 1); "
                                        "-1 beside a chosen weight: 1", above=0, also=(AUTO,))
    undesirable_weight: float = opt(AUTO, "weight of the undesirable examples' loss (-1: see desirable_weight)",
                                    above=0, also=(AUTO,))


def run(ctx) -> dict:
    from datasets import Dataset

    from align import training
    from align.data.preferences import unique_prompts
    from align.data.unpaired import load_unpaired
    from align.policy import policy_and_reference
    from align.stages._pairs import compare_and_save, load_stage_pairs

    options = ctx.options
    if options.loss_type == "kto" and options.batch_size < 2:
        from align.errors import ConfigError

        raise ConfigError(f"kto.batch_size={options.batch_size}: KTO's KL term compares each row with the others of "
                          f"its batch, so a batch needs 2 rows at least (or loss_type=apo_zero_unpaired)")

    # 1. The policy, and the reference: the parent's own weights (None with LoRA: TRL disables the adapter).
    loaded = policy_and_reference(ctx.parent.source, ctx.cfg.model, ctx.cfg.lora, device=ctx.device, dtype=ctx.dtype)

    # 2. Unpaired examples (bad rows dropped with their row numbers, or refused), and held-out prompts.
    train_rows, eval_rows = load_stage_pairs(ctx, loaded.tokenizer, load=load_unpaired)
    held_out = eval_rows.rows
    prompts = unique_prompts(held_out)[:options.eval_prompts]
    trained = rows_with_room(train_rows.rows, loaded.tokenizer, options.max_length)
    desirable = sum(1 for row in trained if row["label"])
    weights = loss_weights(options, desirable, len(trained) - desirable)

    # 3. Train.
    dataset = Dataset.from_list(trained).shuffle(seed=ctx.cfg.seed)
    trainer = build_trainer(ctx, loaded.policy, loaded.reference, loaded.tokenizer, dataset, weights)
    metrics = training.train(trainer, ctx)

    # 4. The child against its parent, then save a model plain AutoModelForCausalLM loads.
    comparison = compare_and_save(ctx, trainer, loaded, prompts, beta=options.beta, unpaired=held_out)
    return {**comparison, "eval_rows": len(held_out), "train_rows": len(train_rows.rows),
            "train_desirable": train_rows.counts["desirable"], "train_undesirable": train_rows.counts["undesirable"],
            "trained_rows": len(trainer.train_dataset), "trained_desirable": desirable,
            "desirable_weight": weights[0], "undesirable_weight": weights[1],
            "dropped_rows": len(train_rows.dropped) + len(eval_rows.dropped), **metrics}


def rows_with_room(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """The rows whose prompt, under the chat template with the generation prompt, is shorter than max_length: TRL's
    KTOTrainer leaves out the others (no completion token would be left), so the loss weights are balanced on the
    rows that train, and the ones left out are said (`max_prompt_length` trims long prompts' earlier turns)."""
    def prompt_tokens(prompt):
        return len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"])

    kept = [row for row in rows if prompt_tokens(row["prompt"]) < max_length]
    if len(kept) < len(rows):
        log.info(f"kto: {len(rows) - len(kept)} of {len(rows)} training rows left out: their prompt alone fills "
                 f"max_length={max_length} (max_prompt_length trims a prompt's earlier turns)")
    if not kept:
        from align.errors import ConfigError

        raise ConfigError(f"kto.max_length={max_length}: every training prompt fills it, leaving no room for a "
                          f"reply (raise max_length, or set max_prompt_length)")
    return kept


def loss_weights(options, desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): both -1 (the default): balanced by the counts
    (data.unpaired.balanced_weights); else the recipe's, a -1 beside a chosen weight meaning 1."""
    from align.data.unpaired import balanced_weights

    chosen = (options.desirable_weight, options.undesirable_weight)
    if chosen == (AUTO, AUTO):
        return balanced_weights(desirable, undesirable)
    return tuple(1.0 if weight == AUTO else float(weight) for weight in chosen)


def build_trainer(ctx, policy, reference, tokenizer, dataset, weights=(1.0, 1.0)):
    """The KTOTrainer this stage trains with (`python -m align.bench` times the same one against plain TRL).

    `reference`: the frozen parent, or None with LoRA (the adapter switched off is the parent)."""
    from trl import KTOConfig, KTOTrainer

    from align.stages._pairs import build_policy_trainer

    options = ctx.options
    return build_policy_trainer(ctx, KTOConfig, KTOTrainer, policy, reference, tokenizer, dataset,
                                beta=options.beta, loss_type=options.loss_type,
                                desirable_weight=weights[0], undesirable_weight=weights[1])
