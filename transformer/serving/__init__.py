"""Serving trained models: our PyTorch decoder or CTranslate2 behind the same functions, and the export.

- ``load_model(engine, ...)``: ``(model, tokenizer, config)`` of the "torch" engine (checkpoints) or of the
  "ctranslate2" engine (a folder written by ``export_ctranslate2``).
- ``decode_texts``, ``translate_texts``, ``evaluate_model``, ``forced_log_probs``: the same inputs and outputs
  with either model.
- ``export_ctranslate2(checkpoint, output_dir, quantization=...)``: a CTranslate2 model folder, written through
  CTranslate2's own converter classes (``transformer.serving.ctranslate2``).

CTranslate2 is an optional extra (``pip install -e ".[serve]"``), imported only when it is used.
"""

from transformer.serving.engine import (
    ENGINES,
    QUANTIZATIONS,
    EngineError,
    decode_texts,
    evaluate_model,
    export_ctranslate2,
    forced_log_probs,
    load_model,
    translate_texts,
)

__all__ = [
    "ENGINES",
    "QUANTIZATIONS",
    "EngineError",
    "decode_texts",
    "evaluate_model",
    "export_ctranslate2",
    "forced_log_probs",
    "load_model",
    "translate_texts",
]
