"""The original encoder-decoder Transformer for machine translation.

The public names below are imported on first use (PEP 562), not when the package is: importing PyTorch takes
seconds, and ``transformer.cli.main`` must be running to turn a Ctrl-C in those seconds into one clean line.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives.
_HOMES = {
    "transformer.checkpoint": ("load_for_inference",),
    "transformer.config": (
        "Config", "ConfigError", "DataConfig", "DecodeConfig", "ModelConfig", "TrainConfig", "load_config",
    ),
    "transformer.data.tokenizer": ("Tokenizer",),
    "transformer.decoding.search": ("Hypothesis", "beam_search", "greedy_decode"),
    "transformer.errors": ("CheckpointError",),
    "transformer.evaluation": ("corpus_scores", "evaluate_model"),
    "transformer.inference": ("TorchTranslator", "Translator", "load_translator", "translate_texts"),
    "transformer.model.kv_cache": ("DecoderCache", "DecoderState", "KVCache"),
    "transformer.model.transformer": ("AttentionWeights", "Transformer", "count_parameters"),
    "transformer.tokens": ("BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'transformer' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
