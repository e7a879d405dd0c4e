"""`python -m align.run chat`: chat with a trained model, compare two, send feedback to the label store.

    python -m align.run chat                                     # the latest promoted ppo/dpo/sft under runs/
    python -m align.run chat --model runs/demo                   # that run's best promoted chat model
    python -m align.run chat --model runs/demo/dpo --compare runs/demo/sft
    python -m align.run chat --filter-toxicity 0.5               # withhold replies the toxicity scorer flags
    python -m align.run chat --no-auth                           # this machine only, no sign-in

Whenever it is served, the app signs people in with the label store's accounts (`label --add-user`);
``--no-auth`` is allowed on loopback hosts only.

Kept apart from `ui.chat` so that building the CLI does not import gradio or torch.
"""

from __future__ import annotations

import argparse
import getpass

from align.arguments import add_switches
from align.ui.access import add_tls_arguments, tls_files

DEFAULT_PORT = 7862


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="a run folder (runs/<run>: its promoted ppo, else dpo, else sft), a stage folder, a model "
                             "folder, a hub id, or embedded:smollm2-135m-instruct (default: the latest promoted "
                             "ppo/dpo/sft under --runs-dir, else the embedded model)")
    parser.add_argument("--compare", metavar="MODEL", default=None,
                        help="a second model (same forms as --model): its replies are shown side by side, and "
                             "'which is better' choices become preference pairs")
    parser.add_argument("--compare-choice", metavar="MODEL", action="append", default=[],
                        help="a model offered in the page's 'Compare with' list (repeatable; the list also holds "
                             "--compare and every sft/dpo/ppo stage under --runs-dir, fixed at start)")
    parser.add_argument("--store", default=None,
                        help="label store for feedback: a SQLite file or a database URL (default: "
                             "runs/<run>/labels.sqlite for a run's model, else runs/labels.sqlite)")
    parser.add_argument("--runs-dir", default="runs", help="where run folders are looked for (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--filter-toxicity", type=float, default=None, metavar="THRESHOLD",
                        help="withhold replies whose toxicity score is above THRESHOLD (0-1), with a notice "
                             "(default: no filter)")
    parser.add_argument("--scorer", default="offline",
                        help="toxicity scorer for --filter-toxicity: offline (align's own, built once), an official "
                             "Detoxify name, or a checkpoint path (default: offline)")
    add_switches(parser, {"--no-auth": "serve without sign-in (loopback hosts only); feedback is credited to --user "
                                       "and marked auth=none"})
    parser.add_argument("--user", default=None,
                        help="with --no-auth: the name recorded with the feedback (default: your login name); "
                             "otherwise feedback is credited to the signed-in account")
    add_tls_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from align.errors import AlignError

    if args.filter_toxicity is not None and not 0.0 <= args.filter_toxicity <= 1.0:
        raise AlignError(f"--filter-toxicity {args.filter_toxicity}: give a threshold between 0 and 1")
    if args.user and not args.no_auth:
        raise AlignError("--user names the person behind a --no-auth server; with sign-in, feedback is credited "
                         "to the signed-in account")
    tls = tls_files(args.ssl_certfile, args.ssl_keyfile)
    from align.ui.chat import serve  # gradio and torch load only when the app is served

    serve(args.model, compare=args.compare, compare_choices=args.compare_choice, store=args.store,
          runs_dir=args.runs_dir, host=args.host, port=args.port, filter_threshold=args.filter_toxicity,
          scorer=args.scorer, no_auth=args.no_auth, user=args.user or getpass.getuser(), tls=tls)
    return 0
