"""Errors that say what the runner must do. Adapters classify their backends' failures into these by
exception type and status code, never by matching message text."""

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


class FetchError(PoisonMessageError):
    """A document's content_url cannot be read: not allowed here, not there, too large, too slow, refused by
    its source. The event is dead-lettered with this message (which says what to fix) and can be replayed
    once the source or the configuration is fixed."""


class ConfigurationError(RagbusError):
    """Nothing works until an operator acts (a wrong key, a missing model, an unreachable service at
    start-up). At start-up the process exits with this message, which says what to set or start; at
    run time the stage stops taking events and reports itself broken with it."""


class AnswerModelError(RagbusError):
    """The language model gave no usable answer within the query's deadline (overloaded, timing out, or
    an empty reply). The answerer falls back to an extractive answer marked degraded with this reason."""


class ModelRequestError(AnswerModelError):
    """The language model refused this one request (HTTP 400, 413, 422: too long, a block it does not take).
    That query is answered extractively with the reason. A refusal of every request is a configuration (a
    model name or a parameter the API does not take): the answerer's guard concludes that after a few
    refusals in a row (consumers/model_guard.py)."""


class RetrievalModelError(RagbusError):
    """An optional retrieval model (a reranker, a query rewriter) gave no usable result in time. Retrieval
    goes on without it (the first-stage order, the question as asked) and counts the degradation."""
