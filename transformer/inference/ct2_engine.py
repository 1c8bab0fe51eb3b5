"""CTranslate2 as an engine: a folder written by ``ct2_export`` behind the ``Translator`` protocol.

``CTranslate2Translator`` decodes under the rules of ``transformer.decoding.search`` (see its module docstring)
and of ``translator`` (blank texts, truncation, input order):

- Same inputs (truncated to ``max_src_tokens``, EOS appended), same maximum output length
  ``int(max_len_a * src_len + max_len_b)`` per sentence (CTranslate2 has one per batch: sentences are grouped by
  it), same ``min_len`` and ``no_repeat_ngram_size``, PAD and BOS never generated; the same n-best output
  (``Hypothesis`` with token ids, GNMT-normalised score and raw log-prob).
- Greedy: the same tokens. Beam search with length penalty 0: CTranslate2 stops when its best candidate is EOS,
  ours when no open beam can still beat the K-th finished hypothesis; both return the best hypothesis the search
  can reach, nearly always the same one (lower n-best entries may differ). Nearly: the renormalisation below
  shifts each beam's score by its own small amount, so two nearly tied beams can be kept differently (1 of 520
  sentences of ``data/sample``'s training set, beam 4, with a model trained on it).
- Length penalty: ours is GNMT's ``((5 + len) / 6) ** alpha`` (len counts EOS), CTranslate2's ``len ** alpha``
  (len without EOS), and it then stops a sentence after K finished hypotheses. With alpha > 0 this engine ranks
  CTranslate2's K finished hypotheses by our GNMT score (their raw log-probs recovered from its scores), so the
  scores mean the same in both engines; the hypotheses found can still differ, as our search continues until no
  open beam can win (4% of the sentences in one test). Only greedy search gives the same output always.
- At the maximum length our search forces EOS (and counts its log-prob); CTranslate2 stops there without EOS:
  the same tokens, a score without the final EOS term.
- CTranslate2 normalises each step's log-probabilities over the tokens the rules allow (no PAD or BOS, no EOS
  before ``min_len``), ours over the whole vocabulary: the same output scores a little higher here, by
  ``-sum(log(1 - banned mass))``. Forced log-probabilities (``forced_log_probs``: no rules) are the same.
- Threads: ``inter_threads`` translators take the batches in parallel, each on ``intra_threads`` threads; for
  small models on few cores, one thread per translator is fastest (``transformer benchmark engines``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ctranslate2
import torch

from transformer.config import Config, ConfigError, DecodeConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import Hypothesis, gnmt_length_penalty
from transformer.errors import DeviceError, EngineError, UserError
from transformer.inference.translator import encode_sources, nonblank
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID

META_FILE = "transformer.json"  # our config and the export settings, beside CTranslate2's files
META_VERSION = 1


class ExportedModelError(UserError, ValueError):
    """A folder is not a usable CTranslate2 export of this project."""


def read_export(model_dir: str | Path) -> tuple[Config, Tokenizer, dict[str, Any]]:
    """The config, the vocabulary and the export settings stored in a folder written by ``export_model``.

    Raises:
        ExportedModelError: the folder is missing, is a file, is not such an export, or is damaged.
    """
    model_dir = Path(model_dir)
    how = "write one with `transformer export --checkpoint CKPT --format ctranslate2 --output DIR`"
    if model_dir.is_file():
        if (model_dir.parent / META_FILE).is_file():  # a file of an export, e.g. its model.bin
            instead = f"give the folder: --model {model_dir.parent}"
        else:
            instead = f"a checkpoint runs with --engine torch --checkpoint {model_dir}; or {how}"
        raise ExportedModelError(
            f"--model {model_dir} is a file, not a folder: --model takes the folder that `transformer export` "
            f"writes; {instead}"
        )
    if not model_dir.is_dir():
        raise ExportedModelError(f"CTranslate2 model folder not found: {model_dir}; {how}")
    meta_path = model_dir / META_FILE
    if not meta_path.is_file() or not (model_dir / "model.bin").is_file():
        raise ExportedModelError(
            f"{model_dir} is not a CTranslate2 export of this project (no {META_FILE} or model.bin); {how}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != META_VERSION:
            raise ValueError(f"version {meta.get('version')!r}, expected {META_VERSION}")
        config = Config.from_saved(meta["config"], where=str(meta_path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as err:
        raise ExportedModelError(f"{meta_path} cannot be read ({err}); export the checkpoint again") from None
    try:
        tokenizer = Tokenizer.load(model_dir)
    except UserError as err:
        raise ExportedModelError(f"{err}; export the checkpoint again") from None
    return config, tokenizer, meta


class CTranslate2Translator:
    """Decodes with a CTranslate2 model folder under the conventions of ``transformer.decoding.search``.

    Args:
        model_dir: a folder written by ``export_model``.
        device: "cpu" or "cuda" (CTranslate2's names); ``device_index`` picks the GPU.
        compute_type: CTranslate2's compute type; "default" keeps the exported quantization.
        inter_threads: translators working in parallel, each on its own batches (CTranslate2's ``inter_threads``).
        intra_threads: threads of each translator (0: CTranslate2's default).

    Raises:
        ExportedModelError: the folder is not a usable export.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        device_index: int = 0,
        compute_type: str = "default",
        inter_threads: int = 1,
        intra_threads: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.config, self.tokenizer, meta = read_export(model_dir)
        self.quantization: str = meta["quantization"]
        self.positions: int = meta["positions"]  # rows of the position tables: the longest input or output
        try:
            self.translator = ctranslate2.Translator(
                str(model_dir), device=device, device_index=device_index, compute_type=compute_type,
                inter_threads=inter_threads, intra_threads=intra_threads,
            )
        except (RuntimeError, ValueError) as err:
            raise ExportedModelError(f"CTranslate2 cannot load {model_dir}: {err}") from None
        self._src_pieces, self._tgt_pieces = self.tokenizer.pieces()
        self._tgt_ids = {piece: i for i, piece in enumerate(self._tgt_pieces)}
        self._eos = self._tgt_pieces[EOS_ID]
        self._never = [[self._tgt_pieces[PAD_ID]], [self._tgt_pieces[BOS_ID]]]  # as our searches: never generated

    def for_target(self, lang: str) -> CTranslate2Translator:
        """This translator decoding into ``lang``: the same CTranslate2 model, sources tagged (``Tokenizer.for_target``:
        CTranslate2 reads the tag as the piece ``<2xx>`` of its vocabulary); a bilingual model's translator is this
        one."""
        if not self.tokenizer.tags:
            return self
        view = copy.copy(self)
        view.tokenizer = self.tokenizer.for_target(lang)
        return view

    def translate(
        self,
        texts: Sequence[str],
        cfg: DecodeConfig,
        *,
        max_src_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Hypothesis]]:
        """n-best hypotheses of raw source sentences, in the order of ``texts`` (see ``Translator.translate``).

        Sentences are sorted by length, grouped by their maximum output length and sent in batches of
        ``cfg.batch_size``, all at once, so that ``inter_threads`` translators work in parallel.
        """
        results: list[list[Hypothesis]] = [[] for _ in texts]
        todo = nonblank(texts)
        if not todo:
            return results
        limit = min(max_src_tokens or self.config.model.max_positions, self.positions)
        ids = encode_sources(self.tokenizer, [texts[i] for i in todo], max_src_tokens=limit)
        max_lens = [self.max_length(len(x), cfg) for x in ids]
        groups: dict[int, list[int]] = {}
        for j in sorted(range(len(ids)), key=lambda j: len(ids[j]), reverse=True):  # longest first, as ours
            groups.setdefault(max_lens[j], []).append(j)
        jobs = []
        for max_len, members in groups.items():
            for start in range(0, len(members), cfg.batch_size):
                chunk = members[start : start + cfg.batch_size]
                source = [[self._src_pieces[i] for i in ids[j][:-1]] for j in chunk]  # EOS: added by CTranslate2
                options = _options(cfg, max_len, self._never)
                jobs.append((chunk, self.translator.translate_batch(source, asynchronous=True, **options)))
        for chunk, pending in jobs:
            for j, job in zip(chunk, pending):
                results[todo[j]] = self._hypotheses(job.result(), cfg)
            if progress is not None:
                progress(len(chunk))
        return results

    def max_length(self, src_len: int, cfg: DecodeConfig) -> int:
        """Output tokens allowed after ``src_len`` source ids (EOS included): ours, within the position tables."""
        return max(1, min(int(cfg.max_len_a * src_len + cfg.max_len_b), self.positions - 1))

    def _hypotheses(self, result: Any, cfg: DecodeConfig) -> list[Hypothesis]:
        """CTranslate2's hypotheses as ours: ids without EOS, raw log-prob, GNMT score; best first."""
        alpha = cfg.length_penalty
        hyps = []
        for pieces, score in zip(result.hypotheses, result.scores):
            if cfg.beam_size > 1 and alpha != 0:  # CTranslate2 divided by len ** alpha (EOS included, see _options)
                score = score * len(pieces) ** alpha
            tokens = [self._tgt_ids[p] for p in (pieces[:-1] if pieces and pieces[-1] == self._eos else pieces)]
            hyps.append(Hypothesis(tokens, score / gnmt_length_penalty(len(tokens) + 1, alpha), score))
        hyps.sort(key=lambda h: h.score, reverse=True)
        return hyps[: cfg.n_best]

    def forced_log_probs(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probability of each target token and the final EOS given the source (ids without BOS/EOS)."""
        source = [[self._src_pieces[i] for i in s] for s in src]
        target = [[self._tgt_pieces[i] for i in t] for t in tgt]
        return [list(r.log_probs) for r in self.translator.score_batch(source, target, max_input_length=0)]


def _options(cfg: DecodeConfig, max_len: int, never: list[list[str]]) -> dict[str, Any]:
    """``translate_batch`` options for our decoding settings and one maximum output length."""
    greedy = cfg.beam_size == 1
    rerank = not greedy and cfg.length_penalty != 0  # K finished hypotheses, ranked by our GNMT score
    return dict(
        beam_size=cfg.beam_size,
        num_hypotheses=cfg.beam_size if rerank else cfg.n_best,
        # 0 returns raw log-prob sums and, in beam search, stops once the best candidate is EOS; with our alpha
        # > 0 CTranslate2's own penalty is applied and undone (its length counts EOS: return_end_token).
        length_penalty=cfg.length_penalty if rerank else 0.0,
        return_end_token=True,
        return_scores=True,
        max_decoding_length=max_len,
        min_decoding_length=min(cfg.min_len, max_len),
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        suppress_sequences=never,
        max_input_length=0,  # inputs are truncated before, as ours
    )


def load_ct2_translator(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    inter_threads: int | None = None,
    intra_threads: int | None = None,
) -> tuple[CTranslate2Translator, Config]:
    """A translator of an exported folder on ``device`` ("cpu", "cuda", "cuda:1"), and the export's config.

    Args:
        inter_threads, intra_threads: translators working in parallel and threads per translator (None: 1 and
            CTranslate2's default).

    Raises:
        EngineError: a thread count below its minimum.
        DeviceError: a device CTranslate2 cannot use here.
        ExportedModelError: the folder is not a usable export.
    """
    for name, value, least in (("--inter-threads", inter_threads, 1), ("--intra-threads", intra_threads, 0)):
        if value is not None and value < least:
            raise EngineError(f"{name} must be at least {least}, got {value}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {device}: CTranslate2 runs on cpu or cuda")
    if device.type == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise DeviceError(f"--device {device}: this CTranslate2 build sees no CUDA device; use --device cpu")
    translator = CTranslate2Translator(
        model_dir, device=device.type, device_index=device.index or 0,
        inter_threads=1 if inter_threads is None else inter_threads,
        intra_threads=0 if intra_threads is None else intra_threads,
    )
    return translator, translator.config
