"""One interface over the decoding engines: our PyTorch decoder ("torch") and CTranslate2 ("ctranslate2").

``load_model`` gives ``(model, tokenizer, config)`` for either engine; ``decode_texts``, ``translate_texts``,
``evaluate_model`` and ``forced_log_probs`` accept either model, with the same inputs and outputs, so that a
program switches engines by changing the one ``load_model`` call. CTranslate2 is an optional extra, imported
only when it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformer.config import Config, ConfigError, DecodeConfig
from transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from transformer.decoding import search
from transformer.decoding.search import Hypothesis
from transformer.errors import DeviceError, UserError, require_extra
from transformer.evaluation import evaluate_model as evaluate_torch_model
from transformer.training.checkpoint import load_ensemble_for_inference, load_for_inference

ENGINES = ("torch", "ctranslate2")
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16")  # CTranslate2 weight types offered


class EngineError(UserError, ValueError):
    """The engine options do not fit together (e.g. a checkpoint given to CTranslate2, which reads a folder)."""


def ctranslate2_backend() -> ModuleType:
    """``transformer.serving.ctranslate2``, once ``ctranslate2`` is known to import.

    Raises:
        MissingExtraError: ctranslate2 is not installed; the message gives the install command.
    """
    require_extra("ctranslate2", "serve", "the CTranslate2 engine and export")
    from transformer.serving import ctranslate2 as backend

    return backend


def export_ctranslate2(
    checkpoint: str | Path, output_dir: str | Path, *, quantization: str | None = None, force: bool = False
) -> Path:
    """Write the model of ``checkpoint`` as a CTranslate2 model folder (``serving.ctranslate2.export_model``).

    Raises:
        MissingExtraError: ctranslate2 is not installed.
        CheckpointError: the checkpoint cannot be read.
        ExportError: the model cannot be exported exactly (the message says why), or the folder not written.
    """
    backend = ctranslate2_backend()
    model, tokenizer, config = load_for_inference(checkpoint, "cpu")
    return backend.export_model(model, tokenizer, config, output_dir, quantization=quantization, force=force)


def load_model(
    engine: str = "torch",
    *,
    checkpoints: Sequence[str | Path] = (),
    model_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    inter_threads: int | None = None,
    intra_threads: int | None = None,
) -> tuple[Any, Tokenizer, Config]:
    """The model, vocabulary and config of one engine.

    Args:
        engine: "torch" (``checkpoints``: one, or several decoding as an ``Ensemble``) or "ctranslate2"
            (``model_dir``: a folder written by ``export_ctranslate2``).
        device: where to decode ("cpu", "cuda", "cuda:1", a ``torch.device``).
        inter_threads, intra_threads: CTranslate2's translators working in parallel and threads per translator
            (None: 1 and CTranslate2's default); the torch engine uses ``torch.set_num_threads`` instead.

    Returns:
        ``(model, tokenizer, config)``: a ``Transformer``/``Ensemble`` or a ``CTranslate2Translator``; the config
        of the (first) checkpoint, whose ``decode`` and ``data`` settings apply.

    Raises:
        EngineError: options of the other engine, or no model given.
        MissingExtraError, CheckpointError, ExportedModelError, DeviceError: see the loaders.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    device = torch.device(device)
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
        return load_ensemble_for_inference(list(checkpoints), device)
    if checkpoints:
        raise EngineError(
            "--engine ctranslate2 reads an exported folder (--model DIR), not --checkpoint; write one with "
            "`transformer export --checkpoint CKPT --format ctranslate2 --output DIR`"
        )
    if model_dir is None:
        raise EngineError(
            "--engine ctranslate2 needs --model DIR, a folder written by "
            "`transformer export --checkpoint CKPT --format ctranslate2 --output DIR`"
        )
    for name, value in (("--inter-threads", inter_threads), ("--intra-threads", intra_threads)):
        if value is not None and value < (1 if name == "--inter-threads" else 0):
            raise EngineError(f"{name} must be at least {1 if name == '--inter-threads' else 0}, got {value}")
    backend = ctranslate2_backend()
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {device}: CTranslate2 runs on cpu or cuda")
    if device.type == "cuda" and backend.ctranslate2.get_cuda_device_count() == 0:
        raise DeviceError(f"--device {device}: this CTranslate2 build sees no CUDA device; use --device cpu")
    translator = backend.CTranslate2Translator(
        model_dir, device=device.type, device_index=device.index or 0,
        inter_threads=1 if inter_threads is None else inter_threads,
        intra_threads=0 if intra_threads is None else intra_threads,
    )
    return translator, translator.tokenizer, translator.config


def decode_texts(
    model: Any,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    device: torch.device | str,
    max_src_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[Hypothesis]]:
    """n-best hypotheses of raw source sentences with either engine (see ``transformer.decoding.decode_texts``).

    ``device`` is the torch engine's; a CTranslate2 translator decodes where it was loaded.
    """
    if isinstance(model, nn.Module):
        return search.decode_texts(
            model, tokenizer, texts, cfg, device=device, max_src_tokens=max_src_tokens, progress=progress
        )
    return model.decode_texts(texts, cfg, max_src_tokens=max_src_tokens, progress=progress)


def translate_texts(
    model: Any,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    device: torch.device | str,
    max_src_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Detokenized best translation of each source sentence ("" for an empty one), with either engine."""
    nbest = decode_texts(model, tokenizer, texts, cfg, device=device, max_src_tokens=max_src_tokens, progress=progress)
    return tokenizer.decode_tgt([hyps[0].tokens if hyps else [] for hyps in nbest]) if nbest else []


def evaluate_model(
    model: Any,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    ref_texts: Sequence[str],
    cfg: DecodeConfig,
    *,
    device: torch.device | str,
    max_sentences: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """``transformer.evaluation.evaluate_model`` (the function of the trainer's validation) with either engine."""
    if isinstance(model, nn.Module):
        return evaluate_torch_model(
            model, tokenizer, src_texts, ref_texts, cfg, device=device, max_sentences=max_sentences, progress=progress
        )
    return ctranslate2_backend().evaluate_translator(
        model, src_texts, ref_texts, cfg, max_sentences=max_sentences, progress=progress
    )


def forced_log_probs(
    model: Any, tokenizer: Tokenizer, sources: Sequence[str], targets: Sequence[str]
) -> list[list[float]]:
    """The log-probability of each target piece and of the final EOS given the source, with either engine.

    Teacher forcing, as in training: no search, no decoding rule; the numbers of both engines should agree
    to float precision.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    src, tgt = tokenizer.encode_src(list(sources)), tokenizer.encode_tgt(list(targets))
    if isinstance(model, nn.Module):
        return forced_log_probs_ids(model, src, tgt)
    return model.forced_log_probs_ids(src, tgt)


@torch.no_grad()
def forced_log_probs_ids(
    model: nn.Module, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]
) -> list[list[float]]:
    """``forced_log_probs`` of a ``Transformer`` or ``Ensemble`` (eval mode) on ids without BOS/EOS."""
    device = next(model.parameters()).device
    rows_out = [list(t) + [EOS_ID] for t in tgt]  # targets: y + EOS; decoder inputs: BOS + y

    def pad(rows: list[list[int]]) -> torch.Tensor:
        width = max(map(len, rows))
        return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows], dtype=torch.long, device=device)

    logits = model(pad([list(s) + [EOS_ID] for s in src]), pad([[BOS_ID] + list(t) for t in tgt]))  # (B, T, V)
    log_probs = F.log_softmax(logits.float(), dim=-1)  # an Ensemble's log mean probs are left as they are
    picked = log_probs.gather(-1, pad(rows_out).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return [picked[i, : len(r)].tolist() for i, r in enumerate(rows_out)]

