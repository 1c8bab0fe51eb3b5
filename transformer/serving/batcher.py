"""Dynamic batching: sentences of concurrent requests queue up and one worker thread decodes them together.

A request puts its sentences in one FIFO queue and awaits a future; the worker thread takes the oldest
sentence and the sentences after it that share its setting, up to ``max_sentences`` sentences and
``max_tokens`` source tokens, and decodes them in one call. A batch closes when a budget is reached or when
its oldest sentence has waited ``max_wait_ms``; ``max_sentences=1`` turns batching off. Sentences of another
setting stay queued for a batch of their own, so a sentence's hypotheses depend only on its own text and
setting. The setting is whatever the decoder takes besides the sentences, compared with ``==``: the service's
is the n-best count (CTranslate2 searches differently with another number of hypotheses) and the target
language (a batch of a multilingual model is of one direction).

Decoding runs in the worker thread, never on the event loop; results go back to the loop with
``call_soon_threadsafe``. A batch that raises fails the requests it holds sentences of, and the worker goes
on with the next batch. Sentences of a request that was given up (its future cancelled, e.g. after a timeout)
are dropped from the queue without being decoded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from transformer.decoding.search import Hypothesis

logger = logging.getLogger(__name__)

# decode(sentences, setting) -> the n-best hypotheses of each sentence, in order
DecodeFn = Callable[[list[str], Hashable], list[list[Hypothesis]]]


class QueueFull(Exception):
    """Too many sentences are waiting; the request is refused (try again later)."""


class Stopped(Exception):
    """The batcher is stopping or stopped: it takes no more work."""


class BatchFailed(Exception):
    """Decoding the batch that held a sentence of the request raised; the message says why."""


@dataclass(frozen=True)
class BatchLimits:
    """When a batch closes and how much may wait.

    Args:
        max_tokens: source tokens (EOS included) per batch; a longer sentence is decoded alone.
        max_sentences: sentences per batch; 1 turns batching off.
        max_wait_ms: how long the oldest queued sentence waits for others; 0: take what is queued.
        max_queue: sentences that may wait; a request that would pass it is refused (unless the queue is empty).
    """

    max_tokens: int = 4096
    max_sentences: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_sentences", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


@dataclass(eq=False)
class _Job:
    """The sentences of one request and where their hypotheses go."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    results: list[list[Hypothesis] | None]
    remaining: int

    def done(self) -> bool:
        return self.future.done()  # read from the worker thread too: a stale answer only delays dropping it

    def resolve(self, value: object, error: BaseException | None = None) -> None:
        """Set the future's result (or exception) on its loop, unless it is already done (e.g. cancelled)."""

        def settle() -> None:
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


@dataclass(eq=False)
class _Sentence:
    job: _Job
    index: int
    text: str
    tokens: int
    setting: Hashable
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """The queue and its worker thread (see the module docstring).

    Args:
        decode: decodes a batch of one setting: ``decode(sentences, setting)`` -> n-best hypotheses per sentence.
        limits: the batch budgets and the queue bound.
        on_batch: called after each decoded batch with (sentences, tokens, seconds); for metrics.
        on_queue: called with the queue length whenever it changes; for metrics.

    ``lock`` is held while a batch decodes: other users of the same model (the attention pass) take it too.
    """

    def __init__(
        self,
        decode: DecodeFn,
        limits: BatchLimits,
        *,
        on_batch: Callable[[int, int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self.decode = decode
        self.limits = limits
        self.on_batch = on_batch
        self.on_queue = on_queue
        self.lock = threading.Lock()
        self._queue: collections.deque[_Sentence] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def queued(self) -> int:
        """Sentences waiting (not yet taken into a batch)."""
        return len(self._queue)

    async def translate(
        self, sentences: Sequence[str], tokens: Sequence[int], setting: Hashable
    ) -> list[list[Hypothesis]]:
        """The hypotheses of each sentence, decoded with those of other requests of the same ``setting``.

        Args:
            sentences: non-blank source sentences.
            tokens: each one's source length in tokens (EOS included), for the token budget.

        Raises:
            QueueFull: the queue would pass ``max_queue``. Stopped: the batcher is stopping.
            BatchFailed: decoding a batch that held one of the sentences raised.
        """
        if not sentences:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), [None] * len(sentences), len(sentences))
        with self._changed:
            if self._stopping:
                raise Stopped("the server is stopping")
            if self._queue and len(self._queue) + len(sentences) > self.limits.max_queue:
                raise QueueFull(f"{len(self._queue)} sentences are waiting (--max-queue {self.limits.max_queue})")
            self._queue.extend(_Sentence(job, i, s, n, setting) for i, (s, n) in enumerate(zip(sentences, tokens)))
            self._queue_changed()
            self._changed.notify()
        return await job.future

    def stop(self, *, timeout: float | None = None) -> None:
        """Take no more work, fail what is still queued, and wait (up to ``timeout`` s) for the batch in hand."""
        with self._changed:
            self._stopping = True
            left, self._queue = list(self._queue), collections.deque()
            self._queue_changed()
            self._changed.notify()
        for job in {id(s.job): s.job for s in left}.values():
            job.resolve(None, Stopped("the server stopped before this request was decoded"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._decode(batch)

    def _next_batch(self) -> list[_Sentence] | None:
        """Wait for a batch to close (see the module docstring) and take it out of the queue; None: stopping."""
        with self._changed:
            while True:
                self._drop_abandoned()
                if not self._queue:
                    if self._stopping:
                        return None
                    self._changed.wait()
                    continue
                batch, full = self._select()
                wait = self._queue[0].arrived + self.limits.max_wait_ms / 1000 - time.monotonic()
                if full or wait <= 0 or self._stopping:
                    taken = set(map(id, batch))
                    self._queue = collections.deque(s for s in self._queue if id(s) not in taken)
                    self._queue_changed()
                    return batch
                self._changed.wait(wait)

    def _select(self) -> tuple[list[_Sentence], bool]:
        """The oldest sentence and the next ones of its setting within the budgets; whether it is full."""
        setting = self._queue[0].setting
        batch: list[_Sentence] = []
        tokens = 0
        for sentence in self._queue:
            if sentence.setting != setting:
                continue
            if len(batch) == self.limits.max_sentences or (batch and tokens + sentence.tokens > self.limits.max_tokens):
                return batch, True
            batch.append(sentence)
            tokens += sentence.tokens
        return batch, len(batch) >= self.limits.max_sentences or tokens >= self.limits.max_tokens

    def _drop_abandoned(self) -> None:
        if any(s.job.done() for s in self._queue):
            self._queue = collections.deque(s for s in self._queue if not s.job.done())
            self._queue_changed()

    def _queue_changed(self) -> None:
        if self.on_queue is not None:
            self.on_queue(len(self._queue))

    def _decode(self, batch: list[_Sentence]) -> None:
        start = time.perf_counter()
        try:
            with self.lock:
                nbest = self.decode([s.text for s in batch], batch[0].setting)
            if len(nbest) != len(batch):
                raise RuntimeError(f"the engine returned {len(nbest)} results for {len(batch)} sentences")
        except Exception as err:  # one bad batch must not stop the service
            logger.exception("decoding a batch of %d sentences failed", len(batch))
            failure = BatchFailed(f"{type(err).__name__}: {err}")
            for job in {id(s.job): s.job for s in batch}.values():
                job.resolve(None, failure)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), sum(s.tokens for s in batch), time.perf_counter() - start)
        for sentence, hyps in zip(batch, nbest):
            job = sentence.job
            job.results[sentence.index] = hyps
            job.remaining -= 1
            if job.remaining == 0:
                job.resolve(job.results)
