"""Decoding with several models at once: the average of their next-token probabilities.

``Ensemble`` has the interface the searches of ``transformer.decoding`` use (``config``, ``init_state`` and
``decode_step``), so greedy and beam search run on it unchanged. Each model keeps its own ``DecoderState``
(memory, mask and caches of its own width and depth); an ``EnsembleState`` holds them and reorders them
together through the searches' one operation. As in fairseq, the models' probabilities are averaged (not
their log-probabilities), and the ensemble returns the log of that average, a normalised distribution that
the searches' ``log_softmax`` leaves as it is.

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
from transformer.model.kv_cache import DecoderState
from transformer.model.transformer import Transformer


class EnsembleState:
    """One ``DecoderState`` per model, reordered together."""

    def __init__(self, states: list[DecoderState]) -> None:
        self.states = states

    def reorder(self, index: torch.Tensor) -> None:
        """Keep hypotheses ``index`` in every model's state (see ``DecoderState.reorder``)."""
        for state in self.states:
            state.reorder(index)


def _shared_config(configs: Sequence[ModelConfig]) -> ModelConfig:
    """The first config, with the tightest position limit of all (what the searches read from ``config``)."""
    for i, c in enumerate(configs[1:], start=1):
        for key in ("src_vocab_size", "tgt_vocab_size"):
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

    @torch.no_grad()
    def init_state(
        self, src: torch.Tensor, max_len: int, *, beam_size: int = 1, use_cache: bool = True
    ) -> EnsembleState:
        """Each model encodes (N, S) source ids into its own ``DecoderState`` (see ``Transformer.init_state``)."""
        states = [m.init_state(src, max_len, beam_size=beam_size, use_cache=use_cache) for m in self.models]
        return EnsembleState(states)

    def decode_step(self, tokens: torch.Tensor, state: EnsembleState) -> torch.Tensor:
        """(R, t) prefixes -> (R, V) float32 log of the models' mean next-token probabilities."""
        return _log_mean_probs([m.decode_step(tokens, s) for m, s in zip(self.models, state.states)])

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, S) source and (B, T) decoder input ids -> (B, T, V) float32 log mean probs."""
        return _log_mean_probs([m(src, tgt) for m in self.models])


def _log_mean_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    """The models' (..., V) logits -> float32 log of the mean of their softmaxes."""
    log_probs = torch.stack([F.log_softmax(x.float(), dim=-1) for x in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))
