"""What the stages that train on preference pairs (rm, dpo) share: their common options and the loading of their
training and held-out pairs into the stage's manifest and folder. (data/preferences.py reads and checks the rows;
this module is the stage side: recipe options and a stage context.)"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import ALL_OR_POSITIVE, TrainOptions, opt
from align.data.preferences import load_preferences, trim_prompts, write_dropped
from align.data.registry import Rows


@dataclass
class PreferenceTrainOptions(TrainOptions):
    """Recipe options every stage that trains on preference pairs shares (rm, dpo)."""

    data: str = opt("hh-harmless", "preference data: a shipped name, a JSONL/JSON/Parquet/CSV file, a hub id, "
                                   "or labels:<label store path or URL>")
    eval_data: str | None = opt(None, "held-out preference data (default: the test split of `data`)")
    on_bad_rows: str = opt("drop", "rows that are ties, identical, empty or malformed: drop (reported with their "
                                   "row numbers) or refuse (stop at the first, naming it)",
                               choices=("drop", "refuse"))
    max_prompt_length: int = opt(-1, "prompt token budget: the earliest turns of a longer prompt are left out (the "
                                     "last user turn always stays), like DeepSpeed-Chat's max_prompt_seq_len; "
                                     "-1 keeps every turn", **ALL_OR_POSITIVE)



def load_stage_pairs(ctx, tokenizer=None) -> tuple[Rows, Rows]:
    """A preference stage's training and held-out pairs (its `data`, `eval_data`, row limits and bad-row policy),
    recorded in the manifest, with any dropped rows listed in the stage's dropped_rows.txt. With a tokenizer and
    `max_prompt_length`, long prompts lose their earliest turns (the manifest's data entry counts them)."""
    options = ctx.options
    train_rows = load_preferences(options.data, "train", limit=options.max_rows, on_bad=options.on_bad_rows)
    eval_rows = load_preferences(options.eval_data or options.data, "test", limit=options.eval_rows,
                                 on_bad=options.on_bad_rows)
    for rows in (train_rows, eval_rows):
        if tokenizer is not None:
            rows.prompts_trimmed = trim_prompts(rows, tokenizer, options.max_prompt_length)
        ctx.record_data(rows)
        write_dropped(rows, ctx.output_dir)
    return train_rows, eval_rows
