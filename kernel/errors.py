"""Errors that tell the runner what to do (STYLE.md: errors say what the runner must do)."""

from __future__ import annotations


class RagbusError(Exception):
    """Base class of ragbus's own errors."""


class RetryableError(RagbusError):
    """Transient: back off and try again; do not commit. `retry_after` in seconds, if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoisonMessageError(RagbusError):
    """This message can never be processed as it is: dead-letter it with the reason, then commit."""


class ConfigurationError(RagbusError):
    """Fail at start-up; the message tells the user what to set or start."""
