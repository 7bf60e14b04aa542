"""`edgewatch demo`: the whole system on one machine.

A broker (mosquitto when one already listens on the port, amqtt embedded otherwise),
the daemon with the bundled shapes model on the bundled sample video, and the live
watch view, all in one process. Ctrl-C stops everything and the daemon still publishes
its end events and "offline" before the broker goes away.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from device.config import load_config
from device.daemon import Daemon
from device.embedded_broker import EmbeddedBroker, port_is_open
from device.errors import ConfigError

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent.parent / "deploy" / "demo"
DEMO_CONFIG = DEMO_DIR / "device.toml"


def run_demo(
    port: int = 1883,
    duration_s: float | None = None,
    show_watch: bool = True,
    config_path: Path = DEMO_CONFIG,
) -> int:
    if not config_path.is_file():
        raise ConfigError(
            f"the demo's files are not here ({config_path}); run the demo from a checkout "
            "of the edgewatch repository (make demo), or rebuild them with `make models`"
        )
    config = load_config(config_path)
    started = time.monotonic()
    broker: EmbeddedBroker | None = None
    mqtt_update: dict[str, object] = {"host": "127.0.0.1", "port": port}
    if port_is_open("127.0.0.1", port):
        log.info("using the MQTT broker already listening on 127.0.0.1:%d", port)
    else:
        broker = EmbeddedBroker(port)
        broker.start()
        # amqtt speaks MQTT 3.1.1 only.
        mqtt_update["protocol"] = "3.1.1"
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update=mqtt_update)})

    daemon = Daemon(config)
    daemon_thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    stop = threading.Event()
    daemon_thread.start()
    if duration_s is not None:
        threading.Timer(duration_s, stop.set).start()
    try:
        from device.watch import run_watch

        if show_watch:
            # The live view owns the terminal from here; only problems are logged.
            logging.getLogger().setLevel(logging.WARNING)
        # Without the view, events go to stdout as JSON lines (logs stay on stderr).
        run_watch(
            "127.0.0.1",
            port,
            prefix=config.mqtt.prefix,
            device=config.device.id,
            as_json=not show_watch,
            config_for_tls=config.mqtt,
            stop_event=stop,
        )
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()
        daemon_thread.join(timeout=10.0)
        if broker is not None:
            broker.stop()
    log.info("demo stopped after %.0f s", time.monotonic() - started)
    return 0
