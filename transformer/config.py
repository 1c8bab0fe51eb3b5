"""Typed configuration: dataclasses are the single source of defaults.

A YAML file only overrides them, and dotted command-line overrides (``train.lr=5e-4``) override the
YAML. Every key is checked: an unknown key is an error that lists the valid ones, and a value that
cannot be converted to the field's type names the key and the value. The resolved config is saved
inside every checkpoint (``asdict``), so a checkpoint rebuilds its model without any other file;
``Config.from_saved`` reads it back, also from checkpoints written with keys that have since gone.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transformer.errors import ConfigError
from transformer.tokens import PAD_ID

logger = logging.getLogger(__name__)

# Model presets: plain values, applied by ``ModelConfig.preset`` or by ``model.preset`` in YAML.
PRESETS: dict[str, dict[str, Any]] = {
    # For tests: runs in milliseconds.
    "tiny": dict(d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2),
    # For Multi30k-sized corpora (about 30k pairs).
    "small": dict(d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3, n_decoder_layers=3),
    # The paper's "base" and "big" models (Vaswani et al., 2017, Table 3).
    "base": dict(d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6),
    "big": dict(d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=6, n_decoder_layers=6, dropout=0.3),
}



class Section:
    """What every config section offers besides its fields."""

    def updated(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied, skipping those that are None (command-line options left unset).

        Raises:
            ConfigError: a changed value is invalid (checked by ``__post_init__``); TypeError: an unknown name.
        """
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def _check_finite(self) -> None:
        """Every float field (and each float of a tuple field) is a finite number: no option means inf or nan.

        Raises:
            ConfigError: naming the key and the value.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{_section(type(self))}{f.name} must be a finite number, got {shown}")


@dataclass
class ModelConfig(Section):
    """Sizes and options of the encoder-decoder; names follow the paper."""

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1  # residual, embedding dropout
    attention_dropout: float = 0.0  # on attention probabilities
    activation_dropout: float = 0.0  # inside the feed-forward, after the activation
    activation: str = "relu"  # "relu" or "gelu"
    norm_first: bool = False  # False: the paper's post-LN; True: pre-LN with a final LayerNorm
    positional: str = "sinusoidal"  # "sinusoidal" or "learned"
    max_positions: int = 1024  # table size for learned positions (sinusoidal ones extend as needed)
    share_embeddings: bool = False  # one embedding for source and target (needs a joint vocabulary)
    tie_output: bool = True  # classifier weight = target embedding weight
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self._check_finite()
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_positions",
                     "n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads != 0:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        _check_choice("model.activation", self.activation, ("relu", "gelu"))
        _check_choice("model.positional", self.positional, ("sinusoidal", "learned"))
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(
                "model.share_embeddings needs one joint vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}"
            )
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"model.layer_norm_eps must be positive, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset's sizes ("tiny", "small", "base", "big"), with ``overrides`` on top."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


MIN_VOCAB_SIZE = 5  # the 4 special ids and one piece; SentencePiece also wants every character of the corpus
ROLES = ("train", "valid", "test")  # the keys of DataConfig.files
LANG = "{lang}"  # in a data.files path of source "files": replaced by data.src_lang, then data.tgt_lang


@dataclass
class DataConfig(Section):
    """Where the parallel text comes from, how it is tokenized and batched."""

    # Source kind: "folder" (a folder of {split}.{lang}[.gz] files, e.g. Multi30k), "files" (a path per role),
    # "tsv" (one file per role, source<TAB>target) or "hub" (a Hugging Face `datasets` name).
    source: str = "folder"
    data_dir: str = ""  # folder for "folder"; empty: $MULTI30K_DIR, else data/multi30k
    src_lang: str = "en"
    tgt_lang: str = "de"
    # Several translation directions in one model ("en-de", "de-en", "en-fr", ...): each direction's corpus is
    # read as src_lang/tgt_lang would be (which then take the first direction's languages), over one joint
    # vocabulary. The target language is told by a tag token, "<2de>", put first in the source: the encoder then
    # reads every sentence knowing what it is translated into, the decoder and the searches stay as they are
    # (they start from BOS), and a CTranslate2 export needs nothing new (the tag is one more source token).
    # Empty or one direction: a bilingual run, exactly as without this key.
    directions: list[str] = field(default_factory=list)
    # Batches of one direction each; the direction of each batch is drawn with probability proportional to
    # (its training pairs) ** (1 / direction_temperature): 1 is proportional to the sizes, higher flattens
    # towards uniform (Arivazhagan et al., 2019). train.grad_accum_steps > 1 mixes directions in an update,
    # which a model of many directions needs (configs/multi30k_multilingual.yaml).
    direction_temperature: float = 1.0
    # Split names of the corpus, mapped from the roles train/valid/test.
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    # For source="files" and "tsv": role (train/valid/test) -> path. A "files" path holds {lang}, which becomes
    # src_lang and tgt_lang (corpus/train.{lang}: corpus/train.en and corpus/train.de); a "tsv" path is the file.
    files: dict[str, str] = field(default_factory=dict)
    # For source="hub": datasets.load_dataset(hub_name, hub_config) or a local format ("json", "csv", ...)
    # with hub_data_files mapping split -> path.
    hub_name: str = ""
    hub_config: str = ""
    hub_data_files: dict[str, str] = field(default_factory=dict)
    # Vocabulary (SentencePiece).
    vocab_size: int = 8000
    spm_model_type: str = "bpe"  # "bpe" or "unigram"
    joint_vocab: bool = True  # one model for both languages (needed for shared embeddings)
    spm_character_coverage: float = 1.0
    # Subword regularisation of the training pairs, per side: each epoch sees a fresh sampled segmentation
    # (BPE-dropout with this merge-dropout probability for "bpe"; the sampling smoothing alpha for "unigram").
    # 0 disables. Validation, test and translation always use the deterministic segmentation.
    src_subword_sampling: float = 0.0
    tgt_subword_sampling: float = 0.0
    # Filtering and batching. Lengths count ids as fed to the model: source pieces + EOS, target pieces + 1.
    max_src_tokens: int = 256
    max_tgt_tokens: int = 256
    max_length_ratio: float = 3.0  # drop pairs whose longer side is over this many times the shorter; 0 disables
    max_tokens: int = 4096  # token budget of one batch, padding included
    pad_to_multiple: int = 1  # 8 on GPUs: fewer distinct shapes, tensor-core friendly; 1 wastes least on CPUs
    lowercase: bool = False
    # Prepared training data (`transformer prepare`, or `train` when it is missing): the vocabulary and the
    # encoded training pairs, cached under a key made of the corpus files' fingerprints and the settings above,
    # and memory-mapped by every run and every process that uses them.
    cache_dir: str = ""  # empty: $TRANSFORMER_CACHE_DIR, else data/cache (relative to the working directory)
    vocab_sample_size: int = 2_000_000  # sentences per side the vocabulary is trained on (seeded sample); 0: all
    prepare_workers: int = 0  # processes that encode the corpus; 0: one per CPU core

    def __post_init__(self) -> None:
        self._check_finite()
        _check_choice("data.source", self.source, ("folder", "files", "tsv", "hub"))
        _check_choice("data.spm_model_type", self.spm_model_type, ("bpe", "unigram"))
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(
                f"data.vocab_size must be at least {MIN_VOCAB_SIZE} (the 4 special pieces pad/unk/bos/eos and one "
                f"more), got {self.vocab_size}; the characters of a corpus usually need 50 to 150 pieces"
            )
        for name in ("max_src_tokens", "max_tgt_tokens"):
            if getattr(self, name) < 2:
                raise ConfigError(f"data.{name} must be at least 2 (one piece and EOS), got {getattr(self, name)}")
        for name in ("max_tokens", "pad_to_multiple"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name} must be positive, got {getattr(self, name)}")
        for name in ("vocab_sample_size", "prepare_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("src_lang", "tgt_lang", "train_split", "valid_split", "test_split"):
            if not getattr(self, name).strip():
                raise ConfigError(f"data.{name} must not be empty")
        self._check_directions()
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"data.src_lang and data.tgt_lang are both {self.src_lang!r}")
        if self.max_length_ratio != 0 and self.max_length_ratio < 1:
            raise ConfigError(f"data.max_length_ratio must be >= 1 (or 0 to disable), got {self.max_length_ratio}")
        for name in ("src_subword_sampling", "tgt_subword_sampling"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.spm_character_coverage <= 1.0:
            raise ConfigError(f"data.spm_character_coverage must be in (0, 1], got {self.spm_character_coverage}")
        if self.source == "hub" and not self.hub_name:
            raise ConfigError("data.hub_name must be set when data.source is 'hub'")
        if self.source == "hub" and self.hub_name in ("json", "csv", "parquet") and not self.hub_data_files:
            raise ConfigError(f"data.hub_data_files (split: path) must be set when data.hub_name is {self.hub_name!r}")
        self._check_files()

    def _check_directions(self) -> None:
        """Each direction is ``src-tgt`` of two different languages, none twice; src_lang/tgt_lang follow the first.

        Raises:
            ConfigError: naming the direction and what is wrong with it.
        """
        if not self.direction_temperature > 0:
            raise ConfigError(f"data.direction_temperature must be positive, got {self.direction_temperature}")
        pairs = [parse_direction(text, key="data.directions") for text in self.directions]
        repeated = sorted({f"{s}-{t}" for s, t in pairs if pairs.count((s, t)) > 1})
        if repeated:
            raise ConfigError(f"data.directions names {repeated} more than once")
        self.directions = [f"{s}-{t}" for s, t in pairs]
        if pairs:
            self.src_lang, self.tgt_lang = pairs[0]
        if len(pairs) > 1 and not self.joint_vocab:
            raise ConfigError("data.directions with several directions needs one joint vocabulary: set data.joint_vocab=true")

    @property
    def direction_pairs(self) -> list[tuple[str, str]]:
        """The run's directions as (source, target) language pairs: ``directions``, else (src_lang, tgt_lang)."""
        return [parse_direction(text) for text in self.directions] or [(self.src_lang, self.tgt_lang)]

    @property
    def multilingual(self) -> bool:
        """More than one direction: the sources carry target-language tags."""
        return len(self.direction_pairs) > 1

    @property
    def target_langs(self) -> list[str]:
        """The target languages of the run, sorted (one tag each when ``multilingual``)."""
        return sorted({tgt for _, tgt in self.direction_pairs})

    def for_direction(self, src_lang: str, tgt_lang: str) -> DataConfig:
        """A bilingual copy that reads the corpus of one direction (what every reader of one pair takes)."""
        return dataclasses.replace(self, directions=[], src_lang=src_lang, tgt_lang=tgt_lang)

    def _check_files(self) -> None:
        """Known roles always; paths for "files" and "tsv" only: the other sources never read ``files``, so a copy
        switched to "folder" (as distillation makes) may keep them."""
        unknown = sorted(set(self.files) - set(ROLES))
        if unknown:
            raise ConfigError(f"data.files: unknown role(s) {unknown}; valid roles: {list(ROLES)}")
        if self.source not in ("files", "tsv"):
            return
        for role, path in self.files.items():
            if not path.strip():
                raise ConfigError(f"data.files.{role} is empty; give a path or leave the role out")
            if self.source == "files" and LANG not in path:
                raise ConfigError(
                    f"data.files.{role}={path!r} needs {LANG} (source: files), e.g. corpus/{role}.{LANG} for "
                    f"corpus/{role}.{self.src_lang} and corpus/{role}.{self.tgt_lang}"
                )
            if self.source == "tsv" and LANG in path:
                raise ConfigError(
                    f"data.files.{role}={path!r} has {LANG}, but a source: tsv file holds both languages; "
                    "for one file per language use source: files"
                )


