"""The search space: the recipe's `sweep.params` → Optuna distributions, checked before any trial runs.

Each entry names a recipe key — dotted (`sft.lr`, `lora.r`), nested (`sft: {lr: ...}`), or, for the swept stage's
own section, bare (`lr`) — and a distribution:

    {type: float, low: 0.0, high: 0.1[, step: 0.01]}      uniform
    {type: log_float, low: 1.0e-5, high: 1.0e-3}          log-uniform (low > 0)
    {type: int, low: 4, high: 16[, step: 4]}              integers
    {type: log_int, low: 8, high: 64}                     integers, log-uniform
    {type: categorical, choices: [8, 16, 32]}             one of the listed values

An unknown key, an unknown type, low > high, a bound or choice the option itself refuses (a float for an integer
option, lr <= 0) is a ConfigError naming `sweep.params.<key>`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from align.errors import ConfigError

TYPES = ("float", "log_float", "int", "log_int", "categorical")
_MISSING = object()


@dataclass(frozen=True)
class Param:
    key: str  # the full dotted recipe key
    distribution: object  # an optuna distribution


def _entries(node, prefix: str = ""):
    """(dotted key, spec) for every distribution in a possibly nested mapping (a spec is a mapping with `type`)."""
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and "type" not in value:
            if not value:
                raise ConfigError(f"sweep.params.{full}: empty; give a distribution, e.g. {{type: float, low: 0, "
                                  f"high: 1}}")
            yield from _entries(value, full + ".")
        else:
            yield full, value


def _qualify(key: str, stage: str, cfg) -> str:
    head = key.split(".", 1)[0]
    full = key if head in cfg else f"{stage}.{key}"
    found = OmegaConf.select(cfg, full, default=_MISSING)
    if found is _MISSING:
        raise ConfigError(f"sweep.params.{key}: unknown recipe key (neither a section nor an option of {stage}; "
                          f"`python -m align.run {stage} --help` lists them)")
    if isinstance(found, (DictConfig, ListConfig)):
        raise ConfigError(f"sweep.params.{key}: '{full}' is a section or a list, not one option")
    return full


def _number(key: str, spec: dict, name: str, integer: bool):
    value = spec.get(name)
    if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string, as the recipe's own options accept it
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"sweep.params.{key}: {name}={value!r} must be {kind} ({spec['type']} distribution)")
    return value


def _distribution(key: str, spec):
    import optuna.distributions as d

    if not isinstance(spec, dict):
        raise ConfigError(f"sweep.params.{key}: {spec!r} is not a distribution (a mapping with type: "
                          f"{', '.join(TYPES)})")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"sweep.params.{key}: type={kind!r} is not one of {', '.join(TYPES)}")
    wanted = {"type", "choices"} if kind == "categorical" else {"type", "low", "high"} | (
        {"step"} if kind in ("float", "int") else set())
    extra = sorted(set(spec) - wanted)
    if extra:
        raise ConfigError(f"sweep.params.{key}: {extra[0]!r} does not belong in a {kind} distribution "
                          f"(it takes {', '.join(sorted(wanted - {'type'}))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or \
                any(c is not None and not isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"sweep.params.{key}: choices={choices!r} must be a non-empty list of numbers, "
                              f"strings, booleans or null")
        return d.CategoricalDistribution(choices)
    integer = kind in ("int", "log_int")
    low, high = _number(key, spec, "low", integer), _number(key, spec, "high", integer)
    if low > high:
        raise ConfigError(f"sweep.params.{key}: low={low!r} is above high={high!r}")
    log = kind.startswith("log_")
    if log and low <= 0:
        raise ConfigError(f"sweep.params.{key}: low={low!r} must be above 0 for a {kind} distribution")
    step = spec.get("step")
    if step is not None:
        step = _number(key, spec, "step", integer)
        if step <= 0:
            raise ConfigError(f"sweep.params.{key}: step={step!r} must be above 0")
    if integer:
        return d.IntDistribution(low, high, log=log, step=step or 1)
    return d.FloatDistribution(float(low), float(high), log=log, step=step)


def _extremes(distribution) -> list:
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def search_space(cfg, stage: str, skip_other_stages: bool = False) -> list[Param]:
    """The checked search space of `cfg.sweep.params` for a sweep of `stage`. A key of another stage's section
    is refused (it would not change this stage), or, for a pipeline that sweeps several stages, left to that one."""
    from align.stages import STAGES

    raw = OmegaConf.to_container(cfg.sweep.params, resolve=True) if OmegaConf.is_config(cfg.sweep.params) \
        else dict(cfg.sweep.params)
    if not raw:
        raise ConfigError(f"sweep.params: empty; name at least one recipe key to search, e.g. "
                          f"sweep.params.{stage}.lr='{{type: log_float, low: 1e-5, high: 1e-3}}'")
    params, seen = [], {}
    for key, spec in _entries(raw):
        full = _qualify(key, stage, cfg)
        owner = full.split(".", 1)[0]
        if owner in STAGES and owner != stage:
            if skip_other_stages:
                continue
            raise ConfigError(f"sweep.params.{key}: an option of {owner}, which a sweep of {stage} does not run")
        if full in seen:
            raise ConfigError(f"sweep.params.{key}: '{full}' is already searched (as {seen[full]})")
        seen[full] = key
        distribution = _distribution(key, spec)
        for value in _extremes(distribution):  # every value a trial can take must be one the option accepts
            problem = option_problem(cfg, full, value)
            if problem:
                raise ConfigError(f"sweep.params.{key}: {problem}")
        params.append(Param(full, distribution))
    if not params:
        raise ConfigError(f"sweep.params: nothing to search for {stage} (every key belongs to another stage)")
    return params


def option_problem(cfg, key: str, value) -> str | None:
    """Why the recipe refuses `key=value` (its type or its accepted range), or None."""
    try:
        with_params(cfg, {key: value})
    except ConfigError as exc:
        return str(exc).split(": ", 1)[-1]
    return None


def with_params(cfg, params: dict):
    """A deep copy of the recipe with the trial's values set, checked like any recipe (types and ranges)."""
    from align import config as config_mod

    trial = copy.deepcopy(cfg)
    origins = {key: "sweep trial" for key in params}
    try:
        for key, value in params.items():
            OmegaConf.update(trial, key, value, merge=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or next(iter(params))
        raise ConfigError(f"sweep trial: {key}={value!r}: {str(getattr(exc, 'msg', None) or exc).splitlines()[0]}") \
            from None
    config_mod.validate(trial, config_mod.recipe_schema(), origins)
    return trial


def recipe_values(cfg, params: list[Param]) -> dict | None:
    """The recipe's own values of the searched keys, when every one lies in its distribution (the baseline trial)."""
    values = {}
    for param in params:
        value = OmegaConf.select(cfg, param.key)
        if not _contains(param.distribution, value):
            return None
        values[param.key] = value
    return values


def _contains(distribution, value) -> bool:
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(distribution, d.IntDistribution) and not float(value).is_integer():
        return False
    return distribution.low <= value <= distribution.high
