"""Atomic writes and the process check shared by the run folder, the data cache and the tokenizer."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys

import pytest

from transformer.errors import OutputError
from transformer.files import atomic_open, atomic_write_bytes, atomic_write_text, process_alive, size_text


def test_an_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old\n")
    atomic_write_bytes(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="cut off"):
        with atomic_open(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("cut off")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_write_into_a_missing_folder_is_one_output_error_naming_the_file(tmp_path):
    path = tmp_path / "missing" / "state.json"
    with pytest.raises(OutputError, match=r"cannot write the metrics file .*state\.json: No such file"):
        atomic_write_text(path, "x", what="metrics file")


def test_a_write_over_a_folder_names_the_folder_not_the_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError) as info:
        atomic_write_text(tmp_path / "out", "x", what="metrics file")
    assert str(info.value) == (
        f"cannot write the metrics file {tmp_path / 'out'}: Is a directory [EISDIR]; that path is a folder; "
        "give a file name"
    )
    assert list(tmp_path.rglob("*")) == [tmp_path / "out"]  # nothing written


def test_a_full_disk_says_how_much_the_file_needs_and_how_much_is_free(tmp_path, monkeypatch):
    class FullDisk(io.FileIO):
        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("transformer.files.open", lambda path, mode: FullDisk(path, mode), raising=False)
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(tmp_path / "state.json", b"x" * 2500, what="metrics file")
    message = str(info.value)
    assert message.startswith(f"cannot write the metrics file {tmp_path / 'state.json'}: No space left on device")
    assert "[ENOSPC]; free some disk space or write to another disk (it needs about 2.5 kB; " in message
    assert message.endswith(f" is free in {tmp_path})")
    assert list(tmp_path.iterdir()) == []


def test_size_text():
    assert [size_text(n) for n in (0, 999, 1000, 3_400_000, 1_200_000_000)] == [
        "0 bytes", "999 bytes", "1.0 kB", "3.4 MB", "1.2 GB"
    ]


def test_process_alive():
    assert process_alive(os.getpid())
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not process_alive(int(finished.stdout))  # ended (pids are not reused this fast)
    assert not process_alive(0) and not process_alive(-1)  # process groups for os.kill, never a process
