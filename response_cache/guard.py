"""A cheap lexical guard on top of MiniLM similarity.

Sentence embeddings place "the capital of France" and "the capital of Germany", or
"2 + 3" and "2 + 4", very close: the texts differ in one token that decides the answer.
Two texts pass the guard only if they name the same numbers, the same capitalised
entities, agree on negation, swap no "X to Y" direction and oppose no word pair
(ascending/descending, upload/download, advantages/disadvantages...), and are not the
same sentence with one content word swapped ("time" / "space complexity"). Measured on
bench/data/cache_pairs.jsonl (docs/cache.md).
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


# Opposites that flip an answer while keeping a sentence's embedding nearly unchanged.
_OPPOSITES = """ascending descending, increase decrease, increasing decreasing, raise lower,
advantages disadvantages, advantage disadvantage, pros cons, benefits risks, benefits drawbacks,
upload download, uploading downloading, encrypt decrypt, encode decode, compress decompress,
largest smallest, biggest smallest, bigger smaller, larger smaller, highest lowest,
higher lower, tallest shortest, longest shortest, longer shorter, oldest youngest,
older younger, heaviest lightest, heavier lighter, hottest coldest, hotter colder,
fastest slowest, faster slower, best worst, better worse, cheapest most-expensive,
minimum maximum, min max, first last, before after, start stop, starting stopping,
open close, enable disable, install uninstall, add remove, add drop, add delete,
create delete, create drop, insert delete, push pull, import export, buy sell, gain lose,
win lose, increase reduce, north south, east west, left right, up down, above below,
inside outside, input output, import export, send receive, sender receiver,
causes consequences, causes effects, cause effect, boiling freezing, melting freezing,
sunrise sunset, positive negative, true false, male female, past future, import export,
upper lower, uppercase lowercase, encryption decryption, mean median, sum product,
union intersection, horizontal vertical, synonym antonym, client server, prefix suffix,
on off, in out, yes no, always never, more less, most least, many few"""
OPPOSITES = frozenset(
    frozenset(pair.split()) for pair in _OPPOSITES.replace("\n", " ").split(",") if pair.strip()
)
NEGATING_PREFIXES = ("dis", "un", "in", "im", "ir", "il", "non", "de")
# "Celsius to Fahrenheit" against "Fahrenheit to Celsius": a swapped direction.
DIRECTIONAL = frozenset({"from", "to", "into", "towards"})
TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)*")
DIRECTION_RE = re.compile(r"([^\W\d_]+)\s+(?:to|into|->)\s+([^\W\d_]+)")


@dataclass(frozen=True)
class Features:
    numbers: tuple[str, ...]
    entities: frozenset[str]  # capitalised words that do not start a sentence
    initial: frozenset[str]  # capitalised sentence-initial words (may or may not be names)
    negated: bool
    words: frozenset[str] = frozenset()  # every word, lower-cased
    directions: frozenset[tuple[str, str]] = frozenset()
    tokens: tuple[str, ...] = ()  # every word and number, lower-cased, in order
    names: tuple[str, ...] = ()  # capitalised non-stopwords, in order
    directional: bool = False  # says "from", "to", "into" or "->"


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
    tokens = tuple(_word(m.group()) for m in TOKEN_RE.finditer(text))
    words = frozenset(t for t in tokens if not t[0].isdigit())
    names = tuple(
        _word(m.group())
        for m in WORD_RE.finditer(text)
        if m.group()[0].isupper() and _word(m.group()) not in STOPWORDS
    )
    directions = frozenset(
        (a.lower(), b.lower()) for a, b in DIRECTION_RE.findall(text) if a.lower() != b.lower()
    )
    return Features(
        tuple(sorted(numbers)),
        frozenset(entities),
        frozenset(initial),
        negated,
        words,
        directions,
        tokens,
        names,
        bool(DIRECTIONAL & words) or "->" in text,
    )


def _opposed(a: frozenset[str], b: frozenset[str]) -> bool:
    """A word only one text has is the opposite (or the prefix-negated form) of a word
    only the other has: ascending/descending, advantages/disadvantages."""
    only_a, only_b = a - b, b - a
    for x in only_a:
        for y in only_b:
            if frozenset((x, y)) in OPPOSITES:
                return True
            longer, shorter = (x, y) if len(x) > len(y) else (y, x)
            if len(shorter) >= 4 and any(longer == p + shorter for p in NEGATING_PREFIXES):
                return True
    return False


def compatible(a: Features, b: Features) -> bool:
    """Same numbers, same negation, and every entity of one text appears (capitalised,
    anywhere) in the other: "Is France big?" and "France is big" agree."""
    if a.numbers != b.numbers or a.negated != b.negated:
        return False
    if not (a.entities <= (b.entities | b.initial) and b.entities <= (a.entities | a.initial)):
        return False
    if any((y, x) in b.directions for x, y in a.directions):
        return False
    if _reordered(a, b) or _one_word_swapped(a.tokens, b.tokens):
        return False
    return not _opposed(a.words, b.words)


def _reordered(a: Features, b: Features) -> bool:
    """The same names in another order in a sentence about a direction ("from London to
    New York" against "from New York to London")."""
    return (
        (a.directional or b.directional)
        and len(set(a.names)) >= 2
        and set(a.names) == set(b.names)
        and _order(a.names) != _order(b.names)
    )


def _order(names: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(names))


def _one_word_swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """The texts are identical but for one content word in the same place ("time
    complexity" against "space complexity"): the embedding cannot tell a synonym from a
    sibling or an antonym there, so the guard does not guess."""
    if len(a) != len(b):
        return False
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return len(diff) == 1 and not (diff[0][0] in STOPWORDS or diff[0][1] in STOPWORDS)
