"""Faults of training runs, tried through the real ``transformer train`` command (docs/RELIABILITY.md).

The fast ones run the command in-process (``transformer.cli.main``) on the sample corpus with a tiny model,
except the SIGTERM exit status, which needs a real process. The kill-and-resume tests (SIGKILL at random
points chosen with a fixed seed, during start-up, mid-epoch and inside checkpoint writes; one and two
processes) and the two-runs-at-once test are slow.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from transformer.checkpoint import load_checkpoint
from transformer.cli import main
from transformer.config import load_config
from transformer.training.build import training_run
from transformer.training.distributed import setup
from transformer.training.run_dir import LOCK_FILE, RunFolder
from transformer.training.schedule import inverse_sqrt

ROOT = Path(__file__).resolve().parents[2]
# Added to the environment of the subprocesses when they start (conftest.py's data cache is set by then).
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# A tiny model on the sample corpus: about 0.1 s an update on one thread.
TINY = (
    "--config", "configs/sample.yaml", "model.preset=tiny", "data.vocab_size=100", "train.eval_bleu=false",
    "train.device=cpu", "train.threads=1", "train.log_every=1", "train.warmup_steps=60",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def train(run: Path, *args: str) -> int:
    """``transformer train`` in this process (the tests chdir to the project root)."""
    return main(["train", *TINY, f"train.run_dir={run}", *args])


def error_line(stderr: str) -> str:
    """The one ``error:`` line that ends ``stderr`` (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), stderr
    return last


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_finite_checkpoints(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.pt"):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values()), path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of 4 updates, validated and saved at steps 2 and 4."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        assert train(run, "train.max_steps=4", "train.eval_every=2") == 0
    return run


@pytest.fixture
def copy_of(trained, tmp_path, monkeypatch) -> Callable[[], Path]:
    monkeypatch.chdir(ROOT)

    def make() -> Path:
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained, run)
        return run

    return make


# ---- a diverging run ---------------------------------------------------------------------------------


