"""Greedy and beam search with the KV cache, and ensembles of models that decode as one."""

from transformer.decoding.ensemble import Ensemble
from transformer.decoding.search import Hypothesis, beam_search, decode_texts, greedy_decode, translate_texts

__all__ = ["Ensemble", "Hypothesis", "beam_search", "decode_texts", "greedy_decode", "translate_texts"]
