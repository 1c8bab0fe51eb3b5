"""Sequence-level knowledge distillation (Kim and Rush, 2016): a teacher's translations as a training corpus.

The teacher (one model or an ensemble) translates the source side of one split of a corpus folder with beam
search; the result is written as a corpus folder that a config trains on (``data.data_dir``)::

    OUT_DIR/{split}.{src}, {split}.{tgt}   the source sentences and the teacher's translations; with
                                           ``with_original``, the original pairs followed by the distilled ones
    OUT_DIR/<other splits>                 copied from the corpus folder: validation and test keep real references
    OUT_DIR/distill.json                   the teacher (checkpoint SHA-256s, its config) and the settings
    OUT_DIR/{split}.{tgt}.partial          while it runs: the translations so far, ``chunk_size`` lines at a time

An interrupted run is continued by running it again: the translations are appended in whole chunks, and a
rerun drops a chunk cut off in writing and goes on from the last whole one. The chunks are the same in both
runs, so a continued run writes the same files as one that was never interrupted. A rerun with another teacher,
another corpus or other settings is refused. The batch size and the device are not settings: a sentence
translates the same in any batch, and on another device up to floating-point rounding. A multilingual teacher
distills one direction: it is given as the translator of that direction (``translator_for``) with that direction's
data settings (``DataConfig.for_direction``), whose languages name the files. The module sits beside
``evaluation.py``, on the floor above data and decoding, like it a task built from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer.config import DataConfig, DecodeConfig
from transformer.data.corpus import corpus_folder, load_split
from transformer.errors import ConfigError, DataError, write_error
from transformer.files import atomic_write_text
from transformer.inference.translator import Translator, translate_texts

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_SIZE = 1000  # source lines translated and appended at a time: what an interruption can lose
RECORD = "distill.json"


@dataclass(frozen=True)
class DistillSettings:
    """Everything that decides the distilled corpus; a rerun must match it to continue where it stopped."""

    teacher_sha256: tuple[str, ...]  # of each checkpoint file, in the order given (an ensemble's members)
    src_lang: str
    tgt_lang: str
    split: str
    lines: int  # source lines of the split
    source_sha256: str  # of the source sentences as read (stripped; lowercased if the teacher's data was)
    beam_size: int
    length_penalty: float
    max_len_a: float
    max_len_b: int
    min_len: int
    no_repeat_ngram_size: int
    with_original: bool  # the original pairs too: a training split of 2 x lines pairs
    chunk_size: int = CHUNK_SIZE

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists, as read back from JSON

    def decode_config(self, batch_size: int) -> DecodeConfig:
        """The teacher's search settings (the batch size changes the speed, not the translations)."""
        return DecodeConfig(
            beam_size=self.beam_size, length_penalty=self.length_penalty, max_len_a=self.max_len_a,
            max_len_b=self.max_len_b, min_len=self.min_len, no_repeat_ngram_size=self.no_repeat_ngram_size,
            n_best=1, batch_size=batch_size,
        )


