"""Errors meant for people: one line that names the file, column, key or version at fault."""

from __future__ import annotations


class MlplatformError(Exception):
    """An expected mistake in the user's input or environment.

    The CLI prints ``str(error)`` on one line and exits non-zero without a stack trace.
    """

    exit_code = 2

    def __str__(self) -> str:
        # Keep it one line whatever the caller passed in.
        return " ".join(super().__str__().split())


class ConfigError(MlplatformError):
    """params.yaml is unreadable, has an unknown or missing key, or a value of the wrong type."""


class DataValidationError(MlplatformError):
    """The dataset fails a check that must pass before anything is trained."""


class ModelError(MlplatformError):
    """A model cannot be found, loaded or scored."""


class RegistryError(MlplatformError):
    """A registered model, version or alias the command needs does not exist."""
