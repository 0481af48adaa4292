"""Kafka -> outside world on confluent-kafka: indexer, status sink, answerer."""
