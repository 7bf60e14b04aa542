"""edgewatch device side: everything that runs on the Pi.

Nothing in this package imports TensorFlow, training/ or converters/ at import time,
because a device has neither.
"""

__version__ = "0.1.0"
