"""The original encoder-decoder Transformer for machine translation."""

from transformer.checkpoint import load_for_inference
from transformer.config import Config, ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig, load_config
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import Hypothesis, beam_search, greedy_decode
from transformer.errors import CheckpointError
from transformer.evaluation import corpus_scores, evaluate_model
from transformer.inference import TorchTranslator, Translator, load_translator, translate_texts
from transformer.model.kv_cache import DecoderCache, DecoderState, KVCache
from transformer.model.transformer import AttentionWeights, Transformer, count_parameters
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

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
    "TorchTranslator",
    "TrainConfig",
    "Tokenizer",
    "Transformer",
    "Translator",
    "beam_search",
    "corpus_scores",
    "count_parameters",
    "evaluate_model",
    "greedy_decode",
    "load_config",
    "load_for_inference",
    "load_translator",
    "translate_texts",
]
