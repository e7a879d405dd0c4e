"""Score conversations with a reward model: the small API the PPO stage, the evaluations and the UI use.

    from align.reward import score
    score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]], model="runs/demo/rm")

A reward model is any folder `AutoModelForSequenceClassification` loads with one output (what `python -m align.run
rm` saves). A conversation is tokenized exactly as TRL's RewardTrainer tokenized the training pairs (the chat
template over the whole conversation, the reply included), and the reward is the head's output at the last
non-padding token. Loaded models are cached per folder, so repeated calls do not reload.

Length correction (ODIN-style, `rm.length_regression`): a reward-model folder may hold `length_term.json`, the
slope b of reward ~ a + b * length fitted on its training replies (length in characters of the reply, the
assistant messages at the end of the conversation). `score` then returns reward - b * length for every
conversation, so whatever uses the folder (DPO win rates, PPO rewards, the pipeline's judgement, evaluations)
gets the corrected reward; a RewardModel built from a bare (model, tokenizer) pair has no correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from align.errors import ModelError

Conversation = list[dict]
LENGTH_TERM_FILE = "length_term.json"


@dataclass
class RewardModel:
    """A loaded reward model and its tokenizer; `length_coef` (reward per character) is subtracted times the
    reply's length from every score (0: none; see the module docstring)."""

    model: object
    tokenizer: object
    source: str = ""
    length_coef: float = 0.0


def load_reward_model(source: str | Path, device: str = "auto") -> RewardModel:
    """Load a reward-model folder (or hub id) with AutoModelForSequenceClassification; cached per (source, device)."""
    from align.models import choose_device, resolve_source

    return _load_cached(resolve_source(str(source)), choose_device(device))


@lru_cache(maxsize=2)
def _load_cached(folder: str, device: str) -> RewardModel:
    from align.models import load_sequence_classifier, load_tokenizer

    try:  # on the CPU first, in the dtype it was saved in (as before), then moved
        model = load_sequence_classifier(folder, device="cpu", dtype="checkpoint", errors=())
    except (ModelError, OSError, ValueError) as exc:
        raise ModelError(f"cannot load a reward model from {folder}: {exc}".splitlines()[0]) from None
    if model.config.num_labels != 1:
        raise ModelError(f"{folder} is not a reward model: its head has {model.config.num_labels} outputs, not 1")
    tokenizer = load_tokenizer(folder)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return RewardModel(model=model, tokenizer=tokenizer, source=folder, length_coef=read_length_term(folder))


# ------------------------------------------------------------------------------------------ finding one


def find_reward_model(explicit: str | Path | None, *, run_dir: Path | None = None,
                      parent_run_dir: Path | None = None, runs_dir: Path | None = None, key: str = "reward_model",
                      say=None) -> Path | None:
    """The reward model a stage judges or trains with, by one rule (the same for dpo and ppo):

    1. an explicit recipe value (`dpo.reward_model`, `ppo.reward`) wins; it must be a folder (ConfigError naming
       `key` otherwise); `none` / `""` means no reward model (returns None);
    2. else the promoted `rm` stage of the current run (`run_dir / "rm"`);
    3. else the promoted `rm` of the parent's run (`parent_run_dir / "rm"`, when the parent comes from another run);
    4. else, only when `runs_dir` is given (ppo, which cannot run without one), the latest promoted rm anywhere
       under it, and that choice is always said (`say`), never silent;
    otherwise None (the caller decides: dpo skips the win rate, ppo raises).
    `explicit="auto"` is the same as no explicit value.
    """
    from align.errors import ConfigError
    from align.runs import PROMOTABLE, latest_promoted, read_manifest

    if explicit is not None and str(explicit) != "auto":
        if str(explicit) in ("", "none"):
            return None
        path = Path(explicit)
        if not path.is_dir():
            raise ConfigError(f"{key}={path}: not a folder (give an rm stage folder, e.g. runs/<run>/rm)")
        return path
    for folder in (run_dir, parent_run_dir):
        if folder is not None:
            candidate = Path(folder) / "rm"
            if (read_manifest(candidate) or {}).get("status") in PROMOTABLE:
                return candidate
    if runs_dir is not None:
        found = latest_promoted(Path(runs_dir), "rm")
        if found is not None and say is not None:
            say(f"no rm in this run or the parent's: using the latest promoted rm under {runs_dir}: {found} "
                f"(set {key}=<folder> to choose)")
        return found
    return None


def stage_reward_model(ctx, choice, *, required: bool, key: str = "reward_model",
                       search_runs_dir: bool = True) -> Path | None:
    """The reward model of a stage (`ctx`: align.driver's stage context) by find_reward_model's rule, with the
    stage's messages: `<stage>.<key>` explicit, else this run's rm, else the parent run's, else — when
    `search_runs_dir` (a stage that trains against it), said so — the latest promoted rm under runs_dir. None when
    there is none and it is not `required` (the win rate's lookup, `search_runs_dir=False`, says that it is skipped);
    ConfigError when it is."""
    from align.errors import ConfigError
    from align.log import log

    found = find_reward_model(choice, run_dir=Path(ctx.work.run_dir), parent_run_dir=ctx.parent.run_dir,
                              runs_dir=Path(ctx.cfg.runs_dir) if search_runs_dir else None,
                              key=f"{ctx.name}.{key}", say=lambda message: log.info(f"{ctx.name}: {message}"))
    if found is not None:
        log.info(f"{ctx.name}: reward model {found}")
    elif required:
        raise ConfigError(f"{ctx.name} needs a reward model: pass {key}=runs/<run>/rm, or train one first with "
                          f"`python -m align.run rm`")
    elif choice in (None, "", "auto") and not search_runs_dir:
        log.info(f"{ctx.name}: no promoted rm in {ctx.work.run_dir} or the parent's run: the win rate vs the parent "
                 f"is skipped (set {ctx.name}.{key}=<folder> to judge with one)")
    return found


