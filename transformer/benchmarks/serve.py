"""`transformer serve` under load: throughput and latency with and without batching, against offline `translate`.

    transformer benchmark serve --checkpoint CKPT --model CT2_DIR --soak-seconds 120 --json serve.json
    transformer benchmark serve --checkpoint CKPT --sentences 200 --clients 1 8 --beam-sizes 1

For each engine (``--checkpoint``: ours; ``--model``: a ``transformer export`` folder; either or both) and each
of ``--beam-sizes``, the split's source sentences (default: the model's test split, e.g. Multi30k
test_2016_flickr; ``--sentences N``: the first N) are translated three ways:

- offline, the ceiling: ``translate_texts`` of the same translator, on the same threads, in a fresh process per
  engine (after our decoder has run in a process, CTranslate2's intra-op threads run several times slower in
  it); the faster of two runs after a warm-up. Its outputs are what every answer of the service must equal;
- by ``python -m transformer serve`` on a free loopback port, one sentence per ``POST /translate``, from 1, 8,
  32 and 64 concurrent clients (``--clients``: asyncio coroutines in this process, each an ``httpx.AsyncClient``
  with one keep-alive connection); each client sends the next sentence as soon as its previous answer came;
- by the same service with batching off (``--max-batch-sentences 1``), at the same client counts.

A multilingual model is measured in its first direction: offline, and in the ``source`` and ``target`` of every
request (the header says so).

Each load row: sentences/s (answers over wall time), client-side p50/p95/p99 latency, the mean batch size
(``transformer_serve_batch_sentences`` sum/count of /metrics over the load), errors (an answer other than 200,
or none), mismatches (an answer other than the offline translation of its sentence) and, to see where the time
goes, the server's own mean request time, the share of the wall time its batcher spent decoding, and the CPU
milliseconds per sentence of the server process and of the clients. Each server is warmed up by one pass of
up to ``4 x max(clients)`` sentences first. A load stops taking sentences after ``--max-seconds``.

``--soak-seconds S``: then S seconds at ``max(clients)`` clients, cycling through the sentences, on a fresh
server of the first engine and beam size, after min(20 s, S/4) of the same load (not counted): zero errors, every
answer equal to its sentence's offline translation, and the server's resident memory (VmRSS of
/proc/PID/status) at its start and end, sampled every 10 s; flat means it grew by less than 5%.

Threads: the server and offline decoding get ``--threads`` (default: PyTorch's default here): PyTorch's threads
(OMP_NUM_THREADS) for our engine; for CTranslate2, ``--inter-threads`` translators of ``--intra-threads``
threads, by default ``--threads`` translators of one thread (the fastest split in ``benchmark engines``). The
clients run in this process: on a machine with few cores they take CPU from the server.

The serving targets are checked at 32 clients: served throughput at least 60% of offline and at least 3x the
service without batching, and for greedy a p99 latency under 1 s (printed; they do not change the exit
status). Exit status 1 when an answer was an error or a mismatch, or the soak failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transformer.benchmarks.common import below_minimum, json_settings, machine_info, measured_direction
from transformer.config import ConfigError, DataConfig, DecodeConfig
from transformer.data.corpus import load_split
from transformer.errors import require_extra
from transformer.inference import Translator, load_translator, translate_texts, translator_for

ROLES = ("train", "valid", "test")
TARGET_CLIENTS = 32
TARGET_VS_OFFLINE = 0.6  # served sentences/s at 32 clients over offline sentences/s
TARGET_VS_UNBATCHED = 3.0  # ... over the service without batching at 32 clients
TARGET_GREEDY_P99_S = 1.0
FLAT_RSS_GROWTH = 0.05  # the soak's memory is flat if it grew by less than this share
START_TIMEOUT_S = 300  # the server imports torch and loads the model before /health answers 200
REQUEST_TIMEOUT_S = 120
RSS_EVERY_S = 10.0
SOAK_WARMUP_S = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path,
                        help="a trained checkpoint: measure our engine (a multilingual one: its first direction)")
    parser.add_argument("--model", type=Path, metavar="DIR", help="a `transformer export` folder: measure CTranslate2")
    parser.add_argument("--split", default="test", help="train, valid, test, or a split name (default: test)")
    parser.add_argument("--data-dir", help="corpus folder (default: the model's data.data_dir)")
    parser.add_argument("--sentences", type=int, default=0, metavar="N", help="the first N sentences only (0 = all)")
    parser.add_argument("--beam-sizes", type=int, nargs="+", default=[1, 5], metavar="K", help="default: 1 5")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64], metavar="C",
                        help="concurrent clients of each load (default: 1 8 32 64)")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha (default: the model's)")
    parser.add_argument("--batch-size", type=int, help="sentences per decoding call (default: the model's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"the server's threads (default: PyTorch's default here, {torch.get_num_threads()})")
    parser.add_argument("--inter-threads", type=int, help="CTranslate2 translators in parallel (default --threads)")
    parser.add_argument("--intra-threads", type=int,
                        help="threads of each CTranslate2 translator (default: --threads / --inter-threads)")
    parser.add_argument("--max-wait-ms", type=float, help="the service's batching wait (default: serve's)")
    parser.add_argument("--max-batch-sentences", type=int, help="the service's sentences per batch (default: serve's)")
    parser.add_argument("--max-batch-tokens", type=int, help="the service's tokens per batch (default: serve's)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="a load stops after this (default 300)")
    parser.add_argument("--soak-seconds", type=float, default=0.0, metavar="S",
                        help="then S seconds at max(--clients) clients, with its memory (default 0: no soak)")
    parser.add_argument("--json", type=Path, help="also write every figure here, with the machine")


@dataclass(frozen=True)
class Engine:
    """One engine as the service and this process load it."""

    name: str  # "torch" or "ctranslate2"
    serve_args: tuple[str, ...]  # the model and thread options of `transformer serve`
    load_args: dict[str, Any]  # the same for ``load_translator``
    threads: str  # as reported: "2 intra-op" or "1x2"


def run(args: argparse.Namespace) -> int:
    for module in ("fastapi", "uvicorn", "httpx"):
        require_extra(module, "serve", "transformer benchmark serve")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would cost the clients' CPU
    problem = below_minimum({"--sentences": args.sentences}, 0) or below_minimum(
        {"--threads": args.threads, "--beam-sizes": min(args.beam_sizes), "--clients": min(args.clients)}, 1
    )
    if problem is not None:
        raise ConfigError(problem)
    if args.checkpoint is None and args.model is None:
        raise ConfigError("give --checkpoint (our engine), --model (a CTranslate2 export), or both")
    if args.max_seconds <= 0 or args.soak_seconds < 0:
        raise ConfigError("--max-seconds must be > 0 and --soak-seconds >= 0")
    engines = []
    if args.checkpoint is not None:
        engines.append(Engine("torch", ("--checkpoint", str(args.checkpoint)), {"checkpoints": [args.checkpoint]},
                              f"{args.threads} intra-op"))
    if args.model is not None:
        inter = args.inter_threads or (args.threads if args.intra_threads is None else 1)
        intra = args.intra_threads or args.threads // inter or 1
        engines.append(Engine(
            "ctranslate2", ("--engine", "ctranslate2", "--model", str(args.model), "--inter-threads", str(inter),
                            "--intra-threads", str(intra)),
            {"model_dir": args.model, "inter_threads": inter, "intra_threads": intra}, f"{inter}x{intra}",
        ))
    batching = [f"--{name}={value}" for name, value in (
        ("max-wait-ms", args.max_wait_ms), ("max-batch-sentences", args.max_batch_sentences),
        ("max-batch-tokens", args.max_batch_tokens)) if value is not None]  # fmt: skip
    decoding = [f"--{name}={value}" for name, value in (
        ("length-penalty", args.length_penalty), ("batch-size", args.batch_size)) if value is not None]  # fmt: skip

    sentences: list[str] | None = None
    rows: list[dict[str, Any]] = []
    expected: dict[tuple[str, int], list[str]] = {}
    load_average = {"before": os.getloadavg()}
    changes = {"length_penalty": args.length_penalty, "batch_size": args.batch_size}
    for engine in engines:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            found = child.submit(offline_engine, engine, args.threads, args.beam_sizes, changes, sentences,
                                 (args.split, args.data_dir, args.sentences)).result()
        if sentences is None:
            sentences, split_name, langs = found.sentences, found.split_name, found.langs
            print(f"{len(sentences)} sentences of {split_name} ({langs[0]}-{langs[1]}{found.measured}); server "
                  f"threads {args.threads} of {os.cpu_count()} cores; load average {load_text()}", flush=True)
        for beam in args.beam_sizes:
            expected[engine.name, beam], row = found.results[beam]
            rows.append({"engine": engine.name, "search": search_name(beam), "threads": engine.threads, **row})
            print(line(rows[-1]), flush=True)
        load = Load(sentences, langs, args.max_seconds, {**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        for beam in args.beam_sizes:
            for service, options in (("batching", batching), ("no batching", ["--max-batch-sentences=1"])):
                argv = [*engine.serve_args, f"--beam-size={beam}", *decoding, *options]
                label = {"engine": engine.name, "search": search_name(beam), "threads": engine.threads, "service": service}
                rows += service_rows(argv, label, load, expected[engine.name, beam], args.clients)
    soak = None
    if args.soak_seconds > 0:
        engine, beam = engines[0], args.beam_sizes[0]
        load = Load(sentences, langs, args.soak_seconds, {**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        with serving([*engine.serve_args, f"--beam-size={beam}", *decoding, *batching], load.env) as (url, pid):
            soak = soak_run(url, pid, load, expected[engine.name, beam], max(args.clients))
        soak.update(engine=engine.name, search=search_name(beam))
    load_average["after"] = os.getloadavg()

    add_ratios(rows)
    targets = target_checks(rows)
    failed = report(rows, targets, soak)
    if args.json is not None:
        machine = machine_info(torch.device("cpu")) | {"server_threads": args.threads}
        summary = {"machine": machine, "settings": json_settings(vars(args)), "split": split_name,
                   "sentences": len(sentences), "load_average": load_average, "rows": rows, "targets": targets,
                   "soak": soak}  # fmt: skip
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


@dataclass(frozen=True)
class Load:
    """What the clients send, one sentence per request, and how long a load may last."""

    sentences: list[str]
    langs: tuple[str, str]  # source and target language of the requests
    max_seconds: float
    env: dict[str, str]  # the server's environment (its threads)


def service_rows(
    argv: list[str], label: dict[str, Any], load: Load, expected: list[str], client_counts: list[int]
) -> list[dict[str, Any]]:
    """One server of ``argv``, warmed up, then a load at each client count: the rows (``label`` + figures)."""
    rows = []
    with serving(argv, load.env) as (url, pid):
        warm = range(min(len(load.sentences), 4 * max(client_counts)))
        asyncio.run(send_all(url, load, expected, warm, max(client_counts), load.max_seconds))
        for clients in client_counts:
            rows.append(label | measure(url, pid, load, expected, clients))
            print(line(rows[-1]), flush=True)
    return rows


def report(rows: list[dict[str, Any]], targets: dict[str, bool], soak: dict[str, Any] | None) -> bool:
    """Print the table, the targets, the soak and the failures; whether anything failed."""
    print()
    print(markdown_table(rows))
    for name, met in targets.items():
        print(f"{'met   ' if met else 'MISSED'} {name}")
    if soak is not None:
        print(soak_text(soak))
    bad = [r for r in rows if r.get("errors") or r.get("mismatches")]
    for r in bad:
        print(f"FAIL {r['engine']} {r['search']} {r['service']} at {r['clients']} clients: {r['errors']} errors "
              f"{r['error_kinds']}, {r['mismatches']} mismatches")
    return bool(bad) or (soak is not None and not soak["passed"])


def read_sentences(data: DataConfig, split: str, data_dir: str | None, limit: int) -> tuple[list[str], str]:
    """The source side of ``split`` (a role or a split name) of the corpus of ``data`` (one direction), the first
    ``limit`` (0: all), and the split's name."""
    changes = {"data_dir": data_dir} if data_dir else {}
    role = split
    if role not in ROLES:  # a split name of the corpus, read in the test role
        changes["test_split"], role = split, "test"
    data = data.updated(**changes)
    src, _ = load_split(data, role)
    src = [s for s in src if s.strip()]  # a blank line is not a request
    name = {"train": data.train_split, "valid": data.valid_split, "test": data.test_split}[role]
    return (src[:limit] if limit else src), name


