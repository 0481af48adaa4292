"""Adapters to the outside world, one folder per kind of system. With engine/ (the Kafka clients), the only package
that imports vendor SDKs."""
