"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args) -> int:
    """Run `python -m align.run ...` in this process; returns the exit code."""
    from align.run import main

    return main([str(a) for a in args])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for the servers tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def align_process(*args) -> subprocess.Popen:
    """`python -m align.run ...` started in a process of its own (output discarded), to be killed."""
    return subprocess.Popen([sys.executable, "-m", "align.run", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_after_first_checkpoint(process: subprocess.Popen, checkpoints: Path, timeout: float = 240) -> None:
    """SIGKILL a stage process as soon as its first complete checkpoint is in `checkpoints` (a real kill: nothing
    of the stage's own cleanup runs)."""
    deadline = time.time() + timeout
    while not list(Path(checkpoints).glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, "the stage ended before it wrote a checkpoint"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
