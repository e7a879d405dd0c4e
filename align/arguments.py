"""Command-line pieces the commands share (argparse): on/off switches declared as a table of flag → help text."""

from __future__ import annotations

import argparse


def add_switches(parser: argparse.ArgumentParser, switches: dict[str, str]) -> None:
    """One on/off flag (`store_true`, default off) per entry: `--flag` → its help text."""
    for flag, help_text in switches.items():
        parser.add_argument(flag, action="store_true", help=help_text)
