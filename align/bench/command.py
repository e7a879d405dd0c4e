"""How a `python -m align.bench <name>` command runs: its parser, then its `main`, errors as one line (exit 2)."""

from __future__ import annotations

import argparse
import sys


def run_subcommand(prog: str, doc: str, add_arguments, main, argv: list[str]) -> int:
    """A `python -m align.bench <name>` command: its parser (described by the first paragraph of `doc`), then
    `main(args)`, errors as one line with exit code 2, as in `python -m align.run`."""
    from align.errors import AlignError
    from align.offline import set_offline_defaults

    set_offline_defaults()

    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    try:
        return main(args)
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
