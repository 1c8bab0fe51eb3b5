"""The original encoder-decoder Transformer for machine translation."""

from transformer.config import Config, ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig, load_config
from transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from transformer.decoding.search import Hypothesis, beam_search, greedy_decode, translate_texts
from transformer.evaluation import corpus_scores, evaluate_model
from transformer.model.kv_cache import DecoderCache, DecoderState, KVCache
from transformer.model.transformer import AttentionWeights, Transformer, count_parameters
from transformer.training.checkpoint import CheckpointError, load_for_inference

__all__ = [
    "AttentionWeights",
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
    "DecoderState",
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
