"""The original encoder-decoder Transformer for machine translation."""

from transformer.config import Config, ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig, load_config
from transformer.kv_cache import DecoderCache, KVCache
from transformer.model import Transformer, count_parameters

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "DecoderCache",
    "KVCache",
    "ModelConfig",
    "TrainConfig",
    "Transformer",
    "count_parameters",
    "load_config",
]
