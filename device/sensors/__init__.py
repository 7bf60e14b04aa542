"""Numeric sensor streams: file tails (CSV, JSONL), MQTT topics and the host's own
metrics, and the one windowing and scaling code that training and the device share.

Every source hands out :class:`device.sensors.reading.Reading` records through the same
``start``/``get``/``get_batch``/``ack``/``stop``/``stats`` interface as the log sources
(see docs/sensors.md).
"""
