"""The recipe's `serve:` section: how `python -m align.run serve` serves (address, engine, limits, the output
filter, prompt/reply logging, the completions kept for feedback).

`python -m align.run serve --config RECIPE serve.log_requests=true` sets a key like every other command; the
command's flags (`--port 8001`, `--log-requests FILE`, ...) are shortcuts that override the section, and
`serve_options` is the one place that merges and checks both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from align.config import opt, validate
from align.errors import ConfigError

ENGINES = ("transformers", "vllm")
FILTER_ACTIONS = ("refuse", "flag")
KEEP_COMPLETIONS = ("store", "memory")
REQUESTS_LOG = "requests.jsonl"  # log_requests=true: this file in the served run's folder


@dataclass
class ServeOptions:
    host: str = opt("127.0.0.1", "address to bind (any other than loopback needs API keys)")
    port: int = opt(8000, "port", min=1, max=65535)
    engine: str = opt("transformers", "transformers (dynamic batching, CPU or GPU) or vllm (a GPU machine with vllm "
                                      "installed)", choices=ENGINES)
    max_batch: int = opt(32, "rows (the choices of every request) decoding together", min=1, max=4096)
    max_tokens: int = opt(1024, "the most max_tokens a request may ask for", min=1, max=1_000_000)
    default_max_tokens: int = opt(256, "max_tokens of a request that gives none (at most max_tokens)",
                                  min=1, max=1_000_000)
    max_request_bytes: int = opt(1 << 20, "request body limit in bytes", min=1, max=1 << 30)
    rate_limit: float = opt(0.0, "requests per minute per API key (per client address without keys); 0: none",
                            min=0.0, max=1e6)
    require_keys: bool = opt(False, "require API keys on loopback too")
    filter_threshold: Optional[float] = opt(None, "score every reply with the gates' toxicity scorer; above this "
                                                  "it is refused or flagged (null: no output filter)",
                                            min=0.0, max=1.0)
    filter_action: str = opt("refuse", "refuse (a fixed safe reply, finish_reason content_filter) or flag",
                             choices=FILTER_ACTIONS)
    filter_scorer: str = opt("offline", "the output filter's toxicity scorer (as the gate's toxicity.scorer)")
    log_requests: Any = opt(False, "append every prompt and reply to a JSONL file: false (off), true (requests.jsonl "
                                   "in the served run's folder) or a file path")
    keep_completions: str = opt("memory", "where completions wait for /v1/feedback: memory (prompts and replies "
                                          "never written to disk; a restart forgets them) or store (the label store, "
                                          "so feedback survives a restart: every prompt and reply is kept there)",
                                choices=KEEP_COMPLETIONS)
    keep_max: int = opt(10_000, "completions kept for feedback; past it the oldest are dropped", min=1,
                        max=100_000_000)
    keep_days: float = opt(7.0, "completions older than this many days are dropped (and take no feedback)",
                           above=0.0, max=36_500.0)


SECTION = "serve"
#: flags of `serve` that override a key of the section (argparse dest = key)
FLAG_KEYS = tuple(f.name for f in dataclasses.fields(ServeOptions))


def flag_name(key: str) -> str:
    return "--" + {"filter_threshold": "filter-toxicity", "filter_scorer": "scorer"}.get(key, key.replace("_", "-"))


def serve_options(cfg, flags: dict[str, Any] | None = None) -> ServeOptions:
    """The recipe's `serve:` section with the command's flags (those given, i.e. not None) on top, every value
    checked against its range; a ConfigError names the key and where it was set (the flag, the command line or the
    recipe file)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given = {key: value for key, value in (flags or {}).items() if key in FLAG_KEYS and value is not None}
    try:
        section = OmegaConf.merge(cfg[SECTION], given)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "key", None)
        raise ConfigError(f"{flag_name(str(key)) if key else SECTION}: {str(exc).splitlines()[0]}") from None
    validate(section, ServeOptions, {f"{SECTION}.{key}": flag_name(key) for key in given}, prefix=f"{SECTION}.")
    options = ServeOptions(**OmegaConf.to_container(section, resolve=True))
    if options.default_max_tokens > options.max_tokens:
        raise ConfigError(f"serve.default_max_tokens={options.default_max_tokens} is over "
                          f"serve.max_tokens={options.max_tokens}")
    log = options.log_requests
    if not (isinstance(log, bool) or (isinstance(log, str) and log.strip())):
        raise ConfigError(f"serve.log_requests={log!r} must be true, false or a file path")
    return options


def requests_log(options: ServeOptions, run_dir: Path | None, runs_dir: str | Path) -> Path | None:
    """Where prompts and replies are appended, or None when logging is off."""
    if options.log_requests is False:
        return None
    if options.log_requests is True:
        return (run_dir or Path(runs_dir)) / REQUESTS_LOG
    return Path(options.log_requests).expanduser()
