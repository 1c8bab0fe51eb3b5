"""Many processes, the same model: torchrun (gloo, CPU) against one process accumulating the same batches.

Rank r of N takes batches r, r + N, ... of each epoch, and each rank divides its loss by the target tokens of the
whole update (all ranks): 2 processes of one batch each make the update of 1 process accumulating 2 batches.
Dropout is off, so that the two runs draw no random numbers that could differ.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SETTINGS = [
    "model.preset=tiny", "model.dropout=0", "data.max_tokens=256", "train.eval_bleu=false", "train.log_every=1",
    "train.threads=1", "train.warmup_steps=2",
]


def train(run_dir: Path, processes: int, accum: int, steps: int, *extra: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + [
        "-m", "transformer", "train", "--config", "configs/sample.yaml", "--run-dir", str(run_dir),
        *SETTINGS, f"train.grad_accum_steps={accum}", f"train.max_steps={steps}", *extra,
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 4
    return state["model"]


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:  # gloo sums the two ranks' gradients in another order than one process adds them
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    train(run_dir, processes=1, accum=2, steps=4)
    return weights(run_dir)


def test_two_processes_equal_one_process_accumulating_twice_as_many_batches(one_process, tmp_path):
    train(tmp_path / "two", processes=2, accum=1, steps=4)
    assert_same_model(weights(tmp_path / "two"), one_process)


def test_a_two_process_checkpoint_resumes_on_one_process_and_back(one_process, tmp_path):
    # 2 processes for 2 updates, then 1 process (accumulating 2) for 2 more: the model of 4 updates on 1 process.
    run_dir = tmp_path / "two_then_one"
    train(run_dir, processes=2, accum=1, steps=2)
    resumed = train(run_dir, 1, 2, 4, "--resume")
    assert "resuming a 2-process run on 1 process(es): data position 2 -> 4" in resumed.stderr
    assert_same_model(weights(run_dir), one_process)

    # And back: 1 process for 2 updates, then 2 processes.
    run_dir = tmp_path / "one_then_two"
    train(run_dir, processes=1, accum=2, steps=2)
    resumed = train(run_dir, 2, 1, 4, "--resume")
    assert "resuming a 1-process run on 2 process(es): data position 4 -> 2" in resumed.stderr
    assert_same_model(weights(run_dir), one_process)


def test_resuming_on_other_processes_with_other_batches_per_update_is_one_error_line(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, processes=1, accum=1, steps=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "transformer", "train", "--config", "configs/sample.yaml", "--run-dir", str(run_dir), *SETTINGS,
               "train.max_steps=4", "--resume"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "on 2 process(es) with train.grad_accum_steps=1: it was trained on 1" in errors[0]
    assert "resume it on 1 process(es)" in errors[0]
