"""`python -m align.run label`: serve the labeling app, add accounts, or export the labels.

    python -m align.run label --add-user ada                 # password from a prompt / $ALIGN_PASSWORD
    python -m align.run label --add-user lead --role admin
    python -m align.run label --store runs/demo/labels.sqlite --annotators-per-item 3
    python -m align.run label --export prefs.jsonl           # consensus pairs, as `labels:<store>` reads them

Kept apart from `ui.label` so that building the CLI does not import gradio.
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from align.errors import AlignError
from data.store import DEFAULT_HOLD_SECONDS, open_store

DEFAULT_PORT = 7861


def default_store() -> str:
    """The newest runs/*/labels.sqlite (or runs/labels.sqlite), else runs/labels.sqlite."""
    found = sorted([*Path("runs").glob("*/labels.sqlite"), *Path("runs").glob("labels.sqlite")],
                   key=lambda p: p.stat().st_mtime)
    return str(found[-1] if found else Path("runs") / "labels.sqlite")


def read_password(name: str) -> str:
    """A new account's password: $ALIGN_PASSWORD, the file named by $ALIGN_PASSWORD_FILE, or a prompt."""
    if os.environ.get("ALIGN_PASSWORD"):
        return os.environ["ALIGN_PASSWORD"]
    if os.environ.get("ALIGN_PASSWORD_FILE"):
        return Path(os.environ["ALIGN_PASSWORD_FILE"]).read_text(encoding="utf-8").rstrip("\r\n")
    first = getpass.getpass(f"Password for {name}: ")
    if first != getpass.getpass("Again: "):
        raise AlignError("the two passwords differ")
    return first


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=None,
                        help="label store: a SQLite file or a database URL (default: newest runs/*/labels.sqlite)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--annotators-per-item", type=int, default=1,
                        help="how many different annotators label each item (default 1)")
    parser.add_argument("--hold-minutes", type=float, default=DEFAULT_HOLD_SECONDS / 60,
                        help="how long an item served to an annotator stays reserved for them")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-annotator reply order")
    parser.add_argument("--add-user", metavar="NAME",
                        help="create (or reset) an account and exit; the password comes from $ALIGN_PASSWORD, "
                             "the file in $ALIGN_PASSWORD_FILE, or a prompt")
    parser.add_argument("--role", choices=["annotator", "admin"], default="annotator", help="role for --add-user")
    parser.add_argument("--export", metavar="JSONL", help="write the consensus preference pairs to JSONL and exit")


def main(args: argparse.Namespace) -> int:
    store_location = args.store or default_store()
    if args.add_user:
        store = open_store(store_location)
        store.add_annotator(args.add_user, read_password(args.add_user), args.role, replace=True)
        print(f"account {args.add_user!r} ({args.role}) saved in {store.url}")
        return 0
    if args.export:
        rows = open_store(store_location).write_preferences_jsonl(args.export)
        print(f"wrote {rows} preference pairs to {args.export}")
        return 0
    from ui.label import serve  # gradio loads only when the app is served

    serve(store_location, args.host, args.port, annotators_per_item=args.annotators_per_item,
          hold_seconds=args.hold_minutes * 60, k_order_seed=args.seed)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m ui.label_cli", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    try:
        raise SystemExit(main(_parser.parse_args()))
    except AlignError as _error:
        print(f"error: {_error}")
        raise SystemExit(_error.exit_code)
