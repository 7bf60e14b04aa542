"""Keras → TFLite conversion, parity and Edge TPU checks, bundle writing and signing."""
