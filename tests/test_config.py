"""Config: defaults, YAML files, presets, dotted overrides, validation and the configs/ folder."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from transformer.config import (
    PRESETS,
    ROLES,
    Config,
    ConfigError,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from transformer.model.transformer import Transformer, count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_build() -> None:
    config = load_config()
    assert config == Config()
    assert config.model.d_model == 512 and config.model.n_heads == 8 and config.model.head_dim == 64
    with torch.device("meta"):
        model = Transformer(config.model)
    assert count_parameters(model) > 0


def test_yaml_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
model:
  d_model: 64
  n_heads: 2
  norm_first: true
data:
  src_lang: de
  tgt_lang: en
  hub_data_files: {train: a.json}
train:
  lr: 1.0e-3
  betas: [0.9, 0.99]
""",
    )
    config = load_config(path)
    assert config.model.d_model == 64 and config.model.n_heads == 2 and config.model.norm_first is True
    assert config.model.d_ff == ModelConfig().d_ff  # untouched keys keep the dataclass default
    assert (config.data.src_lang, config.data.tgt_lang) == ("de", "en")
    assert config.data.hub_data_files == {"train": "a.json"}
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert config.train.betas == (0.9, 0.99)
    assert config.decode == Config().decode


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_model_preset_in_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "model:\n  preset: small\n  dropout: 0.2\n"))
    for key, value in PRESETS["small"].items():
        assert getattr(config.model, key) == value
    assert config.model.dropout == pytest.approx(0.2)  # an explicit key wins over the preset
    # The preset is applied by ModelConfig.preset() too, and both agree.
    assert config.model == ModelConfig.preset("small", dropout=0.2)


def test_model_preset_explicit_key_wins(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "model:\n  preset: small\n  n_heads: 8\n"))
    assert config.model.n_heads == 8 and config.model.d_model == PRESETS["small"]["d_model"]


def test_unknown_preset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="huge") as info:
        load_config(write(tmp_path, "model:\n  preset: huge\n"))
    assert "tiny" in str(info.value) and "base" in str(info.value)


@pytest.mark.parametrize("override", ["train.lr=5e-4", "--train.lr=5e-4"])
def test_dotted_override(tmp_path: Path, override: str) -> None:
    path = write(tmp_path, "train:\n  lr: 1.0e-3\n")
    assert load_config(path).train.lr == pytest.approx(1e-3)
    config = load_config(path, [override])
    assert isinstance(config.train.lr, float)  # YAML reads "5e-4" as a string: it must be converted
    assert config.train.lr == pytest.approx(5e-4)


def test_overrides_of_each_type() -> None:
    config = load_config(
        None,
        [
            "--model.preset=tiny",
            "model.norm_first=true",
            "model.d_ff=128",
            "train.betas=[0.8, 0.9]",
            "data.hub_name=wmt14",
            "decode.beam_size=3",
        ],
    )
    assert config.model.d_model == PRESETS["tiny"]["d_model"]
    assert config.model.norm_first is True and config.model.d_ff == 128
    assert config.train.betas == (0.8, 0.9)
    assert config.data.hub_name == "wmt14" and config.decode.beam_size == 3


def test_later_override_wins() -> None:
    assert load_config(None, ["train.seed=3", "train.seed=7"]).train.seed == 7


@pytest.mark.parametrize("bad", ["train.lr", "lr=5e-4", "train.x.y=1"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(ConfigError, match="section.key"):
        load_config(None, [bad])


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lrr=1e-3"])
    message = str(info.value)
    assert "lrr" in message
    for valid in ("lr", "warmup_steps", "label_smoothing"):
        assert repr(valid) in message

    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "model:\n  dmodel: 64\n"))
    assert "dmodel" in str(info.value) and "'d_model'" in str(info.value) and "'preset'" in str(info.value)
    assert "run.yaml" in str(info.value)  # names the file


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "modle:\n  d_model: 64\n"))
    assert "modle" in str(info.value) and "'model'" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.d_model=abc", "model.d_model"),
        ("model.d_model=1.5", "model.d_model"),
        ("model.norm_first=maybe", "model.norm_first"),
        ("train.lr=fast", "train.lr"),
        ("train.betas=0.9", "train.betas"),
        ("data.hub_data_files=x", "data.hub_data_files"),
    ],
)
def test_wrong_type_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)
    assert override.split("=", 1)[1] in str(info.value)  # and the offending value


