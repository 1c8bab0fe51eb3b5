"""Loading a translator of either engine from what the command line names: checkpoints or an export folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from transformer.config import Config, ConfigError
from transformer.errors import EngineError, require_extra
from transformer.inference.torch_engine import load_torch_translator
from transformer.inference.translator import ENGINES, Translator


def load_translator(
    engine: str = "torch",
    *,
    checkpoints: Sequence[str | Path] = (),
    model_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    inter_threads: int | None = None,
    intra_threads: int | None = None,
) -> tuple[Translator, Config]:
    """The translator of one engine and the config whose ``decode`` and ``data`` settings apply.

    A multilingual model's translator translates once a direction is chosen: ``translator_for(translator,
    config.data, choose_direction(config.data, source_lang, target_lang))``.

    Args:
        engine: "torch" (``checkpoints``: one, or several decoding as an ensemble) or "ctranslate2"
            (``model_dir``: a folder written by ``transformer export``).
        device: where to decode ("cpu", "cuda", "cuda:1", a ``torch.device``).
        inter_threads, intra_threads: CTranslate2's translators working in parallel and threads per translator;
            the torch engine uses PyTorch's threads (``torch.set_num_threads``) instead.

    Raises:
        EngineError: options of the other engine, or no model given.
        MissingExtraError: ctranslate2 is not installed (engine "ctranslate2").
        CheckpointError, ExportedModelError, DeviceError: see the engines' loaders.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    export_hint = "`transformer export --checkpoint CKPT --format ctranslate2 --output DIR`"
    if engine == "torch":
        if model_dir is not None:
            raise EngineError(
                "--model (a CTranslate2 folder) is for --engine ctranslate2; the torch engine reads --checkpoint"
            )
        if inter_threads is not None or intra_threads is not None:
            raise EngineError(
                "--inter-threads and --intra-threads are CTranslate2's threads (--engine ctranslate2); the torch "
                "engine uses PyTorch's threads (OMP_NUM_THREADS or torch.set_num_threads)"
            )
        if not checkpoints:
            raise EngineError("the torch engine needs --checkpoint CKPT (a .pt file written by `transformer train`)")
        return load_torch_translator(list(checkpoints), device)
    if checkpoints:
        raise EngineError(f"--engine ctranslate2 reads an exported folder (--model DIR), not --checkpoint; write one with {export_hint}")
    if model_dir is None:
        raise EngineError(f"--engine ctranslate2 needs --model DIR, a folder written by {export_hint}")
    require_extra("ctranslate2", "ctranslate2", "the CTranslate2 engine")
    from transformer.inference.ct2_engine import load_ct2_translator  # the optional library, once known present

    return load_ct2_translator(model_dir, device, inter_threads=inter_threads, intra_threads=intra_threads)


def export_ctranslate2(
    checkpoint: str | Path, output_dir: str | Path, *, quantization: str | None = None, force: bool = False
) -> Path:
    """Write the model of ``checkpoint`` as a CTranslate2 model folder (``ct2_export.export_checkpoint``).

    Raises:
        MissingExtraError: ctranslate2 is not installed.
        CheckpointError: the checkpoint cannot be read.
        ExportError: the model cannot be exported exactly (the message says why), or the folder not written.
    """
    require_extra("ctranslate2", "ctranslate2", "the CTranslate2 export")
    from transformer.inference.ct2_export import export_checkpoint

    return export_checkpoint(checkpoint, output_dir, quantization=quantization, force=force)
