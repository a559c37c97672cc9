"""The errors tempo raises. Library code raises these; only ``cli.main`` turns them into messages."""

from __future__ import annotations


class TempoError(Exception):
    """A failure the user can act on: ``message`` says what went wrong, ``hint`` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(TempoError):
    """A config, preset or option value is invalid."""


class UsageError(TempoError):
    """The command line asks for something impossible; exits with 2 like a usage error."""

    exit_code = 2


class CheckpointError(TempoError):
    """A weight file is missing, unreadable, or does not fit the model."""


class LatentFileError(TempoError):
    """A latent file is truncated, not a tempo file, or of an unsupported version."""
