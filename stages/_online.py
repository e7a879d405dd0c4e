"""What the online RL stages share (grpo, rloo; ppo uses the prompt and held-out helpers): the policy samples
several replies per prompt, each is scored by the recipe's reward terms, and TRL's trainer (GRPOTrainer,
RLOOTrainer) moves the policy towards the replies that score above their group, with a KL term to the parent.

Reward terms (`rewards`, each weighted by the matching `reward_weights` entry, 1 by default; TRL sums them):
- `rm`: the run's reward model (align.reward.find_reward_model's rule: `reward_model`, else the promoted rm of this
  run, else of the parent's run, else — said so — the latest promoted rm), scored through align.reward.score, so
  the RM's fitted length term applies;
- `length`: minus the reply's token count over `max_new_tokens` (0 for an empty reply, -1 at the cap);
- `toxicity`: minus P(toxic) from the gates' scorer (`toxicity_model`), PPO's toxicity penalty;
- `contains:<text>`: 1 when the reply contains the text (case-insensitive), else 0;
- `regex:<pattern>`: 1 when the pattern matches anywhere in the reply (Python `re.search`), else 0.
- `python:<module>.<function>`: your own, called as TRL calls reward functions:
  `function(prompts=..., completions=..., completion_ids=..., **columns) -> list[float]`.

The comparison with the parent after training is dpo's and ppo's (stages/_pairs.compare_and_save): KL, reply
lengths, the RM's win rate, and the preference accuracy on held-out pairs when the data has them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from align.config import ALL_OR_POSITIVE, POSITIVE, TrainOptions, opt
from align.log import log

REWARD_TERMS = "rm, length, toxicity, contains:<text>, regex:<pattern>, python:<module>.<function>"


@dataclass
class OnlineOptions(TrainOptions):
    """Recipe options grpo and rloo share (each stage's Options adds its own)."""

    data: str = opt("hh-harmless", "prompts to train on: the prompts of preference or chat data, or prompt rows "
                                   "({\"prompt\": [messages]}); its test split is held out for the comparison")
    eval_data: Optional[str] = opt(None, "held-out preference data for the comparison with the parent "
                                         "(default: the test split of `data`)")
    rewards: list[str] = opt(["rm"], f"reward terms, summed with reward_weights: {REWARD_TERMS}")
    reward_weights: list[float] = opt([], "one weight per reward term, in order (empty: 1 each)")
    reward_model: str = opt("auto", "reward model for the `rm` term and the win rate: an rm stage folder, `auto` "
                                    "(the rm of this run, else of the parent's run, else the latest promoted rm, "
                                    "said so) or `none`")
    toxicity_model: str = opt("offline", "toxicity scorer of the `toxicity` term (see `align.run toxicity-model`)")
    num_generations: int = opt(4, "replies sampled per prompt (the group each reply is compared within)", min=2)
    batch_size: int = opt(8, "replies per device per step (a multiple of num_generations)", **POSITIVE)
    max_new_tokens: int = opt(48, "longest reply sampled", **POSITIVE)
    temperature: float = opt(1.0, "sampling temperature of the training replies", above=0)
    epsilon: float = opt(0.2, "clip range of the probability ratio (PPO-style, around the sampling policy)",
                         above=0)
    beta: float = opt(0.04, "KL coefficient to the parent (0: no reference model, no KL term)", min=0.0)
    max_length: int = opt(320, "prompt + reply tokens; longer prompts are left out", **POSITIVE)
    max_prompt_length: int = opt(-1, "prompt token budget: the earliest turns of a longer prompt are left out (the "
                                     "last user turn always stays); -1 = all", **ALL_OR_POSITIVE)
    eval_prompts: int = opt(32, "held-out prompts both the child and the parent answer (win rate, KL, length)",
                            min=0)
    eval_max_new_tokens: int = opt(48, "reply length cap when sampling for the comparison", **POSITIVE)
    eval_temperature: float = opt(1.0, "sampling temperature for the comparison (1.0: KL estimates the true KL)",
                                  above=0)


def train_online(ctx, build_trainer: Callable) -> dict:
    """The recipe grpo and rloo share; `build_trainer(ctx, policy, tokenizer, dataset, reward_funcs)` is the
    stage's own TRL trainer."""
    from datasets import Dataset

    from align import training
    from align.data.preferences import unique_prompts, trim_prompt
    from align.policy import PolicyAndReference, policy_and_reference
    from align.reward import stage_reward_model
    from align.stages._pairs import compare_and_save

    options = ctx.options
    terms = reward_terms(ctx)  # bad names, weights, batch sizes, a missing rm: refused before any model loads
    check_batch(ctx)
    reward_dir = stage_reward_model(ctx, options.reward_model, required="rm" in terms)

    # 1. The policy (TRL builds the reference from the policy's own folder: the parent's local weights).
    loaded = policy_and_reference(ctx.parent.source, ctx.cfg.model, ctx.cfg.lora, device=ctx.device, dtype=ctx.dtype,
                                  load_reference=False)
    check_local_parent(ctx, loaded.policy)

    # 2. The rewards, the training prompts (too long ones left out) and the held-out ones.
    reward_funcs = reward_functions(ctx, terms, reward_dir)
    prompts, too_long = training_prompts(ctx, loaded.tokenizer)
    held_out, dropped = held_out_pairs(ctx)
    pairs = [{**pair, "prompt": trim_prompt(pair["prompt"], loaded.tokenizer, options.max_prompt_length)}
             for pair in held_out]
    eval_prompts = (unique_prompts(pairs) if pairs else held_out_prompts(ctx, loaded.tokenizer))[:options.eval_prompts]

    # 3. Train.
    dataset = Dataset.from_list([{"prompt": prompt} for prompt in prompts])
    trainer = build_trainer(ctx, loaded.policy, loaded.tokenizer, dataset, reward_funcs)
    metrics = training.train(trainer, ctx)

    # 4. The child against its parent (TRL's reference; a fresh copy when beta=0 left it none), then save.
    reference = trainer.ref_model
    if reference is None and loaded.lora is None:
        from align import models

        reference = models.load_causal_lm(ctx.parent.source, ctx.cfg.model, device=ctx.device, dtype=ctx.dtype)
    parent = PolicyAndReference(loaded.tokenizer, trainer.model, reference, None, loaded.lora)
    comparison = compare_and_save(ctx, trainer, parent, eval_prompts, beta=options.beta, pairs=pairs,
                                  judge=reward_dir)
    return {**comparison, **reward_history(trainer.state.log_history), **metrics, "rewards": list(terms),
            "reward_weights": list(terms.values()), "train_prompts": len(prompts), "prompts_too_long": too_long,
            "eval_rows": len(pairs), "dropped_rows": dropped}


def build_online_trainer(ctx, config_class, trainer_class, policy, tokenizer, dataset, reward_funcs,
                         **stage_specific):
    """A TRL online trainer (GRPOTrainer, RLOOTrainer) from the recipe, with align's speed choices;
    `stage_specific`: the config fields only that stage has."""
    from align import models, training

    options = ctx.options
    terms = reward_terms(ctx)
    args = training.trainer_args(config_class, ctx, options, num_generations=options.num_generations,
                                 max_completion_length=options.max_new_tokens, temperature=options.temperature,
                                 top_p=1.0, beta=options.beta, epsilon=options.epsilon,
                                 reward_weights=list(terms.values()), **stage_specific)
    trainer = trainer_class(model=policy, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=models.lora_config(ctx.cfg.lora))
    return training.tune_for_speed(trainer, options)


# ------------------------------------------------------------------------------------------ checks


def reward_terms(ctx) -> dict[str, float]:
    """{term: weight} from `rewards` and `reward_weights`; ConfigError naming the key for an unknown term, a bad
    pattern, or a weight list of another length."""
    from align.errors import ConfigError

    options, name = ctx.options, ctx.name
    names = [str(term) for term in options.rewards]
    if not names:
        raise ConfigError(f"{name}.rewards is empty: name at least one of {REWARD_TERMS}")
    weights = [float(w) for w in options.reward_weights] or [1.0] * len(names)
    if len(weights) != len(names):
        raise ConfigError(f"{name}.reward_weights has {len(weights)} weights for {len(names)} rewards "
                          f"({', '.join(names)})")
    for term in names:
        kind, _, argument = term.partition(":")
        if term in ("rm", "length", "toxicity") or (kind in ("contains", "regex", "python") and argument):
            if kind == "regex":
                try:
                    re.compile(argument)
                except re.error as error:
                    raise ConfigError(f"{name}.rewards: {term!r} is not a valid regular expression ({error})")
            if kind == "python":
                python_reward(argument, f"{name}.rewards")
            continue
        raise ConfigError(f"{name}.rewards: unknown reward {term!r} (known: {REWARD_TERMS})")
    if len(set(names)) < len(names):
        raise ConfigError(f"{name}.rewards names a term twice ({', '.join(names)}): give it one weight instead")
    return dict(zip(names, weights))


def check_batch(ctx) -> None:
    """TRL compares each reply within its prompt's group, so a step's replies must be whole groups."""
    from align.errors import ConfigError

    options = ctx.options
    replies = options.batch_size * options.grad_accum
    if replies % options.num_generations:
        raise ConfigError(f"{ctx.name}.batch_size={options.batch_size} (x grad_accum={options.grad_accum}) is not a "
                          f"multiple of num_generations={options.num_generations}: each step trains on whole groups "
                          f"of replies to one prompt")


def check_local_parent(ctx, policy) -> None:
    """TRL builds its reference from the policy's config name: it must be the parent's local folder, never a hub
    id."""
    from align.errors import ConfigError

    source = getattr(policy.config, "_name_or_path", "")
    if ctx.options.beta > 0 and not Path(source).is_dir():
        raise ConfigError(f"{ctx.name}: the parent {ctx.parent.source} was not loaded from a local folder "
                          f"({source!r}), so TRL would build the reference from elsewhere; give --from a stage folder")


# ------------------------------------------------------------------------------------------ rewards


def reward_functions(ctx, terms: dict[str, float], reward_dir: Path | None) -> list[Callable]:
    """One TRL reward callable per term (named after it, for TRL's `rewards/<name>/mean` logs)."""
    from align.ppo.rollout import reward_model_function, toxicity_penalty_function

    options = ctx.options
    functions = []
    for term in terms:
        kind, _, argument = term.partition(":")
        if term == "rm":
            from align.reward import load_reward_model

            function = reward_model_function(load_reward_model(reward_dir, device=ctx.device), options.batch_size,
                                             options.max_length)
        elif term == "toxicity":
            from align.gates.toxicity import load_scorer

            function = toxicity_penalty_function(load_scorer(options.toxicity_model, ctx.device), 1.0)
        elif term == "length":
            functions.append(length_penalty(options.max_new_tokens))
            continue
        elif kind == "python":
            functions.append(python_reward(argument, f"{ctx.name}.rewards"))
            continue
        elif kind == "contains":
            function = contains_reward(argument)
        else:
            function = regex_reward(argument)
        functions.append(trl_reward(term, function))
    return functions


def trl_reward(term: str, function) -> Callable:
    """A `(prompts, replies) -> scores` function (align.ppo.rollout's shape) as a TRL reward callable."""

    def reward(prompts, completions, **_):
        return [float(score) for score in function(list(prompts), [reply_text(c) for c in completions])]

    reward.__name__ = metric_name(term)
    return reward


def length_penalty(max_new_tokens: int) -> Callable:
    def length(prompts, completions, completion_ids, **_):
        return [-len(ids) / max_new_tokens for ids in completion_ids]

    return length


def contains_reward(text: str):
    wanted = text.lower()
    return lambda prompts, replies: [1.0 if wanted in reply.lower() else 0.0 for reply in replies]


def regex_reward(pattern: str):
    compiled = re.compile(pattern)
    return lambda prompts, replies: [1.0 if compiled.search(reply) else 0.0 for reply in replies]


def python_reward(path: str, key: str) -> Callable:
    """The function `module.function` names (a TRL reward callable); ConfigError naming the key when it is not
    there."""
    import importlib

    from align.errors import ConfigError

    module, _, attribute = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module), attribute) if module else None
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{key}: python:{path} cannot be imported ({error})")
    if not callable(function):
        raise ConfigError(f"{key}: python:{path} is not a function (give python:<module>.<function>)")
    return function


