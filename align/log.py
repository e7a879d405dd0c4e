"""The project's one logger: progress messages of every command, `[align] …` on standard output.

Use `from align.log import log` and `log.info("…")` (or `log.warning`) wherever the project reports progress;
`get(prefix)` gives a logger whose messages read `[align] prefix: …` (the eval, gate and stage messages).
Contract:
- messages go to the standard output of the moment (a test's capsys or a redirected stream sees them), each line
  prefixed `[align] `; on a terminal through rich (no time or level columns, no markup), plain text otherwise;
- under `accelerate launch` / `torchrun` only the main process (rank 0, align.distributed's rule) logs below
  ERROR, so a launch with N processes prints each message once;
- a core utility: it imports nothing of the project, so every layer (data included) may log;
- the configuration is done once, on first use, on the `align` logger only (propagation off): it neither touches
  the root logger nor other libraries' loggers.
Output that is the command's product (tables, listings, `--help`) is printed, not logged.
"""

from __future__ import annotations

import logging
import os
import sys

PREFIX = "[align]"
NAME = "align"


#: the rank variables launchers set, as align.distributed reads them (not imported: align.log sits below it)
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _is_main() -> bool:
    ranks = [int(os.environ.get(name, -1)) for name in RANK_VARS]
    return next((rank for rank in ranks if rank >= 0), 0) == 0


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or _is_main()


class _CurrentStdout(logging.StreamHandler):
    """A plain handler writing to whatever sys.stdout is when a message is emitted."""

    def __init__(self):
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)
        self.flush()


class _TerminalOrPlain(logging.Handler):
    """rich on a terminal, plain text otherwise; decided per message (the stream may change, e.g. under pytest)."""

    def __init__(self):
        super().__init__()
        self._plain = _CurrentStdout()
        self._rich = None

    def setFormatter(self, fmt) -> None:  # noqa: N802 (logging's name)
        super().setFormatter(fmt)
        self._plain.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout
        if getattr(stream, "isatty", lambda: False)():
            if self._rich is None:
                from rich.logging import RichHandler
                self._rich = RichHandler(show_time=False, show_level=False, show_path=False, markup=False,
                                         highlighter=None, rich_tracebacks=False)
                self._rich.setFormatter(self.formatter)
            self._rich.emit(record)
        else:
            self._plain.emit(record)


def _configure() -> logging.Logger:
    logger = logging.getLogger(NAME)
    if not any(isinstance(h, _TerminalOrPlain) for h in logger.handlers):
        handler = _TerminalOrPlain()
        handler.setFormatter(logging.Formatter(f"{PREFIX} %(message)s"))
        handler.addFilter(_MainProcessOnly())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"{self.extra['prefix']}: {msg}", kwargs


log = _configure()


def get(prefix: str | None = None) -> logging.Logger | logging.LoggerAdapter:
    """The project's logger; with `prefix`, one whose messages read `[align] prefix: message`."""
    return log if not prefix else _Prefixed(log, {"prefix": prefix})
