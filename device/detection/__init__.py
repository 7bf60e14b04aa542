"""Object detection on the device: decoded objects, motion gating, tracking, zones, snapshots."""
