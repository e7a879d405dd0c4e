"""The independent judge: a reward model trained on data no compared model saw (its win-rate statistics are
align.evaluation.win_rate).

The judge (`eval.judge: auto`) is a reward model align trains itself with its own `rm` stage on preference data
that none of the compared models was trained on (`eval.judge_data: auto`: the shipped preference sets of unused
families, e.g. oasst-ranked + llamafactory-dpo-en-demo when the run trained on HH), on `eval.judge_base` (the
shipped MiniLM encoder by default). Its settings are the `eval.judge_*` options over the rm stage's own defaults —
never the run's `rm` section, so the judge does not move with the run. It is built once and kept in align's cache
(`cache_dir("eval", "judges")/<key>/rm`, key: its settings and the content of its data), with its manifest: the
held-out accuracy and length diagnostics (align.reward_diagnostics)
d be, to hold the point figure).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from align.paths import cache_dir
from align.log import log

VERSION = "v1"


# ---------------------------------------------------------------------------------------------------- judge


def judge_config(options, data: str, device: str):
    """The recipe the judge is trained with: the rm stage's defaults, the `eval.judge_*` options, no gate."""
    from omegaconf import OmegaConf

    from align.config import recipe_schema

    tree = {
        "name": "eval-judge", "runs_dir": str(cache_dir("eval", "judges")), "seed": options.seed, "device": device,
        "model": {"source": options.judge_base}, "lora": {"enabled": False}, "gate": {"enabled": False},
        "rm": {"base": options.judge_base, "data": data, "eval_data": None, "on_bad_rows": "drop",
               "max_rows": options.judge_max_rows, "eval_rows": -1, "max_steps": options.judge_max_steps,
               "epochs": options.judge_epochs, "lr": options.judge_lr, "batch_size": options.judge_batch_size,
               "max_length": options.judge_max_length, "max_prompt_length": options.max_prompt_length,
               "length_balance": options.judge_length_balance,
               "warmup_ratio": 0.05, "logging_steps": 10, "save_steps": 1_000_000},
    }
    cfg = OmegaConf.merge(OmegaConf.structured(recipe_schema()), tree)
    OmegaConf.set_struct(cfg, True)
    return cfg


def judge_key(cfg) -> str:
    from align.config import to_dict
    from align.data.registry import spec_digest

    return hashlib.sha256(json.dumps([VERSION, to_dict(cfg.rm), cfg.seed, spec_digest(cfg.rm.data)],
                                     sort_keys=True, default=str).encode()).hexdigest()


def ensure_judge(options, data: str, device: str) -> Path:
    """The auto judge's folder, trained now (once) if the cache has none with these settings and data."""
    from align.driver import run_stage
    from align.runs import PROMOTABLE, read_manifest

    cfg = judge_config(options, data, device)
    run = f"judge-{judge_key(cfg)[:16]}"
    folder = Path(cfg.runs_dir) / run / "rm"
    if (read_manifest(folder) or {}).get("status") in PROMOTABLE:
        return folder
    log.info(f"eval: training the independent judge (once, cached in {folder.parent}): a reward head on "
             f"{options.judge_base}, on {data}")
    return run_stage("rm", cfg, parent_spec=options.judge_base, run=run)


def describe_judge(folder: Path) -> dict:
    """Name, data and held-out figures of a judge folder (from its manifest when it has one)."""
    from align.runs import read_manifest

    manifest = read_manifest(folder) or {}
    metrics = manifest.get("metrics") or {}
    rm = (manifest.get("config") or {}).get("rm") or {}
    heldout = {k.removeprefix("eval_"): v for k, v in metrics.items()
               if k.startswith("eval_") and isinstance(v, (int, float, str, list, type(None)))}
    train_rows = metrics.get("train_rows_within_max_length", metrics.get("train_rows"))
    name = (f"reward model on {rm.get('base')} trained by align on {rm.get('data')} ({train_rows} pairs)"
            if manifest else f"reward model {folder}")
    return {"name": name, "folder": str(folder), "base": rm.get("base"), "data": rm.get("data"),
            "train_pairs": train_rows, "heldout": heldout}
