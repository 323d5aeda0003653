"""Metrics: separation of batch and biology, identifiability, retrieval."""
