"""Write the small English-German sample corpus in data/sample/ (Multi30k layout, plain text).

The sentences are templated combinations of people, clothes, actions, objects and places, with the
German inflected by hand-written rules (gender, number, case), so that a tiny model learns them in
about a minute on a CPU. Deterministic: the same seed writes the same files.

    python scripts/make_sample_corpus.py [--out data/sample] [--train 520 --val 40 --test 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

# Persons: (English singular, English plural, German noun singular, German plural, gender).
PERSONS = [
    ("man", "men", "Mann", "Männer", "m"),
    ("woman", "women", "Frau", "Frauen", "f"),
    ("boy", "boys", "Junge", "Jungen", "m"),
    ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("child", "children", "Kind", "Kinder", "n"),
    ("worker", "workers", "Arbeiter", "Arbeiter", "m"),
    ("musician", "musicians", "Musiker", "Musiker", "m"),
    ("student", "students", "Studentin", "Studentinnen", "f"),
]
ANIMALS = [
    ("dog", "dogs", "Hund", "Hunde", "m"),
    ("cat", "cats", "Katze", "Katzen", "f"),
    ("horse", "horses", "Pferd", "Pferde", "n"),
]
# Adjectives: (English, German stem).
PERSON_ADJECTIVES = [("old", "alt"), ("young", "jung"), ("little", "klein"), ("tall", "groß"), ("happy", "fröhlich")]
COLOURS = [
    ("red", "rot"), ("blue", "blau"), ("green", "grün"), ("black", "schwarz"), ("white", "weiß"), ("yellow", "gelb"),
]
# Clothes: (preposition en, preposition de, English sg, English pl, German sg, German dative plural, gender).
CLOTHES = [
    ("in", "in", "shirt", "shirts", "Hemd", "Hemden", "n"),
    ("in", "in", "jacket", "jackets", "Jacke", "Jacken", "f"),
    ("in", "in", "dress", "dresses", "Kleid", "Kleidern", "n"),
    ("in", "in", "coat", "coats", "Mantel", "Mänteln", "m"),
    ("with", "mit", "hat", "hats", "Hut", "Hüten", "m"),
    ("with", "mit", "cap", "caps", "Mütze", "Mützen", "f"),
]
NUMBERS = [("Two", "Zwei"), ("Three", "Drei"), ("Four", "Vier"), ("Some", "Einige")]
# Objects: (English, German noun, gender); used with an indefinite article, maybe a colour.
OBJECTS = {
    "book": ("book", "Buch", "n"), "newspaper": ("newspaper", "Zeitung", "f"), "letter": ("letter", "Brief", "m"),
    "map": ("map", "Karte", "f"), "apple": ("apple", "Apfel", "m"), "banana": ("banana", "Banane", "f"),
    "sandwich": ("sandwich", "Sandwich", "n"), "bag": ("bag", "Tasche", "f"), "box": ("box", "Kiste", "f"),
    "basket": ("basket", "Korb", "m"), "ball": ("ball", "Ball", "m"), "cup": ("cup", "Tasse", "f"),
    "flower": ("flower", "Blume", "f"), "camera": ("camera", "Kamera", "f"), "picture": ("picture", "Bild", "n"),
    "kite": ("kite", "Drachen", "m"), "umbrella": ("umbrella", "Regenschirm", "m"),
    "bicycle": ("bicycle", "Fahrrad", "n"),
}
# Transitive verbs: (English -ing form, German 3rd person singular, plural, objects, colour allowed).
TRANSITIVE = [
    ("reading", "liest", "lesen", ["book", "newspaper", "letter", "map"], False),
    ("eating", "isst", "essen", ["apple", "banana", "sandwich"], False),
    ("carrying", "trägt", "tragen", ["bag", "box", "basket", "umbrella", "bicycle"], True),
    ("holding", "hält", "halten", ["ball", "cup", "flower", "camera", "umbrella", "kite"], True),
    ("buying", "kauft", "kaufen", ["newspaper", "apple", "flower", "bag", "camera"], True),
    ("painting", "malt", "malen", ["picture"], False),
    ("drawing", "zeichnet", "zeichnen", ["picture", "map"], False),
    ("throwing", "wirft", "werfen", ["ball"], True),
    ("repairing", "repariert", "reparieren", ["bicycle", "umbrella", "camera"], True),
]
# Places for any activity: (English, German with the dative already inflected).
PLACES = [
    ("in the park", "im Park"), ("in the kitchen", "in der Küche"), ("on the beach", "am Strand"),
    ("at the market", "auf dem Markt"), ("in the garden", "im Garten"), ("on the train", "im Zug"),
    ("at the station", "am Bahnhof"), ("in front of a shop", "vor einem Geschäft"),
    ("on the street", "auf der Straße"),
    ("next to a car", "neben einem Auto"), ("in the snow", "im Schnee"), ("at a table", "an einem Tisch"),
]
# Intransitive verbs: (English -ing form, German sg, German pl, allowed for animals, own places or None for PLACES).
INTRANSITIVE = [
    ("sitting", "sitzt", "sitzen", True, [("on a bench", "auf einer Bank"), ("on the grass", "auf dem Rasen"),
                                          ("at a table", "an einem Tisch"), ("on the steps", "auf der Treppe")]),
    ("standing", "steht", "stehen", True, None),
    ("walking", "geht", "gehen", True, [("through the park", "durch den Park"),
                                        ("across the street", "über die Straße"),
                                        ("along the beach", "am Strand entlang"), ("into a shop", "in ein Geschäft")]),
    ("running", "läuft", "laufen", True, [("across the field", "über das Feld"),
                                          ("through the park", "durch den Park"),
                                          ("on the beach", "am Strand"), ("down the road", "die Straße entlang")]),
    ("playing", "spielt", "spielen", True, [("in the garden", "im Garten"), ("in the snow", "im Schnee"),
                                           ("on the beach", "am Strand"), ("in the park", "im Park")]),
    ("waiting", "wartet", "warten", True, [("at the station", "am Bahnhof"),
                                          ("at the bus stop", "an der Bushaltestelle"),
                                          ("in front of a shop", "vor einem Geschäft")]),
    ("swimming", "schwimmt", "schwimmen", True, [("in the lake", "im See"), ("in the sea", "im Meer"),
                                                ("in a river", "in einem Fluss")]),
    ("sleeping", "schläft", "schlafen", True, [("on the sofa", "auf dem Sofa"), ("in the grass", "im Gras"),
                                              ("under a tree", "unter einem Baum")]),
    ("dancing", "tanzt", "tanzen", False, [("on the street", "auf der Straße"), ("in the kitchen", "in der Küche"),
                                          ("at a party", "auf einer Party")]),
    ("laughing", "lacht", "lachen", False, None),
    ("singing", "singt", "singen", False, [("on a stage", "auf einer Bühne"), ("in the kitchen", "in der Küche")]),
]

INDEFINITE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"},
              "dat": {"m": "einem", "f": "einer", "n": "einem"}}
DEFINITE_NOM = {"m": "der", "f": "die", "n": "das"}
# Adjective endings after an indefinite article (mixed declension) and after a definite one (weak).
MIXED = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
WEAK_NOM = {"m": "e", "f": "e", "n": "e"}


def article_en(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def subject(rng: random.Random, animals_ok: bool) -> tuple[str, str, bool, bool]:
    """(English NP, German NP in the nominative, plural?, person?)."""
    pool = PERSONS + (ANIMALS if animals_ok else [])
    en_sg, en_pl, de_sg, de_pl, gender = rng.choice(pool)
    person = (en_sg, en_pl, de_sg, de_pl, gender) in PERSONS
    adjective = rng.choice(PERSON_ADJECTIVES) if person and rng.random() < 0.35 else None
    if adjective and adjective[0] == "little" and en_sg not in ("boy", "girl", "child"):
        adjective = ("young", "jung")
    kind = rng.choices(["indefinite", "definite", "plural"], weights=[5, 2, 3])[0]
    if kind == "plural":
        number_en, number_de = rng.choice(NUMBERS)
        en = f"{number_en} " + (f"{adjective[0]} " if adjective else "") + en_pl
        de = f"{number_de} " + (f"{adjective[1]}e " if adjective else "") + de_pl
        return en, de, True, person
    if kind == "definite":
        en = "The " + (f"{adjective[0]} " if adjective else "") + en_sg
        adjective_de = f"{adjective[1]}{WEAK_NOM[gender]} " if adjective else ""
        de = DEFINITE_NOM[gender].capitalize() + " " + adjective_de + de_sg
        return en, de, False, person
    first = adjective[0] if adjective else en_sg
    en = f"{article_en(first).capitalize()} " + (f"{adjective[0]} " if adjective else "") + en_sg
    adjective_de = f"{adjective[1]}{MIXED['nom'][gender]} " if adjective else ""
    de = INDEFINITE["nom"][gender].capitalize() + " " + adjective_de + de_sg
    return en, de, False, person


def clothing(rng: random.Random, plural: bool) -> tuple[str, str]:
    """A prepositional phrase such as ("in a red shirt", "in einem roten Hemd"), or ("", "")."""
    if rng.random() > 0.35:
        return "", ""
    prep_en, prep_de, en_sg, en_pl, de_sg, de_pl, gender = rng.choice(CLOTHES)
    colour_en, colour_de = rng.choice(COLOURS)
    if plural:
        return f" {prep_en} {colour_en} {en_pl}", f" {prep_de} {colour_de}en {de_pl}"
    return f" {prep_en} a {colour_en} {en_sg}", f" {prep_de} {INDEFINITE['dat'][gender]} {colour_de}en {de_sg}"


def object_phrase(rng: random.Random, name: str, colour_ok: bool) -> tuple[str, str]:
    """An indefinite accusative object, maybe with a colour: ("a red ball", "einen roten Ball")."""
    en_noun, de_noun, gender = OBJECTS[name]
    if colour_ok and rng.random() < 0.4:
        colour_en, colour_de = rng.choice(COLOURS)
        return f"a {colour_en} {en_noun}", f"{INDEFINITE['acc'][gender]} {colour_de}{MIXED['acc'][gender]} {de_noun}"
    return f"{article_en(en_noun)} {en_noun}", f"{INDEFINITE['acc'][gender]} {de_noun}"


def sentence(rng: random.Random) -> tuple[str, str]:
    """One English sentence and its German translation."""
    if rng.random() < 0.5:
        verb_en, sg, pl, objects, colour_ok = rng.choice(TRANSITIVE)
        subj_en, subj_de, plural, _ = subject(rng, animals_ok=False)
        wear_en, wear_de = clothing(rng, plural)
        obj_en, obj_de = object_phrase(rng, rng.choice(objects), colour_ok)
        place_en, place_de = rng.choice(PLACES) if rng.random() < 0.6 else ("", "")
        en = f"{subj_en}{wear_en} {'are' if plural else 'is'} {verb_en} {obj_en} {place_en}".strip()
        de = f"{subj_de}{wear_de} {pl if plural else sg} {obj_de} {place_de}".strip()
    else:
        verb_en, sg, pl, animals_ok, places = rng.choice(INTRANSITIVE)
        subj_en, subj_de, plural, person = subject(rng, animals_ok)
        wear_en, wear_de = clothing(rng, plural) if person else ("", "")
        place_en, place_de = rng.choice(places or PLACES)
        en = f"{subj_en}{wear_en} {'are' if plural else 'is'} {verb_en} {place_en}"
        de = f"{subj_de}{wear_de} {pl if plural else sg} {place_de}"
    return en + ".", de + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    parser.add_argument("--train", type=int, default=520)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pairs: dict[str, str] = {}  # English -> German; distinct sentences across all splits
    total = args.train + args.val + args.test
    while len(pairs) < total:
        en, de = sentence(rng)
        pairs.setdefault(en, de)
    items = list(pairs.items())
    args.out.mkdir(parents=True, exist_ok=True)
    end_val = args.train + args.val
    splits = {"train": items[: args.train], "val": items[args.train : end_val], "test": items[end_val:]}
    for split, chunk in splits.items():
        for index, lang in enumerate(("en", "de")):
            (args.out / f"{split}.{lang}").write_text("".join(pair[index] + "\n" for pair in chunk), encoding="utf-8")
        print(f"{args.out}/{split}.{{en,de}}: {len(chunk)} pairs")


if __name__ == "__main__":
    main()
