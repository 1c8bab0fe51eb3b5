"""Dynamic batching through real HTTP: many concurrent clients, each checking its own answers against the
translation of its sentences alone (what `transformer translate` prints), while the server decodes them in
shared batches; n-best requests mixed in; and the same answers with batching off."""

from __future__ import annotations

import asyncio
import functools
import re

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from transformer.cli.translate import translate_lines  # noqa: E402
from transformer.serving import BatchLimits, ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CLIENTS = 16
REQUESTS_PER_CLIENT = 3


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def run_clients(url: str, sentences: list[str]) -> list[tuple[str, object, object]]:
    """CLIENTS concurrent clients, each sending REQUESTS_PER_CLIENT requests of three kinds (LibreTranslate with
    one text, with a list and 2 alternatives, OpenNMT-py); (kind, what was sent, the answer) of each."""

    async def client(i: int) -> list[tuple[str, object, object]]:
        seen = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for k in range(REQUESTS_PER_CLIENT):
                a, b = (sentences[(i * REQUESTS_PER_CLIENT + k + j) % len(sentences)] for j in (0, 7))
                kind = ("one", "list", "opennmt")[(i + k) % 3]
                if kind == "one":
                    answer = await http.post("/translate", json={"q": a, "source": "en", "target": "de"})
                    seen.append((kind, a, answer.json()))
                elif kind == "list":
                    body = {"q": [a, b], "source": "en", "target": "de", "alternatives": 2}
                    answer = await http.post("/translate", json=body)
                    seen.append((kind, [a, b], answer.json()))
                else:
                    answer = await http.post("/translator/translate", json=[{"src": a, "id": 1}])
                    seen.append((kind, a, answer.json()))
                assert answer.status_code == 200, answer.text
        return seen

    async def main():
        return [seen for results in await asyncio.gather(*(client(i) for i in range(CLIENTS))) for seen in results]

    return asyncio.run(main())


@pytest.mark.parametrize("limits", [BatchLimits(max_sentences=16, max_wait_ms=30), BatchLimits(max_sentences=1)],
                         ids=["batched", "batching-off"])
def test_concurrent_clients_each_get_exactly_the_offline_translation(limits, sample_model, running, sentences):
    translator, config = sample_model

    @functools.cache
    def offline(text: str, n_best: int = 1) -> list[str]:  # `transformer translate` on the text alone
        lines = translate_lines(translator, [text], config.decode.updated(n_best=n_best))
        return lines if n_best == 1 else [line.split("\t")[2] for line in lines]

    with running(create_app(lambda: (translator, config), ServeSettings(limits=limits))) as url:
        seen = run_clients(url, sentences)
        metrics = httpx.get(f"{url}/metrics").text
    assert len(seen) == CLIENTS * REQUESTS_PER_CLIENT
    for kind, sent, answer in seen:
        if kind == "one":
            assert answer == {"translatedText": offline(sent)[0]}
        elif kind == "opennmt":
            assert answer[0][0]["tgt"] == offline(sent)[0]
        else:
            nbest = [offline(text, n_best=3) for text in sent]
            assert answer["translatedText"] == [n[0] for n in nbest]
            assert answer["alternatives"] == [[t for t in dict.fromkeys(n[1:]) if t != n[0]] for n in nbest]
    batches = metric(metrics, "transformer_serve_batch_sentences_count")
    decoded = metric(metrics, "transformer_serve_batch_sentences_sum")
    assert decoded == CLIENTS * REQUESTS_PER_CLIENT * 4 / 3  # every sentence decoded once ("list" has two)
    if limits.max_sentences == 1:
        assert batches == decoded
    else:
        assert batches < decoded / 2  # sentences of concurrent requests shared batches
