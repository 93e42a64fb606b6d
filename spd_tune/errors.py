"""The errors a user can cause and fix. Every command line turns one of these into a single ``error: ...`` line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


class DataError(ValueError):
    """A data folder is missing, empty or not in the expected format."""


class CheckpointError(ValueError):
    """A file is not an spd-tune checkpoint or does not fit the model asked for."""


class WeightsError(RuntimeError):
    """The FID Inception weights are missing, unreadable or not the expected file."""


USER_ERRORS = (ConfigError, DataError, WeightsError, CheckpointError)


def first_line(err: BaseException) -> str:
    """An exception's first line: a library's message, shown inside one of ours."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
