"""The original encoder-decoder Transformer for machine translation."""

from transformer.checkpoint import CheckpointError, load_for_inference
from transformer.config import Config, ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig, load_config
from transformer.decoding import Hypothesis, beam_search, greedy_decode, translate_texts
from transformer.evaluate import corpus_scores, evaluate_model
from transformer.kv_cache import DecoderCache, KVCache
from transformer.model import Transformer, count_parameters
from transformer.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "DecoderCache",
    "Hypothesis",
    "KVCache",
    "ModelConfig",
    "TrainConfig",
    "Tokenizer",
    "Transformer",
    "beam_search",
    "corpus_scores",
    "count_parameters",
    "evaluate_model",
    "greedy_decode",
    "load_config",
    "load_for_inference",
    "translate_texts",
]
