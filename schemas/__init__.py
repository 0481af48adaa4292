"""ragbus wire contract: event models and the topic registry (no I/O)."""
