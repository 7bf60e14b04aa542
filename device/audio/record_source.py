"""An audio stream as the daemon's record worker reads it (device/record_worker.py).

The record worker takes batches and acknowledges them after scoring; audio has nothing
to acknowledge (a microphone cannot be re-read), so ``ack`` does nothing and a batch is
simply the chunks waiting now. Taking several chunks at once when the pipeline fell
behind costs nothing: the keyword pipeline's features are chunk-size invariant.
"""

from __future__ import annotations

from device.audio.config import AudioSourceConfig
from device.audio.stream import AudioChunk, AudioSourceStats, AudioStream


class AudioRecordSource:
    """Implements device.record_worker.RecordSource over an ``AudioStream``."""

    def __init__(self, name: str, config: AudioSourceConfig, sample_rate: int) -> None:
        self.name = name
        self.stream = AudioStream(name, config, sample_rate)

    def start(self) -> None:
        self.stream.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stream.stop(timeout_s)

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[AudioChunk]:
        first = self.stream.get(timeout)
        if first is None:
            return []
        batch = [first]
        while len(batch) < max_lines:
            more = self.stream.get(0.0)
            if more is None:
                break
            batch.append(more)
        return batch

    def ack(self, lines: object) -> None:
        """Nothing to remember: live audio cannot be re-read after a restart."""

    def stats(self) -> AudioSourceStats:
        return self.stream.stats()
