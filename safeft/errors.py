"""User-facing errors: the CLI prints their message without a traceback and exits non-zero."""

from __future__ import annotations


class SafeftError(Exception):
    """A mistake the user can fix (bad config, bad input file); the message says what and where."""


class ConfigError(SafeftError):
    """A config key has a value that is not allowed."""


class DataError(SafeftError):
    """An input row or file cannot be used."""


class TemplateError(SafeftError):
    """A template cannot render, or a tokenizer breaks the prompt-prefix property."""
