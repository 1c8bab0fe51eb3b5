"""Two machines: torchrun across two "nodes" of one process each, on loopback, against one node of two processes.

Each node is its own torchrun (``--nnodes 2 --node_rank R``, c10d rendezvous on 127.0.0.1; node 0 hosts the
rendezvous store), started side by side. The two nodes share the run folder (one machine: only rank 0 writes
there) but, as on two machines with their own disks, each has its own data cache (``TRANSFORMER_CACHE_DIR``;
one shared cache is tried too): node 1's process is LOCAL_RANK 0 but RANK 1. Two ranks exchange gradients the same way whether they are on one
node or two, so the models are compared bitwise.

A node is killed as a machine dies: SIGKILL of its torchrun's process group and of its worker's (torchrun starts
each worker in a session of its own). Every test kills what it started in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds workers in /proc")]

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "GLOO_SOCKET_IFNAME": "lo"}  # fmt: skip
TRAIN = (
    "-m", "transformer", "train", "--config", "configs/sample.yaml", "model.preset=tiny", "data.vocab_size=100",
    "train.eval_bleu=false", "train.device=cpu", "train.threads=1", "train.log_every=1", "train.warmup_steps=10",
    "train.max_steps=30", "train.eval_every=10", "train.keep_last=2",
)  # fmt: skip
TIMEOUT = 300  # seconds for one launch of tens of updates (about 0.1 s each)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], run: Path, cache: Path, *extra: str) -> subprocess.Popen:
    """``command`` + ``transformer train`` into ``run``, in a process group of its own."""
    return subprocess.Popen(
        [*command, *TRAIN, f"train.run_dir={run}", *extra], cwd=ROOT,
        env={**ENV, "TRANSFORMER_CACHE_DIR": str(cache)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def one_node(run: Path, cache: Path, *extra: str) -> list[subprocess.Popen]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [start(torchrun, run, cache, *extra)]


def two_nodes(run: Path, caches: tuple[Path, Path], *extra: str) -> list[subprocess.Popen]:
    """Two torchrun agents, node 0 and node 1, of one process each; their own rendezvous port and id."""
    port, rdzv_id = free_port(), f"multinode-{time.monotonic_ns()}"
    nodes = []
    for node, cache in enumerate(caches):
        torchrun = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", rdzv_id, "--rdzv-conf", f"is_host={int(node == 0)},join_timeout=120",
            "--local-addr", "127.0.0.1", "--max-restarts", "0",
        ]  # fmt: skip
        nodes.append(start(torchrun, run, cache, *extra))
    return nodes


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def kill_node(launcher: subprocess.Popen) -> None:
    """SIGKILL the agent's process group and its workers' (found before the agent dies and they are orphaned)."""
    for group in [*children(launcher.pid), launcher.pid]:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(launchers: list[subprocess.Popen]) -> None:
    """Wait for every launch; each must exit 0."""
    results = [(p.communicate(timeout=TIMEOUT)[1], p.returncode) for p in launchers]
    assert [code for _, code in results] == [0] * len(results), "\n".join(err[-3000:] for err, _ in results)


def stop_all(launchers: list[subprocess.Popen]) -> None:
    """Kill whatever is still running, workers included, and reap it."""
    for launcher in launchers:
        if launcher.poll() is None:
            kill_node(launcher)
        launcher.communicate(timeout=60)


@pytest.fixture
def launched() -> Iterator[Callable[[list[subprocess.Popen]], list[subprocess.Popen]]]:
    """``launched(launchers)`` registers launches (and returns them); the test's end stops them all."""
    started: list[subprocess.Popen] = []

    def register(launchers: list[subprocess.Popen]) -> list[subprocess.Popen]:
        started.extend(launchers)
        return launchers

    try:
        yield register
    finally:
        stop_all(started)


def checkpoint_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of best.pt's model and of last.pt's model and optimizer state, by name."""
    best, last = (load_checkpoint(run / "checkpoints" / name) for name in ("best.pt", "last.pt"))
    assert last["step"] == 30
    tensors = {f"best.pt model {k}": v for k, v in best["model"].items()}
    tensors.update({f"last.pt model {k}": v for k, v in last["model"].items()})
    for index, state in last["optimizer"]["state"].items():
        tensors.update({f"last.pt optimizer {index} {k}": v for k, v in state.items() if torch.is_tensor(v)})
    return tensors


def assert_bitwise_equal(a: Path, b: Path) -> None:
    x, y = checkpoint_tensors(a), checkpoint_tensors(b)
    assert x.keys() == y.keys()
    different = [name for name in x if not torch.equal(x[name], y[name])]
    assert not different, different


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One node of two processes, 30 updates."""
    folder = tmp_path_factory.mktemp("one_node")
    launchers = one_node(folder / "run", folder / "cache")
    try:
        finish(launchers)
    finally:
        stop_all(launchers)
    return folder / "run"


@pytest.mark.parametrize("disks", ["cache_per_node", "shared_cache"])
def test_two_nodes_of_one_process_equal_one_node_of_two(reference, tmp_path, launched, disks):
    caches = (tmp_path / "cache0", tmp_path / "cache1") if disks == "cache_per_node" else (tmp_path / "cache",) * 2
    finish(launched(two_nodes(tmp_path / "run", caches)))
    assert_bitwise_equal(reference, tmp_path / "run")


def trained_to(run: Path, step: int) -> bool:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return False
    lines = metrics.read_text().splitlines()[:-1]  # the last one may be half written
    return any(json.loads(line).get("step", 0) >= step for line in lines if line)


def test_killing_one_node_then_resuming_both_equals_an_uninterrupted_run(reference, tmp_path, launched):
    run, caches = tmp_path / "run", (tmp_path / "cache0", tmp_path / "cache1")
    node0, node1 = launched(two_nodes(run, caches))
    deadline = time.monotonic() + TIMEOUT
    # After the checkpoint of step 10 and a few updates more, mid-epoch.
    while not ((run / "checkpoints" / "last.pt").is_file() and trained_to(run, 13)):
        if node0.poll() is not None or node1.poll() is not None:
            finish([node0, node1])  # says why
        assert time.monotonic() < deadline, "timed out waiting for step 13"
        time.sleep(0.01)
    kill_node(node1)
    node1.wait(timeout=60)
    _, err = node0.communicate(timeout=120)  # the survivor stops by itself (gloo: "Connection closed by peer")
    assert node0.returncode != 0, err[-4000:]
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 10 <= killed_at < 30

    finish(launched(two_nodes(run, caches, "--resume")))
    assert_bitwise_equal(reference, run)
