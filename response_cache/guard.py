"""A cheap lexical guard on top of MiniLM similarity.

Sentence embeddings place "the capital of France" and "the capital of Germany", or
"2 + 3" and "2 + 4", very close: the texts differ in one token that decides the answer.
Two texts pass the guard only if they name the same numbers, the same capitalised
entities and agree on negation (measured on bench/data/cache_pairs.jsonl, docs/cache.md).
"""

import re
from dataclasses import dataclass

NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
SENTENCE_END_RE = re.compile(r"[.!?:;\n]\s*$")
_NEGATION_WORDS = (
    "not no never none nobody nothing neither nor without cannot isnt arent wasnt werent "
    "dont doesnt didnt cant couldnt wont wouldnt shouldnt hasnt havent"
)
NEGATIONS = frozenset(_NEGATION_WORDS.split())
# Capitalised words that name no entity (question words, pronouns, politeness...).
STOPWORDS = frozenset(
    """a an the i me my we our you your he she it they them this that these those what which
    who whom whose when where why how is are was were be been do does did can could would
    should will shall may might must please tell give show explain describe list name write
    let lets hi hello hey ok okay thanks thank and or but so if then in on at of for to from
    with by about into over under any some all each every one quick briefly also just
    summarize summarise translate define compare find make create help""".split()  # noqa: SIM905
)
NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "twenty": "20", "hundred": "100", "thousand": "1000", "million": "1000000",
}  # fmt: skip


@dataclass(frozen=True)
class Features:
    numbers: tuple[str, ...]
    entities: frozenset[str]  # capitalised words that do not start a sentence
    initial: frozenset[str]  # capitalised sentence-initial words (may or may not be names)
    negated: bool


def _word(word: str) -> str:
    word = word.lower().replace("’", "'")
    return word[:-2] if word.endswith("'s") else word


def features(text: str) -> Features:
    numbers = [n.replace(",", "") for n in NUMBER_RE.findall(text)]
    entities: set[str] = set()
    initial: set[str] = set()
    negated = False
    for match in WORD_RE.finditer(text):
        raw = match.group()
        word = _word(raw)
        bare = word.replace("'", "")
        if bare in NEGATIONS or word.endswith("n't"):
            negated = True
        if word in NUMBER_WORDS:
            numbers.append(NUMBER_WORDS[word])
            continue
        if not raw[0].isupper() or word in STOPWORDS or len(word) < 2:
            continue
        before = text[: match.start()]
        if not before.strip() or SENTENCE_END_RE.search(before):
            initial.add(word)
        else:
            entities.add(word)
    return Features(tuple(sorted(numbers)), frozenset(entities), frozenset(initial), negated)


def compatible(a: Features, b: Features) -> bool:
    """Same numbers, same negation, and every entity of one text appears (capitalised,
    anywhere) in the other: "Is France big?" and "France is big" agree."""
    if a.numbers != b.numbers or a.negated != b.negated:
        return False
    return a.entities <= (b.entities | b.initial) and b.entities <= (a.entities | a.initial)
