"""Extractive summaries: split a text into sentences and pick the N most central ones (TextRank).

Every sentence returned is a verbatim slice of the text given, in the text's order. No model and no data
download: sentence splitting is a rule set (with English and Polish abbreviations) and the ranking needs
only the language's stop words (:mod:`hive_plugin_scrape.languages`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from .languages import stop_words, words

#: Words that end with a period without ending the sentence ("Dr. Smith", "m.in. w szkołach", "ul. Długa").
_ENGLISH_ABBREVIATIONS = (
    "mr mrs ms dr prof sr jr st mt vs e.g i.e cf approx dept est fig figs vol no nos gen gov sen rep capt col lt "
    "sgt rev inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k a.m p.m ph.d"
)
_POLISH_ABBREVIATIONS = (
    "ul al pl os np m.in tzw tj ok godz nr inż mgr hab doc płk kpt ks św im tys mln mld wg zob por ds pt cd "
    "ang łac jw ww itd itp prez min woj pow gm mjr hr"
)
ABBREVIATIONS = frozenset(f"{_ENGLISH_ABBREVIATIONS} {_POLISH_ABBREVIATIONS}".split())

# Closing and opening quotes and brackets, typographic ones included, as escapes.
_CLOSERS = "\"'\u201d\u2019\u00bb)]"
_OPENERS = "\"'\u201c\u201e\u00ab\u2018([\u00bf\u00a1"
# A dialogue dash (en or em dash) opens a reply after a sentence, as in Polish: skipped like an opening quote.
_DASHES = "\u2013\u2014"
# Terminal punctuation, then closing quotes (French puts a space before "»"), then space; or punctuation glued to
# the next word by markup ("physician.Police": two elements whose text the extractor joined without a space).
_CLOSE_ONLY = "\u201d\u00bb)]"  # closers that never open: "lundi. »Les" (glued by markup) ends at the "»"
_NEXT_WORD = r"(?=[" + re.escape(_OPENERS + _DASHES) + r"]?\s?[^\W\d_])"
_BOUNDARY = re.compile(
    r"[.!?\u2026]+(?:(?:\s*[" + re.escape(_CLOSERS) + r"])*\s*[" + re.escape(_CLOSE_ONLY) + r"]" + _NEXT_WORD
    + r"|(?:\s*[" + re.escape(_CLOSERS) + r"])*\s+"
    + r"|(?:\s*[" + re.escape(_CLOSERS) + r"])*" + _NEXT_WORD + r")"
)
_TERMINAL = re.compile(r"[.!?\u2026](?:\s*[" + re.escape(_CLOSERS) + r"])*$")
#: A list item's marker as the extractor writes it ("- item"), not part of the sentence.
_BULLET = re.compile(r"^[-*\u2022]\s+")

MIN_WORDS = 4
MAX_CANDIDATES = 300
DAMPING = 0.85


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: each a stripped slice of it; line breaks always end a sentence."""
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY.finditer(line):
            if _ends_sentence(line, start, match):
                sentences.append(line[start : match.end()].strip())
                start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _ends_sentence(line: str, start: int, match: re.Match[str]) -> bool:
    rest = line[match.end() :]
    if not match.group()[-1].isspace() and not _glued_boundary(line, match):
        return False
    following = rest.lstrip(_OPENERS + _DASHES + " \u00a0\u202f\t")
    if not following or not (following[0].isupper() or following[0].isdigit()):
        return False
    punctuation = "".join(match.group().split())
    if punctuation.rstrip(_CLOSERS) != ".":
        return True  # "!", "?", "...": a boundary whenever a capital follows
    word = line[start : match.start()].rsplit(None, 1)[-1] if line[start : match.start()].strip() else ""
    word = word.lstrip(_OPENERS)
    if len(word) == 1 and word.isupper():
        return False  # an initial: "J. Smith"
    return word.lower() not in ABBREVIATIONS