def test_wrong_type_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  warmup_steps: soon\n"))
    assert "run.yaml" in str(info.value) and "train.warmup_steps" in str(info.value)


def test_int_accepted_for_float() -> None:
    config = load_config(None, ["train.lr=1"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_d_model_not_divisible_by_heads() -> None:
    with pytest.raises(ConfigError, match=r"d_model \(30\).*n_heads \(4\)"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["model.d_model=100", "model.n_heads=3"])


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: ModelConfig(n_encoder_layers=0), "n_encoder_layers"),
        (lambda: ModelConfig(dropout=1.0), "dropout"),
        (lambda: ModelConfig(activation="swish"), "activation"),
        (lambda: ModelConfig(share_embeddings=True, src_vocab_size=100, tgt_vocab_size=200), "share_embeddings"),
        (lambda: DataConfig(src_lang="en", tgt_lang="en"), "src_lang"),
        (lambda: TrainConfig(precision="fp8"), "precision"),
        (lambda: TrainConfig(max_steps=0, max_epochs=0), "max_steps"),
    ],
)
def test_invalid_values_name_the_key(build, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build()


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_round_trip_through_dict() -> None:
    config = load_config(
        None,
        ["model.preset=small", "model.norm_first=true", "train.betas=[0.8, 0.95]", "data.hub_data_files={train: t.json}"],
    )
    assert config != Config()
    values = config.to_dict()
    assert isinstance(values["model"], dict) and values["model"]["d_model"] == PRESETS["small"]["d_model"]
    assert Config.from_dict(values) == config
    assert Config.from_dict(Config().to_dict()) == Config()


# ---------------------------------------------------------------------------------------------- configs/


def test_configs_folder_has_the_shipped_files() -> None:
    names = {path.name for path in CONFIGS.glob("*.yaml")}
    assert {"tiny.yaml", "wmt14_en_de_base.yaml"} <= names  # so the parametrized test below cannot pass vacuously


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_and_builds_a_model(path: Path) -> None:
    config = load_config(path)
    assert Config.from_dict(config.to_dict()) == config
    with torch.device("meta"):  # shapes only: base/big sized configs stay fast
        model = Transformer(config.model)
    assert count_parameters(model) > 0
    assert model.output.out_features == config.model.tgt_vocab_size


def test_tiny_yaml_runs_on_cpu() -> None:
    config = load_config(CONFIGS / "tiny.yaml")
    assert config.model.d_model == PRESETS["tiny"]["d_model"]
    model = Transformer(config.model).eval()
    src = torch.randint(1, config.model.src_vocab_size, (2, 5))
    tgt = torch.randint(1, config.model.tgt_vocab_size, (2, 4))
    logits = model(src, tgt)
    assert logits.shape == (2, 4, config.model.tgt_vocab_size) and torch.isfinite(logits).all()


def test_wmt14_base_yaml_is_the_papers_setup() -> None:
    config = load_config(CONFIGS / "wmt14_en_de_base.yaml")
    m, d, t = config.model, config.data, config.train
    assert (m.d_model, m.n_heads, m.d_ff, m.n_encoder_layers, m.n_decoder_layers) == (512, 8, 2048, 6, 6)
    assert m.dropout == pytest.approx(0.1) and not m.norm_first and m.positional == "sinusoidal"
    assert m.share_embeddings and m.tie_output
    assert m.src_vocab_size == m.tgt_vocab_size == d.vocab_size == 32000 and d.joint_vocab
    assert (d.source, d.hub_name, d.hub_config, d.src_lang, d.tgt_lang) == ("hub", "wmt14", "de-en", "en", "de")
    assert d.max_tokens * t.grad_accum_steps * 8 == 32768  # about 25k target tokens per update on 8 processes
    assert (t.schedule, t.warmup_steps, t.optimizer) == ("noam", 4000, "adam")
    assert t.lr == 1.0  # noam's scale factor: the paper's Equation (3) unscaled
    assert t.betas == (0.9, 0.98) and t.eps == pytest.approx(1e-9)
    assert t.label_smoothing == pytest.approx(0.1) and t.precision == "bf16"


def test_negative_thread_count_is_rejected():
    with pytest.raises(ConfigError, match="train.threads must be >= 0, got -1"):
        TrainConfig(threads=-1)


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "key",
    ["seed", "warmup_steps", "max_steps", "max_epochs", "min_lr", "weight_decay", "clip_grad_norm", "eval_every",
     "eval_max_sentences", "patience", "keep_last", "save_every"],
)  # fmt: skip
def test_negative_train_values_are_rejected(key):
    with pytest.raises(ConfigError, match=f"train.{key} must be >= 0, got -1"):
        load_config(None, [f"train.{key}=-1"])
    TrainConfig(**{"max_steps": 1, key: 0})  # zero is allowed (with max_steps=1 when max_epochs=0)


