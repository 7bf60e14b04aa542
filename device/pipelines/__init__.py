"""Pipelines: a model plus the logic that turns its outputs into events."""
