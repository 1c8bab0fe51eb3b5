"""The README stays true: its commands exist, its files exist, its quick start runs exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from transformer.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_every_command_in_the_readme_exists_and_has_help(capsys):
    commands = sorted(set(re.findall(r"`transformer ([a-z]+)[ `]", README)))
    assert {"train", "translate", "evaluate", "average", "download", "benchmark"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0, f"transformer {command} --help"
        assert "usage: transformer " + command in capsys.readouterr().out


def test_every_config_and_document_the_readme_names_exists():
    paths = set(re.findall(r"\b((?:configs|docs|data)/[\w./-]+\.(?:yaml|md|png))", README))
    assert paths, "the README names no configs or documents"
    missing = [p for p in sorted(paths) if not (ROOT / p).is_file()]
    assert not missing, f"named in README.md but missing: {missing}"


def test_the_readme_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install_and_test = next(block for block in bash_blocks() if "pytest" in block).strip()
    assert install_and_test.endswith("python -m pytest -q")
    assert "python -m pytest -q\n" in ci and "python -m pytest -q -m slow" in ci
    assert "`python -m pytest -q -m slow`" in README
    assert "pip install --quiet torch==2.13.0" in ci and install_and_test.startswith("pip install torch==2.13.0")


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path):
    # The first bash block, without its `pip install` steps (the package is installed already), in a folder
    # holding only what a clone holds: configs/ and data/sample/. Run by bash, exactly as a user pastes it.
    quick_start = bash_blocks()[0].strip()
    steps = [step.strip() for step in quick_start.split("&&")]
    assert steps[0] == "pip install torch==2.13.0" and steps[1] == "pip install -e ."
    assert shutil.which("transformer"), "the `transformer` console script is not installed (pip install -e .)"
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "data" / "sample", tmp_path / "data" / "sample")
    for paste in (1, 2):  # pasted again, it still works (the second run replaces the first)
        result = subprocess.run(["bash", "-c", " && ".join(steps[2:])], cwd=tmp_path, env=ENV,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (paste, result.stderr[-3000:])
    translation = result.stdout.strip().splitlines()[-1]
    assert translation and translation != "A dog is running on the beach." and "Traceback" not in result.stderr
    assert (tmp_path / "runs" / "sample" / "checkpoints" / "best.pt").is_file()
    # The Python section runs as written on the model the quick start trained, and prints the same translation.
    [python_block] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    result = subprocess.run(["python", "-c", python_block], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.splitlines()
    assert printed[0] == repr([translation]) and "Hypothesis(tokens=" in printed[1]
