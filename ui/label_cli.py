"""`python -m align.run label`: serve the labeling app, add accounts, or export the labels.

    python -m align.run label --add-user ada                 # password from a prompt / $ALIGN_PASSWORD
    python -m align.run label --add-user lead --role admin
    python -m align.run label --add-user ada --reset-password      # an existing account: a new password
    python -m align.run label --add-user ada --set-role admin      # an existing account: a new role
    python -m align.run label --ssl-certfile cert.pem --ssl-keyfile key.pem --host 0.0.0.0   # HTTPS
    python -m align.run label --store runs/demo/labels.sqlite --annotators-per-item 3
    python -m align.run label --export prefs.jsonl           # consensus pairs, as `labels:<store>` reads them
    python -m align.run label --export thumbs.jsonl --export-kind unpaired   # kto's rows: thumbs, best/worst

Kept apart from `ui.label` so that building the CLI does not import gradio.
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from align.errors import AlignError
from align.data.store import DEFAULT_HOLD_SECONDS, ROLES, open_store
from align.ui.access import add_tls_arguments, tls_files

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
                        help="create an account and exit (an existing name is refused unless --reset-password "
                             "or --set-role is given); the password (8 characters at least) comes from "
                             "$ALIGN_PASSWORD, the file in $ALIGN_PASSWORD_FILE, or a prompt")
    parser.add_argument("--role", choices=ROLES, default="annotator", help="role of a new account (--add-user)")
    parser.add_argument("--reset-password", action="store_true",
                        help="with --add-user NAME: give the existing account a new password (its role is kept)")
    parser.add_argument("--set-role", choices=ROLES, default=None,
                        help="with --add-user NAME: change the existing account's role (its password is kept)")
    add_tls_arguments(parser)
    parser.add_argument("--export", metavar="JSONL", help="write the labels to JSONL and exit (--export-kind)")
    parser.add_argument("--export-kind", choices=("pairs", "unpaired"), default="pairs",
                        help="pairs: the consensus preference pairs and compare choices (rm, dpo); unpaired: "
                             "desirable/undesirable replies — thumbs, best- and worst-ranked — as kto reads them "
                             "(default: pairs)")


def main(args: argparse.Namespace) -> int:
    store_location = args.store or default_store()
    if (args.reset_password or args.set_role) and not args.add_user:
        raise AlignError("--reset-password and --set-role change the account named by --add-user NAME")
    if args.add_user:
        return _save_account(open_store(store_location), args)
    if args.export:
        rows = open_store(store_location).write_preferences_jsonl(args.export, args.export_kind)
        what = "preference pairs" if args.export_kind == "pairs" else "unpaired rows (kto)"
        print(f"wrote {rows} {what} to {args.export}")
        return 0
    from align.ui.label import serve  # gradio loads only when the app is served

    tls = tls_files(args.ssl_certfile, args.ssl_keyfile)
    serve(store_location, args.host, args.port, annotators_per_item=args.annotators_per_item,
          hold_seconds=args.hold_minutes * 60, k_order_seed=args.seed, tls=tls)
    return 0


def _save_account(store, args: argparse.Namespace) -> int:
    """--add-user: a new account; an existing one only with --reset-password and/or --set-role."""
    name = args.add_user.strip()
    if store.role(name) is None:
        role = args.set_role or args.role
        store.add_annotator(name, read_password(name), role)
        print(f"account {name!r} ({role}) created in {store.url}")
        return 0
    if not (args.reset_password or args.set_role):
        raise AlignError(f"account {name!r} exists already in {store.url}: give --reset-password for a new "
                         "password and/or --set-role ROLE for a new role")
    store.update_annotator(name, password=read_password(name) if args.reset_password else None,
                           role=args.set_role)
    changed = [what for what, given in (("password reset", args.reset_password),
                                        (f"role {args.set_role}", args.set_role)) if given]
    print(f"account {name!r}: {', '.join(changed)} in {store.url}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m align.ui.label_cli", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    try:
        raise SystemExit(main(_parser.parse_args()))
    except AlignError as _error:
        print(f"error: {_error}")
        raise SystemExit(_error.exit_code)
