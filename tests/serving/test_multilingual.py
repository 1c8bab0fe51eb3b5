"""A model of two directions behind the service: /languages lists them, LibreTranslate's source and target (and
/attention's) choose one, a direction the model lacks is a 400 naming the field and listing those it has, OpenNMT-py's
route translates the first, and concurrent requests of both directions are batched apart, each answered as
`transformer translate --target-lang` prints it."""

from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

from transformer.cli import main as cli_main  # noqa: E402
from transformer.config import DecodeConfig  # noqa: E402
from transformer.inference import translate_texts, translator_for  # noqa: E402
from transformer.inference.alignment import sentence_alignment, translate_with_attention  # noqa: E402
from transformer.serving import BatchLimits, ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = {  # sources of each direction, by target
    "de": ["A man is walking his dog.", "Two children play in the sand.", "A woman reads a book."],
    "en": ["Zwei Frauen sitzen auf einer Bank.", "Ein Hund rennt.", "Ein Mann fährt Fahrrad."],
}
SOURCE = {"de": "en", "en": "de"}


@pytest.fixture(scope="module")
def offline(multilingual_model):
    """``offline(texts, target, beam_size=None)``: what `transformer translate --target-lang target` prints for
    each text."""
    translator, config = multilingual_model

    def translate(texts: list[str], target: str, beam_size: int | None = None) -> list[str]:
        tagged = translator_for(translator, config.data, (SOURCE[target], target))
        return translate_texts(tagged, texts, config.decode.updated(beam_size=beam_size))

    return translate


@pytest.fixture(scope="module")
def client(multilingual_model, eventually):
    with TestClient(create_app(lambda: multilingual_model, ServeSettings(limits=BatchLimits(max_wait_ms=1)))) as c:
        eventually(lambda: c.get("/health").status_code == 200)
        yield c


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]


def test_languages_lists_each_source_with_its_targets(client):
    assert client.get("/languages").json() == [
        {"code": "en", "name": "English", "targets": ["de"]}, {"code": "de", "name": "German", "targets": ["en"]},
    ]


@pytest.mark.parametrize("target", ["de", "en"])
def test_source_and_target_choose_the_direction_as_translate_does(client, offline, multilingual_checkpoint, capsys,
                                                                   target):
    texts = TEXTS[target]
    expected = offline(texts, target)
    answer = client.post("/translate", json={"q": texts, "source": SOURCE[target], "target": target}).json()
    assert answer == {"translatedText": expected}
    auto = client.post("/translate", json={"q": texts[0], "source": "auto", "target": target}).json()
    assert auto == {"translatedText": expected[0], "detectedLanguage": {"confidence": 100.0, "language": SOURCE[target]}}
    assert cli_main(["translate", "--checkpoint", str(multilingual_checkpoint), "--target-lang", target, *texts]) == 0
    assert capsys.readouterr().out.splitlines() == expected


def test_the_directions_translate_differently(offline):
    sources = TEXTS["de"] + TEXTS["en"]
    assert offline(sources, "de") != offline(sources, "en")


@pytest.mark.parametrize("body, words", [
    ({"q": "A dog.", "source": "en", "target": "fr"}, "target 'fr' is not a target language of this model"),
    ({"q": "A dog.", "source": "fr", "target": "de"}, "source 'fr' with target 'de' is not a direction"),
    ({"q": "A dog.", "source": "en", "target": "en"}, "source 'en' with target 'en' is not a direction"),
])  # fmt: skip
def test_a_direction_the_model_lacks_is_400_naming_the_field_and_listing_the_directions(client, body, words):
    message = error_of(client.post("/translate", json=body), 400)
    assert message.startswith("Invalid request: ") and words in message and message.endswith("en-de, de-en")


