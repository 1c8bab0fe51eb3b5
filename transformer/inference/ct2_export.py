"""Export a trained model into CTranslate2's format, checked numerically before it is written.

The export goes through CTranslate2's own model specification (``TransformerSpec``) and ``Converter`` class,
filled the way its fairseq and OpenNMT-py converters fill them; CTranslate2 writes the files. An exported
folder holds CTranslate2's ``model.bin``, ``config.json`` and vocabulary file(s), our SentencePiece model(s)
with ``tokenizer.json`` (``Tokenizer.load`` reads the folder), and ``transformer.json`` (the checkpoint's
config and the export settings), so that a translator needs nothing else.

What maps onto what:

- Embeddings: the sqrt(d_model) scale is CTranslate2's ``scale_embeddings``; shared and tied weights are written
  once per use and CTranslate2 stores them once (its converter aliases equal variables).
- Positions: CTranslate2's built-in sinusoids are another table (sin and cos halves, positions from 1), so both
  kinds are written as an explicit table of what our own positional module adds at each position. A learned
  table has ``max_positions`` rows; a sinusoidal one enough rows for the longest output the checkpoint's decoding
  settings allow from a ``max_positions``-token source.
- Layers: pre-LN and post-LN are CTranslate2's ``pre_norm`` (a final LayerNorm only with pre-LN, as ours);
  the Q/K/V projections are fused into its one (self) or two (cross) input projections; ReLU or GELU (erf);
  the LayerNorm epsilon is its ``layer_norm_epsilon``.
- Vocabulary: the SentencePiece pieces; the source gets EOS appended (``add_source_eos``), the decoder starts
  from BOS, as in ``transformer.decoding``. A multilingual model's target-language tags (``<2de>``) are pieces
  like the others: the export keeps every direction, chosen by the tag the translator puts first.

Anything outside this is refused with the reason (``unsupported``), and every export is checked numerically
before it is written: the token log-probabilities of forced translations of random token sequences must match
our model's within ``VERIFY_TOLERANCE``; a model that does not is refused, never exported silently wrong.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ctranslate2.converters import Converter
from ctranslate2.converters.utils import fuse_linear
from ctranslate2.specs import common_spec, transformer_spec
from torch import nn

from transformer.checkpoint import load_for_inference
from transformer.config import Config, ModelConfig
from transformer.data.tokenizer import JOINT_MODEL, SRC_MODEL, TGT_MODEL, Tokenizer
from transformer.data.tokenizer import META_FILE as TOKENIZER_META
from transformer.errors import UserError, write_error
from transformer.inference.ct2_engine import META_FILE, META_VERSION, CTranslate2Translator
from transformer.inference.torch_engine import TorchTranslator
from transformer.inference.translator import QUANTIZATIONS
from transformer.model.attention import MultiHeadAttention
from transformer.model.feed_forward import FeedForward
from transformer.model.layers import Residual
from transformer.model.transformer import Transformer
from transformer.tokens import BOS_ID, EOS_ID, UNK_ID

logger = logging.getLogger(__name__)

VERIFY_TOLERANCE = 1e-3  # max |log-prob difference| of a float32 export; a wrong mapping is off by far more

ACTIVATIONS = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}  # GELU: erf, as F.gelu
# ModelConfig fields and the values CTranslate2's Transformer expresses exactly (None: any value).
SUPPORTED: dict[str, tuple[Any, ...] | None] = {
    "src_vocab_size": None, "tgt_vocab_size": None, "d_model": None, "n_heads": None, "d_ff": None,
    "n_encoder_layers": None, "n_decoder_layers": None,
    "dropout": None, "attention_dropout": None, "activation_dropout": None,  # training only
    "activation": tuple(ACTIVATIONS), "norm_first": None, "positional": ("sinusoidal", "learned"),
    "max_positions": None, "share_embeddings": None, "tie_output": None, "layer_norm_eps": None,
}  # fmt: skip


# What an export writes into its folder (CTranslate2's files; our vocabulary, one model or two; transformer.json):
# ``--force`` removes these from a previous export, and nothing else.
EXPORT_FILES = (
    "model.bin", "config.json", "shared_vocabulary.json", "source_vocabulary.json", "target_vocabulary.json",
    "vmap.txt", JOINT_MODEL, SRC_MODEL, TGT_MODEL, TOKENIZER_META, META_FILE,
)  # fmt: skip
RUN_MARKERS = ("checkpoints", "train.lock", "metrics.jsonl", "tokenizer", "tensorboard")  # a run folder has these


class ExportError(UserError, ValueError):
    """The model cannot be exported exactly, or the export folder cannot be written."""


def unsupported(config: ModelConfig) -> list[str]:
    """Why CTranslate2 cannot express a model of this config exactly; empty when it can.

    A ModelConfig option this exporter does not know is refused unless it has its default value (the numerical
    check of ``export_model`` still covers it).
    """
    reasons, defaults = [], ModelConfig()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name not in SUPPORTED:
            if value != getattr(defaults, f.name):
                reasons.append(f"model.{f.name}={value!r} is not an option the CTranslate2 Transformer has")
        elif SUPPORTED[f.name] is not None and value not in SUPPORTED[f.name]:
            reasons.append(f"model.{f.name}={value!r}: CTranslate2 supports {', '.join(map(str, SUPPORTED[f.name]))}")
    return reasons


def position_rows(config: Config) -> int:
    """Rows of the exported position tables (see the module docstring)."""
    m, d = config.model, config.decode
    if m.positional == "learned":
        return m.max_positions
    return max(m.max_positions, int(d.max_len_a * m.max_positions + d.max_len_b) + 1)


class TransformerConverter(Converter):
    """Our ``Transformer`` -> CTranslate2's ``TransformerSpec``; ``convert(output_dir, quantization=...)`` writes it.

    Every parameter of the model must find its place in the spec: one left over (an option this converter does
    not know) makes ``_load`` raise ``ExportError`` instead of writing a model without it.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, positions: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.positions = positions
        self._used: set[int] = set()

    def _array(self, tensor: torch.Tensor) -> np.ndarray:
        self._used.add(id(tensor))
        return tensor.detach().to("cpu", torch.float32).numpy()

    @torch.no_grad()
    def _load(self) -> transformer_spec.TransformerSpec:
        model, c = self.model, self.model.config
        self._used = set()
        spec = transformer_spec.TransformerSpec.from_config(
            (c.n_encoder_layers, c.n_decoder_layers), c.n_heads, pre_norm=c.norm_first,
            activation=ACTIVATIONS[c.activation],
        )
        spec.config.layer_norm_epsilon = c.layer_norm_eps
        src_pieces, tgt_pieces = self.tokenizer.pieces()
        spec.config.unk_token, spec.config.eos_token = tgt_pieces[UNK_ID], tgt_pieces[EOS_ID]
        spec.config.bos_token = spec.config.decoder_start_token = tgt_pieces[BOS_ID]  # [BOS] + y, as in training
        spec.config.add_source_eos = True  # source ids are pieces + EOS
        spec.register_source_vocabulary(src_pieces)
        spec.register_target_vocabulary(tgt_pieces)

        self._set_inputs(spec.encoder, model.encoder, embeddings=spec.encoder.embeddings[0])
        for layer_spec, layer in zip(spec.encoder.layer, model.encoder.layers):
            self._set_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block, self_attention=True)
            self._set_ffn(layer_spec.ffn, layer.feed_forward, layer.ff_block)
        self._set_inputs(spec.decoder, model.decoder, embeddings=spec.decoder.embeddings)
        for layer_spec, layer in zip(spec.decoder.layer, model.decoder.layers):
            self._set_attention(layer_spec.self_attention, layer.self_attn, layer.self_block, self_attention=True)
            self._set_attention(layer_spec.attention, layer.cross_attn, layer.cross_block, self_attention=False)
            self._set_ffn(layer_spec.ffn, layer.feed_forward, layer.ff_block)
        if c.norm_first:  # the final LayerNorm of each stack (post-LN stacks have none, in both)
            self._set_norm(spec.encoder.layer_norm, model.encoder.final_norm)
            self._set_norm(spec.decoder.layer_norm, model.decoder.final_norm)
        spec.decoder.projection.weight = self._array(model.output.weight)
        if model.output.bias is not None:
            spec.decoder.projection.bias = self._array(model.output.bias)

        left = [name for name, t in model.state_dict(keep_vars=True).items() if id(t) not in self._used]
        if left:
            shown = ", ".join(left[:5]) + (f" ... ({len(left)} in all)" if len(left) > 5 else "")
            raise ExportError(f"the CTranslate2 Transformer has no place for these weights of the model: {shown}")
        return spec

    def _set_inputs(self, spec: Any, stack: nn.Module, *, embeddings: common_spec.EmbeddingsSpec) -> None:
        """Token embedding, its scale and the table of what the positional module adds at each position."""
        embeddings.weight = self._array(stack.embedding.weight)
        spec.scale_embeddings = float(stack.embedding.scale)
        zeros = torch.zeros(1, self.positions, self.model.config.d_model, device=stack.embedding.weight.device)
        spec.position_encodings.encodings = stack.positional(zeros)[0].to("cpu", torch.float32).numpy()
        for tensor in stack.positional.state_dict(keep_vars=True).values():  # a learned table, read through it
            self._used.add(id(tensor))

    def _set_attention(
        self, spec: Any, attention: MultiHeadAttention, block: Residual, *, self_attention: bool
    ) -> None:
        """Self-attention: one fused Q/K/V input projection; cross-attention: Q, then fused K/V."""
        projections = [attention.q_proj, attention.k_proj, attention.v_proj]
        if self_attention:
            self._fuse(spec.linear[0], projections)
        else:
            self._set_linear(spec.linear[0], attention.q_proj)
            self._fuse(spec.linear[1], projections[1:])
        self._set_linear(spec.linear[-1], attention.out_proj)
        self._set_norm(spec.layer_norm, block.norm)

    def _set_ffn(self, spec: Any, feed_forward: FeedForward, block: Residual) -> None:
        self._set_linear(spec.linear_0, feed_forward.linear1)
        self._set_linear(spec.linear_1, feed_forward.linear2)
        self._set_norm(spec.layer_norm, block.norm)

    def _fuse(self, spec: common_spec.LinearSpec, linears: list[nn.Linear]) -> None:
        parts = [common_spec.LinearSpec() for _ in linears]
        for part, linear in zip(parts, linears):
            self._set_linear(part, linear)
        fuse_linear(spec, parts)

    def _set_linear(self, spec: common_spec.LinearSpec, linear: nn.Linear) -> None:
        spec.weight = self._array(linear.weight)  # (out, in), CTranslate2's layout too
        if linear.bias is not None:
            spec.bias = self._array(linear.bias)

    def _set_norm(self, spec: common_spec.LayerNormSpec, norm: nn.LayerNorm) -> None:
        spec.gamma = self._array(norm.weight)
        spec.beta = self._array(norm.bias)


