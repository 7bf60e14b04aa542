"""Hard examples kept on the device for retraining, and pulled by `edgewatch collect`.

The pieces, each in its own module: ``meta`` (the sidecar that describes one example),
``store`` (the bounded, crash-safe folder), ``detector`` (which frames are worth
keeping), ``recorder`` (keeping them without making inference wait), ``wire`` (what
`collect` publishes) and ``service`` (the `keep`/`collect`/`forget` commands).

This module imports nothing, so ``device.commands`` can import ``device.examples.wire``
without pulling in the recorder (which itself uses ``device.commands``' JPEG encoder).
"""