@dataclass
class OfflineResult:
    """What the offline run of one engine gives back: the sentences, and for each beam size its translations."""

    sentences: list[str]
    split_name: str
    langs: tuple[str, str]  # the direction measured
    measured: str  # what the header adds to name it (``measured_direction``)
    results: dict[int, tuple[list[str], dict[str, Any]]]  # beam size -> (translations, row)


def offline_engine(
    engine: Engine, threads: int, beams: list[int], changes: dict[str, Any], sentences: list[str] | None,
    corpus: tuple[str, str | None, int],
) -> OfflineResult:
    """Offline translation of the sentences (read from ``corpus``, (split, data_dir, limit), if None) with each
    beam size. Run in a fresh process per engine: after our decoder has run in a process, CTranslate2's
    intra-op threads run several times slower in it (two OpenMP runtimes)."""
    torch.set_num_threads(threads)
    translator, config = load_translator(engine.name, device="cpu", **engine.load_args)
    direction, measured = measured_direction(config.data)
    translator = translator_for(translator, config.data, direction)
    split_name = ""
    if sentences is None:
        sentences, split_name = read_sentences(config.data.for_direction(*direction), *corpus)
    results = {}
    for beam in beams:
        results[beam] = offline(translator, sentences, config.decode.updated(beam_size=beam, n_best=1, **changes))
    return OfflineResult(sentences, split_name, direction, measured, results)


