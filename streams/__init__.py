"""Kafka -> Kafka transforms on faust-streaming: chunking and embedding."""