def test_a_diverging_run_stops_with_one_error_line_and_saves_nothing_non_finite(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "nan"
    args = ("train.lr=1e6", "train.max_steps=30", "train.eval_every=2", "train.max_skipped_updates=3")
    with caplog.at_level(logging.WARNING):
        assert train(run, *args) == 2
    line = error_line(capsys.readouterr().err)
    assert "the last 3 updates (train.max_skipped_updates) were skipped" in line and "train.lr (now 1e+06)" in line
    warnings = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(warnings) == 3 and warnings[0].startswith("step 2: the gradient norm is not finite")
    assert_finite_checkpoints(run)
    assert all(r["step"] <= 4 for r in records(run))  # stopped at step 4, not at train.max_steps


# ---- run folders are owned ------------------------------------------------------------------------------


def test_a_folder_that_holds_a_run_is_not_trained_into_without_resume(copy_of, capsys):
    run = copy_of()
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    metrics = (run / "metrics.jsonl").read_text()
    assert train(run, "train.max_steps=2") == 2
    line = error_line(capsys.readouterr().err)
    assert f"{run} already holds a run (checkpoints/best.pt, checkpoints/last.pt" in line
    assert "--resume" in line and "--overwrite" in line and "train.run_dir" in line
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert (run / "metrics.jsonl").read_text() == metrics and not (run / LOCK_FILE).exists()


def test_overwrite_removes_only_what_training_wrote_and_says_so(copy_of, caplog):
    run = copy_of()
    (run / "checkpoints" / "avg.pt").write_bytes(b"the user's own file")
    with caplog.at_level(logging.WARNING):
        assert train(run, "--overwrite", "train.max_steps=3", "train.eval_every=3") == 0
    removed = [r.getMessage() for r in caplog.records if "--overwrite: removed" in r.getMessage()][0]
    for name in ("config.json", "metrics.jsonl", "tokenizer", "checkpoints/last.pt", "checkpoints/step_00000004.pt"):
        assert name in removed
    assert any("kept checkpoints/avg.pt" in r.getMessage() for r in caplog.records)
    assert (run / "checkpoints" / "avg.pt").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_00000003.pt"]
    assert [r["step"] for r in records(run) if r["split"] == "train"] == [1, 2, 3]


def test_overwrite_keeps_the_users_files_in_tokenizer_and_tensorboard_and_says_so(copy_of, caplog):
    run = copy_of()
    (run / "tokenizer" / "notes.txt").write_text("how I made this vocabulary")
    (run / "tensorboard").mkdir(exist_ok=True)
    (run / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"an event file of the old run")
    (run / "tensorboard" / "loss.png").write_bytes(b"the user's plot")
    with caplog.at_level(logging.WARNING):
        assert train(run, "--overwrite", "train.max_steps=1") == 0
    assert (run / "tokenizer" / "notes.txt").read_text() == "how I made this vocabulary"
    assert (run / "tensorboard" / "loss.png").read_bytes() == b"the user's plot"
    assert not (run / "tensorboard" / "events.out.tfevents.1.host.1.0").exists()
    assert (run / "tokenizer" / "tokenizer.json").is_file()  # the new run's vocabulary
    removed = [r.getMessage() for r in caplog.records if "--overwrite: removed" in r.getMessage()][0]
    assert "tokenizer/spm.model" in removed and "tensorboard/events.out.tfevents.1.host.1.0" in removed
    kept = [r.getMessage() for r in caplog.records if "--overwrite: kept" in r.getMessage()][0]
    assert "tokenizer/notes.txt" in kept and "tensorboard/loss.png" in kept


def test_a_folder_locked_by_a_live_process_is_refused_and_a_stale_lock_taken_over(copy_of, capsys, caplog):
    run = copy_of()
    holder = RunFolder(run)
    holder.lock()  # this process, through another open file: the kernel refuses a second flock
    try:
        assert train(run, "--resume", "train.max_steps=5") == 2
    finally:
        holder.release()
    line = error_line(capsys.readouterr().err)
    assert f"{run} is in use by another training run (pid {os.getpid()} on " in line and LOCK_FILE in line
    # A lock file that nobody holds (its process was killed) is stale.
    (run / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
    with caplog.at_level(logging.WARNING):
        assert train(run, "--resume", "train.max_steps=5") == 0
    assert any("stale lock of pid 999999 on elsewhere" in r.getMessage() for r in caplog.records)
    assert not (run / LOCK_FILE).exists()


# ---- resume checks its settings --------------------------------------------------------------------------


def test_resume_with_settings_that_cannot_change_names_them(copy_of, capsys):
    run = copy_of()
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert train(run, "--resume", "train.max_steps=6", "data.max_tokens=512", "model.d_model=32", "train.seed=7") == 2
    line = error_line(capsys.readouterr().err)
    for shown in ("model.d_model=32 (checkpoint: 64)", "data.max_tokens=512 (checkpoint: 1024)", "train.seed=7 (checkpoint: 1)"):
        assert shown in line
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_without_a_checkpoint_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert train(tmp_path / "new", "--resume") == 2
    assert f"--resume: there is no {tmp_path / 'new' / 'checkpoints' / 'last.pt'}" in error_line(capsys.readouterr().err)


def test_a_refused_resume_leaves_the_folder_as_it_found_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for run in (missing, empty):
        assert train(run, "--resume") == 2
        assert "--resume: there is no" in error_line(capsys.readouterr().err)
    assert not missing.exists() and list(empty.iterdir()) == []
    # No vocabulary of the refused command is left to clash with a fresh start's other settings.
    assert train(empty, "data.vocab_size=120", "train.max_steps=1") == 0


def test_resume_with_a_new_lr_follows_the_schedule_from_the_current_step(copy_of):
    run = copy_of()
    overrides = [*TINY[2:], f"train.run_dir={run}", "train.lr=1e-4", "train.max_steps=6"]
    config = load_config(ROOT / "configs" / "sample.yaml", overrides)
    with training_run(config, setup("cpu"), resume=True) as trainer:
        assert trainer.step == 4
        # The next update is the 5th: the inverse-sqrt schedule (60 warmup updates) at 5 with lr 1e-4.
        assert trainer.optimizer.param_groups[0]["lr"] == 1e-4 * inverse_sqrt(5, warmup_steps=60)
        trainer.fit()
    assert train(run, "--resume", "train.lr=2e-4", "train.max_steps=7") == 0
    seventh = [r for r in records(run) if r["split"] == "train" and r["step"] == 7][0]
    assert seventh["lr"] == pytest.approx(2e-4 * inverse_sqrt(8, warmup_steps=60))  # logged after the update


# ---- crash-consistent checkpoints --------------------------------------------------------------------------


def test_resume_writes_the_step_and_best_checkpoints_that_a_kill_cut_off(copy_of):
    run = copy_of()
    checkpoints = run / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pt")["best_step"] == 4
    # The kill came after last.pt (the commit point), before step_00000004.pt and best.pt.
    (checkpoints / "step_00000004.pt").unlink()
    shutil.copy(checkpoints / "step_00000002.pt", checkpoints / "best.pt")
    assert train(run, "--resume", "train.max_steps=4") == 0
    assert load_checkpoint(checkpoints / "best.pt")["step"] == 4
    assert load_checkpoint(checkpoints / "step_00000004.pt")["step"] == 4


def test_resume_sweeps_temporary_files_and_leaves_no_duplicated_steps(copy_of):
    run = copy_of()
    (run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    with open(run / "metrics.jsonl", "a") as f:  # steps after last.pt, and a line cut by the kill
        f.write(json.dumps({"split": "train", "step": 5, "loss": 1.0}) + "\n" + '{"split": "tr')
    assert train(run, "--resume", "train.max_steps=6", "train.eval_every=2") == 0
    assert not list(run.glob("**/.*.tmp"))
    steps = [(r["split"], r["step"]) for r in records(run)]
    assert len(steps) == len(set(steps)) and ("train", 6) in steps
    assert load_checkpoint(run / "checkpoints" / "step_00000006.pt")["step"] == 6


def test_the_first_loss_logged_after_a_resume_covers_the_whole_interval(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ("train.eval_every=3", "train.log_every=4")
    assert train(tmp_path / "whole", "train.max_steps=8", *args) == 0
    assert train(tmp_path / "resumed", "train.max_steps=6", *args) == 0  # saved at step 6, mid-interval
    assert train(tmp_path / "resumed", "--resume", "train.max_steps=8", *args) == 0

    def losses(run: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["nll"]) for r in records(run) if r["split"] == "train"]

    assert [step for step, *_ in losses(tmp_path / "whole")] == [4, 8]
    assert losses(tmp_path / "resumed") == losses(tmp_path / "whole")  # step 8 covers updates 5-8, not 7-8


def test_a_run_prints_a_short_summary_and_logs_its_first_update(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert train(run, "train.max_steps=3", "train.log_every=50") == 0
    out = capsys.readouterr().out
    summary = out.split("done at step")[0].strip().splitlines()
    assert len(summary) <= 8, out  # not the whole resolved config
    text = "\n".join(summary)
    for shown in (str(run), "data/sample", "parameters", "3 updates", "cpu", str(run / "config.json")):
        assert shown in text, text
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 3
    # stderr is not a terminal here (no bar): the first update is logged, not only every train.log_every.
    first = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 1/3")]
    assert first and "train.log_every=50" in first[0], [r.getMessage() for r in caplog.records]


# ---- exit statuses -----------------------------------------------------------------------------------------


def launch(run: Path, *args: str, command: tuple[str, ...] = ("-m", "transformer")) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *command, "train", *TINY, f"train.run_dir={run}", *args],
        cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def training_started(run: Path) -> Callable[[], bool]:
    return lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_saves_last_pt_and_exits_with_128_plus_its_number(tmp_path, sig):
    run = tmp_path / "run"
    process = launch(run, "train.max_steps=100000")
    wait_for(training_started(run), process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, err[-3000:]
    assert f"stopped by {sig.name} at step" in out and "continue with --resume" in out and "done" not in out
    step = int(out.split(f"stopped by {sig.name} at step ")[1].split(";")[0])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step
    assert not (run / LOCK_FILE).exists()


def test_sigterm_while_the_weights_are_not_finite_says_that_nothing_was_saved(copy_of):
    run = copy_of()  # last.pt at step 4; update 5 at lr 1e42 makes the weights infinite, the next are skipped
    process = launch(run, "--resume", "train.lr=1e42", "train.max_steps=100000", "train.max_skipped_updates=100000")
    wait_for(lambda: (run / "metrics.jsonl").is_file() and any(r["step"] == 5 for r in records(run)), process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err[-3000:]
    line = error_line(err)
    assert "stopped by SIGTERM at step" in line and "nothing was saved" in line and "not finite" in line, line
    assert f"{run / 'checkpoints' / 'last.pt'} (step 4)" in line and "--resume" in line and "train.lr" in line, line
    assert "saved" not in out and load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert not (run / LOCK_FILE).exists()


def test_a_run_that_ends_with_weights_that_are_not_finite_is_an_error_not_done(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    assert train(run, "train.lr=1e42", "train.max_steps=2") == 2  # update 1 makes them infinite
    line = error_line(capsys.readouterr().err)
    assert "at step 2" in line and "nothing was saved" in line and "no checkpoint was saved" in line, line
    assert not (run / "checkpoints" / "last.pt").exists()


# A Ctrl-C in a terminal reaches the whole process group: here, the first corpus-encoding worker sends it.
CTRL_C_IN_A_WORKER = """
import functools, os, signal, sys
import transformer.data.prepare as prepare
from transformer.cli import main
original = prepare.encode_chunk
@functools.wraps(original)
def encode_chunk(*args, **kwargs):
    try:
        os.close(os.open(os.environ["SIGNAL_SENT"], os.O_CREAT | os.O_EXCL))
        os.killpg(os.getpgrp(), int(os.environ["SIGNAL"]))
    except FileExistsError:
        pass
    return original(*args, **kwargs)
prepare.encode_chunk = encode_chunk
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name)
def test_a_signal_during_start_up_is_one_line_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch, sig):
    run = tmp_path / "run"
    env = {**os.environ, **ENV, "TRANSFORMER_CACHE_DIR": str(tmp_path / "cache"), "SIGNAL": str(int(sig)),
           "SIGNAL_SENT": str(tmp_path / "sent")}
    process = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_IN_A_WORKER, "train", *TINY, f"train.run_dir={run}", "train.max_steps=2",
         "data.prepare_workers=2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    out, err = process.communicate(timeout=300)
    assert (tmp_path / "sent").exists() and process.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert out.strip().splitlines()[-1].startswith(f"stopped by {sig.name} during start-up"), out
    assert not run.exists()  # no vocabulary left to clash with a rerun's settings
    monkeypatch.chdir(ROOT)
    assert train(run, "data.vocab_size=120", "train.max_steps=1") == 0


# ---- SIGKILL at random points, then resume: one and two processes -------------------------------------------


def kill_points(seed: int, n: int, start: float, end: float) -> list[tuple[str, float]]:
    """``n`` kill points from a seeded generator: ("time", seconds after launch) or ("write", ms into a
    checkpoint write); at least one of each, in a shuffled order."""
    rng = random.Random(seed)
    points = [("write", rng.uniform(0.0, 3.0))] + [("time", rng.uniform(start, end)) for _ in range(n - 2)]
    points.append(("write", rng.uniform(0.0, 3.0)))
    rng.shuffle(points)
    return points


def writing(run: Path) -> bool:
    folder = run / "checkpoints"
    return folder.is_dir() and any(name.endswith(".tmp") for name in os.listdir(folder))


def kill_at(process: subprocess.Popen, point: tuple[str, float], run: Path, victim: Callable[[], int]) -> bool:
    """SIGKILL ``victim()`` at ``point``; False if the run finished first."""
    kind, value = point
    deadline = time.monotonic() + (value if kind == "time" else 600)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if kind == "write" and writing(run):
            time.sleep(value / 1000)
            break
        if kind == "time":  # a write is watched without sleeping: on a RAM disk it takes about a millisecond
            time.sleep(0.01)
    while process.poll() is None:
        try:
            os.kill(victim(), signal.SIGKILL)
            return True
        except (ProcessLookupError, StopIteration):  # the victim is not started yet
            time.sleep(0.05)
    return False


def check_consistent(run: Path) -> None:
    """What a kill may leave: every checkpoint readable, best.pt no newer than last.pt."""
    folder = run / "checkpoints"
    steps = {p.name: load_checkpoint(p)["step"] for p in folder.glob("*.pt")}
    if "best.pt" in steps:
        assert steps["best.pt"] <= steps["last.pt"]


def kill_and_resume(
    run: Path, args: tuple[str, ...], points: list[tuple[str, float]], *, command: tuple[str, ...],
    victim: Callable[[subprocess.Popen], Callable[[], int]],
) -> list[str]:
    """Launch, kill at each point, check the folder, relaunch (``--resume`` once there is a last.pt)
    until a launch finishes; returns what each kill hit."""
    hits = []
    for point in [*points, None]:
        resume = ("--resume",) if (run / "checkpoints" / "last.pt").is_file() else ()
        process = launch(run, *args, *resume, command=command)
        if point is not None and kill_at(process, point, run, victim(process)):
            hits.append(f"{point[0]} {point[1]:.3f}")
            process.wait(timeout=300)
            check_consistent(run)
            continue
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    return hits


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        x, y = load_checkpoint(a / "checkpoints" / name), load_checkpoint(b / "checkpoints" / name)
        assert x["step"] == y["step"], name
        for key in x["model"]:
            assert torch.equal(x["model"][key], y["model"][key]), f"{name}: {key}"
        assert torch.equal(x["optimizer"]["state"][0]["exp_avg"], y["optimizer"]["state"][0]["exp_avg"])
    names = sorted(p.name for p in (b / "checkpoints").glob("step_*.pt"))
    assert names == sorted(p.name for p in (a / "checkpoints").glob("step_*.pt"))
    steps = [(r["split"], r["step"]) for r in records(b)]
    assert len(steps) == len(set(steps)) and steps == [(r["split"], r["step"]) for r in records(a)]


RUN = ("train.max_steps=200", "train.eval_every=5", "train.keep_last=3")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference = launch(tmp_path / "reference", *RUN)
    assert reference.wait(timeout=600) == 0, reference.communicate()[1][-3000:]
    points = kill_points(seed=17, n=6, start=0.5, end=4.0)
    hits = kill_and_resume(tmp_path / "killed", RUN, points, command=("-m", "transformer"),
                           victim=lambda process: lambda: process.pid)
    assert len(hits) >= 5 and any(hit.startswith("write") for hit in hits), hits
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of worker ``rank`` of a torchrun launched as ``launcher`` (its children, by RANK in /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise StopIteration  # not started yet, or gone


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
def test_torchrun_two_processes_sigkill_one_rank_then_resume_equals_an_uninterrupted_run(tmp_path):
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "transformer")
    # Long enough that no launch finishes before its kill point on a fast machine (the points are wall-clock times).
    args = ("train.max_steps=1000", "train.eval_every=25", "train.keep_last=2")
    reference = launch(tmp_path / "reference", *args, command=torchrun)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    points = kill_points(seed=23, n=5, start=4.0, end=10.0)
    hits = kill_and_resume(tmp_path / "killed", args, points, command=torchrun,
                           victim=lambda process: lambda: rank_pid(process, 1))
    assert len(hits) >= 3, hits
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


@pytest.mark.slow
def test_two_runs_started_at_once_in_one_folder(tmp_path):
    run = tmp_path / "run"
    processes = [launch(run, "train.max_steps=100", f"train.lr={lr}") for lr in (1e-3, 2e-3)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], [err[-2000:] for _, err in results]
    loser = error_line([err for code, err in results if code == 2][0])
    assert "is in use by another training run" in loser or "already holds a run" in loser  # the lock, or too late
    winner_lr = [lr for (code, _), lr in zip(results, (1e-3, 2e-3)) if code == 0][0]
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == winner_lr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]["lr"] == winner_lr
