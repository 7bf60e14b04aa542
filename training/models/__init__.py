"""Model architectures for edgewatch training (Keras 3, Edge TPU-friendly ops only)."""
