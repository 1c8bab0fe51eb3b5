"""The PyTorch engine: our ``Transformer``, or an ``Ensemble`` of them, behind the ``Translator`` protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from transformer.checkpoint import load_for_inference
from transformer.config import Config, DecodeConfig
from transformer.data.batching import pad_ids
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.ensemble import Ensemble
from transformer.decoding.search import Hypothesis, SearchModel, decode_batch
from transformer.errors import CheckpointError
from transformer.inference.direction import format_directions
from transformer.inference.translator import encode_sources, nonblank
from transformer.tokens import BOS_ID, EOS_ID


class TorchTranslator:
    """Decodes with a model on ``device``: greedy or beam search (``transformer.decoding.search``).

    Args:
        model: a ``Transformer`` or an ``Ensemble`` (anything the searches take); put in eval mode for each
            call and its mode restored after, so the trainer's validation can use the model it trains.
        tokenizer: the model's vocabulary.
        device: where the source batches go (the model's device).
        use_cache: decode step by step with the KV cache (False recomputes the prefix; for checks).
    """

    def __init__(
        self, model: SearchModel, tokenizer: Tokenizer, *, device: torch.device | str = "cpu", use_cache: bool = True
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.use_cache = use_cache

    def for_target(self, lang: str) -> TorchTranslator:
        """This translator decoding into ``lang``: the same model, sources tagged (``Tokenizer.for_target``); a
        bilingual model's translator is this one."""
        if not self.tokenizer.tags:
            return self
        return TorchTranslator(self.model, self.tokenizer.for_target(lang), device=self.device, use_cache=self.use_cache)

    @torch.no_grad()
    def translate(
        self,
        texts: Sequence[str],
        cfg: DecodeConfig,
        *,
        max_src_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Hypothesis]]:
        """n-best hypotheses of raw source sentences, in the order of ``texts`` (see ``Translator.translate``).

        Sentences are sorted by length (longest first: memory peaks early) into batches of ``cfg.batch_size``.
        ``max_src_tokens`` None: the model's ``max_positions``, so that no input can exhaust memory.
        """
        if max_src_tokens is None:
            max_src_tokens = self.model.config.max_positions
        if max_src_tokens < 2:
            raise ValueError(f"max_src_tokens must be at least 2 (one token and EOS), got {max_src_tokens}")
        results: list[list[Hypothesis]] = [[] for _ in texts]
        todo = nonblank(texts)
        if not todo:
            return results
        ids = encode_sources(self.tokenizer, [texts[i] for i in todo], max_src_tokens=max_src_tokens)
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]), reverse=True)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), cfg.batch_size):
                chunk = order[start : start + cfg.batch_size]
                src = pad_ids([ids[j] for j in chunk], self.device)
                for j, hyps in zip(chunk, decode_batch(self.model, src, cfg, use_cache=self.use_cache)):
                    results[todo[j]] = hyps
                if progress is not None:
                    progress(len(chunk))
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def forced_log_probs(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probability of each target id and the final EOS given the source (ids without BOS/EOS)."""
        targets = [list(t) + [EOS_ID] for t in tgt]  # decoder inputs: BOS + y; targets: y + EOS
        src_ids = pad_ids([list(s) + [EOS_ID] for s in src], self.device)
        logits = self.model(src_ids, pad_ids([[BOS_ID] + list(t) for t in tgt], self.device))  # (B, T, V)
        log_probs = F.log_softmax(logits.float(), dim=-1)  # an Ensemble's log mean probs are left as they are
        picked = log_probs.gather(-1, pad_ids(targets, self.device).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return [picked[i, : len(t)].tolist() for i, t in enumerate(targets)]


def load_torch_translator(
    checkpoints: Sequence[str | Path], device: torch.device | str = "cpu"
) -> tuple[TorchTranslator, Config]:
    """A translator of one checkpoint, or of several decoding as an ``Ensemble``, and the first one's config.

    The first checkpoint's vocabulary and config (its decoding and data settings) apply to all. The translator
    of a multilingual model is that of no direction yet: see ``direction.translator_for``.

    Raises:
        CheckpointError: no checkpoint, an unreadable one, or checkpoints whose vocabularies or translation
            directions differ.
    """
    if not checkpoints:
        raise CheckpointError("no checkpoints given")
    model, tokenizer, config = load_for_inference(checkpoints[0], device)
    if len(checkpoints) == 1:
        return TorchTranslator(model, tokenizer, device=device), config
    models, pieces, directions = [model], tokenizer.pieces(), config.data.direction_pairs
    for path in checkpoints[1:]:
        other, other_tokenizer, other_config = load_for_inference(path, device)
        if other_tokenizer.pieces() != pieces:
            raise CheckpointError(
                f"{path} has another vocabulary than {checkpoints[0]}: an ensemble needs models trained on one "
                "vocabulary"
            )
        if set(other_config.data.direction_pairs) != set(directions):  # the tags are pieces: equal already
            raise CheckpointError(
                f"{path} translates {format_directions(other_config.data.direction_pairs)}, {checkpoints[0]} "
                f"{format_directions(directions)}: an ensemble needs models of the same directions"
            )
        models.append(other)
    try:
        ensemble = Ensemble(models)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return TorchTranslator(ensemble.eval(), tokenizer, device=device), config
