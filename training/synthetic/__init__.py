"""Synthetic, OpenCV-drawn data so tests, the demo and benchmarks need no downloads."""
