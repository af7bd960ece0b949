"""Validation of the names users choose: kinds and namespaces."""

from __future__ import annotations

import re

from delta_actors.errors import ConfigError

NAME_MAX_LENGTH = 63
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_name(value: object, what: str) -> str:
    """Return `value` if it is a valid kind or namespace name, else raise ConfigError."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__}: {value!r}")
    if _NAME_RE.fullmatch(value) is None:
        if len(value) > NAME_MAX_LENGTH:
            reason = f"it is {len(value)} characters long, at most {NAME_MAX_LENGTH} are allowed"
        else:
            reason = "use lowercase letters, digits, '-' and '_', starting with a letter or digit"
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConfigError(f"invalid {what} {shown!r}: {reason}")
    return value
