"""How preparation, start-up and memory grow with the corpus: synthetic corpora of 0.1M, 1M and 4.5M pairs.

Each corpus is made from a real one (the config's training split) by repeating its pairs with the words of each
sentence shuffled, so SentencePiece sees many distinct sentences. For each size it runs the real commands in
subprocesses and reports:

- ``transformer prepare``: wall time, peak RSS, encoding speed (pairs/s);
- ``transformer train`` with the cache present: time from the start of the process to the end of the first
  update, and the process's memory (peak PSS: shared pages counted once) at that point;
- the same with ``torchrun --nproc_per_node 2``: the total memory of both training processes.

    transformer benchmark scale --config configs/multi30k_en_de.yaml --sizes 100000 1000000 4500000 --json scale.json

Needs a quiet machine (timings) and, at 4.5M pairs, about 3 GB of disk in --work-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from transformer.config import load_config
from transformer.data.corpus import iter_split, load_split

FIRST_UPDATE = re.compile(r"\bstep 1 loss\b")


def synthesize(config_path: Path, overrides: list[str], n_pairs: int, out: Path, seed: int = 0) -> Path:
    """A corpus folder of ``n_pairs`` training pairs (words shuffled within each sentence) plus the validation split."""
    data = load_config(config_path, overrides).data
    src, tgt = [], []
    for s, t in iter_split(data, "train"):
        src += s
        tgt += t
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"train.{data.src_lang}", "w", encoding="utf-8") as fs, \
            open(out / f"train.{data.tgt_lang}", "w", encoding="utf-8") as ft:
        for i in range(n_pairs):
            s_words, t_words = src[i % len(src)].split(), tgt[i % len(tgt)].split()
            if i >= len(src):  # the first copy stays as it is
                rng.shuffle(s_words)
                rng.shuffle(t_words)
            fs.write(" ".join(s_words) + "\n")
            ft.write(" ".join(t_words) + "\n")
    valid_src, valid_tgt = load_split(data, "valid")
    (out / f"{data.valid_split}.{data.src_lang}").write_text("\n".join(valid_src) + "\n", encoding="utf-8")
    (out / f"{data.valid_split}.{data.tgt_lang}").write_text("\n".join(valid_tgt) + "\n", encoding="utf-8")
    return out


def pss_mib(pids: list[int]) -> float:
    """The summed proportional set size of ``pids`` (a page shared by k processes counts 1/k in each)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        found += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return found


def run_measured(command: list[str], *, until: re.Pattern | None = None, launcher: bool = False) -> dict:
    """Run ``command``; wall time to its end (or to the first output line matching ``until``, then kill it) and
    the peak summed PSS of its processes, sampled every 50 ms (with ``launcher``, of its children only)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = descendants(process.pid) + ([] if launcher else [process.pid])
            peak[0] = max(peak[0], pss_mib(pids))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    reached, tail = None, []
    for line in process.stdout:
        tail = (tail + [line])[-20:]
        if until is not None and until.search(line):
            reached = time.perf_counter() - start
            time.sleep(0.2)  # one more memory sample at this point
            break
    if until is not None:
        for pid in descendants(process.pid) + [process.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    process.wait()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if until is not None and reached is None:
        raise RuntimeError(f"{' '.join(command)} ended before {until.pattern!r}:\n{''.join(tail)}")
    if until is None and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{''.join(tail)}")
    return {"seconds": round(reached if until is not None else seconds, 2), "peak_pss_mib": round(peak[0], 1)}


def measure(config: Path, overrides: list[str], n_pairs: int, work: Path, nproc: int) -> dict:
    corpus = synthesize(config, overrides, n_pairs, work / f"corpus_{n_pairs}")
    cache = work / f"cache_{n_pairs}"
    common = [f"data.data_dir={corpus}", f"data.cache_dir={cache}"] + overrides
    cli = [sys.executable, "-m", "transformer"]
    row: dict = {"pairs": n_pairs}
    prepared = run_measured(cli + ["prepare", "--config", str(config)] + common)
    info = json.loads(next(cache.glob("train-*/prepared.json")).read_text())
    arrays = sum(p.stat().st_size for p in next(cache.glob("train-*")).iterdir() if p.suffix in (".bin", ".npy"))
    row.update(prepare_s=prepared["seconds"], prepare_pss_mib=prepared["peak_pss_mib"],
               encode_pairs_per_s=round(info["lines"] / info["seconds"]), arrays_mib=round(arrays / 2**20, 1))
    train_args = ["train", "--config", str(config)] + common + ["train.max_steps=1", "train.log_every=1"]
    one = run_measured(cli + train_args + [f"train.run_dir={work / f'run1_{n_pairs}'}"], until=FIRST_UPDATE)
    row.update(first_update_s=one["seconds"], train_pss_mib=one["peak_pss_mib"])
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "transformer"]
        many = run_measured(launcher + train_args + [f"train.run_dir={work / f'run{nproc}_{n_pairs}'}"],
                            until=FIRST_UPDATE, launcher=True)
        row.update({f"first_update_s_{nproc}proc": many["seconds"], f"train_pss_mib_{nproc}proc": many["peak_pss_mib"]})
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("configs/multi30k_en_de.yaml"))
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 4_500_000])
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes for the multi-process row (1: skip)")
    parser.add_argument("--work-dir", type=Path, help="where the corpora and caches go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows here")


def run(args: argparse.Namespace) -> int:
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="scale-"))
    rows = []
    header = ("pairs", "prepare_s", "prepare_pss_mib", "encode_pairs_per_s", "arrays_mib", "first_update_s",
              "train_pss_mib", f"first_update_s_{args.nproc}proc", f"train_pss_mib_{args.nproc}proc")
    print("\t".join(header), flush=True)
    for n in args.sizes:
        row = measure(args.config, list(args.overrides), n, work, args.nproc)
        rows.append(row)
        print("\t".join(str(row.get(key, "")) for key in header), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0
