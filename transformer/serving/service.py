"""The model behind the routes: loading it, readiness, request limits, translation through the batcher, attention.

Decoding settings are the model config's ``decode`` section with the command line's overrides, as for
``transformer translate``; n-best and the direction are what a request chooses. A translation is exactly what
``transformer translate`` prints for the same text, direction and settings: each sentence is decoded by the
same ``Translator.translate`` call with the same settings (the translator of its direction, ``translator_for``),
and a sentence's hypotheses do not depend on the other sentences of its batch (the engines' rule;
``tests/serving`` checks it with concurrent clients). A batch holds sentences of one direction and one n-best
count: the batcher's setting is the pair.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transformer.config import Config, DecodeConfig
from transformer.decoding.search import Hypothesis
from transformer.inference.alignment import (
    ALIGNMENT_LAYER,
    SentenceAttention,
    forced_attention,
    layer_index,
    sentence_alignment,
)
from transformer.inference.direction import format_directions, translator_for
from transformer.inference.torch_engine import TorchTranslator
from transformer.inference.translator import Translator, encode_sources, nonblank
from transformer.model.transformer import Transformer
from transformer.serving.api import AttentionRequest, TextHypotheses, split_lines
from transformer.serving.batcher import Batcher, BatchFailed, BatchLimits, QueueFull, Stopped
from transformer.serving.bodies import RequestError, bad_request
from transformer.serving.metrics import Metrics

logger = logging.getLogger(__name__)

Loader = Callable[[], tuple[Translator, Config]]


@dataclass(frozen=True)
class ServeSettings:
    """What the command line sets: batching, limits, and the decoding overrides (None: the model config's).

    Args:
        timeout: seconds a request may take, waiting in the queue included (504 after).
        char_limit: characters per text (413 over it); batch_limit: texts per request (413 over it).
        retry_after: the Retry-After seconds of a 503.
    """

    limits: BatchLimits = field(default_factory=BatchLimits)
    timeout: float = 60.0
    char_limit: int = 5000
    batch_limit: int = 128
    max_src_tokens: int | None = None
    beam_size: int | None = None
    length_penalty: float | None = None
    batch_size: int | None = None
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("timeout", "char_limit", "batch_limit"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_src_tokens is not None and self.max_src_tokens < 2:
            raise ValueError(f"max_src_tokens must be at least 2 (one token and EOS), got {self.max_src_tokens}")

    def body_limit(self) -> int:
        """Bytes a request body may have: every text at the limit, each character a 12-byte JSON escape."""
        return 12 * self.char_limit * self.batch_limit + 65536


class Service:
    """Loads the model (``load`` runs in a thread), then translates through a ``Batcher``.

    ``status``: "loading", "ready", "failed" (``error`` says why) or "stopping" (after ``stop_accepting``:
    requests already taken are finished, new ones are refused with 503).
    """

    def __init__(self, load: Loader, settings: ServeSettings, metrics: Metrics) -> None:
        self._load = load
        self.settings = settings
        self.metrics = metrics
        self.status = "loading"
        self.error: str | None = None
        self.translator: Translator | None = None
        self.translators: dict[str, Translator] = {}  # the translator of each target language
        self.config: Config | None = None
        self.decode: DecodeConfig | None = None
        self.batcher: Batcher | None = None

    # ---- life cycle ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and start the batcher (blocking: the app runs it in a thread)."""
        translator, config = self._load()
        pairs = config.data.direction_pairs
        translators = {tgt: translator_for(translator, config.data, (src, tgt)) for src, tgt in pairs}
        decode = config.decode.updated(
            beam_size=self.settings.beam_size, length_penalty=self.settings.length_penalty,
            batch_size=self.settings.batch_size, n_best=1,
        )
        batcher = Batcher(
            self._decode_batch, self.settings.limits, on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.queue.set,
        )
        self.translator, self.translators, self.config, self.decode = translator, translators, config, decode
        self.batcher = batcher
        batcher.start()
        if self.status == "loading":
            self.status = "ready"
            self.metrics.ready.set(1)
        logger.info("model loaded: %s, beam size %d", format_directions(pairs), decode.beam_size)

    async def start(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        """``load`` in a thread; a failure is kept in ``error`` and given to ``on_error`` (the server then stops)."""
        try:
            await asyncio.to_thread(self.load)
        except Exception as err:
            self.status, self.error = "failed", str(err)
            logger.error("the model could not be loaded: %s", err)
            if on_error is not None:
                on_error(err)

    def stop_accepting(self) -> None:
        """Refuse new requests from now on; those taken are finished (called on SIGTERM or Ctrl-C)."""
        if self.status in ("loading", "ready"):
            self.status = "stopping"
            self.metrics.ready.set(0)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the batcher: what is still queued is refused, the batch in hand finishes (up to ``timeout`` s)."""
        self.stop_accepting()
        if self.batcher is not None:
            self.batcher.stop(timeout=timeout)

    def admit(self) -> None:
        """Raises RequestError (503, with Retry-After) unless the service takes requests."""
        if self.status == "ready":
            return
        reason = {
            "loading": "the model is still loading",
            "stopping": "the server is stopping",
            "failed": f"the model could not be loaded: {self.error}",
        }[self.status]
        raise RequestError(503, reason, headers={"Retry-After": str(self.settings.retry_after)})

    # ---- translating ---------------------------------------------------------------------------------------------

    def _decode_batch(self, sentences: list[str], setting: tuple[int, str]) -> list[list[Hypothesis]]:
        """One batch of one (n-best count, target language)."""
        assert self.decode is not None
        n_best, target = setting
        cfg = self.decode.updated(n_best=n_best)
        return self.translators[target].translate(sentences, cfg, max_src_tokens=self.settings.max_src_tokens)

    def check_limits(self, texts: Sequence[str], field: str, *, is_list: bool = True) -> None:
        """Raises RequestError (413) for more texts than ``batch_limit`` or a text longer than ``char_limit``."""
        if len(texts) > self.settings.batch_limit:
            raise RequestError(
                413, f"Invalid request: {len(texts)} texts in {field}, more than the limit of "
                f"{self.settings.batch_limit} (--batch-limit)",
            )
        for i, text in enumerate(texts):
            if len(text) > self.settings.char_limit:
                name = f"{field}[{i}]" if is_list else field
                raise RequestError(
                    413, f"Invalid request: {name} has {len(text)} characters, more than the limit of "
                    f"{self.settings.char_limit} (--char-limit)",
                )

    def max_n_best(self) -> int:
        assert self.decode is not None
        return self.decode.beam_size

    def first_direction(self) -> tuple[str, str]:
        """The model's first direction: what a request that names no language is translated in."""
        assert self.config is not None
        return self.config.data.direction_pairs[0]

    async def translate(self, texts: Sequence[str], n_best: int, direction: tuple[str, str]) -> list[TextHypotheses]:
        """For each text, the ``n_best`` hypotheses of each of its lines ([] for a blank line), in ``direction``
        (one of the model's).

        Raises:
            RequestError: 503 (not ready, queue full, stopping), 504 (over ``timeout``), 500 (the batch failed).
        """
        self.admit()
        assert self.batcher is not None
        translator = self.translators[direction[1]]
        lines = [split_lines(text) for text in texts]
        flat = [line for text_lines in lines for line in text_lines]
        todo = nonblank(flat)
        sentences = [flat[i] for i in todo]
        ids = encode_sources(translator.tokenizer, sentences, max_src_tokens=self.settings.max_src_tokens,
                             warn=False) if sentences else []
        retry = {"Retry-After": str(self.settings.retry_after)}
        try:
            found = await asyncio.wait_for(
                self.batcher.translate(sentences, [len(x) for x in ids], (n_best, direction[1])), self.settings.timeout
            )
        except asyncio.TimeoutError:  # not the builtin one before Python 3.11
            took = f"the translation took longer than {self.settings.timeout:g} s (--timeout)"
            raise RequestError(504, took) from None
        except QueueFull as err:
            raise RequestError(503, f"the server is busy: {err}; try again later", headers=retry) from None
        except Stopped as err:
            raise RequestError(503, str(err), headers=retry) from None
        except BatchFailed as err:
            raise RequestError(500, f"translation failed: {err}") from None
        per_line: list[list[Hypothesis]] = [[] for _ in flat]
        for i, hyps in zip(todo, found):
            per_line[i] = hyps
        out, start = [], 0
        for text_lines in lines:
            out.append(per_line[start : start + len(text_lines)])
            start += len(text_lines)
        return out

    # ---- attention -----------------------------------------------------------------------------------------------

    async def attention(
        self, request: AttentionRequest
    ) -> tuple[list[Hypothesis], SentenceAttention, list[tuple[int, int]]]:
        """The n-best list of one sentence (as ``translate`` decodes it, in ``request.direction``), the attention of
        the best one and its word alignment in decoder ``request.layer``.

        Raises:
            RequestError: 400 (not the torch engine, an ensemble, too many alternatives, no such layer), and
                those of ``translate``.
        """
        self.admit()
        translator = self.translators[request.direction[1]]
        if not isinstance(translator, TorchTranslator):
            raise bad_request(
                "attention needs the torch engine: CTranslate2 gives no attention weights "
                "(serve with --engine torch --checkpoint CKPT)"
            )
        model = translator.model
        if not isinstance(model, Transformer):
            raise bad_request("attention needs a single --checkpoint: an ensemble has no one cross-attention to show")
        beam = self.max_n_best()
        if request.alternatives > beam - 1:
            raise bad_request(f"Invalid request: alternatives must be at most {beam - 1} (the beam size is {beam})")
        layer = ALIGNMENT_LAYER if request.layer is None else request.layer
        try:
            layer_index(layer, model.config.n_decoder_layers)
        except ValueError as err:
            raise bad_request(f"Invalid request: layer: {err}") from None
        self.check_limits([request.q], "q", is_list=False)
        [[nbest]] = await self.translate([request.q], 1 + request.alternatives, request.direction)

        def attend() -> SentenceAttention:
            limit = self.settings.max_src_tokens or model.config.max_positions
            src = encode_sources(translator.tokenizer, [request.q], max_src_tokens=limit, warn=False)
            assert self.batcher is not None
            with self.batcher.lock:  # one user of the model at a time
                return forced_attention(
                    model, translator.tokenizer, src, [nbest[0].tokens], device=translator.device, batch_size=1
                )[0]

        try:
            attention = await asyncio.wait_for(asyncio.to_thread(attend), self.settings.timeout)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the attention took longer than {self.settings.timeout:g} s (--timeout)") from None
        return nbest, attention, sentence_alignment(attention, layer=layer)
