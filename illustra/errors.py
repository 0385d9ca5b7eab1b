"""The one kind of error a user is shown as a sentence (exit 2), never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or machine, said in one sentence that says what to do."""


class ConfigError(UserError, ValueError):
    """A config key that does not exist or holds the wrong kind of value (`--set lr=oops`)."""
