"""Greedy and beam search on token tensors with the KV cache, and ensembles of models that decode as one."""

from transformer.decoding.ensemble import Ensemble
from transformer.decoding.search import Hypothesis, beam_search, decode_batch, greedy_decode

__all__ = ["Ensemble", "Hypothesis", "beam_search", "decode_batch", "greedy_decode"]
