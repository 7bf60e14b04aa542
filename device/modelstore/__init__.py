"""The on-device model store: pushes over MQTT, versions on disk, hot swap, health watch.

``store`` keeps versions and the active one on disk, ``transfer`` reassembles pushed
chunks, ``compat`` decides whether a bundle can replace a pipeline's model, ``switch``
hands a new pipeline to the inference thread between two frames, ``health`` judges a
freshly swapped model, and ``service`` ties them to MQTT. See docs/models.md.
"""
