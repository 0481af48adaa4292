"""Adapters to the outside world and wiring. The only package that imports vendor SDKs."""
