"""Preprocessing shared by training and the device: one implementation, both sides."""