def test_attention_needs_the_direction_and_leaves_the_tag_out_of_the_alignment(client, multilingual_model, offline):
    translator, config = multilingual_model
    message = error_of(client.post("/attention", json={"q": "Ein Hund rennt."}), 400)
    assert "choose one with target" in message and "en-de, de-en" in message
    assert "target 'cs'" in error_of(client.post("/attention", json={"q": "A dog.", "target": "cs"}), 400)

    text = TEXTS["en"][0]
    data = client.post("/attention", json={"q": text, "source": "de", "target": "en", "alternatives": 1}).json()
    tagged = translator_for(translator, config.data, ("de", "en"))
    [(best, attention)] = translate_with_attention(tagged.model, tagged.tokenizer, [text], config.decode, device="cpu")
    assert data["translation"] == best == offline([text], "en")[0]
    assert data["source_tokens"][0] == "<2en>" and data["source_prefix"] == 1
    assert data["source_tokens"] == attention.src_pieces
    assert data["alignment"] == [list(p) for p in sentence_alignment(attention)]
    assert all(0 <= i < len(text.split()) for i, _ in data["alignment"])


def test_opennmt_py_which_names_no_language_gets_the_first_direction(client, offline):
    answer = client.post("/translator/translate", json=[{"src": t, "id": 100} for t in TEXTS["de"]]).json()
    assert [item["tgt"] for item in answer[0]] == offline(TEXTS["de"], "de")


class Recording:
    """A translator of one model that records, for each decoded batch, the target language it decoded into."""

    def __init__(self, inner, batches: list[tuple[str | None, list[str]]], target: str | None = None) -> None:
        self.inner, self.batches, self.target = inner, batches, target
        self.tokenizer = inner.tokenizer

    def for_target(self, lang: str) -> Recording:
        return Recording(self.inner.for_target(lang), self.batches, lang)

    def translate(self, texts, cfg: DecodeConfig, **options):
        self.batches.append((self.target, list(texts)))
        return self.inner.translate(texts, cfg, **options)

    def forced_log_probs(self, src, tgt):
        return self.inner.forced_log_probs(src, tgt)


def test_concurrent_requests_of_both_directions_are_batched_apart_and_answered_as_offline(
    multilingual_model, running, offline
):
    translator, config = multilingual_model
    batches: list[tuple[str | None, list[str]]] = []
    settings = ServeSettings(limits=BatchLimits(max_wait_ms=200, max_sentences=64))
    requests = [(t, target) for target in ("de", "en") for t in TEXTS[target]] * 2

    async def send(base: str) -> list[str]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            answers = await asyncio.gather(*(
                http.post("/translate", json={"q": text, "source": SOURCE[target], "target": target})
                for text, target in requests
            ))
        return [a.json()["translatedText"] for a in answers]

    with running(create_app(lambda: (Recording(translator, batches), config), settings)) as base:
        answers = asyncio.run(send(base))
    assert answers == [offline([text], target)[0] for text, target in requests]
    assert {target for target, _ in batches} == {"de", "en"}
    for target, sentences in batches:  # each batch of one direction, and of that direction's sentences only
        assert set(sentences) <= set(TEXTS[target])
    assert max(len(sentences) for _, sentences in batches) > 1  # they were batched at all


def test_an_export_serves_both_directions_as_the_torch_engine_greedy(multilingual_checkpoint, tmp_path, offline,
                                                                      eventually):
    pytest.importorskip("ctranslate2")
    from transformer.inference import export_ctranslate2, load_translator

    folder = export_ctranslate2(multilingual_checkpoint, tmp_path / "ct2")
    app = create_app(lambda: load_translator("ctranslate2", model_dir=folder, intra_threads=1), ServeSettings(beam_size=1))
    with TestClient(app) as client:
        eventually(lambda: client.get("/health").status_code == 200)
        for target in ("de", "en"):
            body = {"q": TEXTS[target], "source": SOURCE[target], "target": target}
            expected = offline(TEXTS[target], target, beam_size=1)
            assert client.post("/translate", json=body).json() == {"translatedText": expected}
