"""SentencePiece vocabulary: train on the training split, save to a folder, encode and decode.

Every model is trained with the fixed special ids of ``transformer.tokens`` (re-exported here):
``PAD_ID=0, UNK_ID=1, BOS_ID=2, EOS_ID=3``. ``encode_src``/``encode_tgt`` return subword ids
*without* BOS/EOS; ``batching.collate`` adds them where the model needs them.

A trained tokenizer is a folder::

    tokenizer.json     settings it was trained with (joint or not, vocab_size, model_type, ...)
    spm.model          the joint model (joint=True), or
    src.model, tgt.model   one model per side (joint=False)

``to_state``/``from_state`` turn it into plain Python values (bytes, str, int, float, bool) so that a
checkpoint can embed the vocabulary and still be read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from transformer.config import DataConfig
from transformer.errors import ConfigError, DataError, write_error
from transformer.files import atomic_write_bytes
from transformer.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # re-exported: callers import them from here too

logger = logging.getLogger(__name__)

META_FILE = "tokenizer.json"
JOINT_MODEL = "spm.model"
SRC_MODEL = "src.model"
TGT_MODEL = "tgt.model"
STATE_VERSION = 1

# The config key of each training setting (for error messages).
SETTING_KEYS = {
    "vocab_size": "data.vocab_size",
    "model_type": "data.spm_model_type",
    "joint": "data.joint_vocab",
    "character_coverage": "data.spm_character_coverage",
    "tags": "data.directions (their target languages)",
}

# Messages of SentencePiece's trainer that we act on (see _train_model).
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class Tokenizer:
    """Source and target SentencePiece models; one shared model when ``joint``.

    Args:
        src_model: serialized SentencePiece model of the source side (or the joint model).
        tgt_model: serialized model of the target side; ``None`` for a joint vocabulary.
        settings: the options it was trained with (stored, compared by ``load_or_train``).

    Raises:
        ValueError: a model's pad/unk/bos/eos ids differ from ``PAD_ID, UNK_ID, BOS_ID, EOS_ID``.
    """

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None, *, settings: dict[str, Any] | None = None):
        self.joint = tgt_model is None
        self.settings = dict(settings or {})
        self._src_bytes = src_model
        self._tgt_bytes = tgt_model
        self._src = _processor(src_model, "source" if tgt_model is not None else "joint")
        self._tgt = self._src if tgt_model is None else _processor(tgt_model, "target")
        # Ids put before every encoded source: a multilingual model's target-language tag (``for_target``).
        self.source_prefix: list[int] = []

    # ---- training, saving, loading -------------------------------------------------------------

    @classmethod
    def train(
        cls,
        src_texts: Sequence[str],
        tgt_texts: Sequence[str],
        out_dir: str | Path,
        *,
        vocab_size: int,
        model_type: str = "bpe",
        joint: bool = True,
        character_coverage: float = 1.0,
        tags: Sequence[str] = (),
    ) -> Tokenizer:
        """Train on the training split (in memory, quietly) and save the result to ``out_dir``.

        When ``vocab_size`` is more than a small corpus can fill, SentencePiece's own upper bound is
        used instead, with a logged warning.

        Args:
            src_texts: source sentences of the training split.
            tgt_texts: target sentences of the training split.
            out_dir: folder to write (created if needed).
            vocab_size: pieces per model, special ids included.
            model_type: "bpe" or "unigram".
            joint: one model trained on both sides (needed to share embeddings), else one per side.
            character_coverage: share of characters covered by the vocabulary (1.0 for European languages).
            tags: target languages of a multilingual model: each gets a reserved piece ``lang_tag(lang)`` (ids 4,
                5, ... in this order), never split and never learnt from the text; needs ``joint``.

        Returns:
            The trained tokenizer.

        Raises:
            DataError: no text to train on.
            ConfigError: ``vocab_size`` is smaller than the alphabet needs, or SentencePiece refuses the settings.
            OutputError: ``out_dir`` cannot be written.
        """
        options = dict(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage)
        settings = dict(options, joint=joint)
        if tags:
            if not joint:
                raise ConfigError("target-language tags need one joint vocabulary: set data.joint_vocab=true")
            settings["tags"] = list(tags)  # only when there are some: a bilingual vocabulary is as before
        if joint:
            model = _train_model(itertools.chain(src_texts, tgt_texts), "joint", **options, tags=list(tags))
            tokenizer = cls(model, settings=settings)
        else:
            src_model = _train_model(src_texts, "source", **options)
            tokenizer = cls(src_model, _train_model(tgt_texts, "target", **options), settings=settings)
        tokenizer.save(out_dir)
        logger.info(
            "trained %s %s vocabulary (%d source / %d target pieces) in %s",
            "a joint" if joint else "a separate", model_type,
            tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, out_dir,
        )
        return tokenizer

    def save(self, directory: str | Path) -> None:
        """Write the model file(s) and ``tokenizer.json`` (last, so a complete folder has it).

        Raises:
            OutputError: the folder cannot be made or written (full disk, no permission, a file in the way).
        """
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(directory, err, what="tokenizer folder") from None
        if self.joint:
            atomic_write_bytes(directory / JOINT_MODEL, self._src_bytes, what="tokenizer file")
        else:
            atomic_write_bytes(directory / SRC_MODEL, self._src_bytes, what="tokenizer file")
            atomic_write_bytes(directory / TGT_MODEL, self._tgt_bytes or b"", what="tokenizer file")
        meta = {"version": STATE_VERSION, "joint": self.joint, "settings": self.settings}
        atomic_write_bytes(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode("utf-8"),
                           what="tokenizer file")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a folder written by ``train``/``save``.

        Raises:
            DataError: the folder, ``tokenizer.json`` or a model file is missing, unreadable or malformed (the
                file is named in the message; deleting the folder makes training write a new one).
        """
        directory = Path(directory)
        meta_path = directory / META_FILE
        retrain = f"delete {directory} to train a new vocabulary there, or use another train.run_dir"
        if not meta_path.is_file():
            raise DataError(
                f"no tokenizer in {directory}: {meta_path} is missing (train one with Tokenizer.train or load_or_train)"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            joint = bool(meta["joint"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{meta_path}: not a valid tokenizer description ({err}); {retrain}") from None
        except OSError as err:
            raise DataError(f"cannot read {meta_path}: {err.strerror or err}") from None
        names = [JOINT_MODEL] if joint else [SRC_MODEL, TGT_MODEL]
        for name in names:
            if not (directory / name).is_file():
                raise DataError(f"tokenizer in {directory} is incomplete: {directory / name} is missing; {retrain}")
        try:
            models = [(directory / name).read_bytes() for name in names]
            return cls(models[0], None if joint else models[1], settings=meta.get("settings"))
        except OSError as err:
            raise DataError(f"cannot read the tokenizer in {directory}: {err.strerror or err}") from None
        except (RuntimeError, ValueError) as err:  # SentencePiece cannot parse a model file, or other special ids
            raise DataError(f"the tokenizer in {directory} is damaged ({err}); {retrain}") from None

    @classmethod
    def load_or_train(
        cls,
        directory: str | Path,
        src_texts: Sequence[str],
        tgt_texts: Sequence[str],
        *,
        vocab_size: int,
        model_type: str = "bpe",
        joint: bool = True,
        character_coverage: float = 1.0,
        tags: Sequence[str] = (),
    ) -> Tokenizer:
        """Load the tokenizer in ``directory`` if there is one, else train it there (see ``train``).

        Call it on one process only (rank 0) in distributed runs, then ``load`` on the others.

        Raises:
            ConfigError: the saved tokenizer was trained with other settings (the message names each config
                key with its saved and asked value, and says what to do).
            DataError, OutputError: see ``load``, ``train``.
        """
        directory = Path(directory)
        wanted: dict[str, Any] = dict(vocab_size=vocab_size, model_type=model_type, joint=joint,
                                      character_coverage=character_coverage)
        if not (directory / META_FILE).is_file():
            return cls.train(src_texts, tgt_texts, directory, **wanted, tags=tags)
        tokenizer = cls.load(directory)
        wanted["tags"] = list(tags)
        saved = dict(tokenizer.settings, tags=tokenizer.tags)
        differ = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if differ:
            asked = ", ".join(f"{SETTING_KEYS[k]}={_yaml(new)}" for k, (_, new) in differ.items())
            saved = ", ".join(f"{SETTING_KEYS[k]}={_yaml(old)}" for k, (old, _) in differ.items())
            raise ConfigError(
                f"{asked} differs from the vocabulary already in {directory}, trained with {saved}; "
                f"use a new train.run_dir for a new vocabulary, or set {saved} to continue with this one"
            )
        logger.info("reusing the tokenizer in %s", directory)
        return tokenizer

    def to_state(self) -> dict[str, Any]:
        """Plain Python values only, for embedding in a checkpoint (``torch.load(weights_only=True)``)."""
        return {
            "version": STATE_VERSION,
            "joint": self.joint,
            "src_model": self._src_bytes,
            "tgt_model": self._tgt_bytes,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        """Inverse of ``to_state``.

        Raises:
            ValueError: ``state`` is not a tokenizer state of a known version.
        """
        missing = [k for k in ("version", "joint", "src_model", "tgt_model") if k not in state]
        if missing:
            raise ValueError(f"not a tokenizer state: missing key(s) {missing}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"tokenizer state version {state['version']} is not supported (expected {STATE_VERSION})")
        return cls(state["src_model"], None if state["joint"] else state["tgt_model"], settings=state.get("settings"))

    # ---- encoding and decoding -----------------------------------------------------------------

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    def pieces(self) -> tuple[list[str], list[str]]:
        """The source and target pieces, by id: what two models must share to decode together.

        Two tokenizers can have the same pieces but other model bytes: the serialized models also record
        training options such as ``num_threads`` (the machine's CPU count).
        """
        src = [self._src.id_to_piece(i) for i in range(self._src.get_piece_size())]
        return src, src if self.joint else [self._tgt.id_to_piece(i) for i in range(self._tgt.get_piece_size())]

    @property
    def tags(self) -> list[str]:
        """The target languages this vocabulary has a tag for ([] for a bilingual one)."""
        return list(self.settings.get("tags", []))

    def tag_id(self, lang: str) -> int:
        """The id of ``lang``'s target-language tag.

        Raises:
            ValueError: the vocabulary has no tag for ``lang`` (the message lists those it has).
        """
        if lang not in self.tags:
            raise ValueError(f"this vocabulary has no target-language tag for {lang!r}; it has {self.tags}")
        return self._src.piece_to_id(lang_tag(lang))

    def for_target(self, lang: str) -> Tokenizer:
        """This tokenizer with ``lang``'s tag put first in every encoded source (a multilingual model's input).

        A bilingual vocabulary (no tags) is returned as it is. The copy shares the SentencePiece models.

        Raises:
            ValueError: see ``tag_id``.
        """
        if not self.tags:
            return self
        view = copy.copy(self)
        view.source_prefix = [self.tag_id(lang)]
        return view

    def encode_src(self, texts: list[str], *, sample_alpha: float = 0.0, seed: int = 0) -> list[list[int]]:
        """Subword ids of each source sentence (after ``source_prefix``), without BOS/EOS (see ``_encode``)."""
        ids = _encode(self._src, texts, sample_alpha, seed)
        return [self.source_prefix + x for x in ids] if self.source_prefix else ids

    def encode_tgt(self, texts: list[str], *, sample_alpha: float = 0.0, seed: int = 0) -> list[list[int]]:
        """Subword ids of each target sentence, without BOS/EOS (see ``_encode`` for sampling)."""
        return _encode(self._tgt, texts, sample_alpha, seed)

    def decode_src(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Plain text of source id sequences (same rules as ``decode_tgt``)."""
        return _decode(self._src, ids)

    def decode_tgt(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Plain, detokenized text of target id sequences (lists, or a (B, T) tensor).

        Everything from the first EOS on is cut, PAD and BOS are dropped, so neither special-token
        text nor the '▁' word marker reaches the output. An UNK id becomes SentencePiece's ' ⁇ '.

        Raises:
            ValueError: an id is outside the target vocabulary.
        """
        return _decode(self._tgt, ids)


def _encode(sp: spm.SentencePieceProcessor, texts: Sequence[str], sample_alpha: float, seed: int) -> list[list[int]]:
    """The best segmentation of each text (``sample_alpha=0``), or a sampled one.

    Sampling is subword regularisation: BPE-dropout with merge-dropout probability ``sample_alpha`` for a
    BPE model, sampling from all segmentations with smoothing ``sample_alpha`` for a unigram model. The
    same ``seed`` always gives the same segmentations: SentencePiece seeds the generator of each worker
    thread it starts from its global seed and hands sentences to threads in no fixed order, so sampling
    sets that seed and encodes on one (fresh) thread. The deterministic path stays multithreaded.
    """
    if sample_alpha <= 0.0:
        return sp.encode(list(texts), out_type=int)
    spm.set_random_generator_seed(seed)
    return sp.encode(list(texts), out_type=int, enable_sampling=True, alpha=sample_alpha, nbest_size=-1, num_threads=1)


def _processor(model: bytes, side: str) -> spm.SentencePieceProcessor:
    """A SentencePiece processor for ``model``, checked to use our special ids."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise ValueError(
            f"the {side} SentencePiece model has pad/unk/bos/eos ids {got}, but this framework needs "
            f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}: train it with Tokenizer.train"
        )
    return sp


def lang_tag(lang: str) -> str:
    """The piece that tells a multilingual model to translate into ``lang``: ``<2de>`` (Johnson et al., 2017)."""
    return f"<2{lang}>"


def _train_model(
    texts: Iterable[str], side: str, *, vocab_size: int, model_type: str, character_coverage: float,
    tags: Sequence[str] = (),
) -> bytes:
    """Train one SentencePiece model on ``texts`` in memory; returns the serialized model.

    SentencePiece refuses a ``vocab_size`` larger than a small corpus supports and reports the
    largest size it accepts; we retry once with that size (tiny test corpora, vocab_size ~ 100-200).
    """
    sentences = [t for t in texts if t]
    if not sentences:
        raise DataError(f"no {side} text to train the SentencePiece model on: the training split has no text")
    size = vocab_size
    for _ in range(3):
        buffer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=buffer,
                vocab_size=size,
                model_type=model_type,
                character_coverage=character_coverage,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                **({"user_defined_symbols": [lang_tag(lang) for lang in tags]} if tags else {}),
                num_threads=os.cpu_count() or 1,
                minloglevel=2,  # SentencePiece logs every step at level 0
            )
            return buffer.getvalue()
        except RuntimeError as err:
            too_high, too_small = _TOO_HIGH.search(str(err)), _TOO_SMALL.search(str(err))
            if too_high and int(too_high.group(2)) < size:
                logger.warning(
                    "vocab_size=%d is too large for this %s text (%d sentences); using %s, "
                    "the most SentencePiece allows",
                    size, side, len(sentences), too_high.group(2),
                )
                size = int(too_high.group(2))
                continue
            if too_small:
                raise ConfigError(
                    f"data.vocab_size={vocab_size} is too small for the {side} text: its characters and the 4 special "
                    f"pieces need {too_small.group(2)} ids; set data.vocab_size={too_small.group(2)} or more "
                    "(or lower data.spm_character_coverage)"
                ) from None
            reason = str(err).split("] ", 1)[-1].strip()  # drop SentencePiece's source location
            raise ConfigError(
                f"SentencePiece cannot train a {model_type} vocabulary of data.vocab_size={size} on the {side} text: "
                f"{reason}"
            ) from None
    raise ConfigError(f"could not find a data.vocab_size SentencePiece accepts for the {side} text; lower it")


def _decode(sp: spm.SentencePieceProcessor, ids: Sequence[Sequence[int]]) -> list[str]:
    """Cut each sequence at its first EOS, drop PAD/BOS, and detokenize."""
    if hasattr(ids, "tolist"):  # a tensor or an array
        ids = ids.tolist()
    size = sp.get_piece_size()
    cleaned = []
    for seq in ids:
        kept = []
        for i in seq:
            if i == EOS_ID:
                break
            if i == PAD_ID or i == BOS_ID:
                continue
            if not 0 <= i < size:
                raise ValueError(f"id {i} is outside the vocabulary (size {size})")
            kept.append(i)
        cleaned.append(kept)
    return sp.decode(cleaned) if cleaned else []  # batched, multithreaded


def _yaml(value: Any) -> str:
    """``value`` as it is written in YAML or a ``key=value`` override."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_or_train_tokenizer(
    cfg: DataConfig, directory: str | Path, src_texts: Sequence[str], tgt_texts: Sequence[str]
) -> Tokenizer:
    """``Tokenizer.load_or_train`` with the vocabulary options of ``cfg`` (train on the train split only)."""
    return Tokenizer.load_or_train(
        directory,
        src_texts,
        tgt_texts,
        vocab_size=cfg.vocab_size,
        model_type=cfg.spm_model_type,
        joint=cfg.joint_vocab,
        character_coverage=cfg.spm_character_coverage,
        tags=cfg.target_langs if cfg.multilingual else (),
    )
