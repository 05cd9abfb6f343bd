"""Cloze fact sets scored in continuation mode (the prompt, then " " + each choice): world
capitals from word2vec's analogy file and chemical elements from mendeleev's database.

    >>> items = cloze_items(["A is", "B is", "C is", "D is"], ["a", "b", "c", "d"], "letters")
    >>> items[0].question, len(items[0].choices)
    ('A is', 4)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from unlearn_interp import data
from unlearn_interp.data import MCQItem, read_text
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.real_data.benchmarks import keyed_rng

# The prompt is the whole context: mcq_accuracy(..., mode="continuation", prompt_template=...).
CLOZE_TEMPLATE = "{question}"
CAPITAL_SECTIONS = ("capital-common-countries", "capital-world")
CAPITAL_PROMPT = "The capital of {country} is"
# Element phrasings (keys of ELEMENT_PROMPTS) and what each asks for.
ELEMENT_PROMPTS = {
    "symbol": ("The chemical symbol for {name} is", "symbol"),
    "name": ("The chemical element with the symbol {symbol} is", "name"),
    "number": ("The chemical element with atomic number {number} is", "name"),
}


def capital_pairs(questions_words: str | os.PathLike) -> list[tuple[str, str]]:
    """``(country, capital)`` pairs of word2vec's analogy file, deduplicated, sorted by country.

    Lines of the ``: capital-common-countries`` and ``: capital-world`` sections read
    ``Athens Greece Baghdad Iraq`` (two pairs each).

    >>> capital_pairs(".../gensim/test/test_data/questions-words.txt")[:2]   # doctest: +SKIP
    [('Afghanistan', 'Kabul'), ('Albania', 'Tirana')]
    """
    path = Path(questions_words)
    capitals: dict[str, str] = {}
    section = None
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        if section not in CAPITAL_SECTIONS or not line.strip():
            continue
        words = line.split()
        if len(words) != 4:
            raise UnlearnInterpError(
                f"{path} line {number} has {len(words)} words; expected 'city country city country'"
            )
        for capital, country in (words[:2], words[2:]):
            if capitals.setdefault(country, capital) != capital:
                raise UnlearnInterpError(
                    f"{path} line {number} gives {country} the capital {capital}, "
                    f"an earlier line {capitals[country]}"
                )
    if not capitals:
        raise UnlearnInterpError(f"{path} has no {' or '.join(CAPITAL_SECTIONS)} section")
    return sorted(capitals.items())


def capital_facts(questions_words: str | os.PathLike, seed: int = 0) -> list[MCQItem]:
    """ "The capital of Greece is" -> " Athens", against three other capitals of the file.

    >>> items = capital_facts(".../questions-words.txt")                     # doctest: +SKIP
    >>> items[0].question, items[0].choices[items[0].answer]                 # doctest: +SKIP
    ('The capital of Afghanistan is', 'Kabul')
    """
    pairs = capital_pairs(questions_words)
    prompts = [CAPITAL_PROMPT.format(country=country) for country, _ in pairs]
    return cloze_items(prompts, [capital for _, capital in pairs], "geography", seed)


def elements(elements_db: str | os.PathLike) -> list[tuple[int, str, str]]:
    """``(atomic number, symbol, name)`` of every element in mendeleev's ``elements.db``.

    >>> elements(".../mendeleev/elements.db")[0]                              # doctest: +SKIP
    (1, 'H', 'Hydrogen')
    """
    import sqlite3

    path = Path(elements_db)
    if not path.is_file():
        raise UnlearnInterpError(f"{path} does not exist")
    query = "SELECT atomic_number, symbol, name FROM elements ORDER BY atomic_number"
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            rows = db.execute(query).fetchall()
    except sqlite3.Error as err:
        raise UnlearnInterpError(f"{path} is not a readable elements database ({err})") from err
    for row in rows:
        if not (isinstance(row[0], int) and all(isinstance(v, str) and v for v in row[1:])):
            raise UnlearnInterpError(f"{path} table elements has a malformed row {row!r}")
    if not rows:
        raise UnlearnInterpError(f"{path} table elements is empty")
    return rows


def element_facts(
    elements_db: str | os.PathLike,
    phrasing: str = "symbol",
    max_atomic_number: int = 118,
    seed: int = 0,
) -> list[MCQItem]:
    """One cloze question per element up to ``max_atomic_number``, in a phrasing of
    :data:`ELEMENT_PROMPTS`: ``"symbol"`` ("The chemical symbol for gold is" -> " Au"),
    ``"name"`` (symbol -> name), ``"number"`` (atomic number -> name); names in lower case, as
    they read inside a sentence. Distractors: three other elements' symbols or names.

    >>> element_facts(".../mendeleev/elements.db", "symbol")[5].question     # doctest: +SKIP
    'The chemical symbol for carbon is'
    """
    if phrasing not in ELEMENT_PROMPTS:
        raise UnlearnInterpError(
            f"phrasing must be one of {list(ELEMENT_PROMPTS)}, got {phrasing!r}"
        )
    template, target = ELEMENT_PROMPTS[phrasing]
    rows = [r for r in elements(elements_db) if r[0] <= max_atomic_number]
    facts = [
        {"number": number, "symbol": symbol, "name": name.lower()} for number, symbol, name in rows
    ]
    prompts = [template.format(**fact) for fact in facts]
    return cloze_items(prompts, [fact[target] for fact in facts], "chemistry", seed)


def cloze_items(
    prompts: Sequence[str], answers: Sequence[str], subject: str, seed: int = 0
) -> list[MCQItem]:
    """Cloze questions: each prompt's answer against three distractors drawn from the other
    answers (distinct values), by an RNG keyed on ``seed`` and the prompt, then shuffled.

    >>> items = cloze_items(["A is", "B is", "C is", "D is"], ["a", "b", "c", "d"], "letters")
    >>> sorted(items[0].choices), items[0].choices[items[0].answer]
    (['a', 'b', 'c', 'd'], 'a')
    """
    pool = sorted(set(answers))
    if len(pool) < data.N_CHOICES:
        raise UnlearnInterpError(
            f"cloze facts need at least {data.N_CHOICES} distinct answers, got {len(pool)}"
        )
    items = []
    for prompt, answer in zip(prompts, answers, strict=True):
        rng = keyed_rng(seed, prompt)
        choices = [answer, *rng.sample([a for a in pool if a != answer], data.N_CHOICES - 1)]
        rng.shuffle(choices)
        items.append(MCQItem(prompt, choices, choices.index(answer), subject))
    return items


__all__ = [
    "CAPITAL_PROMPT",
    "CAPITAL_SECTIONS",
    "CLOZE_TEMPLATE",
    "ELEMENT_PROMPTS",
    "capital_facts",
    "capital_pairs",
    "cloze_items",
    "element_facts",
    "elements",
]