def _glued_boundary(line: str, match: re.Match[str]) -> bool:
    """``physician.Police``, ``cars.A``, ``klubu.`` + dash + ``Trzeba``: a lower-case word, terminal punctuation, then a
    capital (after any quote or dash) with no space right after the punctuation. Not ``U.S.Army``, ``e.g.Foo``
    or ``file.PDF``."""
    before = line[: match.start()]
    after = line[match.end() :].lstrip(_OPENERS + _DASHES + " ")
    return (
        len(before) >= 2 and before[-1].islower() and before[-2].isalpha()
        and bool(after) and after[0].isupper() and (len(after) == 1 or not after[1].isupper())
    )


def strip_bullet(sentence: str) -> str:
    """``sentence`` without a leading list marker ("- A list item." -> "A list item.")."""
    return _BULLET.sub("", sentence, count=1)


def is_candidate(sentence: str) -> bool:
    """Worth putting in a summary: a complete sentence (terminal punctuation) of at least four words."""
    return bool(_TERMINAL.search(sentence)) and len(words(sentence)) >= MIN_WORDS


def _stem(word: str) -> str:
    """A crude, language-free stem: the first five letters ("pollinators" ~ "pollination", "ogrodach" ~ "ogrody")."""
    return word[:5]


def summarise(text: str, count: int, language: str | None = None) -> list[str]:
    """The ``count`` most central sentences of ``text``, in the text's order.

    :param language: a jusText stop-word list name (``English``, ``Polish``...), or ``None`` for none.
    """
    if count < 1:
        return []
    sentences = _unique(strip_bullet(s) for s in split_sentences(text))
    candidates = [s for s in sentences if is_candidate(s)] or sentences
    candidates = candidates[:MAX_CANDIDATES]
    if len(candidates) <= count:
        return candidates
    stops = stop_words(language) if language else frozenset()
    bags = [{_stem(w) for w in words(s) if w not in stops and len(w) > 2} for s in candidates]
    scores = _textrank(bags) or _frequency(bags)
    ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:count]
    return [candidates[i] for i in sorted(ranked)]


def _unique(sentences: Iterable[str]) -> list[str]:
    """Each sentence once (the first time it occurs): a pull quote or a repeated teaser is one sentence."""
    seen: set[str] = set()
    out: list[str] = []
    for sentence in sentences:
        key = normalise_space(sentence)
        if sentence and key not in seen:
            seen.add(key)
            out.append(sentence)
    return out


def _textrank(bags: list[set[str]]) -> list[float] | None:
    """PageRank over sentence overlap (Mihalcea & Tarau 2004); ``None`` when no two sentences share a word."""
    n = len(bags)
    weights: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            shared = len(bags[i] & bags[j])
            if shared:
                weight = shared / (math.log(len(bags[i]) + 1) + math.log(len(bags[j]) + 1))
                weights[i].append((j, weight))
                weights[j].append((i, weight))
    if not any(weights):
        return None
    totals = [sum(w for _, w in edges) for edges in weights]
    scores = [1.0 / n] * n
    for _ in range(100):
        new = [
            (1 - DAMPING) / n + DAMPING * sum(scores[j] * w / totals[j] for j, w in weights[i])
            for i in range(n)
        ]
        delta = sum(abs(a - b) for a, b in zip(new, scores, strict=True))
        scores = new
        if delta < 1e-9:
            break
    return scores


def _frequency(bags: list[set[str]]) -> list[float]:
    """Fallback: the mean document frequency of a sentence's words."""
    counts: Counter[str] = Counter(w for bag in bags for w in bag)
    return [sum(counts[w] for w in bag) / len(bag) if bag else 0.0 for bag in bags]


def normalise_space(text: str) -> str:
    """Runs of whitespace as one space (to compare sentences with page text)."""
    return " ".join(text.split())


def contained(sentences: Iterable[str], text: str) -> bool:
    """True when every sentence occurs in ``text`` (whitespace-insensitive)."""
    haystack = normalise_space(text)
    return all(normalise_space(s) in haystack for s in sentences)