# ------------------------------------------------------------------------------------------ length term


def fit_length_term(rewards: Sequence[float], lengths: Sequence[float]) -> dict:
    """Least-squares reward ~ intercept + per_character * length (what `length_term.json` holds)."""
    import numpy as np

    r, n = np.asarray(rewards, dtype=float), np.asarray(lengths, dtype=float)
    if r.size < 2 or np.std(n) == 0:
        return {"per_character": 0.0, "intercept": float(r.mean()) if r.size else 0.0, "replies": int(r.size)}
    slope, intercept = np.polyfit(n, r, 1)
    return {"per_character": float(slope), "intercept": float(intercept), "replies": int(r.size)}


def save_length_term(folder: str | Path, term: dict) -> Path:
    """Write a fitted length term into a reward-model folder; `score` subtracts it when the folder is loaded."""
    import json

    path = Path(folder) / LENGTH_TERM_FILE
    path.write_text(json.dumps({**term, "unit": "characters of the reply",
                                "applied_as": "reward - per_character * length"}, indent=2) + "\n",
                    encoding="utf-8")
    return path


def read_length_term(folder: str | Path) -> float:
    """The per-character slope stored in a reward-model folder (0.0 when it has no length term)."""
    import json
    import math

    path = Path(folder) / LENGTH_TERM_FILE
    if not path.is_file():
        return 0.0
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["per_character"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: field 'per_character': cannot read the length term ({exc})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{path}: field 'per_character': {value!r} is not a finite number")
    return float(value)


def reply_of(conversation: Conversation) -> list[dict]:
    """The assistant messages at the end of a conversation (the reply a reward judges)."""
    reply = []
    for message in reversed(conversation):
        if message.get("role") != "assistant":
            break
        reply.append(message)
    return reply[::-1]


def clear_cache() -> None:
    """Forget the loaded reward models (e.g. after a new one was trained into the same folder)."""
    _load_cached.cache_clear()


def _as_reward_model(model) -> RewardModel:
    if isinstance(model, RewardModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return RewardModel(model=model[0], tokenizer=model[1])
    if model is None:
        from align.runs import latest_promoted

        found = latest_promoted(Path("runs"), "rm")
        if found is None:
            raise ModelError("no reward model given and none promoted under runs/: train one with "
                             "`python -m align.run rm` or pass model=<folder>")
        model = found
    return load_reward_model(model)


def score(conversations: Sequence[Conversation], model=None, batch_size: int = 8, max_length: int | None = 1024,
          progress: bool = False) -> list[float]:
    """One reward per conversation (each a list of {role, content} messages ending with the reply to judge).

    model: a reward-model folder or hub id, a RewardModel, a (model, tokenizer) pair, or None for the latest
    promoted rm under runs/. Conversations longer than `max_length` tokens are cut at the end (None: not cut).
    A model with a length term (a folder with length_term.json) returns reward - per_character * reply length.
    """
    import torch
    from tqdm.auto import tqdm

    from align.logprobs import eval_mode

    rm = _as_reward_model(model)
    net, tokenizer = rm.model, rm.tokenizer
    device = next(net.parameters()).device
    pad = net.config.pad_token_id if net.config.pad_token_id is not None else tokenizer.pad_token_id
    positions = getattr(net.config, "max_position_embeddings", None)  # encoders (BERT: 512) cannot read further
    limit = min(x for x in (max_length, positions) if x) if (max_length or positions) else None
    rewards: list[float] = []
    with eval_mode(net):
        for start in tqdm(range(0, len(conversations), batch_size), desc="scoring", unit="batch",
                          disable=not progress, leave=False):
            chunk = conversations[start:start + batch_size]
            encoded = [tokenizer.apply_chat_template(list(c), tokenize=True, return_dict=True)["input_ids"]
                       for c in chunk]
            if limit:
                encoded = [ids[:limit] for ids in encoded]
            width = max(len(ids) for ids in encoded)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for row, tokens in enumerate(encoded):  # right padding, as RewardTrainer's collator does
                ids[row, :len(tokens)] = torch.tensor(tokens)
                attention[row, :len(tokens)] = 1
            with torch.no_grad():
                logits = net(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            rewards.extend(float(x) for x in logits[:, 0].float().cpu())
    if rm.length_coef:
        from align.reward_diagnostics import reply_length

        rewards = [r - rm.length_coef * reply_length(reply_of(c)) for r, c in zip(rewards, conversations)]
    return rewards


def score_pairs(pairs: Sequence[dict], model=None, batch_size: int = 8, max_length: int | None = 1024,
                progress: bool = False) -> tuple[list[float], list[float]]:
    """Rewards of the chosen and of the rejected reply of preference rows {prompt, chosen, rejected}."""
    chosen = score([p["prompt"] + p["chosen"] for p in pairs], model, batch_size, max_length, progress)
    rejected = score([p["prompt"] + p["rejected"] for p in pairs], model, batch_size, max_length, progress)
    return chosen, rejected
