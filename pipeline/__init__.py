"""Streaming event-enrichment framework: validate, dedupe, enrich and route events on Kafka."""

__version__ = "0.1.0"