def reply_text(completion) -> str:
    """A TRL completion (conversational: [{"role": "assistant", "content": ...}], or plain text) as text."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def metric_name(term: str) -> str:
    """The term as a metric-name part TensorBoard and MLflow both accept (`contains:banana` -> contains_banana)."""
    return re.sub(r"[^\w.-]+", "_", term).strip("_") or "reward"


def reward_history(history: list[dict]) -> dict:
    """The mean reward of the first and the last logged steps (TRL's `reward`: the weighted sum of the terms)."""
    rewards = [entry["reward"] for entry in history if "reward" in entry]
    if not rewards:
        return {}
    return {"train_reward_first": round(float(rewards[0]), 4), "train_reward_last": round(float(rewards[-1]), 4)}


# ------------------------------------------------------------------------------------------ prompts


def training_prompts(ctx, tokenizer) -> tuple[list[list[dict]], int]:
    """The training split's prompts (recorded in the manifest), their earliest turns trimmed to
    max_prompt_length, those too long to leave max_new_tokens within max_length left out; and how many were."""
    from align.data.preferences import trim_prompt
    from align.data.registry import load_prompts

    options = ctx.options
    rows = load_prompts(options.data, "train", limit=options.max_rows)
    ctx.record_data(rows)
    trimmed = [trim_prompt(row["prompt"], tokenizer, options.max_prompt_length) for row in rows.rows]
    kept = fitting_prompts(tokenizer, trimmed, options.max_length - options.max_new_tokens, stage=ctx.name)
    return kept, len(trimmed) - len(kept)


def fitting_prompts(tokenizer, prompts: list[list[dict]], max_tokens: int, stage: str = "ppo") -> list[list[dict]]:
    """The prompts whose chat-template rendering (assistant turn opened) fits in max_tokens."""
    kept = [p for p in prompts
            if len(tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]) <= max_tokens]
    if len(kept) < len(prompts):
        log.info(f"{stage}: {len(prompts) - len(kept)} of {len(prompts)} prompts are longer than {max_tokens} tokens "
                 f"and are left out (raise max_length to keep them)")
    if not kept:
        from align.errors import ConfigError

        raise ConfigError(f"{stage}: no prompt fits in max_length - max_new_tokens = {max_tokens} tokens")
    return kept


