"""Stop words for ~100 languages, and guessing a text's language from them.

The stop-word lists are jusText's (shipped inside the ``justext`` wheel, BSD-2-Clause): nothing is downloaded.
A language is named by an ISO 639-1 code (``en``, ``pl``...) or by jusText's list name (``Polish``).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter

AUTO = "auto"

#: ISO 639-1 codes for the jusText lists most often needed; any other list is reachable by its name.
ISO_CODES: dict[str, str] = {
    "af": "Afrikaans", "ar": "Arabic", "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "ga": "Irish", "gl": "Galician", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ka": "Georgian",
    "kk": "Kazakh", "ko": "Korean", "la": "Latin", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian",
    "ms": "Malay", "nb": "Norwegian_Bokmal", "nl": "Dutch", "nn": "Norwegian_Nynorsk", "no": "Norwegian_Bokmal",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
}  # fmt: skip
_CODE_OF = {name: code for code, name in ISO_CODES.items() if code not in ("no",)} | {"Simple_English": "en"}

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")  # "don't", "passers-by", typographic apostrophes


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased (letters only; digits and punctuation dropped)."""
    return [w.lower() for w in _WORD.findall(text)]


@functools.cache
def stoplist_names() -> dict[str, str]:
    """jusText's stop-word list names, by lower-cased name."""
    from justext import get_stoplists

    return {name.lower(): name for name in get_stoplists()}


@functools.cache
def stop_words(language: str) -> frozenset[str]:
    """The stop words of ``language`` (a name from :func:`normalise_language`), lower-cased."""
    from justext import get_stoplist

    return frozenset(w.lower() for w in get_stoplist(language))


def normalise_language(value: str) -> str:
    """``"auto"``, or the jusText list name for an ISO code or list name (any case); else ``ValueError``."""
    text = value.strip()
    if text.lower() == AUTO:
        return AUTO
    if text.lower() in ISO_CODES:
        return ISO_CODES[text.lower()]
    name = stoplist_names().get(text.lower())
    if name is None:
        raise ValueError(
            f"unknown language {value!r}: use 'auto', an ISO 639-1 code (en, pl, de...) or a jusText "
            "stop-word list name (English, Polish...)"
        )
    return name


def language_code(name: str) -> str:
    """The ISO 639-1 code of a list name when there is one (``Polish`` -> ``pl``), else the name lower-cased."""
    return _CODE_OF.get(name, name.lower())


#: Chance that a word of a text is missing from its language's stop-word list (see :func:`detect_language`).
_MISS = 1e-6


@functools.cache
def _hit_weights() -> dict[str, float]:
    """Each detectable list's weight per hit: ``log(1 / (_MISS * size))``, so a hit in a short list counts more."""
    names = sorted(set(ISO_CODES.values()) & set(stoplist_names().values()))
    return {name: math.log(1 / (_MISS * len(stop_words(name)))) for name in names}


def detect_language(text: str, *, sample_words: int = 2000) -> str | None:
    """The most likely language of ``text`` among those with an ISO code (:data:`ISO_CODES`); ``None`` if unsure.

    Each stop-word list is read as a unigram model: a word of the list has probability ``1/size``, any other
    word ``_MISS``. The list with the highest likelihood wins, which weighs each hit by the list's specificity:
    a hit in English's 453 words counts more than one in Uzbek's 5,549, whose list (built from Wikipedia)
    holds many English words ("the", "radio", "band"). Counting raw hits labelled English text Uzbek or
    Marathi. Lists without an ISO code (Marathi, Sundanese...) are not candidates. ``None`` when fewer than
    5 words, or when under 10 % of the words are stop words of the winner.
    """
    sample = words(text)[:sample_words]
    if len(sample) < 5:
        return None
    counts = Counter(sample)
    best, best_score, best_hits = None, 0.0, 0
    for name, weight in _hit_weights().items():
        stops = stop_words(name)
        hits = sum(n for w, n in counts.items() if w in stops)
        if hits * weight > best_score:
            best, best_score, best_hits = name, hits * weight, hits
    return best if best_hits >= 0.1 * len(sample) else None
