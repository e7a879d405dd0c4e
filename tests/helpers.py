"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import socket


def run_cli(*args) -> int:
    """Run `python -m align.run ...` in this process; returns the exit code."""
    from align.run import main

    return main([str(a) for a in args])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for the servers tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
