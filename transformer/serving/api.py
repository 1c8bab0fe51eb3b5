"""The shapes of the three APIs the service speaks: what each request holds and what each answer looks like.

- LibreTranslate (``POST /translate``, ``GET /languages``): ``q`` a string or a list of strings, ``source``
  (or "auto": the source of the one direction into ``target``), ``target``, ``format`` "text", ``alternatives``
  (n-best beyond the first; as many as the beam finds, at most ``beam_size - 1``); the answer
  ``{"translatedText": ...}`` plus ``"alternatives"`` when asked for (a list per text for a list ``q``) and
  ``"detectedLanguage"`` for "auto", as LibreTranslate answers. Alternatives are distinct texts, without the
  translation itself. ``source`` and ``target`` choose one of the model's directions (``choose_direction``, the
  rule of ``transformer translate``); ``/languages`` lists them, each source with its targets.
- OpenNMT-py (``POST /translator/translate``): ``[{"src": text, "id": model id}, ...]`` in, ``[[{"src", "tgt",
  "n_best": 1, "pred_score"}, ...]]`` out (one inner list per n-best rank, as OpenNMT-py's server answers). Its
  API names no language: a multilingual model translates its first direction there.
- Ours (``POST /attention``): ``{"q", "alternatives", "layer", "source", "target"}`` (the languages as for
  LibreTranslate, needed by a multilingual model only); see ``attention_answer``.

A text is translated line by line (each line a sentence, as ``transformer translate`` reads stdin) and the
lines are joined with "\\n"; only a one-line text has alternatives. A blank text or line stays blank.
Parsing raises ``RequestError`` (400) naming the field at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformer.config import DataConfig
from transformer.data.tokenizer import Tokenizer
from transformer.decoding.search import Hypothesis
from transformer.inference.alignment import SentenceAttention
from transformer.inference.direction import DirectionError, choose_direction
from transformer.serving.bodies import bad_request, utf8_text

# English names of common ISO 639-1 codes, for /languages; another code is named by itself.
LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "et": "Estonian", "fi": "Finnish", "fr": "French", "hi": "Hindi", "hu": "Hungarian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian",
    "zh": "Chinese",
}

# Per-line hypotheses of one text: for each line, its n-best list ([] for a blank line).
TextHypotheses = list[list[Hypothesis]]


def split_lines(text: str) -> list[str]:
    """The lines of a text, each one sentence ("\\r\\n" or "\\n" ends a line, as for ``transformer translate``)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def languages(directions: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """LibreTranslate's ``/languages``: every language of the model's directions (in their order) with the
    languages it translates into ([] for a language that is only a target)."""
    codes = dict.fromkeys(lang for pair in directions for lang in pair)
    return [
        {"code": code, "name": LANGUAGE_NAMES.get(code, code), "targets": [t for s, t in directions if s == code]}
        for code in codes
    ]


def request_direction(data: DataConfig, source: str | None, target: str | None) -> tuple[str, str]:
    """The direction the fields ``source`` ("auto" or None: not given) and ``target`` choose.

    Raises:
        RequestError: 400, naming the field and listing the model's directions.
    """
    try:
        return choose_direction(data, None if source == "auto" else source, target, names=("source", "target"))
    except DirectionError as err:
        raise bad_request(f"Invalid request: {err}") from None


def count(value: Any, field: str, *, default: int = 0) -> int:
    """A non-negative whole number from JSON or a form ("3"); missing: ``default``; negative: 0 (LibreTranslate's
    rule)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise bad_request(f"Invalid request: {field} parameter is not a number")
    return max(0, int(value))


# ---- LibreTranslate ----------------------------------------------------------------------------------------------


@dataclass
class LibreRequest:
    texts: list[str]
    is_list: bool  # q was a list: the answer has lists
    alternatives: int
    auto: bool  # source "auto"
    direction: tuple[str, str]  # (source, target), one of the model's


def parse_libretranslate(fields: dict[str, Any], data: DataConfig) -> LibreRequest:
    """The request of ``POST /translate`` (its fields from ``bodies.read_fields``).

    Raises:
        RequestError: 400, a missing or invalid field, or a direction the model does not translate.
    """
    for name in ("q", "source", "target"):
        if not fields.get(name):  # as LibreTranslate: "" and [] are missing too
            raise bad_request(f"Invalid request: missing {name} parameter")
    q = fields["q"]
    is_list = isinstance(q, list)
    texts = [utf8_text(t, f"q[{i}]") for i, t in enumerate(q)] if is_list else [utf8_text(q, "q")]
    source, target = utf8_text(fields["source"], "source"), utf8_text(fields["target"], "target")
    direction = request_direction(data, source, target)
    text_format = fields.get("format") or "text"
    if text_format != "text":
        raise bad_request(f"Invalid request: format {text_format!r} is not supported: only 'text'")
    alternatives = count(fields.get("alternatives"), "alternatives")
    return LibreRequest(texts, is_list, alternatives, source == "auto", direction)


def join_best(tokenizer: Tokenizer, lines: TextHypotheses) -> str:
    """A text's translation: the best hypothesis of each line, joined with "\\n" (a blank line stays blank)."""
    return "\n".join(tokenizer.decode_tgt([hyps[0].tokens if hyps else [] for hyps in lines]))


def alternatives_of(tokenizer: Tokenizer, lines: TextHypotheses, best: str) -> list[str]:
    """The distinct alternative texts of a one-line text, best first, without ``best`` (none for several lines)."""
    if len(lines) != 1 or len(lines[0]) < 2:
        return []
    found: list[str] = []
    for text in tokenizer.decode_tgt([h.tokens for h in lines[0][1:]]):
        if text != best and text not in found:
            found.append(text)
    return found


def libretranslate_answer(tokenizer: Tokenizer, request: LibreRequest, results: Sequence[TextHypotheses]) -> dict[str, Any]:
    """``{"translatedText", ["alternatives"], ["detectedLanguage"]}`` with a string or a list, as ``q`` was."""
    texts = [join_best(tokenizer, lines) for lines in results]
    alternatives = [alternatives_of(tokenizer, lines, best) for lines, best in zip(results, texts)]
    detected = {"confidence": 100.0, "language": request.direction[0]}  # "auto": the direction's one source
    answer: dict[str, Any] = {"translatedText": texts if request.is_list else texts[0]}
    if request.auto:
        answer["detectedLanguage"] = [detected] * len(texts) if request.is_list else detected
    if request.alternatives > 0:
        answer["alternatives"] = alternatives if request.is_list else alternatives[0]
    return answer


# ---- OpenNMT-py ---------------------------------------------------------------------------------------------------


def parse_opennmt(payload: Any) -> list[str]:
    """The sources of ``POST /translator/translate``: a list of ``{"src": text, "id": ...}`` (the model id is
    not checked: the service has one model).

    Raises:
        RequestError: 400, not a list of objects with a string ``src``.
    """
    if not isinstance(payload, list) or not payload:
        raise bad_request('Invalid request: the body must be a non-empty JSON list of {"src": text, "id": model id}')
    texts = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict) or "src" not in item:
            raise bad_request(f"Invalid request: item {i} has no src")
        texts.append(utf8_text(item["src"], f"[{i}].src"))
    return texts


