"""The batching queue on its own, with a fake decoder that records its batches: when a batch closes (sentence
budget, token budget, wait), settings batched apart, a failing batch, a full queue, stopping, requests given up,
and decoding off the event loop's thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("fastapi")

from transformer.decoding.search import Hypothesis  # noqa: E402
from transformer.serving.batcher import Batcher, BatchFailed, BatchLimits, QueueFull, Stopped  # noqa: E402


class FakeDecoder:
    """Answers sentence s with n_best hypotheses whose tokens are (len(s), rank); records every batch and the
    thread it ran on; a sentence "boom" raises; "hold" waits for ``release``."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], int]] = []
        self.threads: set[int] = set()
        self.release = threading.Event()

    def __call__(self, sentences: list[str], n_best: int) -> list[list[Hypothesis]]:
        self.batches.append((list(sentences), n_best))
        self.threads.add(threading.get_ident())
        if "boom" in sentences:
            raise RuntimeError("scripted failure")
        if "hold" in sentences:
            self.release.wait(5)
        return [[Hypothesis([len(s), k], -float(k), -float(k)) for k in range(n_best)] for s in sentences]


async def started(decoder: FakeDecoder) -> None:
    """Until the decoder has taken its first batch (at most 5 s)."""
    for _ in range(1000):
        if decoder.batches:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no batch was decoded")


def batched(limits: BatchLimits, requests, *, decoder: FakeDecoder | None = None):
    """Run ``requests`` ((sentences, n_best) each) concurrently through a fresh batcher; their results or
    exceptions, and the decoder."""
    decoder = decoder or FakeDecoder()

    async def main():
        batcher = Batcher(decoder, limits)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.translate(s, [len(x) for x in s], n) for s, n in requests), return_exceptions=True
            )
        finally:
            batcher.stop(timeout=5)

    return asyncio.run(main()), decoder


def test_each_sentence_gets_its_own_hypotheses_in_order():
    requests = [(["a", "bb", "ccc"], 1), (["dddd"], 2), (["ee", "f"], 1)]
    results, decoder = batched(BatchLimits(max_wait_ms=20), requests)
    for (sentences, n_best), result in zip(requests, results):
        expected = [[[len(s), k] for k in range(n_best)] for s in sentences]
        assert [[h.tokens for h in hyps] for hyps in result] == expected
    assert threading.get_ident() not in decoder.threads and len(decoder.threads) == 1  # one worker, not the loop


def test_concurrent_requests_share_batches_up_to_the_sentence_budget():
    requests = [([f"s{i}"], 1) for i in range(10)]
    _, decoder = batched(BatchLimits(max_sentences=4, max_wait_ms=200), requests)
    assert [len(b) for b, _ in decoder.batches] == [4, 4, 2]
    assert [s for b, _ in decoder.batches for s in b] == [f"s{i}" for i in range(10)]  # first come, first served


def test_a_batch_closes_at_the_token_budget_and_a_long_sentence_goes_alone():
    requests = [(["x" * 3], 1), (["x" * 3], 1), (["x" * 3], 1), (["x" * 20], 1), (["x" * 2], 1)]
    _, decoder = batched(BatchLimits(max_tokens=7, max_wait_ms=200), requests)
    assert [[len(s) for s in b] for b, _ in decoder.batches] == [[3, 3], [3], [20], [2]]


def test_max_batch_sentences_1_turns_batching_off():
    _, decoder = batched(BatchLimits(max_sentences=1, max_wait_ms=200), [(["a", "b"], 1), (["c"], 1)])
    assert [b for b, _ in decoder.batches] == [["a"], ["b"], ["c"]]


def test_a_batch_waits_at_most_max_wait_ms_for_company():
    start = time.perf_counter()
    _, decoder = batched(BatchLimits(max_sentences=64, max_wait_ms=50), [(["alone"], 1)])
    assert decoder.batches == [(["alone"], 1)] and 0.04 < time.perf_counter() - start < 2


def test_other_n_best_settings_are_batched_apart():
    requests = [(["a"], 1), (["b"], 3), (["c"], 1), (["d"], 3)]
    _, decoder = batched(BatchLimits(max_wait_ms=100), requests)
    assert sorted((sorted(b), n) for b, n in decoder.batches) == [(["a", "c"], 1), (["b", "d"], 3)]


def test_a_failing_batch_fails_its_requests_only_and_the_next_batch_is_served():
    requests = [(["ok1"], 1), (["boom"], 1), (["ok2"], 2)]  # ok1 and boom share a batch; ok2 (n-best 2) does not
    results, _ = batched(BatchLimits(max_wait_ms=100), requests)
    assert isinstance(results[0], BatchFailed) and isinstance(results[1], BatchFailed)
    assert "RuntimeError: scripted failure" in str(results[1])
    assert [h.tokens for h in results[2][0]] == [[3, 0], [3, 1]]


def test_a_full_queue_refuses_and_stop_refuses_and_fails_what_waits():
    decoder = FakeDecoder()

    async def main():
        batcher = Batcher(decoder, BatchLimits(max_sentences=1, max_wait_ms=0, max_queue=2))
        batcher.start()
        first = asyncio.ensure_future(batcher.translate(["hold"], [1], 1))  # the worker waits in this batch
        await started(decoder)
        queued = asyncio.ensure_future(batcher.translate(["a", "b"], [1, 1], 1))  # waits in the queue
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFull):
            await batcher.translate(["c"], [1], 1)
        decoder.release.set()
        assert [h.tokens for h in (await first)[0]] == [[4, 0]]
        assert len(await queued) == 2
        decoder.release.clear()
        held = asyncio.ensure_future(batcher.translate(["hold"], [1], 1))
        waiting = asyncio.ensure_future(batcher.translate(["w"], [1], 1))
        await asyncio.sleep(0.05)
        threading.Timer(0.1, decoder.release.set).start()
        await asyncio.to_thread(batcher.stop, timeout=5)  # the batch in hand finishes, the queue is refused
        with pytest.raises(Stopped):
            await batcher.translate(["late"], [1], 1)
        return await asyncio.gather(held, waiting, return_exceptions=True)

    held, waiting = asyncio.run(main())
    assert isinstance(waiting, Stopped)
    assert isinstance(held, Stopped) or held[0][0].tokens == [4, 0]  # answered, or refused: never lost


def test_a_request_given_up_is_not_decoded():
    decoder = FakeDecoder()

    async def main():
        batcher = Batcher(decoder, BatchLimits(max_sentences=1, max_wait_ms=0))
        batcher.start()
        first = asyncio.ensure_future(batcher.translate(["hold"], [1], 1))
        await started(decoder)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.translate(["given up"], [1], 1), 0.05)
        decoder.release.set()
        await first
        assert [h.tokens for h in (await batcher.translate(["next"], [1], 1))[0]] == [[4, 0]]
        batcher.stop(timeout=5)

    asyncio.run(main())
    assert [b for b, _ in decoder.batches] == [["hold"], ["next"]]


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_sentences"):
        BatchLimits(max_sentences=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchLimits(max_wait_ms=-1)