@dataclass
class DistillJob:
    """A distillation ready to run: the corpus read, the output folder checked, the resume point found."""

    out_dir: Path
    corpus: Path  # the corpus folder the split was read from
    settings: DistillSettings
    src_texts: list[str]
    tgt_texts: list[str]  # the original targets (written too with ``with_original``)
    done: int  # source lines already translated (a multiple of the chunk size, or all)
    record: dict[str, Any]  # what distill.json holds

    @property
    def complete(self) -> bool:
        return bool(self.record.get("complete"))

    @property
    def partial_path(self) -> Path:
        return self.out_dir / f"{self.settings.split}.{self.settings.tgt_lang}.partial"

    def sentences(self, start: int = 0, stop: int | None = None) -> int:
        """Non-blank sources in ``[start, stop)``: what the decoder translates (and a progress bar counts)."""
        return sum(1 for text in self.src_texts[start:stop] if text.strip())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(lines: Sequence[str]) -> str:
    """SHA-256 of sentences, one per line."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def prepare_distillation(
    checkpoints: Sequence[str | os.PathLike[str]],
    teacher_config: dict[str, Any],
    data: DataConfig,
    decode: DecodeConfig,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    with_original: bool = False,
    chunk_size: int | None = None,
) -> DistillJob:
    """Read the split, create ``out_dir`` or check it against the settings, and find where to continue.

    Args:
        checkpoints: the teacher's checkpoint files (hashed, and named in distill.json).
        teacher_config: the (first) checkpoint's config as a dict, recorded in distill.json.
        data: where the corpus is (``source="folder"``, ``data_dir``, the languages); ``split`` replaces its
            ``train_split``. Its ``lowercase`` is the teacher's: the teacher reads what it was trained on.
        decode: the teacher's search settings (``n_best`` 1).
        chunk_size: source lines per appended chunk; None: ``CHUNK_SIZE``.

    Raises:
        DataError: the corpus cannot be read, or ``out_dir`` is the corpus folder or a non-empty folder without
            distill.json.
        ConfigError: ``out_dir`` holds a distillation with another teacher, corpus or settings.
        OutputError: ``out_dir`` cannot be created or written.
    """
    out_dir, chunk_size = Path(out_dir), chunk_size or CHUNK_SIZE
    data = dataclasses.replace(data, source="folder", train_split=split)
    corpus = corpus_folder(data)
    src_texts, tgt_texts = load_split(data, "train")
    if out_dir.resolve() == corpus.resolve():
        raise DataError(
            f"the output folder {out_dir} (--output) is the corpus folder itself; give a new folder for the distilled "
            "corpus"
        )
    settings = DistillSettings(
        teacher_sha256=tuple(file_sha256(path) for path in checkpoints),
        src_lang=data.src_lang, tgt_lang=data.tgt_lang, split=split, lines=len(src_texts),
        source_sha256=text_sha256(src_texts), beam_size=decode.beam_size, length_penalty=decode.length_penalty,
        max_len_a=decode.max_len_a, max_len_b=decode.max_len_b, min_len=decode.min_len,
        no_repeat_ngram_size=decode.no_repeat_ngram_size, with_original=with_original, chunk_size=chunk_size,
    )
    record = {
        "format_version": FORMAT_VERSION,
        "settings": settings.to_dict(),
        "teacher": [{"path": str(path), "sha256": sha} for path, sha in zip(checkpoints, settings.teacher_sha256)],
        "teacher_config": teacher_config,
        "corpus": str(corpus),
        "translated": 0,
        "seconds": 0.0,
        "complete": False,
    }
    job = DistillJob(out_dir, corpus, settings, src_texts, tgt_texts, done=0, record=record)
    previous = _read_record(out_dir)
    if previous is None:
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise DataError(
                f"the output folder {out_dir} (--output) has files but no {RECORD}: give a new or empty folder, so "
                "that nothing of yours is overwritten"
            )
        _write_record(job)
        return job
    _check_same(previous.get("settings", {}), settings.to_dict(), out_dir)
    job.record.update({k: previous[k] for k in ("translated", "seconds", "complete") if k in previous})
    job.done = settings.lines if job.complete else _resume_point(job.partial_path, chunk_size, settings.lines)
    return job


def run_distillation(
    job: DistillJob,
    teacher: Translator,
    *,
    batch_size: int = DecodeConfig.batch_size,
    progress: Callable[[int], None] | None = None,
) -> DistillJob:
    """Translate what ``job`` has left, chunk by chunk, with the recorded settings; then write the corpus folder.

    Args:
        teacher: either engine (one model, an ensemble, or a CTranslate2 export of the teacher).
        batch_size: sentences per decoding batch.
        progress: called with the number of sentences of each decoded batch (a tqdm ``update``).

    Returns:
        ``job``, complete.

    Raises:
        OutputError: a file of ``job.out_dir`` cannot be written.
    """
    s = job.settings
    if job.complete:
        job.partial_path.unlink(missing_ok=True)  # left if the last run stopped just before removing it
        return job
    decode = s.decode_config(batch_size)
    for start in range(job.done, s.lines, s.chunk_size):
        begin = time.perf_counter()
        chunk = job.src_texts[start : start + s.chunk_size]
        hypotheses = translate_texts(teacher, chunk, decode, progress=progress)
        _append(job.partial_path, [re.sub(r"[\r\n]+", " ", h) for h in hypotheses])
        job.done = start + len(chunk)
        job.record["translated"] = job.done
        job.record["seconds"] = round(job.record["seconds"] + time.perf_counter() - begin, 1)
        _write_record(job)
        logger.info("distilled %d of %d sentences", job.done, s.lines)
    _finish(job)
    return job


# ---- files ------------------------------------------------------------------------------------------


def _read_record(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} cannot be read ({err}); delete {out_dir} to start the distillation again") from None


def _check_same(previous: dict[str, Any], current: dict[str, Any], out_dir: Path) -> None:
    """One error line naming what changed, if ``out_dir`` was started with other settings."""
    changed = [key for key in current.keys() | previous.keys() if previous.get(key) != current.get(key)]
    if not changed:
        return
    names = {"teacher_sha256": "the teacher (checkpoint SHA-256)", "source_sha256": "the source sentences"}
    shown = ", ".join(
        names.get(key, f"{key} {previous.get(key)!r} -> {current.get(key)!r}") for key in sorted(changed)
    )
    raise ConfigError(
        f"{out_dir / RECORD} records another distillation ({shown}); run it with the same teacher and settings to "
        f"continue, or give another --output (or delete {out_dir}) to start a new one"
    )


def _resume_point(partial: Path, chunk_size: int, lines: int) -> int:
    """Lines of whole chunks in ``partial`` (cut back to them: a chunk cut off in writing is done again)."""
    if not partial.is_file():
        return 0
    data = partial.read_bytes()
    rows = data.split(b"\n")[:-1]  # whole lines ("\n" is never inside a translation)
    done = lines if len(rows) >= lines else len(rows) // chunk_size * chunk_size  # the last chunk may be short
    keep = sum(len(row) + 1 for row in rows[:done])
    if keep != len(data):
        logger.warning("%s: dropping what follows its last whole chunk (line %d)", partial, done)
        with open(partial, "r+b") as f:
            f.truncate(keep)
    return done


def _append(path: Path, lines: list[str]) -> None:
    """Append whole lines and flush them to disk (what is on disk is what a rerun continues from)."""
    try:
        with open(path, "a", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise write_error(path, err, what="distilled sentences") from None


def _write_text(path: Path, lines: Sequence[str]) -> None:
    """Write lines atomically, so a file of the folder is whole or absent."""
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _write_record(job: DistillJob) -> None:
    try:
        job.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(job.out_dir, err, what="output folder") from None
    _write_text(job.out_dir / RECORD, [json.dumps(job.record, indent=2)])


def _finish(job: DistillJob) -> None:
    """The split's two files, the other splits copied, distill.json marked complete, the partial file removed."""
    s = job.settings
    distilled = job.partial_path.read_text(encoding="utf-8").split("\n")[:-1]
    if len(distilled) != s.lines:  # only a bug, or a file changed by hand, can get here
        raise DataError(f"{job.partial_path} has {len(distilled)} lines, not {s.lines}; delete {job.out_dir} and rerun")
    src, tgt = job.src_texts, distilled
    if s.with_original:
        src, tgt = src + src, job.tgt_texts + distilled
    _write_text(job.out_dir / f"{s.split}.{s.src_lang}", src)
    _write_text(job.out_dir / f"{s.split}.{s.tgt_lang}", tgt)
    for path in _other_split_files(job.corpus, s):
        try:
            shutil.copyfile(path, job.out_dir / path.name)
        except OSError as err:
            raise write_error(job.out_dir / path.name, err) from None
    job.record["complete"] = True
    _write_record(job)
    job.partial_path.unlink()


def _other_split_files(corpus: Path, s: DistillSettings) -> list[Path]:
    """The corpus folder's ``{split}.{lang}[.gz]`` files of both languages, except those of the distilled split."""
    names = re.compile(rf"(?P<split>.+)\.({re.escape(s.src_lang)}|{re.escape(s.tgt_lang)})(\.gz)?")
    return sorted(
        path for path in corpus.iterdir()
        if path.is_file() and (m := names.fullmatch(path.name)) and m["split"] != s.split
    )