def test_noam_needs_warmup_steps():
    with pytest.raises(ConfigError, match="train.warmup_steps must be positive with train.schedule=noam"):
        load_config(None, ["train.schedule=noam", "train.warmup_steps=0"])
    for schedule in ("inverse_sqrt", "cosine", "constant"):  # these start at full rate without warmup
        TrainConfig(schedule=schedule, warmup_steps=0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(eps=0.0), "train.eps must be positive"),
        (lambda: TrainConfig(betas=(0.9, 1.0)), "train.betas must both be in [0, 1)"),
        (lambda: TrainConfig(run_dir=" "), "train.run_dir must not be empty"),
        (lambda: TrainConfig(schedule="cosine", lr=1e-3, min_lr=1e-2), "train.min_lr (0.01) must not exceed train.lr"),
        (lambda: DataConfig(vocab_size=4), "data.vocab_size must be at least 5"),
        (lambda: DataConfig(max_src_tokens=1), "data.max_src_tokens must be at least 2"),
        (lambda: DataConfig(max_tgt_tokens=0), "data.max_tgt_tokens must be at least 2"),
        (lambda: DataConfig(src_lang=""), "data.src_lang must not be empty"),
        (lambda: DataConfig(test_split=""), "data.test_split must not be empty"),
        (lambda: DecodeConfig(length_penalty=-0.5), "decode.length_penalty must be >= 0, got -0.5"),
        (lambda: DecodeConfig(max_len_b=-1), "decode.max_len_b must be >= 0, got -1"),
        (lambda: ModelConfig(layer_norm_eps=0.0), "model.layer_norm_eps must be positive"),
    ],
)
def test_values_that_make_no_sense_name_the_key(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------- data.files


def test_files_in_yaml_and_as_an_override(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data:\n  source: files\n  files:\n    train: corpus/train.{lang}\n"))
    assert config.data.files == {"train": "corpus/train.{lang}"}
    config = load_config(None, ["data.source=tsv", "data.files={train: a.tsv, valid: b.tsv, test: c.tsv}"])
    assert config.data.files == {"train": "a.tsv", "valid": "b.tsv", "test": "c.tsv"}
    assert Config.from_dict(config.to_dict()) == config
    # As data/README.md shows: {lang} inside a YAML {...} mapping must be quoted.
    config = load_config(None, ["data.source=files", 'data.files={train: "c/train.{lang}", valid: "c/dev.{lang}"}'])
    assert config.data.files == {"train": "c/train.{lang}", "valid": "c/dev.{lang}"}


@pytest.mark.parametrize(
    ("source", "files", "message"),
    [
        ("files", {"dev": "dev.{lang}"}, "data.files: unknown role(s) ['dev']; valid roles: ['train', 'valid', 'test']"),
        ("folder", {"val": "x"}, "data.files: unknown role(s) ['val']"),
        ("files", {"train": "corpus/train.en"}, "data.files.train='corpus/train.en' needs {lang} (source: files), "
                                                "e.g. corpus/train.{lang} for corpus/train.en and corpus/train.de"),
        ("tsv", {"valid": "corpus/valid.{lang}.tsv"}, "data.files.valid='corpus/valid.{lang}.tsv' has {lang}, but a "
                                                      "source: tsv file holds both languages"),
        ("tsv", {"test": " "}, "data.files.test is empty"),
    ],
)  # fmt: skip
def test_files_errors_name_the_key(source: str, files: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.source={source}", f"data.files={files}"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_files_are_not_checked_for_the_sources_that_do_not_read_them() -> None:
    tsv = DataConfig(source="tsv", files={"train": "train.tsv"})
    assert dataclasses.replace(tsv, source="folder").files == {"train": "train.tsv"}  # as distillation does


# ---------------------------------------------------------------------------------------------- saved configs


def old_saved_config(**data: Any) -> dict[str, Any]:
    """A config as checkpoints before ``data.files`` saved it: ``model.pad_id``, ``train.max_minutes`` and the
    nine per-role path keys, all present."""
    values = Config().to_dict()
    del values["data"]["files"]
    values["model"]["pad_id"] = 0
    values["train"]["max_minutes"] = 30.0
    values["data"].update({f"{role}_{kind}": "" for role in ROLES for kind in ("src", "tgt", "tsv")})
    values["data"].update(data)
    return values


def test_an_old_saved_config_loads_into_the_new_form() -> None:
    old = old_saved_config(
        source="files", train_src="corpus/train.en", train_tgt="corpus/train.de",
        valid_src="en-de/en/dev.en", valid_tgt="en-de/de/dev.de",  # the language twice, and "en" elsewhere too
        test_tsv="unread.tsv",  # a path of the other source: it was never read
    )  # fmt: skip
    config = Config.from_saved(old, where="config in old.pt")
    assert config.data.source == "files"
    assert config.data.files == {"train": "corpus/train.{lang}", "valid": "en-de/{lang}/dev.{lang}"}
    assert config.model == Config().model and config.train == Config().train
    assert old["model"]["pad_id"] == 0 and "train_src" in old["data"]  # the caller's dict is left as it was

    tsv = Config.from_saved(old_saved_config(source="tsv", train_tsv="a.tsv", test_tsv="c.tsv"))
    assert tsv.data.files == {"train": "a.tsv", "test": "c.tsv"}
    folder = Config.from_saved(old_saved_config(source="multi30k", data_dir="data/m30k"))
    assert (folder.data.source, folder.data.data_dir, folder.data.files) == ("folder", "data/m30k", {})
    assert Config.from_saved(Config().to_dict()) == Config()  # a new config passes through unchanged


def test_old_file_pairs_that_differ_by_more_than_the_language_are_left_out(caplog) -> None:
    old = old_saved_config(source="files", train_src="corpus/a.txt", train_tgt="corpus/b.txt")
    with caplog.at_level(logging.WARNING, logger="transformer.config"):
        assert Config.from_saved(old).data.files == {}
    assert "data.train_src=corpus/a.txt and data.train_tgt=corpus/b.txt differ by more than the language" in caplog.text


def test_an_old_saved_config_with_another_pad_id_is_refused() -> None:
    old = old_saved_config()
    old["model"]["pad_id"] = 4
    with pytest.raises(ConfigError, match=r"^config in old.pt: model.pad_id=4, but this version pads with id 0 only"):
        Config.from_saved(old, where="config in old.pt")


def test_old_keys_from_a_user_are_errors_that_list_the_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "model:\n  preset: tiny\n  pad_id: 0\n"))
    assert "run.yaml: unknown key(s) ['pad_id'] in ModelConfig; valid keys: [" in str(info.value)
    assert "'d_model'" in str(info.value) and "'preset'" in str(info.value)
    for override, key in [("train.max_minutes=5", "max_minutes"), ("data.train_src=a.en", "train_src"),
                          ("data.valid_tsv=b.tsv", "valid_tsv")]:
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        assert f"unknown key(s) ['{key}']" in str(info.value) and "valid keys: [" in str(info.value)
    with pytest.raises(ConfigError, match=r"data.source must be one of \[.*\], got 'multi30k'"):
        load_config(None, ["data.source=multi30k"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pad_id'\]"):
        Config.from_dict(old_saved_config())  # only from_saved translates


# ---------------------------------------------------------------------------------------------- decode


def test_decode_updated_skips_none_and_validates() -> None:
    decode = DecodeConfig(beam_size=4, length_penalty=1.0)
    assert decode.updated() == decode and decode.updated() is not decode
    changed = decode.updated(beam_size=2, length_penalty=None, max_len_b=None, n_best=2)
    assert (changed.beam_size, changed.length_penalty, changed.max_len_b, changed.n_best) == (2, 1.0, 10, 2)
    assert decode.beam_size == 4  # a copy
    with pytest.raises(ConfigError, match=r"decode.n_best \(5\) cannot exceed decode.beam_size \(4\)"):
        decode.updated(n_best=5)
    with pytest.raises(TypeError, match="beam"):
        decode.updated(beam=3)


def test_unreadable_config_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"train:\n  run_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9"):
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['1', 'x'\]"):
        load_config(write(tmp_path, "train:\n  1: a\n  x: b\n"))


# ---------------------------------------------------------------------------------------------- through the command


def error_line(capsys) -> str:
    """The one line the command printed on stderr (nothing else, no traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path: Path, capsys) -> None:
    from transformer.cli import main as cli_main

    path = write(tmp_path, "train:\n  lr: 1e-3\n  seed 4\n  max_steps: 3\n")
    assert cli_main(["train", "--config", str(path)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {path}:4:")  # where the parser gave up (file:line:column)
    assert "could not find expected ':'" in line and "line 3" in line  # the problem and where it began

    path = write(tmp_path, "data:\n  files: {train: a.{lang}\n")  # an unclosed flow mapping
    assert cli_main(["prepare", "--config", str(path)]) == 2
    assert error_line(capsys).startswith(f"error: {path}:")
    assert cli_main(["prepare", "train.lr=[1,"]) == 2  # a value on the command line that is not YAML
    assert error_line(capsys).startswith("error: command-line override 'train.lr=[1,': cannot parse the value")


FLOAT_KEYS = [
    f"{section}.{f.name}"
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig), ("decode", DecodeConfig))
    for f in dataclasses.fields(cls)
    if f.type in ("float", "tuple[float, float]")
]


def test_every_float_key_is_found() -> None:
    assert {"train.lr", "train.betas", "model.dropout", "data.max_length_ratio", "decode.max_len_a"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("value", ["inf", "-inf", ".nan", "nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_numbers_are_refused_for_every_float_key(key: str, value: str, capsys) -> None:
    from transformer.cli import main as cli_main

    override = f"{key}=[{value}, 0.9]" if key == "train.betas" else f"{key}={value}"
    assert cli_main(["prepare", "--data-dir", "no/such/folder", override]) == 2  # never reads a corpus
    line = error_line(capsys)
    assert f"command-line override '{override}'" in line and key in line and "finite" in line


def test_an_unknown_key_on_the_command_line_names_the_override_not_the_file(capsys) -> None:
    from transformer.cli import main as cli_main

    config = str(CONFIGS / "sample.yaml")
    assert cli_main(["train", "--config", config, "train.nope=1"]) == 2
    line = error_line(capsys)
    assert line.startswith("error: command-line override 'train.nope=1': unknown key(s) ['nope'] in TrainConfig")
    assert "'lr'" in line and "sample.yaml" not in line
    assert cli_main(["train", "--config", config, "trian.lr=1"]) == 2
    line = error_line(capsys)
    assert line.startswith("error: command-line override 'trian.lr=1': unknown section 'trian'") and "'train'" in line
    # A bad value given on the command line is blamed on it too, and a bad value in the file on the file.
    assert cli_main(["train", "--config", config, "train.lr=-1"]) == 2
    assert error_line(capsys) == "error: command-line override 'train.lr=-1': train.lr must be positive, got -1.0"
    assert cli_main(["train", "--config", config, "train.warmup_steps=soon"]) == 2
    assert error_line(capsys).startswith("error: command-line override 'train.warmup_steps=soon': train.warmup_steps:")
    assert cli_main(["train", "--config", config, "train.seed=3", "model.d_model=30"]) == 2
    assert error_line(capsys).startswith("error: command-line override 'model.d_model=30': model.d_model (30)")


# ---------------------------------------------------------------------------------------------- directions


DIRECTION_MISTAKES = {  # YAML -> what the one error line must name
    "data:\n  directions: [en-de, en-en]\n": ("data.directions", "'en-en' translates 'en' into itself"),
    "data:\n  directions: [ende]\n": ("data.directions", "'ende' is not a direction"),
    "data:\n  directions: [en-de, de-en, en-de]\n": ("data.directions", "['en-de'] more than once"),
    "data:\n  directions: [en-de, de-en]\ntrain:\n  best_direction: fr-en\n": ("train.best_direction", "fr-en"),
    "data:\n  directions: [en-de, de-en]\n  joint_vocab: false\n": ("data.directions", "data.joint_vocab=true"),
}


def run_train_commands(configs: list[Path]) -> list[subprocess.CompletedProcess]:
    """``python -m transformer train --config PATH`` for each, started together (each spends its time importing
    torch)."""
    processes = [
        subprocess.Popen([sys.executable, "-m", "transformer", "train", "--config", str(path)], cwd=path.parent,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for path in configs
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in processes]


def assert_names_the_mistake(path: Path, code: int, err: str, key: str, problem: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert key in err and problem in err, err


@pytest.mark.parametrize("text", list(DIRECTION_MISTAKES), ids=range(len(DIRECTION_MISTAKES)))
def test_wrong_directions_stop_the_train_command_with_one_line_naming_the_key(text: str, tmp_path: Path, capsys):
    from transformer.cli import main as cli_main

    path = write(tmp_path, text)
    code = cli_main(["train", "--config", str(path)])
    assert_names_the_mistake(path, code, capsys.readouterr().err, *DIRECTION_MISTAKES[text])


@pytest.mark.parametrize("cases", [
    pytest.param(list(DIRECTION_MISTAKES)[:1], id="one"),
    pytest.param(list(DIRECTION_MISTAKES), id="all", marks=pytest.mark.slow),
])
def test_wrong_directions_in_a_real_process_are_one_line_and_no_traceback(cases: list[str], tmp_path: Path) -> None:
    paths = []
    for i, text in enumerate(cases):
        paths.append(tmp_path / f"mistake{i}.yaml")
        paths[-1].write_text(text, encoding="utf-8")
    for path, done, text in zip(paths, run_train_commands(paths), cases):
        assert_names_the_mistake(path, done.returncode, done.stderr, *DIRECTION_MISTAKES[text])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # nothing written


def test_directions_set_the_languages_and_their_tags() -> None:
    data = DataConfig(directions=["de-en", " en-fr "])
    assert (data.src_lang, data.tgt_lang, data.directions) == ("de", "en", ["de-en", "en-fr"])
    assert data.multilingual and data.target_langs == ["en", "fr"]
    assert data.for_direction("en", "fr").direction_pairs == [("en", "fr")]
    one = DataConfig(directions=["de-en"])
    assert not one.multilingual and one.direction_pairs == [("de", "en")]


def test_the_multilingual_recipes_are_the_bilingual_ones_in_several_directions() -> None:
    sample, sample_ml = load_config(CONFIGS / "sample.yaml"), load_config(CONFIGS / "sample_multilingual.yaml")
    assert sample_ml.data.directions == ["en-de", "de-en"] and sample_ml.model == sample.model
    assert sample_ml.train.run_dir == "runs/sample_multilingual"
    assert dataclasses.replace(sample_ml.data, directions=[]) == sample.data
    en_de, multi = load_config(CONFIGS / "multi30k_en_de.yaml"), load_config(CONFIGS / "multi30k_multilingual.yaml")
    assert multi.data.directions == ["en-de", "de-en", "en-fr", "fr-en", "en-cs", "cs-en"]
    assert multi.model == en_de.model and multi.data.joint_vocab and multi.train.run_dir == "runs/multi30k_multilingual"
    optimizer = ("optimizer", "lr", "weight_decay", "schedule", "warmup_steps", "label_smoothing", "clip_grad_norm")
    assert all(getattr(multi.train, key) == getattr(en_de.train, key) for key in optimizer)
    assert multi.train.max_steps == 6 * 750 and multi.train.max_steps == 5 * multi.train.eval_every  # 750 a direction
