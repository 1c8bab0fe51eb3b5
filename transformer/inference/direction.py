"""Which direction a model translates: chosen once from the user's languages, then a translator for it.

A bilingual model translates its one direction, ``data.src_lang`` -> ``data.tgt_lang``; a multilingual one
(``data.directions``) translates each of its directions, told by a target-language tag put first in every source
(``Tokenizer.for_target``). ``choose_direction`` turns the languages a user gives (either may be None) into one
of the model's directions; ``translator_for`` then gives the translator of that direction, the model shared.

The rules, the same for every command and for ``transformer serve``:

- a multilingual model needs the target language; the source is optional when only one direction has that
  target, and must then be that direction's source if given;
- a bilingual model needs neither; a language given must be that of its one direction;
- anything else is one ``DirectionError`` whose message lists the model's directions (``en-de, de-en``).

``zero_shot`` asks a multilingual model for a direction it was never trained on (Johnson et al., 2017): both
languages must be given, the source one of the model's languages and the target one of its targets; the source
is then tagged for that target like any other (de-fr from a model of de-en and en-fr). Only the commands offer it
(``--zero-shot``); ``transformer serve`` keeps to the trained directions.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformer.config import DataConfig
from transformer.errors import CheckpointError, UserError
from transformer.inference.translator import Translator

OPTIONS = ("--source-lang", "--target-lang")  # how the command line names the two languages


class DirectionError(UserError, ValueError):
    """The languages asked for are not a direction of the model; the message lists those it has."""


def format_directions(pairs: Sequence[tuple[str, str]]) -> str:
    """``[("en", "de"), ("de", "en")]`` -> ``"en-de, de-en"``."""
    return ", ".join(f"{src}-{tgt}" for src, tgt in pairs)


def choose_direction(
    data: DataConfig,
    source_lang: str | None,
    target_lang: str | None,
    *,
    names: tuple[str, str] = OPTIONS,
    zero_shot: bool = False,
) -> tuple[str, str]:
    """The (source, target) direction of the model that the given languages pick (see the module docstring).

    Args:
        data: the model's saved data settings (its directions).
        source_lang, target_lang: what the user asked for; None: not given.
        names: how the two languages are named in the error (command-line options, or request fields).
        zero_shot: also accept an untrained direction of a multilingual model (see the module docstring).

    Raises:
        DirectionError: no direction, or several, fit; the message names the option and lists the directions.
    """
    if zero_shot:
        return _zero_shot_direction(data, source_lang, target_lang, names)
    pairs = data.direction_pairs
    has = f"it translates {format_directions(pairs)}"
    source_name, target_name = names
    if target_lang is None and data.multilingual:
        raise DirectionError(
            f"this model translates {format_directions(pairs)}: choose one with {target_name} (and {source_name})"
        )
    target = pairs[0][1] if target_lang is None else target_lang
    fitting = [(s, t) for s, t in pairs if t == target and source_lang in (None, s)]
    if len(fitting) == 1:
        return fitting[0]
    if fitting:  # several sources translate into this target: the source must say which direction is meant
        sources = ", ".join(s for s, _ in fitting)
        raise DirectionError(f"{target_name} {target!r} is translated from {sources}: add {source_name}; {has}")
    if all(t != target for _, t in pairs):
        raise DirectionError(f"{target_name} {target!r} is not a target language of this model: {has}")
    asked = f"{source_name} {source_lang!r}" + ("" if target_lang is None else f" with {target_name} {target!r}")
    hint = "; --zero-shot translates it untrained" if data.multilingual and names == OPTIONS else ""
    raise DirectionError(f"{asked} is not a direction of this model: {has}{hint}")


def _zero_shot_direction(
    data: DataConfig, source_lang: str | None, target_lang: str | None, names: tuple[str, str]
) -> tuple[str, str]:
    """``choose_direction`` with ``zero_shot``: any source of the model's languages into any of its targets."""
    has = f"it translates {format_directions(data.direction_pairs)}"
    source_name, target_name = names
    if not data.multilingual:
        raise DirectionError(f"zero-shot needs a multilingual model (data.directions), and this one is bilingual: {has}")
    if source_lang is None or target_lang is None:
        raise DirectionError(f"zero-shot needs both {source_name} and {target_name}: {has}")
    languages = sorted({lang for pair in data.direction_pairs for lang in pair})
    if source_lang not in languages:
        raise DirectionError(
            f"{source_name} {source_lang!r} is none of this model's languages ({', '.join(languages)}): {has}"
        )
    if target_lang not in data.target_langs:
        raise DirectionError(f"{target_name} {target_lang!r} is not a target language of this model: {has}")
    return source_lang, target_lang


def translator_for(translator: Translator, data: DataConfig, direction: tuple[str, str]) -> Translator:
    """The translator of one of the model's directions (the same model, its sources tagged for a multilingual one).

    Raises:
        CheckpointError: the vocabulary has no tag for a target of a multilingual model (a damaged checkpoint).
    """
    if data.multilingual:
        tags = translator.tokenizer.tags
        if sorted(tags) != data.target_langs:
            raise CheckpointError(
                f"the model translates {format_directions(data.direction_pairs)}, but its vocabulary has "
                f"target-language tags for {', '.join(tags) or 'none'}: its checkpoint or export is damaged"
            )
    return translator.for_target(direction[1])