@dataclass
class DecodeConfig(Section):
    """Greedy (beam_size=1) or beam search; max length = max_len_a * src_len + max_len_b."""

    beam_size: int = 5
    length_penalty: float = 0.6  # GNMT alpha; 0 disables length normalisation
    max_len_a: float = 1.2
    max_len_b: int = 10
    min_len: int = 1
    n_best: int = 1
    no_repeat_ngram_size: int = 0
    batch_size: int = 128  # sentences per decoding batch

    def __post_init__(self) -> None:
        self._check_finite()
        for name in ("beam_size", "n_best", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"decode.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_best > self.beam_size:
            raise ConfigError(f"decode.n_best ({self.n_best}) cannot exceed decode.beam_size ({self.beam_size})")
        for name in ("length_penalty", "max_len_a", "max_len_b", "min_len", "no_repeat_ngram_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"decode.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainConfig(Section):
    """Optimisation, schedule, precision, evaluation and checkpointing."""

    run_dir: str = "runs/default"
    seed: int = 1
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast + gradient scaler, CUDA only)
    optimizer: str = "adam"  # "adam" or "adamw"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: str = "inverse_sqrt"  # "noam" (the paper's), "inverse_sqrt" (fairseq's), "cosine", "constant"
    warmup_steps: int = 4000
    max_steps: int = 0  # 0: limited by max_epochs only
    # Sets the update count: max_epochs x the updates of the first epoch (with subword sampling, later
    # epochs differ by a few batches; the run still stops after exactly that many updates).
    max_epochs: int = 10
    min_lr: float = 0.0  # floor of the cosine schedule
    label_smoothing: float = 0.1
    grad_accum_steps: int = 1
    clip_grad_norm: float = 0.0  # 0 disables clipping
    log_every: int = 50  # steps between metric logs (the only host-device sync of the loop)
    eval_every: int = 0  # steps between validations; 0: once per epoch
    eval_bleu: bool = True
    eval_max_sentences: int = 0  # 0: the whole validation split
    best_metric: str = "bleu"  # "bleu" (higher is better) or "loss" (lower is better)
    # With several data.directions: the direction whose best_metric picks best.pt; empty: the mean over all.
    best_direction: str = ""
    patience: int = 0  # validations without improvement before stopping; 0 disables early stopping
    keep_last: int = 5  # step checkpoints kept besides last.pt and best.pt
    save_every: int = 0  # steps between step checkpoints; 0: at each validation
    compile: bool = False
    threads: int = 0  # torch.set_num_threads for CPU work; 0: torch's default
    # Updates in a row skipped for a non-finite loss or gradient norm (or out of memory) before the run stops
    # with an error; fp16's loss-scale overflows are counted apart and never stop it.
    max_skipped_updates: int = 5

    def __post_init__(self) -> None:
        self._check_finite()
        _check_choice("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        _check_choice("train.optimizer", self.optimizer, ("adam", "adamw"))
        _check_choice("train.schedule", self.schedule, ("noam", "inverse_sqrt", "cosine", "constant"))
        _check_choice("train.best_metric", self.best_metric, ("bleu", "loss"))
        if not self.run_dir.strip():
            raise ConfigError("train.run_dir must not be empty")
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"train.betas must both be in [0, 1), got {list(self.betas)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("grad_accum_steps", "log_every", "max_skipped_updates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "warmup_steps", "max_steps", "max_epochs", "min_lr", "weight_decay",
                     "clip_grad_norm", "eval_every", "eval_max_sentences", "patience", "keep_last", "save_every",
                     "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 and self.max_epochs == 0:
            raise ConfigError("set train.max_steps or train.max_epochs to a positive number")
        if self.schedule == "noam" and self.warmup_steps == 0:
            raise ConfigError(
                "train.warmup_steps must be positive with train.schedule=noam (it divides by it); "
                "set e.g. train.warmup_steps=4000, or use another train.schedule"
            )
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")


@dataclass
class Config:
    """Everything a run needs; saved as a plain dict in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        named = self.train.best_direction
        have = [f"{s}-{t}" for s, t in self.data.direction_pairs]
        if named and named not in have:
            raise ConfigError(f"train.best_direction={named} is not one of the run's data.directions {have}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> Config:
        """Build from nested plain values (YAML, overrides, ``to_dict``); unknown keys are errors."""
        return _build(cls, values, where)

    @classmethod
    def from_saved(cls, values: dict[str, Any], *, where: str = "saved config") -> Config:
        """Build from a config saved in a checkpoint or an export, written by this version or an older one.

        Older versions saved keys that are gone: ``model.pad_id`` (always 0, now ``transformer.tokens.PAD_ID``),
        ``train.max_minutes``, ``data.source: multi30k`` (now ``folder``) and the nine per-role paths
        ``data.{train,valid,test}_{src,tgt,tsv}`` (now ``data.files``). They are translated, then ``from_dict``
        checks the rest; a user's YAML or override with an old key stays an error.

        Raises:
            ConfigError: ``model.pad_id`` is not 0 (such a model cannot run here), or see ``from_dict``.
        """
        if not isinstance(values, dict):
            return cls.from_dict(values, where=where)  # its error names the problem
        values = {name: dict(section) if isinstance(section, dict) else section for name, section in values.items()}
        model, data, train = (values.get(name) for name in ("model", "data", "train"))
        if isinstance(model, dict) and "pad_id" in model:
            pad_id = model.pop("pad_id")
            if pad_id != PAD_ID:
                raise ConfigError(
                    f"{where}: model.pad_id={pad_id}, but this version pads with id {PAD_ID} only; "
                    "the model cannot be used"
                )
        if isinstance(train, dict):
            train.pop("max_minutes", None)
        if isinstance(data, dict):
            if data.get("source") == "multi30k":
                data["source"] = "folder"
            old_paths = {key: data.pop(key) for key in _OLD_PATH_KEYS if key in data}
            if old_paths and "files" not in data:
                data["files"] = _old_paths_to_files(old_paths, data, where)
        return cls.from_dict(values, where=where)


# The per-role paths of configs saved before ``data.files`` (read by ``Config.from_saved``).
_OLD_PATH_KEYS = tuple(f"{role}_{kind}" for role in ROLES for kind in ("src", "tgt", "tsv"))


def _old_paths_to_files(old: dict[str, Any], data: dict[str, Any], where: str) -> dict[str, str]:
    """``data.files`` from the old per-role paths of the saved source (the other source's paths were unread).

    A "files" pair becomes one ``{lang}`` template when the two paths differ by the language codes only; a
    pair that does not (e.g. ``a.txt`` and ``b.txt``) is left out with a warning: the saved model still
    loads, and reading that role asks for ``data.files``.
    """
    source = data.get("source", DataConfig.source)
    files: dict[str, str] = {}
    for role in ROLES:
        if source == "tsv" and old.get(f"{role}_tsv"):
            files[role] = str(old[f"{role}_tsv"])
        elif source == "files" and (old.get(f"{role}_src") or old.get(f"{role}_tgt")):
            src, tgt = str(old.get(f"{role}_src", "")), str(old.get(f"{role}_tgt", ""))
            template = _lang_template(src, tgt, str(data.get("src_lang", DataConfig.src_lang)),
                                      str(data.get("tgt_lang", DataConfig.tgt_lang)))
            if template is None:
                logger.warning("%s: data.%s_src=%s and data.%s_tgt=%s differ by more than the language, so "
                               "data.files gets no %s path", where, role, src, role, tgt, role)
            else:
                files[role] = template
    return files


def _lang_template(src: str, tgt: str, src_lang: str, tgt_lang: str) -> str | None:
    """A path with ``{lang}`` that gives ``src`` for ``src_lang`` and ``tgt`` for ``tgt_lang``, or None.

    Some occurrences of ``src_lang`` may be other text (``en-de/en/dev.en`` -> ``en-de/{lang}/dev.{lang}``), so
    subsets of them are tried, the largest first (a path holds a handful at most).
    """
    starts = [match.start() for match in re.finditer(re.escape(src_lang), src)][:8]
    for n in range(len(starts), 0, -1):
        for chosen in itertools.combinations(starts, n):
            template = src
            for i in reversed(chosen):
                template = template[:i] + LANG + template[i + len(src_lang):]
            if template.replace(LANG, src_lang) == src and template.replace(LANG, tgt_lang) == tgt:
                return template
    return None


def parse_direction(text: str, *, key: str = "direction") -> tuple[str, str]:
    """``"en-de"`` -> ``("en", "de")``.

    Raises:
        ConfigError: not two different, non-empty language codes joined by one ``-`` (``key`` names the option).
    """
    parts = str(text).strip().split("-")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"{key}: {text!r} is not a direction; write source-target language codes, e.g. en-de")
    src, tgt = (p.strip() for p in parts)
    if src == tgt:
        raise ConfigError(f"{key}: {text!r} translates {src!r} into itself; the two languages must differ")
    return src, tgt


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides.

    An error is blamed on what gave the value: the file (``run.yaml: train.lr must be positive``), or the
    override (``command-line override 'train.lr=-1': train.lr must be positive``).

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown, or a value has the wrong type.
    """
    values: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        values = _read_yaml(path)
    given: dict[str, str] = {}  # "train.lr" -> the override that set it last
    for item in overrides:
        given[_apply_override(values, item)] = item
    try:
        return Config.from_dict(values, where=where)
    except ConfigError as err:
        problem = str(err).removeprefix(f"{where}: ")
        blamed = [item for key, item in given.items() if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", problem)]
        if not blamed:
            raise
        raise ConfigError(f"{_overrides_named(blamed)}: {problem}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file (see configs/)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(str(path), err, "not valid YAML")) from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise ConfigError(f"{path}: not UTF-8 text (byte {byte:#x} at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, decode)")
    return loaded or {}


def _yaml_error(where: str, err: yaml.YAMLError, what: str, *, positions: bool = True) -> str:
    """One line: ``where:LINE:COLUMN: what: the problem (while ... at line L, column C)`` (1-based); without
    ``positions`` (a one-line override), ``where: what: the problem (while ...)``."""
    mark = getattr(err, "problem_mark", None) if positions else None
    problem = getattr(err, "problem", None)
    if problem is None:  # e.g. a ReaderError (a control character): its text is the whole story
        return f"{where}: {what}: {' '.join(str(err).split())}"
    text = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    text = f"{text}: {what}: {problem}"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and positions:
        text += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        text += f" ({context})"
    return text


def _overrides_named(items: list[str]) -> str:
    quoted = ", ".join(repr(item) for item in items)
    return f"command-line override {quoted}" if len(items) == 1 else f"command-line overrides {quoted}"


def _apply_override(values: dict[str, Any], item: str) -> str:
    """``section.key=value`` (a leading ``--`` is accepted); the value is parsed as YAML. Returns ``section.key``.

    Raises:
        ConfigError: naming the override: malformed, an unknown section or key, or a value that is not YAML.
    """
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=5e-4")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) != 2 or not all(keys):
        raise ConfigError(f"override {item!r}: the key must be section.key, e.g. train.lr")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    if keys[0] not in sections:
        raise ConfigError(f"{_overrides_named([item])}: unknown section {keys[0]!r}; valid sections: {sorted(sections)}")
    cls = typing.get_type_hints(Config)[keys[0]]
    valid = sorted(f.name for f in dataclasses.fields(cls)) + (["preset"] if cls is ModelConfig else [])
    if keys[1] not in valid:
        raise ConfigError(
            f"{_overrides_named([item])}: unknown key(s) [{keys[1]!r}] in {cls.__name__}; valid keys: {sorted(valid)}"
        )
    section = values.setdefault(keys[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"override {item!r}: {keys[0]} is not a section")
    try:
        section[keys[1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(_overrides_named([item]), err, "cannot parse the value", positions=False)) from None
    return dotted.strip()


def _build(cls: type, values: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, converting and checking each field."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(values).__name__}")
    values = dict(values)
    if cls is ModelConfig and "preset" in values:
        preset = values.pop("preset")
        if preset not in PRESETS:
            raise ConfigError(f"{where}: unknown model.preset {preset!r}; choose one of {sorted(PRESETS)}")
        values = {**PRESETS[preset], **values}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - fields))
    if unknown:
        valid = sorted(fields) + (["preset"] if cls is ModelConfig else [])
        raise ConfigError(f"{where}: unknown key(s) {unknown} in {cls.__name__}; valid keys: {valid}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, where)
        else:
            kwargs[name] = _convert(value, hint, f"{where}: {_section(cls)}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _section(cls: type) -> str:
    names = {ModelConfig: "model.", DataConfig: "data.", TrainConfig: "train.", DecodeConfig: "decode."}
    return names.get(cls, "")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        return _convert(value, options[0], key)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, e.g. [en-de, de-en], got {value!r}")
        (arg,) = typing.get_args(hint)
        return [_convert(v, arg, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "5e-4" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
