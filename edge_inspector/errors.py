"""Errors that reach the user as one line and a fixed exit code (see GUIDE.md: CLI contract)."""

from __future__ import annotations


class InspectorError(Exception):
    """Base class for errors the CLI turns into a one-line message."""

    exit_code = 1


class InputError(InspectorError):
    """Bad input from the user: config, image, model file, payload. Exit code 2.

    The message must name what is wrong and where (file path, key path, line when known).
    """

    exit_code = 2


class ConfigError(InputError):
    """Invalid station configuration."""


class ModelBundleError(InputError):
    """Missing, corrupt or incompatible model bundle."""


class DatasetError(InputError):
    """Unusable dataset folder or image."""