def export_model(
    model: Transformer,
    tokenizer: Tokenizer,
    config: Config,
    output_dir: str | Path,
    *,
    quantization: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``model`` as a CTranslate2 model folder (see the module docstring for its content).

    Args:
        model: the model of ``config.model`` (any device; it is read in eval mode, and its mode restored).
        tokenizer: its vocabulary; written into the folder.
        config: the checkpoint's config; stored in the folder (decoding and data settings for the translator).
        quantization: CTranslate2's weight type, one of ``QUANTIZATIONS``; None keeps float32.
        force: replace the files of a previous export in ``output_dir`` (see ``replaceable``).

    Returns:
        ``output_dir``.

    Raises:
        ExportError: the model has an option CTranslate2 cannot express (the message says which and why), its
            export does not reproduce its log-probabilities, the folder exists (without ``force``; with it, holds
            no previous export or a training run) or cannot be written.
    """
    output_dir = Path(output_dir)
    reasons = unsupported(config.model)
    if reasons:
        raise ExportError("cannot export to CTranslate2 exactly: " + "; ".join(reasons))
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    previous = replaceable(output_dir, force=force)
    converter = TransformerConverter(model, tokenizer, positions=position_rows(config))
    was_training = model.training
    model.eval()
    try:
        parent = output_dir.resolve().parent  # never inside output_dir (as Path(".").parent would be)
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=parent) as tmp:
            check = Path(tmp) / "float32"
            converter.convert(str(check), quantization="float32")
            _write_side_files(check, tokenizer, config, "float32")
            difference = _verify(model, tokenizer, CTranslate2Translator(check, intra_threads=1))
            if not difference <= VERIFY_TOLERANCE:
                raise ExportError(
                    f"the CTranslate2 export does not compute this model: forced log-probabilities differ by up to "
                    f"{difference:.3g} (more than {VERIFY_TOLERANCE:g}); the model has something CTranslate2's "
                    "Transformer does not express"
                )
            staged = Path(tmp) / "model"
            if quantization in (None, "float32"):
                check.rename(staged)
            else:
                converter.convert(str(staged), quantization=quantization)
                _write_side_files(staged, tokenizer, config, quantization)
            _move_into(staged, output_dir, previous)
    except OSError as err:
        raise write_error(output_dir, err, what="CTranslate2 model folder") from None
    finally:
        model.train(was_training)
    logger.info("exported a CTranslate2 model (%s) to %s", quantization or "float32", output_dir)
    return output_dir


def replaceable(output_dir: Path, *, force: bool, reading: Path | None = None) -> list[Path] | None:
    """The files of a previous export in ``output_dir`` that a new export replaces; None if there is no folder.

    ``--force`` replaces a previous export of this project only (a folder holding ``transformer.json``), and only
    the files an export writes (``EXPORT_FILES``); anything else in it stays. An empty folder is taken as it is.

    Raises:
        ExportError: ``output_dir`` is a file; or it exists and ``force`` is not set; or it holds a training run,
            the checkpoint being exported (``reading``), or other files but no ``transformer.json``.
    """
    if not output_dir.exists():
        return None
    if not output_dir.is_dir():
        raise ExportError(f"--output {output_dir} is a file, not a folder; give the name of a folder to write")
    if not force:
        raise ExportError(f"{output_dir} already exists; choose another folder or replace it with --force")
    run = [name for name in RUN_MARKERS if (output_dir / name).exists()]
    if run:
        raise ExportError(
            f"--output {output_dir} holds a training run ({', '.join(run)}); --force replaces a previous export "
            f"only, never a run: choose another folder, e.g. {output_dir / 'ct2'}"
        )
    if reading is not None and reading.resolve().is_relative_to(output_dir.resolve()):
        raise ExportError(
            f"--output {output_dir} holds the checkpoint being exported ({reading}); --force never replaces it: "
            "choose another folder"
        )
    if any(output_dir.iterdir()) and not (output_dir / META_FILE).is_file():
        raise ExportError(
            f"--output {output_dir} is not a CTranslate2 export of this project (no {META_FILE}); --force replaces "
            "a previous export only: choose another folder, or empty this one yourself"
        )
    return [output_dir / name for name in EXPORT_FILES if (output_dir / name).is_file()]


def _move_into(staged: Path, output_dir: Path, previous: list[Path] | None) -> None:
    """Put the files of ``staged`` at ``output_dir``: the folder itself if there was none, else file by file over
    the ``previous`` export's files (each removed one logged); other files in the folder are kept and logged."""
    if previous is None:
        staged.rename(output_dir)
        return
    previous.sort(key=lambda p: p.name != META_FILE)  # transformer.json first: a half-replaced folder is no export
    for path in previous:
        path.unlink()
    if previous:
        logger.warning("export --force: removed the previous export's %s", ", ".join(map(str, previous)))
    kept = sorted(p.name for p in output_dir.iterdir())
    if kept:
        logger.warning("export --force: kept %s in %s (not written by an export)", ", ".join(kept), output_dir)
    for path in sorted(staged.iterdir(), key=lambda p: p.name == META_FILE):  # transformer.json last
        os.replace(path, output_dir / path.name)


def _write_side_files(folder: Path, tokenizer: Tokenizer, config: Config, quantization: str) -> None:
    """Our vocabulary and ``transformer.json`` next to CTranslate2's files."""
    tokenizer.save(folder)
    meta = {
        "version": META_VERSION, "quantization": quantization, "positions": position_rows(config),
        "config": config.to_dict(),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _verify(model: Transformer, tokenizer: Tokenizer, translator: CTranslate2Translator) -> float:
    """Largest |log-prob difference| between ``model`` and ``translator`` on forced translations of random ids."""
    generator = torch.Generator().manual_seed(0)
    first = EOS_ID + 1  # no special ids inside the sentences
    lengths = [(1, 1), (3, 7), (9, 4), (16, 12)]
    src = [torch.randint(first, tokenizer.src_vocab_size, (n,), generator=generator).tolist() for n, _ in lengths]
    tgt = [torch.randint(first, tokenizer.tgt_vocab_size, (n,), generator=generator).tolist() for _, n in lengths]
    ours = TorchTranslator(model, tokenizer, device=next(model.parameters()).device).forced_log_probs(src, tgt)
    theirs = translator.forced_log_probs(src, tgt)
    return max(max(abs(a - b) for a, b in zip(x, y)) if len(x) == len(y) else math.inf for x, y in zip(ours, theirs))


def export_checkpoint(
    checkpoint: str | Path, output_dir: str | Path, *, quantization: str | None = None, force: bool = False
) -> Path:
    """``export_model`` of the model stored in a checkpoint file.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ExportError: see ``export_model``.
    """
    replaceable(Path(output_dir), force=force, reading=Path(checkpoint))  # before the work of loading and converting
    model, tokenizer, config = load_for_inference(checkpoint, "cpu")
    return export_model(model, tokenizer, config, output_dir, quantization=quantization, force=force)
