"""Runnable examples: ``python -m msgtrace.examples.basic_tracing``."""
