"""The service's APIs through real HTTP on loopback (uvicorn on a free port) and, where in-process is enough,
Starlette's TestClient: the request shapes of LibreTranslate's clients (SearXNG, deep-translator, both Weblate
integrations, curl), OpenNMT-py's API, /attention's contract, /health, /metrics, the web page, and every error
row (400, 404, 413, 500, 503, 504) as JSON without a traceback."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

from transformer.cli import main as cli_main  # noqa: E402
from transformer.cli.translate import translate_lines  # noqa: E402
from transformer.inference import load_translator, translate_texts  # noqa: E402
from transformer.inference.alignment import sentence_alignment, translate_with_attention  # noqa: E402
from transformer.serving import BatchLimits, ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = ServeSettings(limits=BatchLimits(max_wait_ms=2), char_limit=300, batch_limit=8)


@pytest.fixture(scope="module")
def url(sample_model, running):
    """A real server of the sample model (char limit 300, batch limit 8)."""
    with running(create_app(lambda: sample_model, SETTINGS)) as base:
        yield base


@pytest.fixture(scope="module")
def offline(sample_model):
    """``offline(text, n_best=1)``: what `transformer translate` gives for the text alone (its n-best texts)."""
    translator, config = sample_model

    def translate(text: str, n_best: int = 1) -> list[str]:
        lines = translate_lines(translator, [text], config.decode.updated(n_best=n_best))
        return lines if n_best == 1 else [line.split("\t")[2] for line in lines]

    return translate


def post(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=30, **kwargs)


def error_of(response: httpx.Response, status: int) -> str:
    """The ``error`` message of an error answer, checked to be JSON of that status without a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text and 'File "' not in response.text
    return response.json()["error"]


# ---- LibreTranslate's API and the clients that speak it ------------------------------------------------------


