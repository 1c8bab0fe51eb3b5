"""Fixtures of the service tests: the sample model and the two-direction model (tests/conftest.py's) loaded once, a
real uvicorn server on a free loopback port, and a scripted translator that fails, stalls or waits on demand."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402

from transformer.config import Config, DecodeConfig  # noqa: E402
from transformer.inference import Translator, load_translator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sample_model(sample_checkpoint) -> tuple[Translator, Config]:
    """The torch translator of ``sample_checkpoint`` and its config (shared: loading is the slow part)."""
    return load_translator("torch", checkpoints=[sample_checkpoint])


@pytest.fixture(scope="session")
def multilingual_model(multilingual_checkpoint) -> tuple[Translator, Config]:
    """The torch translator of ``multilingual_checkpoint`` (of no direction yet) and its config."""
    return load_translator("torch", checkpoints=[multilingual_checkpoint])


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """Source sentences of the sample corpus (test split and a few of train)."""
    test = (ROOT / "data" / "sample" / "test.en").read_text(encoding="utf-8").splitlines()
    train = (ROOT / "data" / "sample" / "train.en").read_text(encoding="utf-8").splitlines()
    return test + train[:24]


@pytest.fixture(scope="session")
def running() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with running(app, ready=True) as url``: ``app`` served by uvicorn in a thread on a free 127.0.0.1 port;
    with ``ready``, the block starts once ``/health`` answers 200. The server is stopped at the end."""

    @contextlib.contextmanager
    def run(app, *, ready: bool = True, drain: float = 5.0) -> Iterator[str]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=drain)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.01)
            if ready:
                wait_ready(url)
            yield url
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            assert not thread.is_alive(), "the server did not stop"

    return run


@pytest.fixture(scope="session")
def eventually() -> Callable[..., None]:
    """``eventually(condition, timeout=10)``: poll ``condition()`` until it is true; fail after ``timeout`` s."""

    def wait(condition: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"still false after {timeout} s"
            time.sleep(0.005)

    return wait


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"{url} was not ready after {timeout} s")


class ScriptedTranslator:
    """The sample translator, except for sentences with a keyword: "boom" raises, "slow" takes ``slow_s``
    seconds, "hold" waits until ``release`` is set (at most 10 s). ``batches`` records each call's sentences."""

    def __init__(self, inner: Translator, *, slow_s: float = 1.0) -> None:
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.slow_s = slow_s
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def for_target(self, lang: str) -> ScriptedTranslator:
        return self  # the sample model is bilingual

    def translate(self, texts, cfg: DecodeConfig, *, max_src_tokens=None, progress=None):
        self.batches.append(list(texts))
        if any("boom" in t for t in texts):
            raise RuntimeError("scripted failure")
        if any("slow" in t for t in texts):
            time.sleep(self.slow_s)
        if any("hold" in t for t in texts):
            self.release.wait(10)
        return self.inner.translate(texts, cfg, max_src_tokens=max_src_tokens, progress=progress)

    def forced_log_probs(self, src, tgt):
        return self.inner.forced_log_probs(src, tgt)


@pytest.fixture
def scripted(sample_model) -> Callable[..., tuple[ScriptedTranslator, Config]]:
    """``scripted(slow_s=1.0)`` -> (a ``ScriptedTranslator`` of the sample model, its config)."""

    def make(**options) -> tuple[ScriptedTranslator, Config]:
        translator, config = sample_model
        return ScriptedTranslator(translator, **options), config

    return make
