"""Translating text with a trained model: one ``Translator`` protocol, two engines, word alignment.

- ``load_translator(engine, checkpoints=... | model_dir=...)``: ``(translator, config)`` of the "torch" engine
  (checkpoints; several decode as an ensemble) or of the "ctranslate2" engine (a ``transformer export`` folder).
- ``translate_texts``, ``forced_log_probs``: the same inputs and outputs with either engine;
  ``transformer.evaluation.evaluate_model`` and ``transformer.distillation`` take any translator too.
- ``export_ctranslate2(checkpoint, output_dir)``: the CTranslate2 model folder (``ct2_export``).
- ``choose_direction(config.data, source_lang, target_lang)`` and ``translator_for(translator, config.data,
  direction)``: the direction a (multilingual) model is asked to translate, and the translator of it.

CTranslate2 is an optional extra (``pip install -e ".[ctranslate2]"``): ``ct2_engine`` and ``ct2_export`` import it,
and are imported only when it is used.
"""

from transformer.inference.direction import DirectionError, choose_direction, format_directions, translator_for
from transformer.inference.load import export_ctranslate2, load_translator
from transformer.inference.torch_engine import TorchTranslator, load_torch_translator
from transformer.inference.translator import (
    ENGINES,
    QUANTIZATIONS,
    Translator,
    best_texts,
    encode_sources,
    forced_log_probs,
    translate_texts,
)

__all__ = [
    "DirectionError",
    "ENGINES",
    "QUANTIZATIONS",
    "TorchTranslator",
    "Translator",
    "best_texts",
    "choose_direction",
    "encode_sources",
    "export_ctranslate2",
    "forced_log_probs",
    "format_directions",
    "load_torch_translator",
    "load_translator",
    "translate_texts",
    "translator_for",
]