def held_out_prompts(ctx, tokenizer) -> list[list[dict]]:
    """Prompt-only data without pairs: the held-out split's prompts, trimmed as the training ones (none: [])."""
    from align.data.preferences import trim_prompt
    from align.data.registry import load_prompts
    from align.errors import DataError

    options = ctx.options
    try:
        rows = load_prompts(options.eval_data or options.data, "test", limit=options.eval_prompts)
    except DataError as error:
        log.info(f"{ctx.name}: no held-out prompts ({error}): no comparison with the parent")
        return []
    return [trim_prompt(row["prompt"], tokenizer, options.max_prompt_length) for row in rows.rows]


def held_out_pairs(ctx) -> tuple[list[dict], int]:
    """Held-out preference pairs for the comparison, and how many bad ones were dropped. None (said so) only when
    the training data's test split holds no pairs at all (prompt-only data, no eval_data); otherwise a file that
    cannot be read, or a split without one usable pair, is a DataError, and a bad pair is dropped, reported and
    counted (the manifest's data entry, dropped_rows.txt, metrics.dropped_rows), never skipped silently."""
    from align.data.preferences import load_preferences, write_dropped
    from align.data.registry import load_rows
    from align.errors import DataError

    options = ctx.options
    spec = options.eval_data or options.data
    if options.eval_data is None:  # the training prompts' own test split, when it holds pairs at all
        try:  # (the file itself was read for the training prompts already: what fails here is an empty test split)
            held_out = load_rows(spec, "test", lambda row, source, number: row).rows
        except DataError as error:
            held_out, why = [], f" ({error})"
        else:
            why = ""
        if not any(isinstance(row, dict) and ("chosen" in row or "rejected" in row) for row in held_out):
            log.info(f"{ctx.name}: {spec} has no held-out preference pairs{why}: no comparison with the parent "
                     f"(give eval_data=<preference data> for one)")
            return [], 0
    rows = load_preferences(spec, "test", limit=options.eval_rows)
    ctx.record_data(rows)
    write_dropped(rows, ctx.output_dir)
    return rows.rows, len(rows.dropped)
