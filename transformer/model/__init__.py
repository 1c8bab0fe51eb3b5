"""The ``nn.Module``s of the encoder-decoder: masks, embeddings, attention, caches, layers, the model."""

from transformer.model.kv_cache import DecoderCache, KVCache
from transformer.model.transformer import Transformer, count_parameters

__all__ = ["DecoderCache", "KVCache", "Transformer", "count_parameters"]
