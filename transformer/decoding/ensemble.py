"""Decoding with several models at once: the average of their next-token probabilities.

``Ensemble`` has the interface the searches of ``transformer.decoding`` use (``src_mask``, ``encode``,
``init_cache``, ``decode`` and ``config``), so greedy and beam search run on it unchanged. As in fairseq,
the models' probabilities are averaged (not their log-probabilities), and the ensemble's ``decode``
returns the log of that average, a normalised distribution that the searches' ``log_softmax`` leaves as it is.

The models may differ in size and depth, but they must share one vocabulary: the same token ids on both sides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import ModelConfig
from transformer.model.kv_cache import DecoderCache
from transformer.model.transformer import Transformer


class EnsembleCache:
    """One ``DecoderCache`` per model, reordered together."""

    def __init__(self, caches: list[DecoderCache]) -> None:
        self.caches = caches

    @property
    def length(self) -> int:
        return self.caches[0].length

    def reorder(self, index: torch.Tensor, cross_index: torch.Tensor | None = None) -> None:
        for cache in self.caches:
            cache.reorder(index, cross_index)

    def reorder_self(self, index: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder_self(index)


def _shared_config(configs: Sequence[ModelConfig]) -> ModelConfig:
    """The first config, with the tightest position limit of all (what the searches read from ``config``)."""
    for i, c in enumerate(configs[1:], start=1):
        for key in ("src_vocab_size", "tgt_vocab_size", "pad_id"):
            if getattr(c, key) != getattr(configs[0], key):
                raise ValueError(
                    f"ensemble model {i} has {key}={getattr(c, key)} but model 0 has {getattr(configs[0], key)}"
                )
    learned = any(c.positional == "learned" for c in configs)
    return dataclasses.replace(
        configs[0],
        max_positions=min(c.max_positions for c in configs),
        positional="learned" if learned else configs[0].positional,  # the searches cap lengths for learned ones
    )


class Ensemble(nn.Module):
    """Several ``Transformer``s that decode as one (see the module docstring)."""

    def __init__(self, models: Sequence[Transformer]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = nn.ModuleList(models)
        self.config = _shared_config([m.config for m in models])
        self._widths = [m.config.d_model for m in models]

    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        return self.models[0].src_mask(src)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) ids -> the models' memories side by side, (B, S, sum of d_model).

        One tensor, so that the searches' batch indexing (beams, finished sentences) applies to all models.
        """
        return torch.cat([m.encode(src, src_mask) for m in self.models], dim=-1)

    def _split(self, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return memory.split(self._widths, dim=-1)

    @torch.no_grad()
    def init_cache(self, memory: torch.Tensor, max_len: int) -> EnsembleCache:
        return EnsembleCache([m.init_cache(part, max_len) for m, part in zip(self.models, self._split(memory))])

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        *,
        cache: EnsembleCache | None = None,
    ) -> torch.Tensor:
        """(B, T) target ids -> (B, T, V) float32 log of the models' mean probabilities."""
        caches = cache.caches if cache is not None else [None] * len(self.models)
        log_probs = [
            F.log_softmax(m.decode(tgt, part, src_mask, tgt_mask, cache=c).float(), dim=-1)
            for m, part, c in zip(self.models, self._split(memory), caches)
        ]
        return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))
