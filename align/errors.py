"""Errors a user can fix. The CLI prints them as one clear line and exits with code 2."""

from __future__ import annotations


class AlignError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ConfigError(AlignError):
    """A recipe or command-line override is wrong (unknown key, bad value)."""


class DataError(AlignError):
    """A dataset row is unusable. Names the file, the row (1-based) and the field."""

    def __init__(self, file: str, row: int | None, field: str | None, message: str):
        self.file, self.row, self.field, self.message = str(file), row, field, message
        where = self.file
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ModelError(AlignError):
    """A model or tokenizer cannot be used as asked (missing, no chat template, no pad token...)."""


class GateError(AlignError):
    """A parent artifact failed its gate and no override was given."""
