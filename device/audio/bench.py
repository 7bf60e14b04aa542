"""`edgewatch bench` for audio bundles: raw invoke latency and the real-time factor.

The real-time factor (RTF) is processing time over audio time: 0.02 means one second of
audio costs 20 ms. It is measured through ``KeywordPipeline`` itself (streaming
features, windowing, inference, smoothing and decisions), fed chunk by chunk the way
the daemon feeds it, twice on the same audio from one run: with the silence gate off
(every window inferred: the worst case, what a noisy room costs) and with the gate as
configured. Pin the process to one core (``taskset -c 0 edgewatch bench ... --threads
1``) to measure what one core of a Pi spends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.audio.clips import read_audio_file
from device.audio.config import KeywordEvents, KeywordPipelineConfig
from device.audio.stream import AudioChunk
from device.bundle.manifest import AudioPreprocessing
from device.bundle.reader import read_bundle
from device.errors import BundleTaskError
from device.pipelines.keyword import KeywordPipeline
from device.runtime import ModelRuntime, load_for_manifest, quantize

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
DEFAULT_SECONDS = 60.0


@dataclass(frozen=True)
class AudioBenchResult:
    bundle: str
    model: str
    quantization: str
    backend: str
    threads: int
    audio: str
    audio_s: float
    chunk_ms: float
    hop_ms: float
    raw_invoke_ms_p50: float
    raw_invoke_ms_p99: float
    #: Features of one second of audio, in milliseconds.
    feature_ms_per_s: float
    #: Gate off: every window inferred.
    windows: int
    real_time_factor: float
    #: Gate as configured (``gate_db``): silent windows skipped.
    gate_db: float | None
    gated_windows: int
    real_time_factor_gated: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_audio(rng: np.random.Generator, seconds: float, sample_rate: int) -> FloatArray:
    """Generated audio for when no file is given: alternating quiet stretches (-70 dBFS,
    below the default gate) and louder bursts of shaped noise, 2 s each."""
    samples = int(seconds * sample_rate)
    audio = rng.standard_normal(samples).astype(np.float32)
    # A gentle low-pass so the bursts are not white (closer to voice and room noise).
    audio = np.convolve(audio, np.ones(8, dtype=np.float32) / 8.0, mode="same")
    period = 2 * sample_rate
    loud = (np.arange(samples) // period) % 2 == 1
    level = np.where(loud, 10 ** (-25 / 20), 10 ** (-70 / 20)).astype(np.float32)
    rms = float(np.sqrt(np.mean(np.square(audio)))) or 1.0
    return (audio / rms * level).astype(np.float32)


def _feed(pipeline: KeywordPipeline, audio: FloatArray, chunk: int, rate: int) -> None:
    for start in range(0, audio.shape[0], chunk):
        pipeline.process(
            AudioChunk(
                source="bench", index=start // chunk, samples=audio[start : start + chunk],
                sample_rate=rate, start_sample=start, timeline=start / rate,
                captured_at=0.0, discontinuity=start == 0,
            )
        )  # fmt: skip
    pipeline.flush()


def run_audio_bench(
    bundle_path: Path,
    audio_file: Path | None = None,
    *,
    threads: int = 1,
    seconds: float = DEFAULT_SECONDS,
    chunk_ms: float = 100.0,
    events: KeywordEvents | None = None,
) -> AudioBenchResult:
    bundle = read_bundle(bundle_path)
    manifest = bundle.manifest
    spec = manifest.preprocessing
    if manifest.task != "audio-classification" or not isinstance(spec, AudioPreprocessing):
        raise BundleTaskError(f"bundle {manifest.model_ref} is not an audio classifier")
    events = events or KeywordEvents()
    rate = spec.sample_rate
    if audio_file is not None:
        audio = read_audio_file(audio_file, rate).samples
        name = Path(audio_file).name
    else:
        audio = bench_audio(np.random.default_rng(0), seconds, rate)
        name = f"generated ({seconds:g} s, quiet and loud halves)"
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads, "auto")
    raw = _raw_invoke(runtime, 200)
    chunk = max(1, round(rate * chunk_ms / 1000.0))

    ungated = _pipeline(bundle, runtime, events.model_copy(update={"gate_db": None}))
    _feed(ungated, audio[: rate * 2], chunk, rate)  # warm-up (first invokes allocate)
    ungated = _pipeline(bundle, runtime, events.model_copy(update={"gate_db": None}))
    _feed(ungated, audio, chunk, rate)
    gated = _pipeline(bundle, runtime, events)
    _feed(gated, audio, chunk, rate)
    full, part = ungated.stats(), gated.stats()
    return AudioBenchResult(
        bundle=str(bundle_path),
        model=manifest.model_ref,
        quantization=manifest.quantization,
        backend=runtime.backend.name,
        threads=threads,
        audio=name,
        audio_s=round(full.audio_s, 3),
        chunk_ms=chunk_ms,
        hop_ms=events.hop_ms,
        raw_invoke_ms_p50=round(_percentile(raw, 50), 4),
        raw_invoke_ms_p99=round(_percentile(raw, 99), 4),
        feature_ms_per_s=round(1000.0 * full.feature_s / max(full.audio_s, 1e-9), 4),
        windows=full.windows,
        real_time_factor=round(full.real_time_factor, 5),
        gate_db=events.gate_db,
        gated_windows=part.gated,
        real_time_factor_gated=round(part.real_time_factor, 5),
    )


def _pipeline(bundle: Any, runtime: ModelRuntime, events: KeywordEvents) -> KeywordPipeline:
    config = KeywordPipelineConfig(source="bench", model=Path("bench.ewm"), events=events)
    return KeywordPipeline("bench", config, bundle, runtime)


def _raw_invoke(runtime: ModelRuntime, repeats: int) -> list[float]:
    spec = runtime.inputs[0]
    sample = quantize(np.zeros(spec.shape, dtype=np.float32), spec)
    runtime.timed_invoke_ms([sample], repeats=10)
    return runtime.timed_invoke_ms([sample], repeats=repeats)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def render_audio_bench(result: AudioBenchResult) -> str:
    gate = "off" if result.gate_db is None else f"{result.gate_db:g} dBFS"
    return "\n".join(
        [
            f"{result.model} ({result.quantization}) on {result.backend}, {result.threads} "
            f"thread(s), {result.audio_s:.1f} s of {result.audio}",
            f"raw invoke          p50 {result.raw_invoke_ms_p50:8.3f} ms   "
            f"p99 {result.raw_invoke_ms_p99:8.3f} ms",
            f"features            {result.feature_ms_per_s:8.3f} ms per second of audio",
            f"real-time factor    {result.real_time_factor:.4f} with every window inferred "
            f"({result.windows} windows, hop {result.hop_ms:g} ms, chunks of "
            f"{result.chunk_ms:g} ms)",
            f"                    {result.real_time_factor_gated:.4f} with the silence gate "
            f"at {gate} ({result.gated_windows} windows skipped)",
        ]
    )

