"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations


def run_cli(*args) -> int:
    """Run `python -m align.run ...` in this process; returns the exit code."""
    from align.run import main

    return main([str(a) for a in args])
