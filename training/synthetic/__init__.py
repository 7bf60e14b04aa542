"""Synthetic data (OpenCV-drawn shapes, generated sensor signals) so tests, the demo and
benchmarks need no downloads."""
