"""Stopping `transformer serve`: SIGTERM under load in a subprocess (every request sent before it gets exactly
its answer, every later one a clean refusal, exit status 0), Ctrl-C when idle, and the mistakes that end the
command with one error line (a port in use, a checkpoint that cannot be read)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from transformer.cli import main as cli_main  # noqa: E402
from transformer.inference import translate_texts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
BURST = 16  # requests sent at once
PER_REQUEST = 8  # sentences in each


class Served:
    """`python -m transformer serve ARGS --port 0` in a subprocess, its URL read from its log."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / "serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "transformer", "serve", *args, "--port", "0"], cwd=ROOT, env=ENV,
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )
        deadline = time.monotonic() + 60
        while not (found := re.search(r"serving on (http://\S+)", self.log.read_text())):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "no 'serving on' line"
            time.sleep(0.05)
        self.url = found.group(1)
        while httpx.get(f"{self.url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)

    def stop(self, sig: int, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def test_sigterm_under_load_finishes_what_was_taken_refuses_the_rest_and_exits_0(
    tmp_path, sample_checkpoint, sample_model, sentences
):
    translator, config = sample_model
    server = Served(tmp_path, "--checkpoint", str(sample_checkpoint), "--max-batch-sentences", "2",
                    "--max-wait-ms", "10", "--drain-seconds", "60")
    try:
        requests = [[sentences[(i * PER_REQUEST + j) % len(sentences)] for j in range(PER_REQUEST)]
                    for i in range(BURST)]
        answers: dict[int, httpx.Response] = {}

        def send(i: int) -> None:
            answers[i] = httpx.post(f"{server.url}/translate", timeout=60,
                                    json={"q": requests[i], "source": "en", "target": "de"})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(BURST)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while True:  # until the server has taken every request of the burst (and this one)
            done = len(answers)  # before the snapshot: no request is counted twice
            metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
            taken = float(re.search(r"^transformer_serve_requests_in_progress (\S+)$", metrics, re.MULTILINE).group(1))
            if done + taken >= BURST + 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.005)
        server.process.send_signal(signal.SIGTERM)
        in_flight = BURST - len(answers)
        time.sleep(0.2)
        try:  # after the stop: refused (503) or not connected at all, never translated
            late = httpx.post(f"{server.url}/translate", json={"q": "A dog.", "source": "en", "target": "de"},
                              timeout=10)
            assert late.status_code == 503 and late.json() == {"error": "the server is stopping"}
        except httpx.TransportError:
            pass
        for thread in threads:
            thread.join(60)
        status = server.process.wait(60)
    finally:
        server.kill()
    assert in_flight > 0, "the burst was answered before SIGTERM: the test stopped nothing in flight"
    assert status == 0, server.log.read_text()[-3000:]
    assert sorted(answers) == list(range(BURST))
    for i, texts in enumerate(requests):
        assert answers[i].status_code == 200, answers[i].text
        assert answers[i].json() == {"translatedText": translate_texts(translator, texts, config.decode)}
    assert "Traceback" not in server.log.read_text()


def test_ctrl_c_when_idle_exits_0(tmp_path, sample_checkpoint):
    server = Served(tmp_path, "--checkpoint", str(sample_checkpoint))
    try:
        assert server.stop(signal.SIGINT) == 0, server.log.read_text()[-3000:]
    finally:
        server.kill()
    log = server.log.read_text()
    assert "stopped" in log and "Traceback" not in log


def test_a_port_in_use_is_one_error_line(sample_checkpoint, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = ["serve", "--checkpoint", str(sample_checkpoint), "--port", str(busy.getsockname()[1])]
        assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot listen on 127.0.0.1:") and "EADDRINUSE" in err[0]


def test_a_checkpoint_that_cannot_be_read_is_one_error_line_after_the_server_stops(tmp_path, capsys):
    argv = ["serve", "--checkpoint", str(tmp_path / "missing.pt"), "--port", "0"]
    assert cli_main(argv) == 2
    assert re.fullmatch(r"error: .*missing\.pt.*\n", capsys.readouterr().err)


@pytest.mark.parametrize("option, value", [
    ("--max-batch-sentences", "0"), ("--timeout", "0"), ("--max-src-tokens", "1"), ("--max-wait-ms", "-1"),
])
def test_bad_options_are_one_error_line(option, value, sample_checkpoint, capsys):
    assert cli_main(["serve", "--checkpoint", str(sample_checkpoint), option, value]) == 2
    assert re.fullmatch(rf"error: {option} .*\n", capsys.readouterr().err)
