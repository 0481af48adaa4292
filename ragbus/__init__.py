"""ragbus: event-driven RAG on Kafka. This package is the composition root (CLI, stage wiring, supervisor)."""

__version__ = "0.1.0"