def pred_score(lines: TextHypotheses) -> float:
    """A text's score: the mean best score of its non-blank lines, 0 for none (as OpenNMT-py's server averages
    the segments of a text)."""
    scores = [hyps[0].score for hyps in lines if hyps]
    return sum(scores) / len(scores) if scores else 0.0


def opennmt_answer(tokenizer: Tokenizer, texts: Sequence[str], results: Sequence[TextHypotheses]) -> list[list[dict]]:
    return [[
        {"src": src, "tgt": join_best(tokenizer, lines), "n_best": 1, "pred_score": pred_score(lines)}
        for src, lines in zip(texts, results)
    ]]


# ---- attention ----------------------------------------------------------------------------------------------------


@dataclass
class AttentionRequest:
    q: str
    alternatives: int
    layer: int | None  # 1-based decoder layer; None: the last
    direction: tuple[str, str]  # (source, target), one of the model's


def parse_attention(payload: Any, data: DataConfig) -> AttentionRequest:
    """``{"q": one sentence, "alternatives": 0..N, "layer": 1-based decoder layer or null, "source", "target"}``;
    the languages may be left out for a bilingual model.

    Raises:
        RequestError: 400, a missing or invalid field, or a direction the model does not translate.
    """
    if not isinstance(payload, dict):
        raise bad_request("Invalid request: the body must be a JSON object with q")
    if payload.get("q") is None:
        raise bad_request("Invalid request: missing q parameter")
    q = utf8_text(payload["q"], "q")
    if not q.strip():
        raise bad_request("Invalid request: q is blank; send one sentence")
    if "\n" in q.rstrip("\r\n"):
        raise bad_request("Invalid request: q must be one sentence, without line breaks")
    layer = payload.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise bad_request("Invalid request: layer must be a whole number (1 = the first decoder layer)")
    source, target = (None if payload.get(k) is None else utf8_text(payload[k], k) for k in ("source", "target"))
    direction = request_direction(data, source, target)
    return AttentionRequest(q.rstrip("\r\n"), count(payload.get("alternatives"), "alternatives"), layer, direction)


def attention_answer(
    tokenizer: Tokenizer, nbest: Sequence[Hypothesis], attention: SentenceAttention, alignment: list[tuple[int, int]]
) -> dict[str, Any]:
    """The answer of ``/attention``: the translation, the n-best list (text, score), the pieces of both sides
    (EOS last; a multilingual model's source starts with the target-language tag, ``source_prefix`` pieces that
    are no words of the text), the cross-attention of the best translation (layers x heads x target x source)
    and its word alignment ([source word, target word] pairs, the words of the text)."""
    texts = tokenizer.decode_tgt([h.tokens for h in nbest])
    layers, heads = attention.cross.shape[:2]
    return {
        "translation": texts[0],
        "nbest": [{"text": text, "score": hyp.score} for text, hyp in zip(texts, nbest)],
        "source_tokens": attention.src_pieces,
        "source_prefix": attention.src_prefix,
        "target_tokens": attention.tgt_pieces,
        "cross": attention.cross.tolist(),
        "alignment": [[i, j] for i, j in alignment],
        "layers": layers,
        "heads": heads,
    }
