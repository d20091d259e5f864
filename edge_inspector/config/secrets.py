"""Secrets named by the station config: an environment variable or a file, never inline YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from edge_inspector.errors import ConfigError


def read_secret(section: str, env_key: str, env_name: Optional[str], file_key: str,
                file_path: Optional[Path]) -> Optional[str]:
    """The secret from ``{section}.{env_key}`` or ``{section}.{file_key}``; None when neither is set.

    Errors name the key, as every config error does: ``mqtt.password_env: environment variable X
    is not set``. A file's trailing newline is not part of the secret (editors add one).
    """
    if env_name and file_path:
        raise ConfigError(f"{section}.{env_key} and {section}.{file_key} are both set: keep one")
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise ConfigError(f"{section}.{env_key}: environment variable {env_name} is not set")
        return value
    if file_path:
        try:
            return file_path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{section}.{file_key}: cannot read {file_path}: {exc.strerror or exc}") from None
    return None