def search_name(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam{beam}"


def offline(translator: Translator, sentences: list[str], cfg: DecodeConfig) -> tuple[list[str], dict[str, Any]]:
    """``translate_texts`` of every sentence (the faster of two runs after a warm-up) and its row."""
    translate_texts(translator, sentences[:64], cfg)
    seconds, load = [], os.getloadavg()[0]
    for _ in range(2):
        start = time.perf_counter()
        texts = translate_texts(translator, sentences, cfg)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return texts, {"service": "offline", "clients": None, "sentences": len(sentences), "seconds": round(best, 3),
                   "sentences_per_s": round(len(sentences) / best, 1), "load_before": load}


# ---- the server ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """``python -m transformer serve ARGV`` on a free loopback port: (its URL, its pid) once /health answers 200;
    stopped (SIGTERM, then kill) after."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        log = Path(tmp) / "serve.log"
        command = [sys.executable, "-m", "transformer", "serve", *argv, "--device=cpu", "--host=127.0.0.1",
                   "--port=0"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=out)
        try:
            deadline, url = time.monotonic() + START_TIMEOUT_S, None
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"transformer serve exited with {process.returncode}:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"transformer serve was not ready in {START_TIMEOUT_S} s:\n{tail(log)}")
                if url is None and (found := re.search(r"serving on (http://\S+)", log.read_text(errors="replace"))):
                    url = found.group(1)
                if url is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                            break
                time.sleep(0.2)
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def scrape(url: str) -> dict[str, float]:
    """The samples of /metrics, name (with labels) -> value."""
    import httpx

    values = {}
    for sample in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if sample and not sample.startswith("#"):
            name, _, value = sample.rpartition(" ")
            values[name] = float(value)
    return values


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (VmRSS of /proc/PID/status)."""
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith("VmRSS:"):
            return int(entry.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- the clients -----------------------------------------------------------------------------------------------


@dataclass
class Answers:
    """What the clients saw: one latency per answered request, errors and mismatches."""

    latencies: list[float]
    errors: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    error_kinds: collections.Counter = field(default_factory=collections.Counter)  # "HTTP 503", "ConnectError"

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] += 1


async def send_all(
    url: str, load: Load, expected: list[str], order: Iterable[int], clients: int, seconds: float
) -> Answers:
    """``clients`` coroutines, each an ``httpx.AsyncClient`` with its own keep-alive connection: each sends the
    next sentence of ``order`` (one per request) as soon as its previous answer came, until ``order`` ends or
    ``seconds`` have passed.

    One client per coroutine, not one pool shared by all: httpcore's pool scans every connection for every
    request and answer, which cost the clients 3.5 ms of CPU per request at 32 connections and 5.7 ms at 64
    (against 0.9 ms at 8) and made the load generator, not the service, the bottleneck on 2 cores.
    """
    import httpx

    answers = Answers([])
    todo = iter(order)
    tls = ssl.create_default_context()  # unused on http://, but each client would load the CA store (20 ms) again

    async def one_client(client: httpx.AsyncClient) -> None:
        for i in todo:  # shared by the coroutines: each index is sent once
            if time.perf_counter() > deadline:
                return
            sent = time.perf_counter()
            try:
                body = {"q": load.sentences[i], "source": load.langs[0], "target": load.langs[1], "format": "text"}
                response = await client.post("/translate", json=body)
            except httpx.HTTPError as err:
                answers.error(type(err).__name__)
                continue
            if response.status_code != 200:
                answers.error(f"HTTP {response.status_code}")
                continue
            answers.latencies.append(time.perf_counter() - sent)
            answers.mismatches += response.json().get("translatedText") != expected[i]

    async with contextlib.AsyncExitStack() as stack:
        pool = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, verify=tls))
                for _ in range(clients)]
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(one_client(client) for client in pool))
        answers.seconds = time.perf_counter() - start
    return answers


def measure(url: str, pid: int, load: Load, expected: list[str], clients: int) -> dict[str, Any]:
    """Every sentence once from ``clients`` clients: the row of the table (without the ratios)."""
    before, cpu_before, load_before = scrape(url), cpu_seconds(pid), os.getloadavg()[0]
    client_cpu = time.process_time()
    answers = asyncio.run(send_all(url, load, expected, range(len(load.sentences)), clients, load.max_seconds))
    client_cpu = time.process_time() - client_cpu
    server_cpu = cpu_seconds(pid) - cpu_before
    after = scrape(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    answered, route = len(answers.latencies), '{route="/translate"}'
    batches, requests = delta("transformer_serve_batch_sentences_count"), delta(f"transformer_serve_request_seconds_count{route}")
    p50, p95, p99 = map(float, np.percentile(answers.latencies, [50, 95, 99]) if answers.latencies else [np.nan] * 3)
    return {
        "clients": clients, "sentences": len(answers.latencies), "seconds": round(answers.seconds, 3),
        "sentences_per_s": round(len(answers.latencies) / answers.seconds, 1),
        "p50_ms": round(1000 * p50, 1), "p95_ms": round(1000 * p95, 1), "p99_ms": round(1000 * p99, 1),
        "mean_batch": round(delta("transformer_serve_batch_sentences_sum") / batches, 2) if batches else None,
        "errors": answers.errors, "error_kinds": dict(answers.error_kinds), "mismatches": answers.mismatches,
        "server_mean_ms": round(1000 * delta(f"transformer_serve_request_seconds_sum{route}") / requests, 1)
        if requests else None,
        "decoding_share": round(delta("transformer_serve_batch_seconds_sum") / answers.seconds, 3),
        "server_cpu_ms": round(1000 * server_cpu / answered, 2) if answered else None,  # per answered sentence
        "client_cpu_ms": round(1000 * client_cpu / answered, 2) if answered else None,
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }  # fmt: skip


def soak_run(url: str, pid: int, load: Load, expected: list[str], clients: int) -> dict[str, Any]:
    """``load.max_seconds`` of the sentences cycled from ``clients`` clients, after ``min(SOAK_WARMUP_S, seconds /
    4)`` of the same load (not counted: the allocators grow to this load's batch sizes), with the server's
    resident memory every ``RSS_EVERY_S`` s."""
    seconds, n = load.max_seconds, len(load.sentences)
    warm = itertools.islice(itertools.cycle(range(n)), int(seconds * 100_000))  # bounded in count and in time
    asyncio.run(send_all(url, load, expected, warm, clients, min(SOAK_WARMUP_S, seconds / 4)))
    samples = []

    async def soak() -> Answers:
        async def sample() -> None:
            while True:
                samples.append(round(rss_mib(pid), 1))
                await asyncio.sleep(RSS_EVERY_S)

        sampler = asyncio.create_task(sample())
        order = itertools.islice(itertools.cycle(range(n)), int(seconds * 100_000))
        try:
            return await send_all(url, load, expected, order, clients, seconds)
        finally:
            sampler.cancel()

    answers = asyncio.run(soak())
    start, end = samples[0], round(rss_mib(pid), 1)
    samples.append(end)
    growth = (end - start) / start
    passed = answers.errors == 0 and answers.mismatches == 0 and growth < FLAT_RSS_GROWTH
    return {
        "clients": clients, "seconds": round(answers.seconds, 1), "sentences": len(answers.latencies),
        "sentences_per_s": round(len(answers.latencies) / answers.seconds, 1), "errors": answers.errors,
        "error_kinds": dict(answers.error_kinds), "mismatches": answers.mismatches, "p99_ms": round(1000 * float(np.percentile(answers.latencies, 99)), 1),
        "rss_start_mib": start, "rss_end_mib": end, "rss_max_mib": max(samples), "rss_growth": round(growth, 4),
        "rss_samples_mib": samples, "flat": growth < FLAT_RSS_GROWTH, "passed": passed,
    }  # fmt: skip


def soak_text(soak: dict[str, Any]) -> str:
    return (
        f"{'ok  ' if soak['passed'] else 'FAIL'} soak, {soak['engine']} {soak['search']}, {soak['clients']} clients, "
        f"{soak['seconds']} s: {soak['sentences']} sentences ({soak['sentences_per_s']}/s), {soak['errors']} errors, "
        f"{soak['mismatches']} mismatches, p99 {soak['p99_ms']} ms; server RSS {soak['rss_start_mib']} MiB at the "
        f"start, {soak['rss_end_mib']} MiB at the end ({100 * soak['rss_growth']:+.1f}%, at most "
        f"{soak['rss_max_mib']} MiB): {'flat' if soak['flat'] else 'NOT flat'} (< {FLAT_RSS_GROWTH:.0%})"
    )


# ---- the report ------------------------------------------------------------------------------------------------


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each batching row's throughput over offline's and over the batching-off service's at its client count."""
    by_key = {(r["engine"], r["search"], r["service"], r["clients"]): r for r in rows}
    for r in rows:
        if r["service"] != "batching":
            continue
        offline_row = by_key[r["engine"], r["search"], "offline", None]
        r["vs_offline"] = round(r["sentences_per_s"] / offline_row["sentences_per_s"], 2)
        unbatched = by_key.get((r["engine"], r["search"], "no batching", r["clients"]))
        if unbatched is not None and unbatched["sentences_per_s"] > 0:
            r["vs_no_batching"] = round(r["sentences_per_s"] / unbatched["sentences_per_s"], 2)


def target_checks(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The serving targets at 32 clients, for each engine and search that ran at 32 clients."""
    checks = {}
    for r in rows:
        if r["service"] != "batching" or r["clients"] != TARGET_CLIENTS:
            continue
        name = f"{r['engine']} {r['search']} at {TARGET_CLIENTS} clients:"
        checks[f"{name} {r['vs_offline']:.2f} of offline >= {TARGET_VS_OFFLINE}"] = r["vs_offline"] >= TARGET_VS_OFFLINE
        if "vs_no_batching" in r:
            checks[f"{name} {r['vs_no_batching']:.2f}x batching off >= {TARGET_VS_UNBATCHED}x"] = (
                r["vs_no_batching"] >= TARGET_VS_UNBATCHED
            )
        if r["search"] == "greedy":
            checks[f"{name} p99 {r['p99_ms']:.0f} ms < {1000 * TARGET_GREEDY_P99_S:.0f} ms"] = (
                r["p99_ms"] < 1000 * TARGET_GREEDY_P99_S
            )
    return checks


def line(r: dict[str, Any]) -> str:
    text = f"{r['engine']:>11} {r['search']:>6} {r['service']:>11} "
    if r["service"] == "offline":
        return text + f"{'':>10} {r['sentences_per_s']:8.1f} sentences/s ({r['seconds']:.2f} s)"
    return text + (
        f"{r['clients']:>3} clients {r['sentences_per_s']:8.1f} sentences/s  p50/p95/p99 {r['p50_ms']:.0f}/"
        f"{r['p95_ms']:.0f}/{r['p99_ms']:.0f} ms  batch {r['mean_batch']}  errors {r['errors']}  mismatches "
        f"{r['mismatches']}  (server {r['server_mean_ms']} ms, decoding {r['decoding_share']:.0%}, CPU ms/sentence "
        f"server {r['server_cpu_ms']} clients {r['client_cpu_ms']}, load {r['load_before']:.2f})"
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the Markdown table of docs/PERFORMANCE.md."""
    lines = [
        "| engine | search | service | clients | sentences/s | p50 / p95 / p99 ms | mean batch | errors | mismatches "
        "| vs offline | vs batching off |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["service"] == "offline":
            lines.append(f"| {r['engine']} | {r['search']} | offline `translate` | - | {r['sentences_per_s']:,.1f} "
                         f"| - | - | - | - | 1.00 | - |")
            continue
        ratios = [f"{r[k]:.2f}" if k in r else "-" for k in ("vs_offline", "vs_no_batching")]
        lines.append(
            f"| {r['engine']} | {r['search']} | {r['service']} | {r['clients']} | {r['sentences_per_s']:,.1f} | "
            f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} | {r['mean_batch']} | {r['errors']} | "
            f"{r['mismatches']} | {ratios[0]} | {ratios[1]}{'x' if ratios[1] != '-' else ''} |"
        )
    return "\n".join(lines)
