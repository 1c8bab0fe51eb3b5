"""The page of `transformer serve` in a real browser: type a sentence, translate, read the heat map.

Headless Chromium from Debian's package, driven by Playwright's Python package with that system browser
(``executable_path``: Playwright downloads no browser here). Skips without them, so that developers without a
browser are not blocked; CI installs Chromium (.ci/run) and fails here rather than skip when it is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from transformer.cli import main as cli_main
from transformer.inference.alignment import word_ids

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium && pip install playwright"
SENTENCE = "A man in a black coat is sleeping on the sofa."
START_TIMEOUT_S = 120  # the service imports torch and loads the model before /health answers


def browser_stack_problem() -> str | None:
    """What is missing for this test, or None."""
    for what, present in (("Chromium", Path(CHROMIUM).is_file()), ("playwright", importlib.util.find_spec("playwright"))):
        if not present:
            return f"no {what}: the page test needs it ({INSTALL})"
    return None


PROBLEM = browser_stack_problem()
if PROBLEM and not os.environ.get("CI"):  # skipped here, before the session's fixtures train a model for nothing
    pytest.skip(PROBLEM, allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if PROBLEM:  # CI must run this test: .ci/run installs Chromium, the dev extra Playwright
        pytest.fail(PROBLEM, pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@contextlib.contextmanager
def serving(*options: str, log: Path) -> Iterator[str]:
    """`transformer serve OPTIONS` on a free loopback port: its base URL once /health answers 200; stopped after."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "transformer", "serve", *options, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformer serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if get(f"{url}/health") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformer serve did not answer /health in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def service(browser, sample_checkpoint, tmp_path_factory) -> Iterator[str]:
    """The base URL of `transformer serve --checkpoint sample_checkpoint`."""
    with serving("--checkpoint", str(sample_checkpoint), log=tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@contextlib.contextmanager
def open_page(browser, url: str) -> Iterator:
    """A fresh page of the service at ``url``; JavaScript errors on it fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{url}/")
        yield page
    finally:
        context.close()
    assert errors == []


@pytest.fixture
def page(browser, service) -> Iterator:
    with open_page(browser, service) as opened:
        yield opened


def translate(page, sentence: str) -> None:
    page.fill("#source-text", sentence)
    page.click("#translate-button")
    page.wait_for_selector("#heatmap rect.cell", timeout=60_000)


def cell_coordinates(page) -> list[tuple[int, int]]:
    pairs = page.eval_on_selector_all(
        "#heatmap rect.cell", "cells => cells.map(c => [Number(c.dataset.row), Number(c.dataset.col)])"
    )
    return sorted(map(tuple, pairs))


def test_the_page_shows_the_translation_and_one_heat_map_cell_per_source_and_target_piece(
    page, service, sample_checkpoint, capsys
):
    translate(page, SENTENCE)
    alternatives = int(page.input_value("#alternatives"))
    answer = post_json(f"{service}/attention", {"q": SENTENCE, "alternatives": alternatives})
    src, tgt = answer["source_tokens"], answer["target_tokens"]

    assert cell_coordinates(page) == [(t, s) for t in range(len(tgt)) for s in range(len(src))]
    labels = "labels => labels.map(l => l.textContent)"
    assert page.eval_on_selector_all("#heatmap text.label[data-col]", labels) == src
    assert page.eval_on_selector_all("#heatmap text.label[data-row]", labels) == tgt
    assert page.locator("#nbest li").count() == len(answer["nbest"]) > 1
    assert page.locator("#alignment line.link").count() == len(answer["alignment"])

    assert page.locator("#direction-select").is_hidden()  # one direction: nothing to choose

    capsys.readouterr()
    assert cli_main(["translate", "--checkpoint", str(sample_checkpoint), SENTENCE]) == 0
    expected = capsys.readouterr().out.strip()
    assert expected
    assert page.inner_text("#translation") == expected == answer["translation"]


def test_choosing_a_head_and_a_layer_redraws_the_map_and_the_alignment(page):
    translate(page, SENTENCE)
    layers = page.locator("#layer option").count()
    heads = page.locator("#head option").count() - 1  # and "mean of the N heads"
    assert layers >= 2 and heads >= 2
    cells = cell_coordinates(page)
    mean = page.eval_on_selector_all("#heatmap rect.cell", "cells => cells.map(c => c.getAttribute('fill'))")

    page.select_option("#head", value="1")
    assert cell_coordinates(page) == cells
    assert page.eval_on_selector_all("#heatmap rect.cell", "cells => cells.map(c => c.getAttribute('fill'))") != mean
    assert f"head 2 of {heads}" in page.inner_text("#heatmap-caption")

    page.select_option("#layer", value="0")  # layer 1: the page asks the service for its alignment
    page.wait_for_function("document.getElementById('alignment-caption').textContent.includes('decoder layer 1 ')")
    assert cell_coordinates(page) == cells
    assert f"decoder layer 1 of {layers}, head 2" in page.inner_text("#heatmap-caption")


def test_with_the_ctranslate2_engine_the_page_shows_the_translation_and_a_note_instead_of_attention(
    browser, sample_export, tmp_path, capsys
):
    with serving("--engine", "ctranslate2", "--model", str(sample_export), log=tmp_path / "serve.log") as url:
        with open_page(browser, url) as page:
            page.fill("#source-text", SENTENCE)
            page.click("#translate-button")
            page.wait_for_selector("#note:not([hidden])", timeout=60_000)
            assert page.inner_text("#note").startswith("No attention view: ")  # and the service's reason
            assert page.locator("#attention-panel").is_hidden() and page.locator("#nbest li").count() > 1
            shown = page.inner_text("#translation")
    capsys.readouterr()
    assert cli_main(["translate", "--engine", "ctranslate2", "--model", str(sample_export), SENTENCE]) == 0
    assert shown == capsys.readouterr().out.strip()


def test_a_multilingual_model_gets_a_direction_selector_and_the_chosen_directions_translation(
    browser, multilingual_checkpoint, tmp_path, capsys
):
    german = "Zwei Frauen sitzen auf einer Bank."
    options = ("--checkpoint", str(multilingual_checkpoint), "--beam-size", "5")
    with serving(*options, log=tmp_path / "serve.log") as url, open_page(browser, url) as page:
        page.wait_for_selector("#direction-select:not([hidden])")
        choices = page.eval_on_selector_all("#direction-select option", "os => os.map(o => [o.value, o.textContent])")
        assert choices == [["en-de", "English → German"], ["de-en", "German → English"]]
        page.select_option("#direction-select", value="de-en")
        assert "German → English" in page.inner_text("#direction")
        translate(page, german)
        shown = page.inner_text("#translation")
        labels = page.eval_on_selector_all("#heatmap text.label[data-col]", "labels => labels.map(l => l.textContent)")
        boxes = page.eval_on_selector_all("#heatmap rect.align-box", "boxes => boxes.map(b => Number(b.getAttribute('x')))")
        columns = page.eval_on_selector_all(
            "#heatmap rect.cell[data-row='0']", "cells => cells.map(c => Number(c.getAttribute('x')))"
        )
        alternatives = int(page.input_value("#alternatives"))
        answer = post_json(f"{url}/attention", {"q": german, "alternatives": alternatives, "source": "de", "target": "en"})
    assert labels == answer["source_tokens"] and labels[0] == "<2en>" and answer["source_prefix"] == 1
    assert answer["alignment"] and len(boxes) == len(answer["alignment"])
    # Each alignment box starts at the first piece of its source word, counted after the tag's column.
    first_piece = {}
    for k, w in enumerate(word_ids(answer["source_tokens"][1:-1])):
        first_piece.setdefault(w, k + 1)
    assert boxes == [columns[first_piece[i]] + 1 for i, _ in answer["alignment"]]
    assert cli_main(["translate", *options, "--target-lang", "en", german]) == 0
    assert shown == capsys.readouterr().out.strip() == answer["translation"]