def test_translate_answers_what_transformer_translate_prints(url, sample_checkpoint, capsys):
    text = "A dog is running on the beach."
    answer = post(url, "/translate", json={"q": text, "source": "en", "target": "de"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert cli_main(["translate", "--checkpoint", str(sample_checkpoint), text]) == 0
    assert answer.json() == {"translatedText": capsys.readouterr().out.rstrip("\n")}


def test_the_request_shapes_of_searxng_deep_translator_weblate_and_curl(url, offline, sentences):
    a, b, c = sentences[:3]
    # SearXNG's engine: JSON, alternatives 3, an api_key; it reads translatedText and alternatives.
    searx = post(url, "/translate", json={"q": a, "source": "en", "target": "de", "alternatives": 3, "api_key": ""})
    assert searx.status_code == 200 and searx.json()["translatedText"] == offline(a)[0]
    assert isinstance(searx.json()["alternatives"], list)
    # deep-translator: a POST whose fields are all in the query string, no body.
    deep = httpx.post(f"{url}/translate", params={"q": b, "source": "en", "target": "de", "format": "text",
                                                  "api_key": "key"}, timeout=30)
    assert deep.json() == {"translatedText": offline(b)[0]}
    # Weblate (LibreTranslateTranslation, before batches): form-encoded fields.
    form = post(url, "/translate", data={"api_key": "", "q": c, "source": "en", "target": "de"})
    assert form.json() == {"translatedText": offline(c)[0]}
    # Weblate (batch machinery): JSON with q a list, api_key null; translatedText is a list in the same order.
    batch = post(url, "/translate", json={"api_key": None, "q": [a, b, c], "source": "en", "target": "de"})
    assert batch.json() == {"translatedText": [offline(t)[0] for t in (a, b, c)]}
    # curl -F: multipart form fields.
    multipart = post(url, "/translate", data={"q": a, "source": "en", "target": "de"}, files={"unused": b"x"})
    assert multipart.json() == {"translatedText": offline(a)[0]}


def test_alternatives_are_the_distinct_n_best_beyond_the_first_in_libretranslates_shapes(url, offline, sentences):
    text = sentences[4]
    nbest = offline(text, n_best=3)
    expected = [t for i, t in enumerate(nbest) if i and t != nbest[0] and t not in nbest[1:i]]
    one = post(url, "/translate", json={"q": text, "source": "en", "target": "de", "alternatives": 2}).json()
    assert one == {"translatedText": nbest[0], "alternatives": expected}
    many = post(url, "/translate", json={"q": [text, ""], "source": "en", "target": "de", "alternatives": "2"}).json()
    assert many == {"translatedText": [nbest[0], ""], "alternatives": [expected, []]}
    beam = post(url, "/translate", json={"q": text, "source": "en", "target": "de", "alternatives": 50}).json()
    assert len(beam["alternatives"]) <= 4  # as many as the beam (5) finds
    auto = post(url, "/translate", json={"q": text, "source": "auto", "target": "de"}).json()
    assert auto == {"translatedText": nbest[0], "detectedLanguage": {"confidence": 100.0, "language": "en"}}


def test_each_line_is_a_sentence_and_blank_text_stays_blank(url, offline, sentences):
    text = f"{sentences[5]}\n\n{sentences[6]}\r\n"
    answer = post(url, "/translate", json={"q": [text, "  "], "source": "en", "target": "de"}).json()
    assert answer == {"translatedText": [f"{offline(sentences[5])[0]}\n\n{offline(sentences[6])[0]}\n", ""]}


def test_languages_lists_the_direction_in_libretranslates_form(url):
    assert httpx.get(f"{url}/languages").json() == [
        {"code": "en", "name": "English", "targets": ["de"]}, {"code": "de", "name": "German", "targets": []},
    ]


def test_the_decoding_overrides_are_those_of_translate(sample_model, sentences, eventually):
    translator, config = sample_model
    settings = ServeSettings(beam_size=2, length_penalty=0.0, batch_size=3, max_src_tokens=5)
    cfg = config.decode.updated(beam_size=2, length_penalty=0.0, batch_size=3)
    texts = sentences[10:14]
    with TestClient(create_app(lambda: sample_model, settings)) as client:
        eventually(lambda: client.get("/health").status_code == 200)
        answer = client.post("/translate", json={"q": texts, "source": "en", "target": "de", "alternatives": 1})
    assert answer.json()["translatedText"] == translate_lines(translator, texts, cfg, max_src_tokens=5)
    assert answer.json()["translatedText"] != translate_lines(translator, texts, config.decode)  # they changed it


# ---- OpenNMT-py's API ---------------------------------------------------------------------------------------


def test_opennmt_py_shape(url, sample_model, sentences):
    translator, config = sample_model
    texts = sentences[7:9]
    answer = post(url, "/translator/translate", content=json.dumps([{"src": t, "id": 100} for t in texts]))
    [ranks] = answer.json()
    nbest = translator.translate(texts, config.decode)
    assert [r["src"] for r in ranks] == texts and all(r["n_best"] == 1 for r in ranks)
    assert [r["tgt"] for r in ranks] == translate_texts(translator, texts, config.decode)
    assert [r["pred_score"] for r in ranks] == pytest.approx([h[0].score for h in nbest], abs=1e-5)


# ---- /attention -------------------------------------------------------------------------------------------------


def test_attention_keeps_its_contract_and_the_numbers_of_alignment_py(url, sample_model, offline, sentences):
    translator, config = sample_model
    text = sentences[9]
    answer = post(url, "/attention", json={"q": text, "alternatives": 2})
    assert answer.status_code == 200
    data = answer.json()
    assert set(data) == {"translation", "nbest", "source_tokens", "source_prefix", "target_tokens", "cross",
                         "alignment", "layers", "heads"}
    assert data["source_prefix"] == 0  # a bilingual model's source has no target-language tag
    [(best, attention)] = translate_with_attention(translator.model, translator.tokenizer, [text], config.decode,
                                                   device="cpu")
    assert data["translation"] == best == offline(text)[0]
    assert [h["text"] for h in data["nbest"]] == offline(text, n_best=3) and data["nbest"][0]["text"] == best
    assert data["source_tokens"] == attention.src_pieces and data["source_tokens"][-1] == "</s>"
    assert data["target_tokens"] == attention.tgt_pieces and data["target_tokens"][-1] == "</s>"
    assert (data["layers"], data["heads"]) == tuple(attention.cross.shape[:2]) == (2, 4)
    assert torch.equal(torch.tensor(data["cross"]), attention.cross)  # (L, H, T, S), the same numbers
    assert data["alignment"] == [list(p) for p in sentence_alignment(attention)]
    first = post(url, "/attention", json={"q": text, "layer": 1}).json()
    assert first["alignment"] == [list(p) for p in sentence_alignment(attention, layer=1)]
    assert len(first["nbest"]) == 1


@pytest.mark.parametrize("body, field", [
    ({"q": "A dog.", "layer": 3}, "layer"), ({"q": "A dog.", "layer": "last"}, "layer"),
    ({"q": "A dog.", "alternatives": 5}, "alternatives"), ({"q": "A dog.\nA cat."}, "q"), ({"q": " "}, "q"),
    ({"alternatives": 1}, "q"), ([1], "object"), ({"q": "A dog.", "target": "fr"}, "target"),
    ({"q": "A dog.", "source": "de"}, "source"),
])
def test_attention_refuses_bad_requests_naming_the_field(url, body, field):
    assert field in error_of(post(url, "/attention", json=body), 400)


# ---- health, metrics, the page ------------------------------------------------------------------------------


def test_health_metrics_and_the_page(url):
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    post(url, "/translate", json={"q": "A dog.", "source": "en", "target": "de"})
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ('transformer_serve_requests_total{route="/translate",status="200"}', "transformer_serve_ready 1.0",
                 "transformer_serve_request_seconds_bucket", "transformer_serve_batch_sentences_count",
                 "transformer_serve_batch_tokens_sum", "transformer_serve_batch_seconds_sum",
                 "transformer_serve_queue_sentences"):
        assert name in metrics.text
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{url}/static/index.html").text == page.text
    assert error_of(httpx.get(f"{url}/nowhere"), 404)
    assert error_of(httpx.get(f"{url}/translate"), 405)


def test_metrics_registries_are_the_apps_own(sample_model):
    with TestClient(create_app(lambda: sample_model)) as first, TestClient(create_app(lambda: sample_model)) as second:
        first.get("/languages")
        assert 'route="/languages"' in first.get("/metrics").text
        assert 'route="/languages"' not in second.get("/metrics").text


# ---- errors -----------------------------------------------------------------------------------------------------

GOOD = {"q": "A dog.", "source": "en", "target": "de"}


@pytest.mark.parametrize("kwargs, field", [
    (dict(content=b'{"q": "A dog.", ', headers={"content-type": "application/json"}), "JSON"),
    (dict(json=["A dog."]), "object"),
    (dict(json={"source": "en", "target": "de"}), "q"),
    (dict(json={"q": "A dog.", "target": "de"}), "source"),
    (dict(data={"q": "A dog.", "source": "en"}), "target"),
    (dict(json={**GOOD, "source": "fr"}), "source"),
    (dict(json={**GOOD, "target": "fr"}), "target"),
    (dict(json={**GOOD, "q": 7}), "q"),
    (dict(json={**GOOD, "q": ["A dog.", None]}), "q[1]"),
    (dict(json={**GOOD, "format": "html"}), "format"),
    (dict(json={**GOOD, "alternatives": "many"}), "alternatives"),
    (dict(content=b"q=A+dog%FF.&source=en&target=de", headers={"content-type": "application/x-www-form-urlencoded"}),
     "q"),
    (dict(content=b'{"q": "A dog\xff.", "source": "en", "target": "de"}', headers={"content-type": "application/json"}),
     "q"),
    (dict(content=b'{"q": "A dog\\ud800.", "source": "en", "target": "de"}',
          headers={"content-type": "application/json"}), "q"),
    (dict(params={"q": "x", "source": "en"}, content=b"target=d%C3e"), "target"),
])
def test_bad_requests_are_400_naming_the_field(url, kwargs, field):
    message = error_of(post(url, "/translate", **kwargs), 400)
    assert field in message and "Invalid request" in message


def test_opennmt_bad_requests_are_400(url):
    assert "src" in error_of(post(url, "/translator/translate", json=[{"text": "A dog."}]), 400)
    assert "JSON" in error_of(post(url, "/translator/translate", content=b"[{"), 400)
    assert "[0].src" in error_of(post(url, "/translator/translate", content=b'[{"src": "\xc3("}]'), 400)


def test_over_the_char_limit_or_the_batch_limit_is_413(url):
    assert "--char-limit" in error_of(post(url, "/translate", json={**GOOD, "q": "a" * 301}), 413)
    assert "q[1]" in error_of(post(url, "/translate", json={**GOOD, "q": ["a", "b" * 301]}), 413)
    assert "--batch-limit" in error_of(post(url, "/translate", json={**GOOD, "q": ["a"] * 9}), 413)
    assert "--char-limit" in error_of(post(url, "/attention", json={"q": "a" * 301}), 413)
    assert "--batch-limit" in error_of(post(url, "/translator/translate", json=[{"src": "a"}] * 9), 413)
    assert "bytes" in error_of(post(url, "/translate", json={**GOOD, "q": ["a" * 300] * 8, "pad": "x" * 10**6}), 413)
    assert post(url, "/translate", json={**GOOD, "q": ["a" * 300] * 8}).status_code == 200  # at the limits: fine


def test_a_failing_batch_is_500_with_its_reason_and_the_service_goes_on(scripted, running):
    translator, config = scripted()
    with running(create_app(lambda: (translator, config))) as base:
        message = error_of(post(base, "/translate", json={**GOOD, "q": "boom"}), 500)
        assert message == "translation failed: RuntimeError: scripted failure"
        assert post(base, "/translate", json=GOOD).status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert 'transformer_serve_requests_total{route="/translate",status="500"} 1.0' in metrics


def test_over_the_timeout_is_504(scripted, running):
    translator, config = scripted(slow_s=1.0)
    with running(create_app(lambda: (translator, config), ServeSettings(timeout=0.2))) as base:
        assert "--timeout" in error_of(post(base, "/translate", json={**GOOD, "q": "slow"}), 504)


def test_a_full_queue_is_503_with_retry_after(scripted, running, eventually):
    translator, config = scripted()
    settings = ServeSettings(limits=BatchLimits(max_sentences=1, max_wait_ms=0, max_queue=1))
    with running(create_app(lambda: (translator, config), settings)) as base:
        answers = {}

        def send(name: str, text: str) -> None:
            answers[name] = post(base, "/translate", json={**GOOD, "q": text})

        held = threading.Thread(target=send, args=("held", "hold"))
        held.start()
        eventually(lambda: translator.batches)  # the worker holds the first batch
        queued = threading.Thread(target=send, args=("queued", "A dog."))
        queued.start()
        eventually(lambda: "transformer_serve_queue_sentences 1.0" in httpx.get(f"{base}/metrics").text)
        refused = post(base, "/translate", json={**GOOD, "q": "A cat."})
        translator.release.set()
        held.join(10)
        queued.join(10)
    assert "--max-queue" in error_of(refused, 503) and refused.headers["retry-after"] == "1"
    assert answers["held"].status_code == answers["queued"].status_code == 200


def test_health_is_503_until_the_model_is_loaded(sample_model, eventually):
    loaded = threading.Event()

    def load():
        loaded.wait(10)
        return sample_model

    with TestClient(create_app(load)) as client:
        assert client.get("/health").status_code == 503 and client.get("/health").json() == {"status": "loading"}
        assert "loading" in error_of(client.post("/translate", json=GOOD), 503)
        loaded.set()
        eventually(lambda: client.get("/health").status_code == 200)
        assert client.post("/translate", json=GOOD).status_code == 200


def test_a_model_that_cannot_load_is_reported(tmp_path, eventually):
    errors = []

    def load():
        return load_translator("torch", checkpoints=[tmp_path / "missing.pt"])

    with TestClient(create_app(load, on_load_error=errors.append)) as client:
        eventually(lambda: errors)
        health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "failed" and "missing.pt" in health.json()["error"]


def test_a_bug_is_500_without_a_traceback(sample_model, eventually):
    translator, config = sample_model

    class Broken:
        tokenizer = None  # encoding the source fails outside the batcher

        def for_target(self, lang):
            return self

        def translate(self, *args, **kwargs):
            raise AssertionError("unreachable")

    with TestClient(create_app(lambda: (Broken(), config)), raise_server_exceptions=False) as client:
        eventually(lambda: client.get("/health").status_code == 200)
        message = error_of(client.post("/translate", json=GOOD), 500)
    assert message.startswith("internal error (AttributeError)")


# ---- the other engine and an ensemble ---------------------------------------------------------------------------


def test_ctranslate2_serves_the_same_api_and_attention_is_400(sample_export, running, sentences):
    translator, config = load_translator("ctranslate2", model_dir=sample_export)
    with running(create_app(lambda: (translator, config))) as base:
        texts = sentences[:4]
        answer = post(base, "/translate", json={"q": texts, "source": "en", "target": "de"})
        assert answer.json() == {"translatedText": translate_texts(translator, texts, config.decode)}
        assert "torch engine" in error_of(post(base, "/attention", json={"q": texts[0]}), 400)


def test_an_ensemble_has_no_attention_to_show(sample_checkpoint, eventually):
    model = load_translator("torch", checkpoints=[sample_checkpoint, sample_checkpoint])
    with TestClient(create_app(lambda: model)) as client:
        eventually(lambda: client.get("/health").status_code == 200)
        assert "single --checkpoint" in error_of(client.post("/attention", json={"q": "A dog."}), 400)
        assert client.post("/translate", json=GOOD).status_code == 200


def test_the_listening_socket_is_tcp_so_asyncio_turns_nagle_off():
    # With protocol 0 asyncio leaves Nagle's algorithm on: each answer on a kept connection waited 40 ms.
    from transformer.cli.serve import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
