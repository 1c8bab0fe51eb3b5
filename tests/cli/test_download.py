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
