"""``transformer download``: a failed download leaves nothing behind, names --base-url; --output (and --out)."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from transformer.cli import build_parser
from transformer.cli import main as cli_main
from transformer.config import DataConfig
from transformer.data.corpus import load_split
from transformer.data.download import DEFAULT_SPLITS, MULTI30K_LANGS, multi30k_files

EN = ["A man is reading.", "Two dogs are running."]
DE = ["Ein Mann liest.", "Zwei Hunde laufen."]
NO_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def mirror(tmp_path) -> Iterator[tuple[Path, str]]:
    """A local HTTP mirror with val.{en,de}.gz (nothing else), and its URL."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for lang, lines in (("en", EN), ("de", DE)):
        (folder / f"val.{lang}.gz").write_bytes(gzip.compress("".join(f"{s}\n" for s in lines).encode()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_failed_download_leaves_no_folder_behind_and_names_base_url(tmp_path, capsys):
    out = tmp_path / "data" / "multi30k"  # neither folder exists
    argv = ["download", "multi30k", "--out", str(out), "--base-url", NO_SERVER, "--timeout", "2"]
    assert cli_main(argv) == 2
    line = error_line(capsys)
    assert "cannot reach http://127.0.0.1:9/train.en.gz" in line and "--base-url" in line
    assert not (tmp_path / "data").exists()  # no folder it created is left

    out.mkdir(parents=True)  # a folder that was there stays, as it was
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    assert cli_main(argv) == 2
    assert "--base-url" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_download_that_fails_part_way_leaves_nothing_it_fetched(tmp_path, mirror, capsys):
    _, url = mirror
    out = tmp_path / "m30k"
    # val.en.gz and val.de.gz are on the mirror, val.fr.gz is not: all or nothing.
    argv = ["download", "multi30k", "--out", str(out), "--base-url", url, "--splits", "val", "--langs", "en", "fr"]
    assert cli_main(argv) == 2
    line = error_line(capsys)
    assert "val.fr.gz: HTTP 404" in line and "--base-url" in line
    assert not out.exists()

    assert cli_main(["download", "multi30k", "--out", str(out), "--base-url", url, "--splits", "val"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli_main(argv + ["--force"]) == 2  # the files that were there are kept
    capsys.readouterr()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_output_is_the_option_and_out_a_hidden_alias(tmp_path, mirror, capsys):
    _, url = mirror
    for option, folder in (("--output", tmp_path / "a"), ("--out", tmp_path / "b")):
        argv = ["download", "multi30k", option, str(folder), "--base-url", url, "--splits", "val"]
        assert cli_main(argv) == 0, option
        assert load_split(DataConfig(data_dir=str(folder)), "valid") == (EN, DE)
    help_text = build_parser()._subparsers._group_actions[0].choices["download"].format_help()
    assert "--output" in help_text and "--out " not in help_text and "--out," not in help_text


@pytest.fixture
def four_languages(tmp_path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP mirror of the default splits in en, de, fr and cs, as Multi30k publishes them (no 2017 test set
    in Czech): its URL and the paths it was asked for."""
    folder = tmp_path / "mirror4"
    folder.mkdir()
    for name in multi30k_files(DEFAULT_SPLITS, MULTI30K_LANGS):
        split, lang = name.removesuffix(".gz").rsplit(".", 1)
        (folder / name).write_bytes(gzip.compress(f"{split} {lang} 1\n{split} {lang} 2\n".encode()))
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_four_languages_get_every_split_multi30k_publishes_in_each(tmp_path, four_languages, capsys):
    url, asked = four_languages
    out = tmp_path / "m30k"
    assert cli_main(["download", "multi30k", "--output", str(out), "--base-url", url, "--langs", "en", "de", "fr", "cs"]) == 0
    printed = capsys.readouterr().out
    assert "not published by Multi30k, so not fetched: test_2017_flickr.cs" in printed and "15 files" in printed
    expected = {f"{s}.{lang}.gz" for s in DEFAULT_SPLITS for lang in ("en", "de", "fr", "cs")} - {"test_2017_flickr.cs.gz"}
    assert {p.name for p in out.iterdir()} == expected and sorted(asked) == sorted(f"/{name}" for name in expected)
    # Every direction's corpus reads: cs-en's training and test pairs, fr-de's 2017 test set.
    cs_en = DataConfig(data_dir=str(out), src_lang="cs", tgt_lang="en")
    assert load_split(cs_en, "train") == (["train cs 1", "train cs 2"], ["train en 1", "train en 2"])
    assert load_split(cs_en, "test")[0] == ["test_2016_flickr cs 1", "test_2016_flickr cs 2"]
    fr_de = DataConfig(data_dir=str(out), src_lang="fr", tgt_lang="de", test_split="test_2017_flickr")
    assert load_split(fr_de, "test")[1] == ["test_2017_flickr de 1", "test_2017_flickr de 2"]


def test_the_default_languages_stay_english_and_german(tmp_path, four_languages, capsys):
    url, _ = four_languages
    assert cli_main(["download", "multi30k", "--output", str(tmp_path / "m"), "--base-url", url]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(multi30k_files(DEFAULT_SPLITS, ["en", "de"]))
    assert "not published" not in capsys.readouterr().out


def test_a_split_multi30k_does_not_publish_in_the_languages_asked_is_one_error_line(tmp_path, capsys):
    argv = ["download", "multi30k", "--output", str(tmp_path / "m"), "--base-url", NO_SERVER, "--langs", "cs",
            "--splits", "test_2017_flickr", "test_2017_mscoco"]
    assert cli_main(argv) == 2
    line = error_line(capsys)
    assert "test_2017_flickr.cs, test_2017_mscoco.cs do not exist" in line and "--langs" in line
    assert not (tmp_path / "m").exists()
