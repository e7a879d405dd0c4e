"""`python -m align.run serve`: align's models behind OpenAI's chat-completions API (see align/serving/app.py).

    python -m align.run serve                               # the latest promoted chat model under runs/
    python -m align.run serve --run demo --port 8000        # every promoted ppo/dpo/sft stage of run demo
    python -m align.run serve --add-key ci-bot              # a new API key (printed once); --list-keys, --revoke-key
    python -m align.run serve --host 0.0.0.0                # off loopback: API keys are required
"""

from __future__ import annotations

import argparse

from align.errors import AlignError

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from align.serving.engine import ENGINES
    from align.serving.moderation import ACTIONS

    parser.add_argument("--run", help="serve this run's promoted chat stages (ppo, dpo, sft; the best is the default)")
    parser.add_argument("--model", help="serve one model: a stage folder, a run folder, a model folder, a hub id or "
                                        "embedded:... (default: the latest promoted chat model under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="where runs live (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; any other needs "
                                                            "API keys)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--store", help="label store path or database URL for feedback and API keys (default: the "
                                        "run's labels.sqlite)")
    parser.add_argument("--allow-ungated", action="store_true",
                        help="serve a model whose gate did not pass, or that has no gate verdict")
    parser.add_argument("--engine", default="transformers", choices=ENGINES,
                        help="transformers (dynamic batching, CPU or GPU; default) or vllm (a GPU machine with vllm)")
    parser.add_argument("--max-batch", type=int, default=32, help="rows (choices) decoding together (default: 32)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="the most max_tokens a request may ask (1024)")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="request body limit (default: 1 MiB)")
    parser.add_argument("--filter-toxicity", type=float, metavar="T",
                        help="score every reply with the gates' toxicity scorer; above T it is refused or flagged")
    parser.add_argument("--filter-action", default="refuse", choices=ACTIONS,
                        help="refuse (a fixed safe reply, finish_reason content_filter) or flag (default: refuse)")
    parser.add_argument("--scorer", default="offline", help="toxicity scorer for the filter (default: offline)")
    parser.add_argument("--require-keys", action="store_true", help="require API keys on loopback too")
    parser.add_argument("--rate-limit", type=float, default=0.0, metavar="N",
                        help="requests per minute per API key (per client address without keys); 0: none")
    parser.add_argument("--log-requests", metavar="FILE",
                        help="append every prompt and reply to this JSONL file (off by default)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--add-key", metavar="NAME", help="make an API key named NAME in the store, print it, exit")
    keys.add_argument("--list-keys", action="store_true", help="list the store's API keys (names, dates), exit")
    keys.add_argument("--revoke-key", metavar="NAME", help="revoke the API key NAME, exit")


def _check(args) -> None:
    for name in ("max_batch", "max_tokens", "default_max_tokens", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise AlignError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.default_max_tokens > args.max_tokens:
        raise AlignError(f"--default-max-tokens {args.default_max_tokens} is over --max-tokens {args.max_tokens}")
    if args.rate_limit < 0:
        raise AlignError(f"--rate-limit must be 0 or more, got {args.rate_limit}")
    if not 1 <= args.port <= 65535:
        raise AlignError(f"--port must be 1 to 65535, got {args.port}")


def _keys_command(args, keys) -> int:
    import datetime

    if args.add_key:
        key = keys.add(args.add_key)
        print(f"API key {args.add_key!r} (shown once, keep it secret; the store keeps its hash only):\n{key}")
    elif args.revoke_key:
        keys.revoke(args.revoke_key)
        print(f"API key {args.revoke_key!r} revoked")
    else:
        for row in keys.list():
            made = datetime.datetime.fromtimestamp(row["created_at"]).isoformat(timespec="seconds")
            state = "active" if row["revoked_at"] is None else "revoked " + datetime.datetime.fromtimestamp(
                row["revoked_at"]).isoformat(timespec="seconds")
            print(f"{row['name']:<32} made {made}  {state}")
    return 0


def main(args) -> int:
    from align.serving.app import Limits, ServedModel, Service, build_app
    from align.serving.access import Access, RateLimiter
    from align.serving.keys import ApiKeys
    from align.serving.resolve import model_id, served_models
    from align.serving.server import serve_forever
    from align.data.store import open_store
    from align.ui.access import is_loopback
    from align.ui.chat import default_store_path, store_name

    _check(args)
    chat_models = served_models(run=args.run, model=args.model, runs_dir=args.runs_dir,
                                allow_ungated=args.allow_ungated)
    store_location = args.store or default_store_path(chat_models[0], args.runs_dir)
    store = open_store(store_location)
    keys = ApiKeys(store)
    if args.add_key or args.list_keys or args.revoke_key:
        return _keys_command(args, keys)
    if args.engine == "vllm":
        from align.serving.engine import vllm_engine

        vllm_engine(chat_models[0].source)
    need_keys = args.require_keys or not is_loopback(args.host)
    if need_keys and not keys.active():
        raise AlignError(f"serving on {args.host} needs API keys and store {store_name(store)} has none: make one with "
                         f"`python -m align.run serve --store {store_location} --add-key NAME`")
    output_filter = None
    if args.filter_toxicity is not None:
        from align.serving.moderation import OutputFilter

        output_filter = OutputFilter(args.filter_toxicity, args.filter_action, args.scorer)
        output_filter.load()
    models = {model_id(m): ServedModel(model_id(m), m, max_batch=args.max_batch) for m in chat_models}
    service = Service(models, store=store, access=Access(keys if need_keys else None, RateLimiter(args.rate_limit)),
                      output_filter=output_filter, log_requests=args.log_requests,
                      limits=Limits(args.max_request_bytes, args.max_tokens, args.default_max_tokens))
    default = next(iter(models.values()))
    default.engine()  # load now, not on the first request
    print(f"align serve: {', '.join(f'{m.id} ({m.chat_model.verdict})' for m in models.values())}; feedback to "
          f"{store_name(store)}; API keys {'required' if need_keys else 'off (loopback)'}; output filter "
          f"{output_filter.describe() if output_filter else 'off'}; prompt logging "
          f"{args.log_requests or 'off'}; http://{args.host}:{args.port}/v1", flush=True)
    try:
        serve_forever(build_app(service), args.host, args.port)
    finally:
        service.close()
    return 0
