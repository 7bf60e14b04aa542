"""Scoring "what came next" against a next-event model, fast enough for a busy log.

A log line's score depends only on the ids of the ``history`` events before it and on
its own id, and real logs repeat the same few sequences over and over. So the scorer
remembers the score of every (history, next) pair it has computed and, for pairs it has
not, the model's output for the history; only histories never seen before reach the
model, and those are collected over a whole batch of lines and scored in one invocation.

Batching needs an interpreter whose input has room for many histories. The model is
converted with a free batch dimension, so the scorer builds extra interpreters from the
same model bytes with the input resized to a few batch sizes, and checks each against
the checked single-history runtime on the bundle's golden input before using it. Where
resizing fails (a model with a fixed batch), it falls back to one history per call.

The ranking rule is DeepLog's: a class's rank is one plus the number of classes the model
scored strictly higher, so ties (common with int8 outputs) count in the event's favour.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle.manifest import GoldenPair, LogPreprocessing, Manifest, NextEventDecoding
from device.errors import BundleTaskError
from device.runtime import AnyArray, ModelRuntime, dequantize

log = logging.getLogger(__name__)

History = tuple[int, ...]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
#: The model's best guesses kept with every score (for the event: "expected X, got Y").
EXPECTED = 3
#: Batch sizes tried besides the configured one: small batches are cheaper to invoke.
SMALL_BATCH = 16
#: Model outputs cached per history take at most this many bytes.
ROW_CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EventScore:
    """How the model judged one event after its history."""

    #: 1 + the number of classes the model scored strictly higher.
    rank: int
    probability: float
    #: -ln(probability), in nats.
    surprise: float
    #: The classes the model scored highest, best first.
    expected: tuple[int, ...]


@dataclass(frozen=True)
class ScorerStats:
    pair_hits: int
    pair_misses: int
    histories_scored: int
    invocations: int
    batched: bool


def log_model_parts(manifest: Manifest) -> tuple[LogPreprocessing, NextEventDecoding]:
    """The preprocessing and decoding of a log-anomaly bundle, or BundleTaskError."""
    spec, decoding = manifest.preprocessing, manifest.decoding
    if not isinstance(spec, LogPreprocessing) or not isinstance(decoding, NextEventDecoding):
        raise BundleTaskError(
            f"bundle {manifest.model_ref} is a {manifest.task} model, not a next-event log model"
        )
    return spec, decoding


class _Batch:
    """One interpreter with its input resized to ``size`` histories."""

    def __init__(self, interpreter: Any, size: int) -> None:
        self.interpreter = interpreter
        self.size = size
        self.input_index = interpreter.get_input_details()[0]["index"]
        self.output_index = interpreter.get_output_details()[0]["index"]
        self.buffer = np.zeros(interpreter.get_input_details()[0]["shape"], dtype=np.int32)

    def run(self, histories: AnyArray) -> AnyArray:
        count = len(histories)
        self.buffer[:count] = histories
        self.interpreter.set_tensor(self.input_index, self.buffer)
        self.interpreter.invoke()
        out: AnyArray = self.interpreter.get_tensor(self.output_index)[:count]
        return out


class NextEventScorer:
    """Scores (history, next class) pairs with caching and batching; one thread only."""

    def __init__(
        self,
        manifest: Manifest,
        model_bytes: bytes,
        runtime: ModelRuntime,
        *,
        batch_size: int = 256,
        cache_entries: int = 100_000,
    ) -> None:
        self.spec, self.decoding = log_model_parts(manifest)
        self.history = self.spec.history
        self.classes = self.spec.classes
        self._runtime = runtime
        self._out_spec = runtime.outputs[0]
        self._logits = self.decoding.logits
        self._cache_entries = cache_entries
        self._row_entries = min(cache_entries, max(256, ROW_CACHE_BYTES // (4 * self.classes)))
        # Ordered: the oldest entry goes first when full (popitem is O(1) there; a plain
        # dict's first key after many deletions is not).
        self._pairs: OrderedDict[History, EventScore] = OrderedDict()
        self._rows: OrderedDict[History, FloatArray] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._histories = 0
        self._invocations = 0
        sizes = sorted({min(SMALL_BATCH, batch_size), batch_size} - {1})
        self._batches = [
            b for b in (self._make_batch(manifest, model_bytes, s) for s in sizes) if b is not None
        ]

    # -- construction --------------------------------------------------------------------

    def _make_batch(self, manifest: Manifest, model_bytes: bytes, size: int) -> _Batch | None:
        """An interpreter for ``size`` histories, if the model allows it and agrees with the
        checked runtime on the golden input."""
        backend = self._runtime.backend
        try:
            interpreter = backend.interpreter_class(
                model_content=model_bytes, num_threads=self._runtime.threads
            )
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [size, self.history], strict=True)
            interpreter.allocate_tensors()
            batch = _Batch(interpreter, size)
            golden = GoldenPair.decode(manifest.golden.input_b64, self._runtime.inputs[0])
            expected = self._runtime.invoke_native([golden])[0]
            got = batch.run(np.repeat(golden, 2, axis=0))
        except (ValueError, RuntimeError) as exc:
            log.info("%s: no batched interpreter (%s); scoring one history a call",
                     manifest.model_ref, exc)  # fmt: skip
            return None
        if not np.array_equal(got[:1], expected) or not np.array_equal(got[1:2], expected):
            log.warning("%s: the batch-%d interpreter disagrees with the checked one; not used",
                        manifest.model_ref, size)  # fmt: skip
            return None
        return batch

    # -- scoring -------------------------------------------------------------------------

    def cached(self, key: History) -> EventScore | None:
        """The score of ``key`` (history + next class) if computed before."""
        score = self._pairs.get(key)
        if score is not None:
            self._hits += 1
        return score

    def score(self, keys: Sequence[History]) -> list[EventScore]:
        """Scores of (history..., next) keys; histories not cached are invoked in batches."""
        pairs = self._pairs
        out: list[EventScore | None] = [pairs.get(k) for k in keys]
        missing = [i for i, s in enumerate(out) if s is None]
        self._hits += len(keys) - len(missing)
        if missing:
            self._misses += len(missing)
            fresh = self._score_missing([keys[i] for i in missing])
            for i, score in zip(missing, fresh, strict=True):
                out[i] = score
        return [s for s in out if s is not None]

    def _score_missing(self, keys: list[History]) -> list[EventScore]:
        """Score keys in one go: ranks, probabilities and best guesses as array operations
        over all of them, then one EventScore each (remembered)."""
        found = self._rows_for([k[:-1] for k in keys])
        order: dict[History, int] = {}
        for key in keys:
            order.setdefault(key[:-1], len(order))
        table = np.stack([found[h] for h in order])
        rows = np.fromiter((order[k[:-1]] for k in keys), dtype=np.intp, count=len(keys))
        actual = np.fromiter((k[-1] for k in keys), dtype=np.intp, count=len(keys))
        values = table[rows, actual]
        ranks = np.empty(len(keys), dtype=np.int64)
        step = max(1, (1 << 22) // max(1, table.shape[1]))  # bound the comparison's memory
        for start in range(0, len(keys), step):
            end = start + step
            ranks[start:end] = (table[rows[start:end]] > values[start:end, None]).sum(axis=1)
        count = min(EXPECTED, table.shape[1])
        top = np.argpartition(-table, count - 1, axis=1)[:, :count]
        top_values = np.take_along_axis(table, top, axis=1)
        best = np.take_along_axis(top, np.argsort(-top_values, axis=1, kind="stable"), axis=1)
        expected = [tuple(int(c) for c in row) for row in best.tolist()]
        probabilities = np.exp(values).tolist()
        surprises = (-values).tolist()
        out = []
        for i, key in enumerate(keys):
            score = EventScore(int(ranks[i]) + 1, probabilities[i], surprises[i],
                               expected[rows[i]])  # fmt: skip
            self._remember(key, score)
            out.append(score)
        return out

    def rows(self, histories: Sequence[History]) -> FloatArray:
        """Log-probabilities of every class after each history (no caching of pairs)."""
        found = self._rows_for(histories)
        stacked: FloatArray = np.stack([found[h] for h in histories]).astype(np.float32)
        return stacked

    def stats(self) -> ScorerStats:
        return ScorerStats(
            pair_hits=self._hits,
            pair_misses=self._misses,
            histories_scored=self._histories,
            invocations=self._invocations,
            batched=bool(self._batches),
        )

    def clear(self) -> None:
        self._pairs.clear()
        self._rows.clear()

    # -- internals -----------------------------------------------------------------------

    def _rows_for(self, histories: Sequence[History]) -> dict[History, FloatArray]:
        found: dict[History, FloatArray] = {}
        todo: list[History] = []
        for history in histories:
            if history in found:
                continue
            row = self._rows.get(history)
            if row is None:
                todo.append(history)
                found[history] = _EMPTY
            else:
                found[history] = row
        if todo:
            logp = self._log_probabilities(np.asarray(todo, dtype=np.int32))
            for history, row in zip(todo, logp, strict=True):
                found[history] = row
                if self._row_entries <= 0:
                    continue
                if len(self._rows) >= self._row_entries:
                    self._rows.popitem(last=False)
                self._rows[history] = row
        return found

    def _log_probabilities(self, histories: AnyArray) -> FloatArray:
        self._histories += len(histories)
        native = self._invoke(histories)
        values = dequantize(native, self._out_spec).reshape(len(histories), self.classes)
        if self._logits:
            shifted = values - values.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        else:
            logp = np.log(np.maximum(values, 1e-12))
        result: FloatArray = logp.astype(np.float32)
        return result

    def _invoke(self, histories: AnyArray) -> AnyArray:
        """Run the model on every history: full large batches, then small ones, then
        single calls for the last one or two (a large batch costs more than a few small)."""
        parts: list[AnyArray] = []
        start, count = 0, len(histories)
        large = self._batches[-1] if self._batches else None
        small = self._batches[0] if self._batches else None
        while start < count:
            left = count - start
            batch: _Batch | None = None
            if large is not None and small is not None:
                batch = large if left > 4 * small.size else small if left > 2 else None
            if batch is None:
                parts.append(self._runtime.invoke_native([histories[start : start + 1]])[0])
                start += 1
            else:
                end = min(count, start + batch.size)
                parts.append(batch.run(histories[start:end]).copy())
                start = end
            self._invocations += 1
        return np.concatenate(parts, axis=0)

    def _remember(self, key: History, score: EventScore) -> None:
        if self._cache_entries <= 0:
            return
        if len(self._pairs) >= self._cache_entries:
            self._pairs.popitem(last=False)
        self._pairs[key] = score


_EMPTY: FloatArray = np.empty(0, dtype=np.float32)
